"""diverse_select: render -> embed -> cluster -> draw (the method's entry in `methods.METHODS`) -> subset + manifest.

Every argument is checked before the encoder loads. The subset keeps all pool columns and adds
`source_index` (row in the pool) and `cluster` (its k-means cluster).
"""

from __future__ import annotations

import logging
import numbers
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import datasets
import numpy as np
import pyarrow as pa

from . import baselines, checks, hidden_states, methods, sample
from .cache import StoredVectors, cache_file
from .cluster import AUTO_K, choose_k, default_k_candidates, kmeans, warn_if_k_near_budget
from .decontaminate import (
    DEFAULT_COSINE_THRESHOLD, DEFAULT_NGRAM, DEFAULT_NGRAM_THRESHOLD, check_thresholds, decontaminate_pool,
)
from .describe import describe_pool
from .embed import (
    DEFAULT_ENCODER,
    batch_encoder,
    built_static_identity,
    embed_dataset,
    embedding_cache_key,
    embeddings_from_column,
    encoder_identity,
)
from .errors import IdselError, InvalidArgumentError
from .manifest import Manifest, encoder_record, indices_digest, pool_digest, pool_record, selection_subset
from .render import (
    FORMATS,
    RenderOptions,
    check_countable,
    check_text_to_embed,
    resolve_render_options,
    token_lengths,
    validate_columns,
)
from .report import centroid_map
from .static_embed import STATIC_PREFIX, is_static

logger = logging.getLogger(__name__)

ADDED_COLUMNS = ("source_index", "cluster")
# Throughput of all-MiniLM-L6-v2 measured on 2 CPU cores, for dry-run estimates.
_CPU_SECONDS_PER_TEXT = 1 / 800
_CPU_SECONDS_PER_TOKEN = 1 / 12_000
# The static encoder on the same CPU, and the one-off build of its weights (197-272 s measured).
_STATIC_CPU_SECONDS_PER_ROW = 1 / 2000  # measured 3,675 rows/s idle, 219-287 under load (docs/performance.md)
_STATIC_BUILD_CPU_SECONDS = 240.0
# SmolLM2-135M hidden states cost about this many times all-MiniLM-L6-v2 per row (docs/performance.md).
_HIDDEN_STATES_CPU_FACTOR = 10.0
_KMEANS_SECONDS_PER_UNIT = 6.6e-12  # per (training row x k x dim x iteration) with faiss on that CPU
# Rows per pass-one batch of a streamed pool: embed_dataset's chunk, so the encoder sees the same batches
# and a stream gets the vectors (and the selection) of the same rows as a `datasets.Dataset`.
STREAM_BATCH = 1024
# Arguments the manifest does not record: objects and settings of this machine, which
# `load_selection(..., recompute=True)` takes as overrides.
_NOT_RECORDED = (
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
            if field.name not in _NOT_RECORDED and _is_json_value(getattr(self, field.name))
        }
        if not isinstance(self.encoder, str):
            arguments["encoder"] = identity.id
        if self.exclude is None:  # the thresholds of a test that did not run: recorded only with `exclude`
            for name in _EXCLUDE_SETTINGS:
                arguments.pop(name, None)
        return arguments


@dataclass(frozen=True)
class _Checked:
    """What the checks derive from the arguments and the pool."""

    rows: int | None  # the row budget in rows; None for a token budget
    render: RenderOptions | None  # None when precomputed vectors and a row budget need no text
    quality: np.ndarray | None  # `quality_column` as float64
    sources: np.ndarray | None = None  # `source_column`'s values


@dataclass
class SelectionPlan:
    """What `diverse_select(..., dry_run=True)` would do, and roughly what it would cost."""

    pool_rows: int
    budget_rows: int | None
    max_tokens: int | None
    method: str
    k: int | str
    k_candidates: list | None
    encoder: str | None
    embeddings_cached: bool
    dim: int | None
    estimated_embedding_seconds: float
    estimated_clustering_seconds: float
    estimated_peak_memory_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        budget = f"{self.budget_rows} rows" if self.budget_rows is not None else f"{self.max_tokens} tokens"
        k = f"{self.k} (silhouette over {self.k_candidates})" if self.k in AUTO_K else self.k
        source = "cached" if self.embeddings_cached else f"~{self.estimated_embedding_seconds:.0f} s on CPU"
        return (
            f"Select {budget} of {self.pool_rows} with {self.method}, k={k}\n"
            f"  embeddings: {self.encoder or 'from column'} ({source})\n"
            f"  clustering: ~{self.estimated_clustering_seconds:.1f} s on CPU\n"
            f"  peak memory: ~{self.estimated_peak_memory_bytes / 2**20:.0f} MiB"
        )


