"""diverse_select: render -> embed -> cluster -> sample -> subset + manifest.

Every argument is checked before the encoder loads. The subset keeps all pool columns and adds
`source_index` (row in the pool) and `cluster` (its k-means cluster).
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from dataclasses import asdict, dataclass
from typing import Any

import datasets
import numpy as np

from . import baselines, sample
from .cache import cache_file
from .cluster import Clustering, choose_k, default_k_candidates, kmeans
from .embed import DEFAULT_ENCODER, embed_dataset, embedding_cache_key, embeddings_from_column, encoder_identity
from .errors import InvalidArgumentError
from .manifest import Manifest, encoder_record, indices_digest, pool_record, remember_manifest, selection_subset
from .render import resolve_render_options, token_lengths, validate_columns

logger = logging.getLogger(__name__)

ADDED_COLUMNS = ("source_index", "cluster")
# Throughput of all-MiniLM-L6-v2 measured on 2 CPU cores, for dry-run estimates.
_CPU_SECONDS_PER_TEXT = 1 / 800
_CPU_SECONDS_PER_TOKEN = 1 / 12_000
_KMEANS_SECONDS_PER_UNIT = 6.6e-12  # per (training row x k x dim x iteration) with faiss on that CPU


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
        k = self.k if self.k != "auto" else f"auto (silhouette over {self.k_candidates})"
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
    batch_size: int = 64,
    device: str | None = None,
    cache_dir: str | None = None,
    split: str | None = None,
    dry_run: bool = False,
    return_manifest: bool = False,
    trust_remote_code: bool = False,
):
    """Choose a diverse subset of an instruction pool (Diversify and Conquer, arXiv 2409.11378).

    Embeds every row, clusters the embeddings with k-means and draws the budget cluster by cluster.

    Args:
        dataset (`datasets.Dataset` or `datasets.DatasetDict`):
            The pool. For a `DatasetDict`, every split is selected independently, or only `split`.
        budget (`int` or `float`):
            Rows to select (int), or a fraction of the pool in (0, 1] (float). The result has exactly
            this many rows. Leave `None` and pass `max_tokens` for a token budget.
        method (`str`, *optional*, defaults to `"kmq"`):
            `"kmq"` (size-proportional cluster quotas, quality-weighted draw inside a cluster),
            `"kmeans-random"`, `"kmeans-closest"`, `"random"`, or the baselines `"kcenter"`, `"deita"`, `"qdit"`.
        k (`int` or `"auto"`, *optional*, defaults to `"auto"`):
            Number of clusters; `"auto"` picks it by silhouette score on a sample (the paper's guidance).
        seed (`int`, *optional*, defaults to `0`):
            Seeds k-means and every draw; same data, arguments and seed give the same rows.
        max_tokens (`int`, *optional*):
            Token budget instead of rows: the selection's total tokens (measured with `tokenizer`,
            chat template included) stay within it. For the ordered methods (kmq, kmeans-*, random).
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            Measures tokens for `max_tokens`, and renders chat rows with its chat template.
        quality_column (`str`, *optional*):
            Per-row quality (higher is better), e.g. from [`score_quality`] or Deita scores.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of the in-cluster draw: p ~ exp(quality / temperature).
        quality_weighting (`str`, *optional*, defaults to `"softmax"`):
            `"softmax"` or `"linear"` (p ~ quality; needs non-negative values).
        quota (`str`, *optional*, defaults to `"proportional"`):
            Cluster quotas proportional to cluster size (the paper) or `"equal"` (the research code).
        encoder (`str` or `SentenceTransformer`, *optional*, defaults to `"sentence-transformers/all-MiniLM-L6-v2"`):
            Sentence encoder; the default resolves to the packaged offline copy when installed.
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
        qdit_alpha (`float`, *optional*, defaults to `0.5`):
            `"qdit"`: weight of quality against facility-location diversity.
        k_candidates (`list[int]`, *optional*):
            Candidate k values for `k="auto"`.
        kmeans_niter (`int`, *optional*, defaults to `20`):
            k-means iterations.
        batch_size (`int`, *optional*, defaults to `64`):
            Encoder batch size.
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

    Returns:
        `datasets.Dataset` (or `DatasetDict`, or a `(subset, Manifest)` tuple with `return_manifest=True`).
    """
    arguments = {
        name: value for name, value in locals().items() if name not in ("dataset", "split", "dry_run", "return_manifest")
    }
    if isinstance(dataset, datasets.DatasetDict):
        return _select_dict(dataset, arguments, split=split, dry_run=dry_run, return_manifest=return_manifest)
    if split is not None:
        raise InvalidArgumentError("`split` applies to a DatasetDict; this pool is a single Dataset.")
    if not isinstance(dataset, datasets.Dataset):
        raise InvalidArgumentError(
            f"`dataset` must be a datasets.Dataset or DatasetDict, got {type(dataset).__name__}; "
            "wrap lists with datasets.Dataset.from_list(...)."
        )
    return _select(dataset, dry_run=dry_run, return_manifest=return_manifest, **arguments)


def _select_dict(dataset_dict, arguments, *, split, dry_run, return_manifest):
    if split is not None and split not in dataset_dict:
        raise InvalidArgumentError(f"`split`={split!r} is not in the DatasetDict; splits: {list(dataset_dict)}.")
    names = [split] if split is not None else list(dataset_dict)
    results, manifests = {}, {}
    for name in names:
        logger.info("Selecting from split %r", name)
        out = _select(dataset_dict[name], dry_run=dry_run, return_manifest=True, **arguments)
        results[name], manifests[name] = out if not dry_run else (out, None)
    if dry_run:
        return results
    subset = datasets.DatasetDict({name: results.get(name, dataset_dict[name]) for name in dataset_dict})
    return (subset, manifests) if return_manifest else subset


def _check_arguments(pool: datasets.Dataset, a: dict):
    """Every cheap check, before any model or encoder is touched. Returns (rows, options, quality)."""
    n = len(pool)
    if n == 0:
        raise InvalidArgumentError("The pool (`dataset`) is empty; there is nothing to select from.")
    if a["method"] not in sample.METHODS:
        raise InvalidArgumentError(f"Unknown `method`={a['method']!r}; choose one of {list(sample.METHODS)}.")
    if (a["budget"] is None) == (a["max_tokens"] is None):
        raise InvalidArgumentError("Pass exactly one of `budget` (rows or fraction) and `max_tokens` (token budget).")
    rows = sample.resolve_budget(a["budget"], n) if a["budget"] is not None else None
    if a["max_tokens"] is not None:
        if isinstance(a["max_tokens"], bool) or not isinstance(a["max_tokens"], numbers.Integral) or a["max_tokens"] < 1:
            raise InvalidArgumentError(f"`max_tokens`={a['max_tokens']!r} must be a positive int.")
        if a["tokenizer"] is None:
            raise InvalidArgumentError("`max_tokens` needs `tokenizer=` (the one you will train with) to count tokens.")
        if a["method"] not in sample.ORDERED_METHODS:
            raise InvalidArgumentError(
                f"`max_tokens` works with methods {list(sample.ORDERED_METHODS)}; for {a['method']!r} pass a row `budget`."
            )
    if isinstance(a["seed"], bool) or not isinstance(a["seed"], numbers.Integral) or a["seed"] < 0:
        raise InvalidArgumentError(f"`seed`={a['seed']!r} must be a non-negative int.")
    k = a["k"]
    if k == "auto":
        if a["k_candidates"] is not None and (
            not a["k_candidates"] or any(not isinstance(c, numbers.Integral) or c < 2 for c in a["k_candidates"])
        ):
            raise InvalidArgumentError(f"`k_candidates`={a['k_candidates']!r} must be a non-empty list of ints >= 2.")
    elif isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise InvalidArgumentError(f"`k`={k!r} must be an int or 'auto'.")
    elif not 1 <= k <= n:
        raise InvalidArgumentError(f"`k`={k} must be between 1 and the number of rows ({n}); try k='auto'.")
    if a["quality_weighting"] not in sample.QUALITY_WEIGHTINGS:
        raise InvalidArgumentError(
            f"`quality_weighting`={a['quality_weighting']!r}; choose one of {list(sample.QUALITY_WEIGHTINGS)}."
        )
    if a["quota"] not in sample.QUOTA_RULES:
        raise InvalidArgumentError(f"`quota`={a['quota']!r}; choose one of {list(sample.QUOTA_RULES)}.")
    if not (isinstance(a["temperature"], numbers.Real) and a["temperature"] > 0 and math.isfinite(a["temperature"])):
        raise InvalidArgumentError(f"`temperature`={a['temperature']!r} must be a positive number.")
    if a["dedup_threshold"] is not None and not 0 < a["dedup_threshold"] <= 1:
        raise InvalidArgumentError(f"`dedup_threshold`={a['dedup_threshold']} must be in (0, 1] (a cosine similarity).")
    if not 0 < a["deita_threshold"] <= 1:
        raise InvalidArgumentError(f"`deita_threshold`={a['deita_threshold']} must be in (0, 1] (a cosine similarity).")
    if not 0 <= a["qdit_alpha"] <= 1:
        raise InvalidArgumentError(f"`qdit_alpha`={a['qdit_alpha']} must be in [0, 1].")
    if a["method"] == "deita" and a["quality_column"] is None:
        raise InvalidArgumentError(
            "method='deita' ranks rows by quality: pass `quality_column=` (e.g. after hf_idsel.score_quality(pool))."
        )
    clash = [c for c in ADDED_COLUMNS if c in pool.column_names]
    if clash:
        raise InvalidArgumentError(
            f"The pool already has column(s) {clash} that the selection adds; rename them first, e.g. "
            f"`pool.rename_column({clash[0]!r}, 'parent_{clash[0]}')`."
        )

    quality = None
    if a["quality_column"] is not None:
        if a["quality_column"] not in pool.column_names:
            raise InvalidArgumentError(
                f"`quality_column`={a['quality_column']!r} is not a column; available: {pool.column_names}."
            )
        values = pool.data.table.column(a["quality_column"]).to_numpy(zero_copy_only=False)
        quality = sample.validate_quality(values, a["quality_column"], weighting=a["quality_weighting"])

    options = None
    # Text is needed to embed, and to count tokens for a token budget even with precomputed vectors.
    if a["embedding_column"] is None or a["max_tokens"] is not None:
        options = resolve_render_options(
            pool.column_names,
            format=a["format"],
            text_column=a["text_column"],
            template=a["template"],
            include_answer=a["include_answer"],
            tokenizer=a["tokenizer"],
        )
        validate_columns(pool.data.table, options)
    if a["embedding_column"] is not None and a["embedding_column"] not in pool.column_names:
        raise InvalidArgumentError(
            f"`embedding_column`={a['embedding_column']!r} is not a column; available: {pool.column_names}."
        )
    return rows, options, quality


def _select(pool: datasets.Dataset, *, dry_run: bool, return_manifest: bool, **a):
    if pool._indices is not None:
        # Arrow-level checks and digests read the table in storage order: materialise select/shuffle first.
        pool = pool.flatten_indices()
    rows, options, quality = _check_arguments(pool, a)
    n = len(pool)
    if dry_run:
        return _plan(pool, a, rows, options)

    from .distributed import broadcast, world

    rank, world_size = world()
    embeddings, identity = pool_embeddings(
        pool,
        options,
        encoder=a["encoder"],
        encoder_revision=a["encoder_revision"],
        embedding_column=a["embedding_column"],
        tokenizer=a["tokenizer"],
        batch_size=a["batch_size"],
        device=a["device"],
        cache_dir=a["cache_dir"],
        trust_remote_code=a["trust_remote_code"],
        distributed=world_size > 1,
    )
    # Every rank embedded its share; rank 0 clusters and draws, the others take its manifest.
    manifest = _cluster_and_draw(pool, a, rows, options, quality, embeddings, identity) if rank == 0 else None
    if world_size > 1:
        manifest = Manifest.from_dict(broadcast(manifest.to_dict() if manifest is not None else None))
    subset = _subset_from_manifest(pool, manifest)
    remember_manifest(subset, manifest)
    logger.info("Selected %d of %d rows with %s (k=%d)", len(subset), n, a["method"], manifest.k)
    return (subset, manifest) if return_manifest else subset


def _subset_from_manifest(pool: datasets.Dataset, manifest: Manifest) -> datasets.Dataset:
    return selection_subset(pool, manifest.selected_indices, manifest.selected_clusters)


def _cluster_and_draw(pool, a, rows, options, quality, embeddings, identity) -> Manifest:
    clustering, k_selection = cluster_pool(
        embeddings, a["k"], k_candidates=a["k_candidates"], seed=a["seed"], kmeans_niter=a["kmeans_niter"]
    )

    eligible, dedup = None, None
    if a["dedup_threshold"] is not None:
        eligible = dedup_mask(embeddings, a["dedup_threshold"], quality=quality)
        dedup = {"threshold": a["dedup_threshold"], "removed": int((~eligible).sum())}
        logger.info("De-duplication removed %d near-duplicate rows", dedup["removed"])
        if rows is not None and rows > int(eligible.sum()):
            raise InvalidArgumentError(
                f"`budget`={rows} rows is more than the {int(eligible.sum())} rows left after de-duplication "
                f"(dedup_threshold={a['dedup_threshold']}); lower the budget or raise the threshold."
            )

    budget_info = {"requested": a["budget"], "rows": rows}
    if rows is not None:
        indices = _draw(a, rows, embeddings, clustering, quality, eligible)
    else:
        lengths = token_lengths(pool, options, a["tokenizer"], cache_dir=a["cache_dir"])
        order = sample.priority_order(
            clustering.labels,
            k=clustering.k,
            method=a["method"],
            seed=a["seed"],
            quality=quality,
            temperature=a["temperature"],
            weighting=a["quality_weighting"],
            similarity=clustering.similarity,
            eligible=eligible,
            quota=a["quota"],
        )
        indices = sample.token_prefix(order, lengths, a["max_tokens"])
        if len(indices) == 0:
            raise InvalidArgumentError(
                f"`max_tokens`={a['max_tokens']} is smaller than the first row chosen ({int(lengths[order[0]])} tokens)."
            )
        budget_info.update(
            rows=len(indices),
            max_tokens=a["max_tokens"],
            tokens=int(lengths[indices].sum()),
            tokenizer=getattr(a["tokenizer"], "name_or_path", type(a["tokenizer"]).__name__),
        )

    return _manifest(pool, a, options, identity, embeddings, clustering, k_selection, budget_info, indices, dedup)


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
):
    """`(embeddings, EncoderIdentity or None)`: the encoder's vectors (cached) or `embedding_column`.

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
    )


