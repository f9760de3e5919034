"""The dry run: what `diverse_select(..., dry_run=True)` returns, sizes and a rough cost, with nothing computed."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import datasets
import numpy as np

from . import hidden_states
from .arguments import CheckedArguments, SelectArguments
from .cache import cache_file
from .cluster import AUTO_K, default_k_candidates
from .embed import DEFAULT_ENCODER, built_static_identity, embedding_cache_key, encoder_identity
from .render import render_batch
from .static_embed import STATIC_PREFIX, is_static

# Throughput of all-MiniLM-L6-v2 measured on 2 CPU cores, for dry-run estimates.
_CPU_SECONDS_PER_TEXT = 1 / 800
_CPU_SECONDS_PER_TOKEN = 1 / 12_000
# The static encoder on the same CPU, and the one-off build of its weights (197-272 s measured).
_STATIC_CPU_SECONDS_PER_ROW = 1 / 2000  # measured 3,675 rows/s idle, 219-287 under load (docs/performance.md)
_STATIC_BUILD_CPU_SECONDS = 240.0
# SmolLM2-135M hidden states cost about this many times all-MiniLM-L6-v2 per row (docs/performance.md).
_HIDDEN_STATES_CPU_FACTOR = 10.0
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
        k = f"{self.k} (silhouette over {self.k_candidates})" if self.k in AUTO_K else self.k
        source = "cached" if self.embeddings_cached else f"~{self.estimated_embedding_seconds:.0f} s on CPU"
        return (
            f"Select {budget} of {self.pool_rows} with {self.method}, k={k}\n"
            f"  embeddings: {self.encoder or 'from column'} ({source})\n"
            f"  clustering: ~{self.estimated_clustering_seconds:.1f} s on CPU\n"
            f"  peak memory: ~{self.estimated_peak_memory_bytes / 2**20:.0f} MiB"
        )


def plan_selection(pool: datasets.Dataset, args: SelectArguments, checked: CheckedArguments) -> SelectionPlan:
    """What `diverse_select(pool, ...)` with `args` would do and roughly cost, computing nothing (no encoder loads)."""
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
            chars = [len(p) + len(q) for p, q in zip(*render_batch(sample_rows[:], checked.render))]
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