def diverse_select(
    dataset,
    budget=None,
    *,
    method: str = "kmq",
    k: int | str = "auto",
    seed: int = 0,
    max_tokens: int | None = None,
    tokenizer: Any = None,
    quality_column: str | None = None,
    source_column: str | None = None,
    temperature: float = 1.0,
    quality_weighting: str = "softmax",
    quota: str = "proportional",
    encoder: Any = DEFAULT_ENCODER,
    encoder_revision: str | None = None,
    embedding_column: str | None = None,
    format: str | None = None,
    text_column: str | None = None,
    template: str | None = None,
    include_answer: bool = True,
    dedup_threshold: float | None = None,
    deita_threshold: float = 0.9,
    qdit_alpha: float = 0.5,
    k_candidates: list[int] | None = None,
    kmeans_niter: int = 20,
    encode_batch_size: int = 64,
    device: str | None = None,
    cache_dir: str | None = None,
    split: str | None = None,
    dry_run: bool = False,
    return_manifest: bool = False,
    trust_remote_code: bool = False,
    exclude=None,
    exclude_ngram: int = DEFAULT_NGRAM,
    exclude_ngram_threshold: float | None = DEFAULT_NGRAM_THRESHOLD,
    exclude_cosine_threshold: float | None = DEFAULT_COSINE_THRESHOLD,
    num_proc: int | None = None,
    desc: str | None = None,
    load_from_cache_file: bool = True,
    keep_in_memory: bool = False,
    batch_size: int | None = None,
):
    """Choose a diverse subset of an instruction pool (Diversify and Conquer, arXiv 2409.11378).

    Embeds every row, clusters the embeddings with k-means and draws the budget cluster by cluster.

    Args:
        dataset (`datasets.Dataset`, `datasets.DatasetDict` or `datasets.IterableDataset`):
            The pool. For a `DatasetDict`, every split is selected independently, or only `split`. An
            `IterableDataset` (e.g. `load_dataset(..., streaming=True)`) is read twice: once to embed
            it batch by batch, keeping only the vectors (float16, in a temporary Arrow file) and the
            columns the selection reads (for the manifest's digests), and once to keep the chosen rows.
            It must give the same rows in the same order both times (not a reshuffled stream).
        budget (`int` or `float`):
            Rows to select (int), or a fraction of the pool in (0, 1] (float). The result has exactly
            this many rows. Leave `None` and pass `max_tokens` for a token budget.
        method (`str`, *optional*, defaults to `"kmq"`):
            `"kmq"` (size-proportional cluster quotas, quality-weighted draw inside a cluster),
            `"kmeans-random"`, `"kmeans-closest"`, `"random"`, or the baselines `"kcenter"`, `"deita"`, `"qdit"`
            (the table `hf_idsel.methods.METHODS`).
        k (`int`, `"auto"` or `"auto-global"`, *optional*, defaults to `"auto"`):
            Number of clusters; `"auto"` picks it the paper's way: the silhouette of the whole pool's clustering
            for k from 64 up to `min(8192, rows // 16)` and below half the row budget, near-ties to the smaller k;
            `"auto-global"` searches from k = 2 and keeps the highest silhouette. See [`cluster.choose_k`]. A k of
            half the budget or more logs a warning.
        seed (`int`, *optional*, defaults to `0`):
            Seeds k-means and every draw; same data, arguments and seed give the same rows. An int in
            [0, 2**31 - 1] (faiss's k-means takes a 32-bit seed).
        max_tokens (`int`, *optional*):
            Token budget instead of rows: the selection's total tokens (measured with `tokenizer`,
            chat template included) stay within it. For the ordered methods (kmq, kmeans-*, random).
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Measures tokens for `max_tokens`, and renders chat rows with its chat template.
        quality_column (`str`, *optional*):
            Per-row quality (higher is better), e.g. from [`score_quality`] or Deita scores.
        source_column (`str`, *optional*):
            Each row's data source, for `method="balanced-random"` (an equal share per source).
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of the in-cluster draw: p ~ exp(quality / temperature).
        quality_weighting (`str`, *optional*, defaults to `"softmax"`):
            `"softmax"` or `"linear"` (p ~ quality; needs non-negative values).
        quota (`str`, *optional*, defaults to `"proportional"`):
            Cluster quotas proportional to cluster size (the paper) or `"equal"` (the research code).
        encoder (`str`, `SentenceTransformer` or [`HiddenStateEncoder`], *optional*, defaults to `"sentence-transformers/all-MiniLM-L6-v2"`):
            Sentence encoder; the default resolves to the packaged offline copy when installed.
            `"hidden-states:<causal LM>"` embeds with the LM's hidden states instead (RDS+).
        encoder_revision (`str`, *optional*):
            Encoder revision on the Hub.
        embedding_column (`str`, *optional*):
            Use these precomputed vectors instead of an encoder.
        format (`str`, *optional*):
            Row layout: `"messages"`, `"prompt_completion"`, `"alpaca"`, `"text"`, `"template"`; detected by default.
        text_column (`str`, *optional*):
            The column to embed for plain-text pools.
        template (`str`, *optional*):
            A `str.format` template over the columns, e.g. `"{title}\\n{body}"`.
        include_answer (`bool`, *optional*, defaults to `True`):
            Embed prompt and answer (the paper) or the prompt only (the research code).
        dedup_threshold (`float`, *optional*):
            Drop near-duplicates (cosine similarity >= threshold to a kept row) before sampling.
        deita_threshold (`float`, *optional*, defaults to `0.9`):
            `"deita"`: a row is added only if its cosine similarity to every chosen row is below this.
        qdit_alpha (`float`, *optional*, defaults to `0.6`):
            `"qdit"`: weight of quality against facility-location diversity.
        k_candidates (`list[int]`, *optional*):
            Candidate k values for `k="auto"` or `"auto-global"`, all tried; by default powers of two and their
            midpoints in [`cluster.k_range`], searched coarse-to-fine.
        kmeans_niter (`int`, *optional*, defaults to `20`):
            k-means iterations, at least 1.
        encode_batch_size (`int`, *optional*, defaults to `64`):
            Texts per encoder forward pass (was `batch_size`, which in `datasets.Dataset.map` means rows per call).
        device (`str`, *optional*):
            Encoder device.
        cache_dir (`str`, *optional*):
            Cache folder for embeddings and token counts (defaults to `HF_DATASETS_CACHE/hf_idsel`).
        split (`str`, *optional*):
            For a `DatasetDict`: select only this split and leave the others as they are.
        dry_run (`bool`, *optional*, defaults to `False`):
            Return a [`SelectionPlan`] (sizes, k, estimated time and memory) without computing.
        return_manifest (`bool`, *optional*, defaults to `False`):
            Return `(subset, manifest)` instead of the subset alone.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Allow the encoder's own code to run; only for encoders you trust.
        exclude (`datasets.Dataset` or `list[str]`, *optional*):
            An evaluation set: pool rows that copy or nearly copy one of its items are dropped before clustering
            (see `hf_idsel.decontaminate`), and the manifest records which, and against what. The budget is then
            counted on the rows left: a fraction budget is a fraction of them.
        exclude_ngram (`int`, *optional*, defaults to `8`):
            Word n-gram length of the overlap test.
        exclude_ngram_threshold (`float`, *optional*, defaults to `0.6`):
            Drop a row holding at least this share of one evaluation item's distinct word n-grams; `None` skips the test.
        exclude_cosine_threshold (`float`, *optional*, defaults to `0.99`):
            Drop a row whose embedding cosine similarity to an evaluation item is at least this; `None` skips the test.
        num_proc (`int`, *optional*):
            Processes for counting tokens (`max_tokens`), as in `datasets.Dataset.map`; embedding runs in this process
            (the encoder already uses every core).
        desc (`str`, *optional*):
            Prefix of the progress bars' labels.
        load_from_cache_file (`bool`, *optional*, defaults to `True`):
            Read embeddings and token counts from the cache when there; `False` recomputes them (and rewrites the cache).
        keep_in_memory (`bool`, *optional*, defaults to `False`):
            Keep computed embeddings and token counts in memory instead of writing cache files.
        batch_size (`int`, *optional*):
            Deprecated alias of `encode_batch_size`.

    Returns:
        `datasets.Dataset` (or `DatasetDict`, or a `(subset, Manifest)` tuple with `return_manifest=True`).

    Raises:
        [`InvalidArgumentError`]: an argument of the wrong type or out of range (a NaN or infinite
            number, a bool or string for a number, a string for a flag), or one the pool cannot satisfy;
            always before the encoder loads or any vector is clustered.
    """
    if batch_size is not None:
        warnings.warn(
            "`batch_size` of diverse_select is deprecated and will be removed: it is the encoder batch, which "
            "`datasets.Dataset.map` calls otherwise. Pass `encode_batch_size=` instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        if encode_batch_size != 64 and encode_batch_size != batch_size:
            raise InvalidArgumentError(
                f"`batch_size`={batch_size!r} and `encode_batch_size`={encode_batch_size!r} disagree; pass only "
                "`encode_batch_size` (`batch_size` is its deprecated name)."
            )
        encode_batch_size = batch_size
    args = SelectArguments(
        budget=budget,
        method=method,
        k=k,
        seed=seed,
        max_tokens=max_tokens,
        tokenizer=tokenizer,
        quality_column=quality_column,
        source_column=source_column,
        temperature=temperature,
        quality_weighting=quality_weighting,
        quota=quota,
        encoder=encoder,
        encoder_revision=encoder_revision,
        embedding_column=embedding_column,
        format=format,
        text_column=text_column,
        template=template,
        include_answer=include_answer,
        dedup_threshold=dedup_threshold,
        deita_threshold=deita_threshold,
        qdit_alpha=qdit_alpha,
        k_candidates=k_candidates,
        kmeans_niter=kmeans_niter,
        encode_batch_size=encode_batch_size,
        device=device,
        cache_dir=cache_dir,
        trust_remote_code=trust_remote_code,
        exclude=exclude,
        exclude_ngram=exclude_ngram,
        exclude_ngram_threshold=exclude_ngram_threshold,
        exclude_cosine_threshold=exclude_cosine_threshold,
        num_proc=num_proc,
        desc=desc,
        load_from_cache_file=load_from_cache_file,
        keep_in_memory=keep_in_memory,
    )
    checks.check_flag(dry_run, "dry_run")
    checks.check_flag(return_manifest, "return_manifest")
    checks.check_name(split, "split")
    if isinstance(dataset, datasets.DatasetDict):
        return _select_dict(dataset, args, split=split, dry_run=dry_run, return_manifest=return_manifest)
    if split is not None:
        raise InvalidArgumentError("`split` applies to a DatasetDict; this pool is a single Dataset.")
    if isinstance(dataset, datasets.IterableDataset):
        return _select_stream(dataset, args, dry_run=dry_run, return_manifest=return_manifest)
    if not isinstance(dataset, datasets.Dataset):
        fix = " Pick one split of an IterableDatasetDict: `pool['train']`." if isinstance(dataset, datasets.IterableDatasetDict) else ""
        raise InvalidArgumentError(
            f"`dataset` must be a datasets.Dataset, DatasetDict or IterableDataset, got {type(dataset).__name__}; "
            f"wrap lists with datasets.Dataset.from_list(...).{fix}"
        )
    return _select(dataset, args, dry_run=dry_run, return_manifest=return_manifest)


def _select_dict(dataset_dict, args: SelectArguments, *, split, dry_run, return_manifest):
    if split is not None and split not in dataset_dict:
        raise InvalidArgumentError(f"`split`={split!r} is not in the DatasetDict; splits: {list(dataset_dict)}.")
    names = [split] if split is not None else list(dataset_dict)
    results, manifests = {}, {}
    for name in names:
        logger.info("Selecting from split %r", name)
        out = _select(dataset_dict[name], args, dry_run=dry_run, return_manifest=True)
        results[name], manifests[name] = out if not dry_run else (out, None)
    if dry_run:
        return results
    subset = datasets.DatasetDict({name: results.get(name, dataset_dict[name]) for name in dataset_dict})
    return (subset, manifests) if return_manifest else subset


_COSINE = " It is a cosine similarity."  # the fix named by the threshold checks


def _check_values(args: SelectArguments) -> None:
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


def _check_arguments(pool: datasets.Dataset, args: SelectArguments) -> _Checked:
    """Every cheap check, before any model or encoder is touched."""
    n = len(pool)
    if n == 0:
        raise InvalidArgumentError("The pool (`dataset`) is empty; there is nothing to select from.")
    _check_values(args)
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
    if args.exclude is not None:  # the evaluation set's type and layout, before anything is embedded
        from .decontaminate import as_dataset, exclude_render_options

        exclude_render_options(as_dataset(args.exclude), render or resolve_render_options(
            pool.column_names, **args.pick("format", "text_column", "template", "include_answer")
        ))
    return _Checked(rows=rows, render=render, quality=quality, sources=sources)


def _select(pool: datasets.Dataset, args: SelectArguments, *, dry_run: bool, return_manifest: bool):
    if pool._indices is not None:
        # Arrow-level checks and digests read the table in storage order: materialise select/shuffle first.
        pool = pool.flatten_indices()
    checked = _check_arguments(pool, args)
    if dry_run:
        return _plan(pool, args, checked)

    from .distributed import broadcast, world

    rank, world_size = world()
    embeddings, identity = pool_embeddings(
        pool,
        checked.render,
        distributed=world_size > 1,
        batch_size=args.encode_batch_size,
        **args.pick(
            "encoder", "encoder_revision", "embedding_column", "tokenizer", "device", "cache_dir",
            "trust_remote_code", "desc", "load_from_cache_file", "keep_in_memory",
        ),
    )
    keep, decontamination = None, None
    if args.exclude is not None:
        keep, decontamination = exclude_rows(pool, args, checked, embeddings)
    # Every rank embedded its share; rank 0 clusters and draws, the others take its manifest.
    manifest = _cluster_and_draw(pool, args, checked, embeddings, identity, keep, decontamination) if rank == 0 else None
    if world_size > 1:
        manifest = Manifest.from_dict(broadcast(manifest.to_dict() if manifest is not None else None))
    subset = _subset_from_manifest(pool, manifest)
    logger.info("Selected %d of %d rows with %s (k=%d)", len(subset), len(pool), args.method, manifest.k)
    return (subset, manifest) if return_manifest else subset


def _select_stream(stream: datasets.IterableDataset, args: SelectArguments, *, dry_run: bool, return_manifest: bool):
    """Select from a streamed pool: embed while streaming, cluster and draw as for a Dataset, then a second pass
    keeps the chosen rows. The temporary files live in the cache folder and are deleted at the end."""
    if dry_run:
        raise InvalidArgumentError(
            "`dry_run=True` needs the pool's size, which a streamed pool only knows once read; drop `dry_run`, "
            "or plan on a map-style sample (`datasets.Dataset.from_list(list(stream.take(n)))`)."
        )
    _check_values(args)
    from .cache import cache_dir

    os.makedirs(cache_dir(args.cache_dir), exist_ok=True)
    folder = tempfile.mkdtemp(prefix="stream-", dir=cache_dir(args.cache_dir))
    try:
        pool, vectors, identity, features = _spool_stream(stream, args, folder)
        checked = _check_arguments(pool, args)  # now with the pool's size: budget, k, quality, token counts
        embeddings = vectors if vectors is not None else embeddings_from_column(pool, args.embedding_column)
        manifest = _cluster_and_draw(pool, args, checked, embeddings, identity)
        subset = _chosen_rows(stream, manifest, features, pool, _read_columns(args, checked.render))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    logger.info("Selected %d of %d streamed rows with %s (k=%d)", len(subset), manifest.pool["num_rows"], args.method, manifest.k)
    return (subset, manifest) if return_manifest else subset


def _spool_stream(stream, args: SelectArguments, folder: str):
    """Pass one: every batch is checked, embedded (float16) and written with the columns the selection reads.

    Returns `(pool of the read columns, StoredVectors or None, encoder identity or None, the stream's features)`.
    """
    from datasets.arrow_writer import ArrowWriter
    from datasets.utils import tqdm as hf_tqdm

    from .render import check_text_to_embed

    columns_path, vectors_path = os.path.join(folder, "columns.arrow"), os.path.join(folder, "vectors.arrow")
    writer = vector_writer = encode = identity = features = render = None
    n = 0
    try:
        with hf_tqdm(desc="Embedding the streamed pool", unit=" examples") as bar:
            for batch in stream.iter(batch_size=STREAM_BATCH):
                size = len(next(iter(batch.values())))
                if writer is None:
                    head = datasets.Dataset.from_dict(batch, features=stream.features)
                    features = head.features
                    # The first batch stands in for the pool in every check that does not need its size.
                    render = _check_arguments(head, _probe_arguments(args)).render
                    read = _read_columns(args, render)
                    writer = ArrowWriter(path=columns_path, features=datasets.Features({c: features[c] for c in read}))
                    if args.embedding_column is None:
                        vector_writer = ArrowWriter(path=vectors_path)
                        encode, identity = batch_encoder(
                            args.encoder, render, **args.pick("tokenizer", "device", "trust_remote_code"),
                            batch_size=args.encode_batch_size, revision=args.encoder_revision,
                        )
                part = datasets.Dataset.from_dict({c: batch[c] for c in read}, features=writer._features).data.table
                if encode is not None:
                    check_text_to_embed(part, render)
                    vector_writer.write_batch({"embedding": encode.batch(part.to_pydict(), first_row=n)})
                writer.write_table(part)
                n += size
                bar.update(size)
        if writer is None:
            raise InvalidArgumentError("The pool (`dataset`) is empty; there is nothing to select from.")
        writer.finalize()
        if vector_writer is not None:
            vector_writer.finalize()
    finally:
        for w in (writer, vector_writer):
            if w is not None:
                w.close()
    info = stream.info.copy()
    info.features = None  # the file holds the read columns only; its own schema says which
    pool = datasets.Dataset.from_file(columns_path, info=info)
    vectors = None
    if vector_writer is not None:
        vectors = StoredVectors(datasets.Dataset.from_file(vectors_path).data.table.column("embedding"))
        if getattr(args.encoder, "projection", None) is not None:  # fitted on the whole pool, as embed_dataset does
            vectors = args.encoder.project(np.asarray(vectors))
    return pool, vectors, identity, features


def _probe_arguments(args: SelectArguments) -> SelectArguments:
    """`args` for checking the first batch of a stream: a row budget or `k` above one batch is judged later."""
    def fits(value):
        return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1

    return replace(args, budget=1 if fits(args.budget) else args.budget, k=1 if fits(args.k) else args.k)


def _chosen_rows(stream, manifest: Manifest, features, pool: datasets.Dataset, read: list[str]) -> datasets.Dataset:
    """Pass two: keep the chosen rows (all columns), in pool order, and check they are the rows pass one saw."""
    from datasets.utils import tqdm as hf_tqdm

    chosen = np.asarray(manifest.selected_indices, dtype=np.int64)  # ascending
    parts, seen = [], 0
    with hf_tqdm(total=manifest.pool["num_rows"], desc="Keeping the chosen rows", unit=" examples") as bar:
        for batch in stream.iter(batch_size=STREAM_BATCH):
            size = len(next(iter(batch.values())))
            lo, hi = np.searchsorted(chosen, [seen, seen + size])
            if hi > lo:
                rows = (chosen[lo:hi] - seen).tolist()
                parts.append(datasets.Dataset.from_dict({c: [v[i] for i in rows] for c, v in batch.items()}, features=features))
            seen += size
            bar.update(size)
    subset = datasets.concatenate_datasets(parts) if parts else datasets.Dataset.from_dict({}, features=features)
    if seen != manifest.pool["num_rows"] or pool_digest(subset, read) != pool_digest(pool.select(chosen), read):
        raise IdselError(
            f"The streamed pool gave other rows on its second pass ({seen} rows, {manifest.pool['num_rows']} on the "
            "first, or other content at the chosen positions): the selection needs a stream that repeats itself. "
            "Do not shuffle it (or fix its seed and epoch), or load it as a map-style Dataset."
        )
    subset = subset.add_column("source_index", chosen.tolist())
    return subset.add_column("cluster", list(manifest.selected_clusters))


def _subset_from_manifest(pool: datasets.Dataset, manifest: Manifest) -> datasets.Dataset:
    return selection_subset(pool, manifest.selected_indices, manifest.selected_clusters)


def exclude_rows(pool, args: SelectArguments, checked: _Checked, embeddings) -> tuple[np.ndarray, dict]:
    """The decontamination keep mask over `pool` and its record (see [`decontaminate.decontaminate_pool`])."""
    render = checked.render
    if render is None:  # precomputed vectors and a row budget: the n-gram test still reads the pool's text
        render = resolve_render_options(pool.column_names, **args.pick("format", "text_column", "template", "include_answer"))
    return decontaminate_pool(
        pool, args.exclude, render, embeddings, ngram=args.exclude_ngram, ngram_threshold=args.exclude_ngram_threshold,
        cosine_threshold=args.exclude_cosine_threshold, batch_size=args.encode_batch_size,
        desc=" ".join(filter(None, (args.desc, "Evaluation set:"))),
        **args.pick(
            "encoder", "encoder_revision", "embedding_column", "tokenizer", "device", "cache_dir", "trust_remote_code",
            "load_from_cache_file", "keep_in_memory",
        ),
    )


def _cluster_and_draw(
    pool, args: SelectArguments, checked: _Checked, embeddings, identity, keep=None, decontamination=None
) -> Manifest:
    full_pool = pool
    rows_kept = None
    if keep is not None:
        # Decontamination drops rows before clustering: cluster and draw on the rows left, then map back to pool rows.
        rows_kept = np.flatnonzero(keep)
        pool, embeddings = pool.select(rows_kept).flatten_indices(), embeddings[rows_kept]
        quality = checked.quality[rows_kept] if checked.quality is not None else None
        budget_rows = sample.resolve_budget(args.budget, len(pool)) if args.budget is not None else None
        if not isinstance(args.k, str) and args.k > len(pool):
            raise InvalidArgumentError(
                f"`k`={args.k} is more than the {len(pool)} rows left after decontamination; lower k or use k='auto'."
            )
        checked = _Checked(rows=budget_rows, render=checked.render, quality=quality)
    clustering, k_selection = cluster_pool(
        embeddings, args.k, k_candidates=args.k_candidates, budget=checked.rows, seed=args.seed, kmeans_niter=args.kmeans_niter
    )
    rows = checked.rows

    eligible, dedup = None, None
    if args.dedup_threshold is not None:
        eligible = dedup_mask(embeddings, args.dedup_threshold, quality=checked.quality)
        dedup = {"threshold": args.dedup_threshold, "removed": int((~eligible).sum())}
        logger.info("De-duplication removed %d near-duplicate rows", dedup["removed"])
        if rows is not None and rows > int(eligible.sum()):
            raise InvalidArgumentError(
                f"`budget`={rows} rows is more than the {int(eligible.sum())} rows left after de-duplication "
                f"(dedup_threshold={args.dedup_threshold}); lower the budget or raise the threshold."
            )

    inputs = methods.DrawInputs(
        embeddings, clustering, args.seed, quality=checked.quality, eligible=eligible, sources=checked.sources
    )
    budget = {"requested": args.budget, "rows": rows}
    if rows is not None:
        indices = methods.draw(inputs, rows, args)
    else:
        lengths = token_lengths(
            pool, checked.render, args.tokenizer, cache_dir=args.cache_dir,
            **args.pick("desc", "num_proc", "load_from_cache_file", "keep_in_memory"),
        )
        order = methods.token_order(inputs, args)
        indices = sample.token_prefix(order, lengths, args.max_tokens)
        if len(indices) == 0:
            raise InvalidArgumentError(
                f"`max_tokens`={args.max_tokens} is smaller than the first row chosen ({int(lengths[order[0]])} tokens)."
            )
        budget.update(
            rows=len(indices),
            max_tokens=args.max_tokens,
            tokens=int(lengths[indices].sum()),
            tokenizer=getattr(args.tokenizer, "name_or_path", type(args.tokenizer).__name__),
        )

    labels = clustering.labels[indices]
    descriptions = _describe_clusters(pool, args, checked, clustering)
    if rows_kept is not None:
        indices = rows_kept[indices]
        for description in descriptions or ():
            description["example_rows"] = rows_kept[description["example_rows"]].tolist()
    return Manifest(
        pool=pool_record(full_pool, _read_columns(args, checked.render)),
        arguments=args.to_manifest_dict(identity),
        method=args.method,
        seed=int(args.seed),
        k=int(clustering.k),
        k_selection=k_selection,
        budget=budget,
        cluster_sizes=clustering.sizes.tolist(),
        selected_per_cluster=np.bincount(labels, minlength=clustering.k).tolist(),
        selected_indices=indices.astype(np.int64).tolist(),
        selected_clusters=labels.astype(np.int64).tolist(),
        selected_digest=indices_digest(indices),
        render=checked.render.to_dict() if checked.render is not None else None,
        encoder=encoder_record(identity, args.embedding_column, embeddings.shape[1]),
        dedup=dedup,
        decontamination=decontamination,
        cluster_map=centroid_map(clustering.centroids),
        cluster_descriptions=descriptions,
    )


def _describe_clusters(pool, args: SelectArguments, checked: _Checked, clustering) -> list[dict] | None:
    """Each cluster's terms and representative rows, from the rows as they were embedded; with precomputed
    vectors, from the text layout the pool's columns show (`None` when they show none)."""
    render = checked.render
    if render is None:
        try:
            render = resolve_render_options(pool.column_names, **args.pick("format", "text_column", "template", "include_answer"))
            validate_columns(pool.data.table, render)
        except InvalidArgumentError as err:
            logger.info("The clusters are not described: the pool has no text to describe them by (%s)", err)
            return None
    return describe_pool(pool, render, clustering, seed=args.seed)


def pool_embeddings(
    pool: datasets.Dataset,
    options,
    *,
    encoder: Any = DEFAULT_ENCODER,
    encoder_revision: str | None = None,
    embedding_column: str | None = None,
    tokenizer: Any = None,
    batch_size: int = 64,
    device: str | None = None,
    cache_dir: str | None = None,
    trust_remote_code: bool = False,
    distributed: bool = False,
    **map_kwargs,
):
    """`(embeddings, ModelIdentity or None)`: the encoder's vectors (cached as float16, returned as
    [`~cache.StoredVectors`] read from the cache file) or `embedding_column`'s (see [`embeddings_from_column`]).

    `map_kwargs` (`desc`, `load_from_cache_file`, `keep_in_memory`) are passed to [`embed.embed_dataset`].

    With `distributed=True` every launched process must call this: each embeds its share.
    """
    if embedding_column is not None:
        return embeddings_from_column(pool, embedding_column), None
    return embed_dataset(
        pool,
        options,
        encoder=encoder,
        revision=encoder_revision,
        tokenizer=tokenizer,
        batch_size=batch_size,
        device=device,
        cache_dir=cache_dir,
        trust_remote_code=trust_remote_code,
        distributed=distributed,
        **map_kwargs,
        stored=True,
    )


def cluster_pool(embeddings: np.ndarray, k, *, k_candidates=None, budget=None, seed: int = 0, kmeans_niter: int = 20):
    """k-means on the pool's vectors, choosing k by silhouette when `k="auto"` (or `"auto-global"`), under the row
    `budget` when known; returns `(Clustering, k_selection)`."""
    if isinstance(k, str) and k in AUTO_K:
        # The search already clustered the whole pool at the chosen k: that clustering is the result.
        chosen = choose_k(embeddings, k_candidates, budget=budget, rule=AUTO_K[k], seed=seed, niter=kmeans_niter)
        return chosen.clustering, chosen.record()
    warn_if_k_near_budget(k, budget)
    return kmeans(embeddings, k, seed=seed, niter=kmeans_niter), {"mode": "fixed"}


def dedup_mask(embeddings: np.ndarray, threshold: float, *, quality: np.ndarray | None = None) -> np.ndarray:
    """Rows to keep: visiting rows by descending quality (or pool order), drop each row whose cosine
    similarity to an already kept row is >= `threshold`."""
    n = len(embeddings)
    order = np.arange(n) if quality is None else np.lexsort((np.arange(n), -quality))
    kept = baselines.greedy_diverse_filter(embeddings, order, threshold)
    mask = np.zeros(n, dtype=bool)
    mask[kept] = True
    return mask


def _read_columns(args: SelectArguments, render: RenderOptions | None) -> list[str]:
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


def _plan(pool, args: SelectArguments, checked: _Checked) -> SelectionPlan:
    n = len(pool)
    dim = None
    cached = False
    encoder_id = None
    embed_seconds = 0.0
    if args.embedding_column is not None:
        first = pool.data.table.column(args.embedding_column).slice(0, 1).to_pylist()[0]
        dim = len(first)
    else:
        static = is_static(args.encoder)
        # A dry run never builds the static encoder's weights (minutes): unbuilt, nothing can be cached either.
        identity = built_static_identity(args.encoder, args.encoder_revision) if static else encoder_identity(
            args.encoder, args.encoder_revision
        )
        encoder_id = identity.id if identity is not None else args.encoder
        key = embedding_cache_key(pool, identity, checked.render) if identity is not None else None
        cached = key is not None and os.path.exists(cache_file("embeddings", key, args.cache_dir))
        dim = 384 if encoder_id == DEFAULT_ENCODER else 256 if args.encoder == STATIC_PREFIX else None
        if not cached:
            sample_rows = pool.select(range(min(n, 256)))
            chars = [len(p) + len(q) for p, q in zip(*_render_sample(sample_rows, checked.render))]
            tokens = min(float(np.mean(chars)) / 4.0, 256.0)
            embed_seconds = n * (_CPU_SECONDS_PER_TEXT + tokens * _CPU_SECONDS_PER_TOKEN)
            if static:
                embed_seconds = n * _STATIC_CPU_SECONDS_PER_ROW + (_STATIC_BUILD_CPU_SECONDS if identity is None else 0.0)
            elif encoder_id.startswith(hidden_states.PREFIX):
                embed_seconds *= _HIDDEN_STATES_CPU_FACTOR
    d = dim or 768
    k = args.k
    candidates = None
    if isinstance(k, str) and k in AUTO_K:
        candidates = args.k_candidates or default_k_candidates(n, checked.rows, rule=AUTO_K[k])
        tried = candidates
        if not args.k_candidates:  # coarse-to-fine: the powers of two, then at most two midpoints (bounded by the largest)
            tried = [c for c in candidates if c & (c - 1) == 0] + sorted(c for c in candidates if c & (c - 1))[-2:]
        if AUTO_K[k] == "paper":  # the top candidates again with a second seed (bounded by the largest)
            tried = tried + sorted(candidates)[-3:]
        k_fit = max(candidates)
    else:
        k_fit, tried = k, [k]
    train_rows = min(n, 256 * k_fit)
    # Each candidate is a k-means of the whole pool (fit on up to 256 rows a centroid, every row assigned); with
    # k="auto" the chosen candidate's clustering is the result.
    cluster_seconds = sum(min(n, 256 * c) * c * d * args.kmeans_niter + n * c * d for c in tried) * _KMEANS_SECONDS_PER_UNIT
    # float16 vectors (the cache, a float16 column) are read a chunk at a time; others are copied whole to float32.
    stored = args.embedding_column is None or (
        getattr(getattr(pool.features[args.embedding_column], "feature", None), "dtype", None) == "float16"
    )
    matrix = n * d * 2 + 65536 * d * 4 if stored else n * d * 4 * 2
    memory = matrix + train_rows * d * 4 + n * 16
    return SelectionPlan(
        pool_rows=n,
        budget_rows=checked.rows,
        max_tokens=args.max_tokens,
        method=args.method,
        k=k,
        k_candidates=candidates,
        encoder=encoder_id,
        embeddings_cached=cached,
        dim=dim,
        estimated_embedding_seconds=round(embed_seconds, 1),
        estimated_clustering_seconds=round(cluster_seconds, 2),
        estimated_peak_memory_bytes=int(memory),
    )


def _render_sample(rows: datasets.Dataset, options):
    from .render import render_batch

    return render_batch(rows[:], options)


def load_selection(
    manifest,
    pool: datasets.Dataset | None = None,
    *,
    config: str | None = None,
    revision: str | None = None,
    token=None,
    recompute: bool = False,
    **overrides,
):
    """Rebuild the subset a manifest describes from its pool: exactly the recorded rows, or an error.

    What is checked: the manifest's fields (types, ranges, consistency) and the digests of its row ids
    and cluster ids; the pool's size; the content of every column of `pool` against the digests the
    manifest records, so each column of the returned subset is the one the selection saw (a changed
    column is named). A column the manifest does not record is refused: leave it out of `pool`.

    A manifest written before hf_idsel recorded column and cluster digests (format_version 1) is still
    loaded and gives the same rows: its digests cover the row ids and the columns the selection read
    (the text, or the vectors of `embedding_column`, and `quality_column`), not the other columns nor
    the cluster ids; those are returned with a logged warning naming them (`recompute=True` checks the
    cluster ids). Digests are checksums, not signatures: they catch a changed pool or a corrupt or
    edited manifest field, not a manifest whose fields and digests were rewritten together.

    Nothing in a manifest turns on `trust_remote_code` or chooses code to run: with `recompute=True`,
    `trust_remote_code` is only what you pass, and an encoder the manifest names (other than the
    default, which `diverse_select` uses anyway) is loaded only when you pass it as `encoder=`.

    Args:
        manifest (`Manifest`, `dict`, `str`):
            A manifest, the path of its JSON file (or a folder holding `manifest.json`), or the id
            of a Hub dataset repo made by `push_selection` or `IterativeSelectionTrainer`.
        pool (`datasets.Dataset`, *optional*):
            The pool the selection was made on. Default: the pool the manifest names (the built-in
            pool, or the Hub dataset given as `pool_id` when the selection was pushed).
        config (`str`, *optional*):
            For a Hub repo: the config to rebuild (`"round_2"`); default: the repo's default config.
        revision (`str`, *optional*):
            For a Hub repo: the revision to read the manifest from.
        token (`str`, *optional*):
            Hub token for private repos.
        recompute (`bool`, *optional*, defaults to `False`):
            Re-run the whole selection (embed, cluster, sample) with the manifest's arguments and
            check that it gives the same rows and cluster ids, instead of taking the recorded ones.
        overrides:
            With `recompute=True` only: the arguments of the re-run that are yours, not the manifest's:
            `tokenizer`, `device`, `cache_dir`, `encode_batch_size` and the map settings (not recorded), `exclude` (the
            evaluation set, required when the manifest records a decontamination), `trust_remote_code`
            (never taken from a manifest; defaults to `False`), and `encoder` / `encoder_revision`.
            Passing `encoder=` is your consent to load that encoder: a manifest that names another
            encoder than the default is re-run only with it (`encoder_revision` defaults to the
            manifest's when you pass the encoder it names).

    Returns:
        `datasets.Dataset`: the subset, with `source_index` and `cluster`.

    Raises:
        [`InvalidArgumentError`]: no such manifest, a malformed one, a bad argument, or a re-run that needs
            your consent (the message says what to pass).
        [`SelectionMismatchError`]: the pool, or the manifest's rows or cluster ids, differ from what the
            manifest records; the message names what changed.
    """
    if not isinstance(recompute, bool):
        raise InvalidArgumentError(f"`recompute`={recompute!r} must be True or False.")
    if overrides and not recompute:
        raise InvalidArgumentError(
            f"{sorted(overrides)} only apply to a re-run: pass `recompute=True`, or leave them out."
        )
    manifest = _read_manifest(manifest, config=config, revision=revision, token=token)
    manifest.check_integrity()
    replay = _replay_arguments(manifest, overrides) if recompute else None
    if pool is None:
        pool = _load_recorded_pool(manifest, token)
    if not isinstance(pool, datasets.Dataset):
        raise InvalidArgumentError(f"`pool` must be a datasets.Dataset, got {type(pool).__name__}.")
    clash = [c for c in ADDED_COLUMNS if c in pool.column_names]
    if clash:
        raise InvalidArgumentError(
            f"`pool` has column(s) {clash} that the subset adds: pass the pool the selection was made on, not a subset."
        )
    if pool._indices is not None:
        pool = pool.flatten_indices()
    manifest.check_pool(pool)
    if recompute:
        return _recompute(manifest, pool, replay)
    return _subset_from_manifest(pool, manifest)


# What `load_selection(..., recompute=True)` takes from its caller rather than from the manifest.
_CALLER_ARGUMENTS = (*_NOT_RECORDED, "batch_size", "encoder", "encoder_revision", "trust_remote_code")


def _replay_arguments(manifest: Manifest, overrides: dict) -> dict:
    """The `diverse_select` arguments of a re-run: the manifest's, but never its `trust_remote_code`, and
    its encoder only when it is the default or the caller passes it."""
    not_theirs = sorted(set(overrides) - set(_CALLER_ARGUMENTS))
    if not_theirs:
        raise InvalidArgumentError(
            f"load_selection(..., recompute=True) got {not_theirs}: the re-run takes the manifest's arguments; "
            f"only {list(_CALLER_ARGUMENTS)} may be passed."
        )
    if manifest.method not in methods.METHODS:
        raise InvalidArgumentError(
            f"`recompute=True`: a {manifest.method!r} selection depends on a training run and cannot be re-run "
            "here; load it without recompute (the recorded rows are checked against their digest)."
        )
    if manifest.decontamination is not None and overrides.get("exclude") is None:
        raise InvalidArgumentError(
            f"{manifest.origin} dropped {manifest.decontamination['removed']} pool rows matching an evaluation set "
            f"({manifest.decontamination['exclude'].get('name') or 'unnamed'}, "
            f"{manifest.decontamination['exclude'].get('num_rows')} rows) before clustering: pass that set again as "
            "`exclude=` to re-run it, or load without `recompute`."
        )
    recorded = dict(manifest.arguments)
    if recorded.get("k") == "auto" and manifest.k_selection.get("mode") == "auto" and "rule" not in manifest.k_selection:
        recorded["k"] = "auto-global"  # written before k="auto" followed the paper's range: the search it ran
    known = {f.name for f in fields(SelectArguments)} - set(_NOT_RECORDED)
    unknown = sorted(set(recorded) - known)
    if unknown:
        raise InvalidArgumentError(
            f"{manifest.origin} records {unknown} among its `arguments`, which diverse_select does not record: the "
            "file was edited or not written by diverse_select. Load it without `recompute`."
        )
    for name in ("method", "seed"):
        if name in recorded and recorded[name] != getattr(manifest, name):
            raise InvalidArgumentError(
                f"{manifest.origin} records `arguments.{name}`={recorded[name]!r} but `{name}`={getattr(manifest, name)!r}: "
                "the file was edited. Load it without `recompute` (the recorded rows are checked against their digests)."
            )
    if recorded.pop("trust_remote_code", False) is not False and "trust_remote_code" not in overrides:
        logger.warning(
            "%s asks for trust_remote_code; ignored: hf_idsel never takes trust_remote_code from a manifest. "
            "Pass trust_remote_code=True to load_selection yourself if you trust the encoder's code.",
            manifest.origin,
        )
    encoder = recorded.pop("encoder", DEFAULT_ENCODER)
    encoder_revision = recorded.pop("encoder_revision", None)
    if "encoder" in overrides:
        same = isinstance(overrides["encoder"], str) and overrides["encoder"] == encoder
        if same and "encoder_revision" not in overrides:
            recorded["encoder_revision"] = encoder_revision
        if same and encoder.startswith(hidden_states.PREFIX) and (manifest.encoder or {}).get("id") == encoder:
            # The string names the model; the layer, pooling and projection the run used are in the manifest.
            overrides = {**overrides, "encoder": hidden_states.from_manifest_record(
                manifest.encoder, revision=overrides.get("encoder_revision", encoder_revision),
                device=overrides.get("device"), trust_remote_code=bool(overrides.get("trust_remote_code", False)),
            )}
    elif recorded.get("embedding_column") is None and (encoder != DEFAULT_ENCODER or encoder_revision is not None):
        at = f" at revision {encoder_revision!r}" if encoder_revision is not None else ""
        raise InvalidArgumentError(
            f"`recompute=True` would load the encoder {encoder!r}{at} that {manifest.origin} names, and "
            "load_selection loads no encoder a manifest chooses without your consent. If you trust it, pass it "
            f"yourself: `load_selection(..., recompute=True, encoder={encoder!r}"
            f"{f', encoder_revision={encoder_revision!r}' if encoder_revision is not None else ''})`. Or load "
            "without `recompute` (the recorded rows are checked against their digests)."
        )
    return {**recorded, **overrides}


def _recompute(manifest: Manifest, pool: datasets.Dataset, arguments: dict) -> datasets.Dataset:
    from .errors import SelectionMismatchError

    try:
        subset, again = diverse_select(pool, return_manifest=True, **arguments)
    except InvalidArgumentError as err:
        raise InvalidArgumentError(f"Re-running the selection of {manifest.origin} (recompute=True): {err}") from err
    if again.selected_digest != manifest.selected_digest or again.selected_clusters != manifest.selected_clusters:
        what = "rows" if again.selected_digest != manifest.selected_digest else "cluster ids"
        raise SelectionMismatchError(
            f"Re-running the selection gave different {what} than {manifest.origin} records "
            f"({again.selected_digest[:19]}... vs {manifest.selected_digest[:19]}...). Library versions then: "
            f"{manifest.versions}; now: {again.versions}."
        )
    return subset


def _read_manifest(source, *, config, revision, token) -> Manifest:
    if not isinstance(source, str) or source.lstrip().startswith("{") or _is_local_path(source):
        for name, value in (("config", config), ("revision", revision)):
            if value is not None:
                raise InvalidArgumentError(
                    f"`{name}` only applies to a Hub repo id; for a local manifest pass its path and leave `{name}` out."
                )
        if isinstance(source, str) and not source.lstrip().startswith("{") and not os.path.exists(source):
            folder = source.split("/")[0]
            why = f" (read as a local path: the folder {folder!r} exists here)" if os.path.isdir(folder) else ""
            raise InvalidArgumentError(
                f"`manifest`={source!r}: no such local file or folder{why}. Check the path: pass a manifest.json, a "
                "folder holding one, or the id 'namespace/name' of a Hub dataset repo."
            )
        return Manifest.load(source)
    from huggingface_hub import hf_hub_download

    from .hub_layout import DEFAULT_CONFIG, manifest_path
    from .publish import redact

    if config is not None and not isinstance(config, str):
        raise InvalidArgumentError(f"`config`={config!r} must be a config name such as 'round_2'.")
    filename = manifest_path(config or DEFAULT_CONFIG)
    try:
        path = hf_hub_download(source, filename, repo_type="dataset", revision=revision, token=token)
    except Exception as err:
        raise InvalidArgumentError(
            f"`manifest`={source!r} is no local file or folder, and reading {filename} from the dataset repo "
            f"{source!r}{f' (config {config!r})' if config else ''} failed: "
            f"{redact(str(err).splitlines()[0] if str(err) else type(err).__name__, token)}. "
            "Check the path, or the repo id, the config name (round_1, round_2, ... or the default) and your token."
        ) from None
    return Manifest.load(path, origin=f"{filename} of the dataset repo {source!r}")


def _is_local_path(source: str) -> bool:
    """Whether `source` names a local manifest (existing or not) rather than a Hub repo id `namespace/name`."""
    from .publish import check_repo_id

    if os.path.exists(source):
        return True
    try:
        check_repo_id(source)
    except InvalidArgumentError:
        return True  # not `namespace/name`: `./x`, `/x`, `~/x`, `a/b/c`, `manifest.jsn`
    # `selection/manifst.json`, `selection/run2`: a mistyped file or folder under a local folder.
    return source.lower().endswith(".json") or os.path.isdir(source.split("/")[0])


def _load_recorded_pool(manifest: Manifest, token) -> datasets.Dataset:
    from .errors import IdselError
    from .pool import BUILTIN_POOL, BUILTIN_POOL_NAME, load_pool

    source = manifest.pool.get("source") or {}
    path = source.get("path")
    if path is None and manifest.pool.get("name") == BUILTIN_POOL_NAME:
        path = BUILTIN_POOL
    if path is None:
        raise InvalidArgumentError(
            f"{manifest.origin} does not say where its pool lives: pass `pool=` (the dataset the selection was made on)."
        )
    try:
        return load_pool(
            path, split=source.get("split") or "train", config=source.get("config"), revision=source.get("revision"),
            token=token, source_argument="the manifest's pool", split_argument="the manifest's pool split",
        )
    except IdselError:
        raise
    except Exception as err:
        from .publish import redact

        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidArgumentError(
            f"Could not load the pool {path!r} that {manifest.origin} names: {redact(message, token)}. "
            "Pass `pool=` (the dataset the selection was made on)."
        ) from err