def cluster_pool(embeddings: np.ndarray, k, *, k_candidates=None, seed: int = 0, kmeans_niter: int = 20):
    """k-means on the pool's vectors, choosing k by silhouette when `k="auto"`; returns `(Clustering, k_selection)`."""
    k_selection = {"mode": "fixed"}
    if k == "auto":
        candidates = k_candidates or default_k_candidates(min(len(embeddings), 4000))
        k, scores = choose_k(embeddings, candidates, seed=seed, niter=kmeans_niter)
        k_selection = {"mode": "auto", "candidates": sorted(scores), "silhouette": {str(c): s for c, s in scores.items()}}
    return kmeans(embeddings, k, seed=seed, niter=kmeans_niter), k_selection


def _draw(a, rows, embeddings, clustering: Clustering, quality, eligible) -> np.ndarray:
    method, seed, k = a["method"], a["seed"], clustering.k
    if method == "random":
        return sample.random_sample(len(embeddings), rows, seed=seed, eligible=eligible)
    if method in ("kmq", "kmeans-random"):
        return sample.kmq_sample(
            clustering.labels,
            rows,
            k=k,
            seed=seed,
            quality=quality if method == "kmq" else None,
            temperature=a["temperature"],
            weighting=a["quality_weighting"],
            eligible=eligible,
            quota=a["quota"],
        )
    if method == "kmeans-closest":
        return sample.kmeans_closest(clustering.labels, clustering.similarity, rows, k=k, eligible=eligible)
    # The greedy baselines work on the eligible rows only; map their picks back to pool rows.
    rows_map = np.arange(len(embeddings)) if eligible is None else np.flatnonzero(eligible)
    x = embeddings[rows_map]
    q = None if quality is None else quality[rows_map]
    if method == "kcenter":
        picked = baselines.kcenter_greedy(x, rows, seed=seed)
    elif method == "deita":
        picked = baselines.deita_select(x, q, rows, threshold=a["deita_threshold"])
    else:
        q = np.zeros(len(x)) if q is None else q
        picked = baselines.qdit_select(x, q, rows, alpha=a["qdit_alpha"] if quality is not None else 0.0)
    return np.sort(rows_map[picked])


