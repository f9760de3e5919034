"""The arguments of [`diverse_select`]: one frozen dataclass, and every check that runs before an encoder loads.

[`check_values`] refuses bad types and ranges without the pool; [`check_arguments`] then judges them against the
pool (budget, columns, row layout) and returns what the checks derive, [`CheckedArguments`].
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from . import checks, methods, sample
from .cluster import AUTO_K
from .decontaminate import (
    DEFAULT_COSINE_THRESHOLD,
    DEFAULT_NGRAM,
    DEFAULT_NGRAM_THRESHOLD,
    as_dataset,
    check_thresholds,
    exclude_render_options,
)
from .errors import InvalidArgumentError
from .render import (
    FORMATS,
    RenderOptions,
    check_countable,
    check_text_to_embed,
    resolve_render_options,
    validate_columns,
)

# The columns a selection adds to the pool's.
ADDED_COLUMNS = ("source_index", "cluster")
# Arguments the manifest does not record: objects and settings of this machine, which
# `load_selection(..., recompute=True)` takes as overrides.
NOT_RECORDED = (
    "tokenizer", "device", "cache_dir", "encode_batch_size", "num_proc", "desc", "load_from_cache_file", "keep_in_memory",
    "exclude",
)
_EXCLUDE_SETTINGS = ("exclude_ngram", "exclude_ngram_threshold", "exclude_cosine_threshold")


@dataclass(frozen=True)
class SelectArguments:
    """The arguments of one [`diverse_select`] call, but the pool and the way the result is returned.

    Built once per call; every field means what the argument of the same name means in [`diverse_select`].
    numpy numbers become Python numbers (`np.int64(3)` is recorded as `3`).
    """

    budget: int | float | None
    method: str
    k: int | str
    seed: int
    max_tokens: int | None
    tokenizer: Any
    quality_column: str | None
    source_column: str | None
    temperature: float
    quality_weighting: str
    quota: str
    encoder: Any
    encoder_revision: str | None
    embedding_column: str | None
    format: str | None
    text_column: str | None
    template: str | None
    include_answer: bool
    dedup_threshold: float | None
    deita_threshold: float
    qdit_alpha: float
    k_candidates: list[int] | None
    kmeans_niter: int
    encode_batch_size: int
    device: str | None
    cache_dir: str | None
    trust_remote_code: bool
    exclude: Any = None
    exclude_ngram: int = DEFAULT_NGRAM
    exclude_ngram_threshold: float | None = DEFAULT_NGRAM_THRESHOLD
    exclude_cosine_threshold: float | None = DEFAULT_COSINE_THRESHOLD
    num_proc: int | None = None
    desc: str | None = None
    load_from_cache_file: bool = True
    keep_in_memory: bool = False

    def __post_init__(self):
        for field in fields(self):
            object.__setattr__(self, field.name, _plain(getattr(self, field.name)))

    def pick(self, *names: str) -> dict:
        """The fields `names`, as keyword arguments for the stage that takes them."""
        return {name: getattr(self, name) for name in names}

    def to_manifest_dict(self, identity) -> dict:
        """The manifest's `arguments`: every field that is a JSON value, but the machine-local ones.

        An encoder passed as an object is recorded by the id of its `identity` ([`~cache.ModelIdentity`]).
        """
        arguments = {
            field.name: getattr(self, field.name)
            for field in fields(self)
            if field.name not in NOT_RECORDED and _is_json_value(getattr(self, field.name))
        }
        if not isinstance(self.encoder, str):
            arguments["encoder"] = identity.id
        if self.exclude is None:  # the thresholds of a test that did not run: recorded only with `exclude`
            for name in _EXCLUDE_SETTINGS:
                arguments.pop(name, None)
        return arguments


@dataclass(frozen=True)
class CheckedArguments:
    """What [`check_arguments`] derives from the arguments and the pool."""

    rows: int | None  # the row budget in rows; None for a token budget
    render: RenderOptions | None  # None when precomputed vectors and a row budget need no text
    text: RenderOptions | None  # the text decontamination and descriptions read: `render` or the columns' layout
    quality: np.ndarray | None  # `quality_column` as float64
    sources: np.ndarray | None = None  # `source_column`'s values


_COSINE = " It is a cosine similarity."  # the fix named by the threshold checks


def check_values(args: SelectArguments) -> None:
    """The type and range of every argument that does not depend on the pool."""
    checks.check_choice(args.method, "method", methods.METHODS)
    checks.check_seed(args.seed)
    if isinstance(args.k, str) and args.k in AUTO_K:
        if args.k_candidates is not None and (
            not isinstance(args.k_candidates, (list, tuple))
            or not args.k_candidates
            or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 2 for c in args.k_candidates)
        ):
            raise InvalidArgumentError(f"`k_candidates`={args.k_candidates!r} must be a non-empty list of ints >= 2.")
    else:
        checks.check_int(args.k, "k", minimum=1, fix=" Pass the number of clusters, or k='auto'.")
        if args.k_candidates is not None and not isinstance(args.k_candidates, (list, tuple)):
            raise InvalidArgumentError(
                f"`k_candidates`={args.k_candidates!r} must be a list of ints >= 2 (used with k='auto')."
            )
    checks.check_int(args.kmeans_niter, "kmeans_niter", minimum=1, maximum=checks.MAX_INT32)
    checks.check_tokenizer(args.tokenizer)
    checks.check_name(args.quality_column, "quality_column")
    checks.check_name(args.source_column, "source_column")
    checks.check_number(args.temperature, "temperature", above=0)
    checks.check_choice(args.quality_weighting, "quality_weighting", sample.QUALITY_WEIGHTINGS)
    checks.check_choice(args.quota, "quota", sample.QUOTA_RULES)
    checks.check_model(args.encoder, "encoder")
    for name in ("encoder_revision", "embedding_column", "text_column", "template"):
        checks.check_name(getattr(args, name), name)
    if args.format is not None:
        checks.check_choice(args.format, "format", FORMATS)
    checks.check_flag(args.include_answer, "include_answer")
    if args.dedup_threshold is not None:
        checks.check_number(args.dedup_threshold, "dedup_threshold", above=0, at_most=1, fix=_COSINE)
    checks.check_number(args.deita_threshold, "deita_threshold", above=0, at_most=1, fix=_COSINE)
    checks.check_number(args.qdit_alpha, "qdit_alpha", at_least=0, at_most=1)
    checks.check_int(args.encode_batch_size, "encode_batch_size", minimum=1)
    if args.num_proc is not None:
        checks.check_int(args.num_proc, "num_proc", minimum=1)
    checks.check_name(args.desc, "desc")
    checks.check_flag(args.load_from_cache_file, "load_from_cache_file")
    checks.check_flag(args.keep_in_memory, "keep_in_memory")
    # Checked with or without `exclude`: a bad value is a mistake either way.
    check_thresholds(args.exclude_ngram, args.exclude_ngram_threshold, args.exclude_cosine_threshold)
    checks.check_device(args.device)
    checks.check_path(args.cache_dir, "cache_dir")
    checks.check_flag(args.trust_remote_code, "trust_remote_code")


def check_arguments(pool: datasets.Dataset, args: SelectArguments) -> CheckedArguments:
    """Every cheap check, before any model or encoder is touched."""
    n = len(pool)
    if n == 0:
        raise InvalidArgumentError("The pool (`dataset`) is empty; there is nothing to select from.")
    check_values(args)
    if (args.budget is None) == (args.max_tokens is None):
        raise InvalidArgumentError("Pass exactly one of `budget` (rows or fraction) and `max_tokens` (token budget).")
    rows = sample.resolve_budget(args.budget, n) if args.budget is not None else None
    if args.max_tokens is not None:
        checks.check_int(args.max_tokens, "max_tokens", minimum=1)
        if args.tokenizer is None:
            raise InvalidArgumentError("`max_tokens` needs `tokenizer=` (the one you will train with) to count tokens.")
        ordered = methods.ordered_methods()
        if args.method not in ordered:
            raise InvalidArgumentError(
                f"`max_tokens` works with methods {ordered}; for {args.method!r} pass a row `budget`."
            )
    if not isinstance(args.k, str) and args.k > n:
        raise InvalidArgumentError(f"`k`={args.k} must be between 1 and the number of rows ({n}); try k='auto'.")
    method_check = methods.METHODS[args.method].check
    if method_check is not None:
        method_check(args)
    clash = [c for c in ADDED_COLUMNS if c in pool.column_names]
    if clash:
        raise InvalidArgumentError(
            f"The pool already has column(s) {clash} that the selection adds; rename them first, e.g. "
            f"`pool.rename_column({clash[0]!r}, 'parent_{clash[0]}')`."
        )

    quality = None
    if args.quality_column is not None:
        if args.quality_column not in pool.column_names:
            raise InvalidArgumentError(
                f"`quality_column`={args.quality_column!r} is not a column; available: {pool.column_names}."
            )
        values = pool.data.table.column(args.quality_column).to_numpy(zero_copy_only=False)
        quality = sample.validate_quality(values, args.quality_column, weighting=args.quality_weighting)
        uses_temperature = "temperature" in methods.METHODS[args.method].options and args.quality_weighting == "softmax"
        with np.errstate(over="ignore"):
            if uses_temperature and not np.isfinite(quality / args.temperature).all():
                raise InvalidArgumentError(
                    f"`temperature`={args.temperature!r} is too small for the scores in `quality_column`="
                    f"{args.quality_column!r}: quality / temperature overflows. Pass a larger temperature."
                )

    sources = None
    if args.source_column is not None:
        if args.source_column not in pool.column_names:
            raise InvalidArgumentError(
                f"`source_column`={args.source_column!r} is not a column; available: {pool.column_names}."
            )
        column = pool.data.table.column(args.source_column)
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind) or pa.types.is_boolean(kind)):
            raise InvalidArgumentError(
                f"`source_column`={args.source_column!r} holds {column.type}; it must name each row's source as a string "
                "or an integer (e.g. a dataset name or a ClassLabel)."
            )
        if column.null_count:
            raise InvalidArgumentError(f"`source_column`={args.source_column!r} has {column.null_count} missing values; fill them first.")
        sources = column.to_numpy(zero_copy_only=False) if kind == column.type else column.cast(kind).to_numpy(zero_copy_only=False)

    render = None
    # Text is needed to embed, and to count tokens for a token budget even with precomputed vectors.
    if args.embedding_column is None or args.max_tokens is not None:
        render = resolve_render_options(
            pool.column_names, **args.pick("format", "text_column", "template", "include_answer", "tokenizer")
        )
        validate_columns(pool.data.table, render)
        if args.embedding_column is None:  # rows with nothing to embed are refused before the plan, too
            check_text_to_embed(pool.data.table, render)
        if args.max_tokens is not None:  # a count the trainer would not see is refused before embedding
            check_countable(pool.data.table, render, args.tokenizer)
    if args.embedding_column is not None and args.embedding_column not in pool.column_names:
        raise InvalidArgumentError(
            f"`embedding_column`={args.embedding_column!r} is not a column; available: {pool.column_names}."
        )
    # Precomputed vectors embed no text, but the n-gram test and the cluster descriptions still read the pool's text
    # when its columns show one.
    text = render
    if text is None:
        try:
            text = resolve_render_options(pool.column_names, **args.pick("format", "text_column", "template", "include_answer"))
            validate_columns(pool.data.table, text)
        except InvalidArgumentError:
            if args.exclude is not None:
                raise
            text = None
    if args.exclude is not None:  # the evaluation set's type and layout, before anything is embedded
        exclude_render_options(as_dataset(args.exclude), text)
    return CheckedArguments(rows=rows, render=render, text=text, quality=quality, sources=sources)


def read_columns(args: SelectArguments, render: RenderOptions | None) -> list[str]:
    """The pool columns the selection reads and the manifest's digest covers: the rendered text, the vectors and
    the quality scores."""
    columns = []
    if render is not None:
        columns += render.input_columns
    for extra in (args.embedding_column, args.quality_column):
        if extra is not None:
            columns.append(extra)
    return list(dict.fromkeys(columns))


def _is_json_value(value) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    return False


def _plain(value):
    # numpy scalars as Python ones, also inside a list: faiss takes no numpy ints, manifests are JSON.
    if isinstance(value, np.generic):
        return value.item()
    if type(value) in (list, tuple):
        return type(value)(_plain(v) for v in value)
    return value
