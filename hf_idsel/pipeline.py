"""The stages of a selection that `diverse_select` (in-memory and streamed pools) and the trainer share:
pool -> vectors ([`pool_embeddings`]) -> decontamination ([`exclude_rows`]) -> clusters ([`cluster_pool`],
[`dedup_mask`]) -> cluster descriptions and map -> the draw ([`cluster_and_draw`]), which returns the manifest.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
import numpy as np

from . import baselines, methods, sample
from .arguments import CheckedArguments, SelectArguments, read_columns
from .cluster import choose_k, kmeans
from .decontaminate import decontaminate_pool
from .describe import describe_pool
from .embed import DEFAULT_ENCODER, embed_dataset, embeddings_from_column
from .errors import InvalidArgumentError
from .manifest import Manifest, encoder_record, indices_digest, pool_record
from .render import resolve_render_options, token_lengths, validate_columns

logger = logging.getLogger(__name__)


def exclude_rows(pool, args: SelectArguments, checked: CheckedArguments, embeddings) -> tuple[np.ndarray, dict]:
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


def cluster_and_draw(
    pool, args: SelectArguments, checked: CheckedArguments, embeddings, identity, keep=None, decontamination=None
) -> Manifest:
    """Cluster the pool's vectors and draw the budget with `args.method`: the selection's [`Manifest`].

    With a `keep` mask (decontamination, see [`exclude_rows`]) the rows it drops are left out of k-means and of the
    draw, the budget is counted on the rows left, and the manifest's row ids are pool rows.
    """
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
        checked = CheckedArguments(rows=budget_rows, render=checked.render, quality=quality)
    clustering, k_selection = cluster_pool(
        embeddings, args.k, k_candidates=args.k_candidates, seed=args.seed, kmeans_niter=args.kmeans_niter
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
    descriptions = describe_clusters(pool, args, checked, clustering)
    if rows_kept is not None:
        indices = rows_kept[indices]
        for description in descriptions or ():
            description["example_rows"] = rows_kept[description["example_rows"]].tolist()
    return Manifest(
        pool=pool_record(full_pool, read_columns(args, checked.render)),
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


def describe_clusters(pool, args: SelectArguments, checked: CheckedArguments, clustering) -> list[dict] | None:
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


def centroid_map(centroids: np.ndarray) -> list[list[float]]:
    """Each cluster's place on a 2-D map of the pool: its centroid projected on the centroids' first two principal
    components (scikit-learn's PCA, exact solver: the same centroids give the same map), rounded to 4 decimals."""
    from sklearn.decomposition import PCA

    centroids = np.asarray(centroids, dtype=np.float64)
    if len(centroids) < 3:  # PCA needs more points than components; one or two clusters lie on a line
        x = centroids @ (centroids[-1] - centroids[0]) if len(centroids) == 2 else np.zeros(1)
        return [[round(float(v - x.mean()), 4), 0.0] for v in x]
    points = PCA(n_components=2, svd_solver="full").fit_transform(centroids)
    return np.round(points, 4).tolist()


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


def cluster_pool(embeddings: np.ndarray, k, *, k_candidates=None, seed: int = 0, kmeans_niter: int = 20):
    """k-means on the pool's vectors, choosing k by silhouette when `k="auto"`; returns `(Clustering, k_selection)`."""
    if k == "auto":
        # The search already clustered the whole pool at the chosen k: that clustering is the result.
        chosen = choose_k(embeddings, k_candidates, seed=seed, niter=kmeans_niter)
        return chosen.clustering, chosen.record()
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