def dedup_mask(embeddings: np.ndarray, threshold: float, *, quality: np.ndarray | None = None) -> np.ndarray:
    """Rows to keep: visiting rows by descending quality (or pool order), drop each row whose cosine
    similarity to an already kept row is >= `threshold`."""
    n = len(embeddings)
    order = np.arange(n) if quality is None else np.lexsort((np.arange(n), -quality))
    kept = baselines.greedy_diverse_filter(embeddings, order, threshold)
    mask = np.zeros(n, dtype=bool)
    mask[kept] = True
    return mask


def _manifest(pool, a, options, identity, embeddings, clustering, k_selection, budget_info, indices, dedup):
    digest_columns = list(_read_columns(options, a))
    arguments = {
        key: value
        for key, value in a.items()
        if key not in ("tokenizer", "device", "cache_dir", "batch_size") and _is_json_value(value)
    }
    if not isinstance(a["encoder"], str):
        arguments["encoder"] = identity.id
    labels = clustering.labels[indices]
    return Manifest(
        pool=pool_record(pool, digest_columns),
        arguments=arguments,
        method=a["method"],
        seed=int(a["seed"]),
        k=int(clustering.k),
        k_selection=k_selection,
        budget=budget_info,
        cluster_sizes=clustering.sizes.tolist(),
        selected_per_cluster=np.bincount(labels, minlength=clustering.k).tolist(),
        selected_indices=indices.astype(np.int64).tolist(),
        selected_clusters=labels.astype(np.int64).tolist(),
        selected_digest=indices_digest(indices),
        render=options.to_dict() if options is not None else None,
        encoder=encoder_record(identity, a["embedding_column"], embeddings.shape[1]),
        dedup=dedup,
    )


def _read_columns(options, a) -> list[str]:
    columns = []
    if options is not None:
        columns += options.input_columns
    for extra in (a["embedding_column"], a["quality_column"]):
        if extra is not None:
            columns.append(extra)
    return list(dict.fromkeys(columns))


def _is_json_value(value) -> bool:
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json_value(v) for v in value)
    return False


def _plan(pool, a, rows, options) -> SelectionPlan:
    n = len(pool)
    dim = None
    cached = False
    encoder_id = None
    embed_seconds = 0.0
    if a["embedding_column"] is not None:
        first = pool.data.table.column(a["embedding_column"]).slice(0, 1).to_pylist()[0]
        dim = len(first)
    else:
        identity = encoder_identity(a["encoder"], a["encoder_revision"])
        encoder_id = identity.id
        cached = os.path.exists(cache_file("embeddings", embedding_cache_key(pool, identity, options), a["cache_dir"]))
        dim = 384 if identity.id == DEFAULT_ENCODER else None
        if not cached:
            sample_rows = pool.select(range(min(n, 256)))
            chars = [len(p) + len(q) for p, q in zip(*_render_sample(sample_rows, options))]
            tokens = min(float(np.mean(chars)) / 4.0, 256.0)
            embed_seconds = n * (_CPU_SECONDS_PER_TEXT + tokens * _CPU_SECONDS_PER_TOKEN)
    d = dim or 768
    k = a["k"]
    candidates = None
    if k == "auto":
        candidates = a["k_candidates"] or default_k_candidates(min(n, 4000))
        k_fit = max(candidates)
        search = sum(min(n, 4000) * c * d * a["kmeans_niter"] for c in candidates) * _KMEANS_SECONDS_PER_UNIT
    else:
        k_fit, search = k, 0.0
    train_rows = min(n, 256 * k_fit)
    cluster_seconds = search + (train_rows * k_fit * d * a["kmeans_niter"] + n * k_fit * d) * _KMEANS_SECONDS_PER_UNIT
    memory = n * d * 4 * 2 + train_rows * d * 4 + n * 16
    return SelectionPlan(
        pool_rows=n,
        budget_rows=rows,
        max_tokens=a["max_tokens"],
        method=a["method"],
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
    """Rebuild the subset a manifest describes from its pool, refusing a pool that differs.

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
            check that it gives the same rows, instead of taking the recorded row ids.
        overrides:
            Arguments for the re-run that are not recorded (e.g. `tokenizer`, `device`, `cache_dir`).

    Returns:
        `datasets.Dataset`: the subset, with `source_index` and `cluster`.
    """
    manifest = _read_manifest(manifest, config=config, revision=revision, token=token)
    manifest.check_integrity()
    if pool is None:
        pool = _load_recorded_pool(manifest, token)
    if not isinstance(pool, datasets.Dataset):
        raise InvalidArgumentError(f"`pool` must be a datasets.Dataset, got {type(pool).__name__}.")
    if pool._indices is not None:
        pool = pool.flatten_indices()
    manifest.check_pool(pool)
    if recompute:
        from .errors import SelectionMismatchError

        if manifest.method not in sample.METHODS:
            raise InvalidArgumentError(
                f"`recompute=True`: a {manifest.method!r} selection depends on a training run and cannot be re-run "
                "here; load it without recompute (the recorded rows are checked against their digest)."
            )
        arguments = {**manifest.arguments, **overrides}
        subset, again = diverse_select(pool, return_manifest=True, **arguments)
        if again.selected_digest != manifest.selected_digest:
            raise SelectionMismatchError(
                "Re-running the selection gave different rows than the manifest records "
                f"({again.selected_digest[:19]}... != {manifest.selected_digest[:19]}...). Library versions then: "
                f"{manifest.versions}; now: {again.versions}."
            )
        return subset
    return _subset_from_manifest(pool, manifest)


def _read_manifest(source, *, config, revision, token) -> Manifest:
    is_local = not isinstance(source, str) or source.lstrip().startswith("{") or os.path.exists(source)
    if is_local:
        if config is not None:
            raise InvalidArgumentError("`config` only applies to a Hub repo id; for a local manifest pass its path.")
        return Manifest.load(source)
    from huggingface_hub import hf_hub_download

    from .publish import DEFAULT_CONFIG, _manifest_path, check_repo_id

    check_repo_id(source, "manifest")
    filename = _manifest_path(config or DEFAULT_CONFIG)
    try:
        path = hf_hub_download(source, filename, repo_type="dataset", revision=revision, token=token)
    except Exception as err:
        from .publish import redact

        raise InvalidArgumentError(
            f"Could not read {filename} from the dataset repo {source!r}"
            f"{f' (config {config!r})' if config else ''}: {redact(str(err).splitlines()[0] if str(err) else type(err).__name__, token)}. "
            "Check the repo id, the config name (round_1, round_2, ... or the default) and your token."
        ) from None
    return Manifest.load(path)


def _load_recorded_pool(manifest: Manifest, token) -> datasets.Dataset:
    from .pool import BUILTIN_POOL, BUILTIN_POOL_NAME, load_pool

    source = manifest.pool.get("source") or {}
    path = source.get("path")
    if path is None and manifest.pool.get("name") == BUILTIN_POOL_NAME:
        path = BUILTIN_POOL
    if path is None:
        raise InvalidArgumentError(
            "The manifest does not say where its pool lives: pass `pool=` (the dataset the selection was made on)."
        )
    return load_pool(path, split=source.get("split") or "train", config=source.get("config"), revision=source.get("revision"), token=token)
