"""The stages of a selection, one implementation that `diverse_select` (in-memory and streamed pools) and the trainer
both run: pool -> vectors ([`pool_embeddings`]) -> decontamination -> clusters of the rows left, with their
descriptions and map ([`decontaminate_and_cluster`]) -> the draw ([`cluster_and_draw`], which returns the manifest).

A streamed pool differs only in how its rows and vectors are obtained and how the chosen rows are read back
(`stream.py`); every stage here runs for it as for a `datasets.Dataset`.

A method that needs no vectors (`methods.Method.needs_vectors`: `random`, `balanced-random`) gets none: the pool is
not embedded unless de-duplication or decontamination's cosine test needs its vectors ([`methods.vectors_needed`]),
and never clustered. Its clusters are the groups it draws from ([`methods.vector_free_groups`]: the whole pool, or one
per source), its manifest's `encoder` is `None` when nothing was embedded, and it has no map or cluster descriptions.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np

from . import baselines, methods, sample
from .arguments import CheckedArguments, SelectArguments, read_columns
from .cluster import AUTO_K, Clustering, choose_k, kmeans, warn_if_k_near_budget
from .decontaminate import DecontaminationSettings, decontaminate_pool
from .describe import describe_pool
from .embed import DEFAULT_ENCODER, embed_dataset, embeddings_from_column, encoder_identity
from .errors import InvalidArgumentError
from .manifest import Manifest, encoder_record, indices_digest, pool_record
from .render import RenderOptions, token_lengths
from .target import Target, prepare_target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolClusters:
    """The pool after decontamination and k-means: what a draw and a manifest take from it.

    Args:
        pool (`datasets.Dataset`):
            The rows left, in pool order (the pool itself when nothing was excluded).
        vectors (`np.ndarray` or [`~cache.StoredVectors`], *optional*):
            Their vectors; `None` when none were computed (a method that needs no vectors).
        rows (`np.ndarray`, *optional*):
            The pool row of each row left; `None` when every row is left.
        clustering ([`~cluster.Clustering`]):
            k-means of the rows left (labels in the order of `pool`); for a method that needs no vectors, the groups
            it draws from (no centroids, zero similarities).
        k_selection (`dict`):
            How k was chosen (the manifest's `k_selection`).
        budget_rows (`int`, *optional*):
            The row budget counted on the rows left; `None` without a row budget.
        decontamination (`dict`, *optional*):
            What decontamination dropped (the manifest's `decontamination`); `None` without an evaluation set.
        descriptions (`list[dict]`, *optional*):
            Each cluster's terms and representative rows (pool rows); `None` for a pool without text.
        cluster_map (`list[list[float]]`, *optional*):
            Each cluster's place on a 2-D map of the pool ([`centroid_map`]); `None` without k-means.
    """

    pool: datasets.Dataset
    vectors: Any
    rows: np.ndarray | None
    clustering: Clustering
    k_selection: dict
    budget_rows: int | None
    decontamination: dict | None
    descriptions: list[dict] | None
    cluster_map: list | None

    def pool_rows(self, positions) -> np.ndarray:
        """Positions among the rows left, as pool rows."""
        positions = np.asarray(positions, dtype=np.int64)
        return positions if self.rows is None else self.rows[positions]

    def labels_of_every_row(self) -> np.ndarray:
        """The cluster id of every pool row: a row decontamination dropped takes its nearest centroid's (it was in no
        cluster's k-means and is never drawn; the id keeps per-row tables whole)."""
        if self.rows is None:
            return self.clustering.labels
        record = self.decontamination
        labels = np.empty(len(self.rows) + record["removed"], dtype=np.int64)
        labels[self.rows] = self.clustering.labels
        labels[np.asarray(record["removed_indices"], dtype=np.int64)] = record.get("nearest_clusters", [])
        return labels


def decontaminate_and_cluster(
    pool: datasets.Dataset,
    embeddings,
    text: RenderOptions | None,
    *,
    k: int | str,
    k_candidates: list[int] | None = None,
    seed: int = 0,
    kmeans_niter: int = 20,
    budget: int | float | None = None,
    exclude_dataset=None,
    decontamination: DecontaminationSettings | None = None,
    groups: tuple[np.ndarray, int, dict] | None = None,
    **embed_kwargs,
) -> PoolClusters:
    """Drop the pool rows that copy an item of `exclude_dataset`, cluster the rows left, describe and map the clusters.

    The one decontamination method of static and iterative selection: the dropped rows are left out of k-means, of
    the cluster sizes and descriptions, and of every draw.

    Args:
        pool (`datasets.Dataset`):
            The pool (its indices mapping flattened).
        embeddings (`np.ndarray` or [`~cache.StoredVectors`], *optional*):
            One unit-norm vector per pool row ([`pool_embeddings`]); `None` with `groups` when nothing needs them.
        text ([`RenderOptions`], *optional*):
            How pool rows become text, for the n-gram test and the descriptions; `None` for a pool without text
            (its clusters are not described; an `exclude_dataset` then needs text and is refused earlier).
        k (`int`, `"auto"` or `"auto-global"`):
            Number of clusters, or how to choose it by silhouette (see [`cluster_pool`]).
        k_candidates (`list[int]`, *optional*):
            Candidates for `k="auto"` / `"auto-global"`.
        seed (`int`, *optional*, defaults to `0`):
            Seeds k-means and the descriptions' representative rows.
        kmeans_niter (`int`, *optional*, defaults to `20`):
            k-means iterations.
        budget (`int` or `float`, *optional*):
            A row budget (rows, or a fraction of the rows left), checked against the rows left before k-means runs;
            `k="auto"` keeps k below half of it.
        exclude_dataset (`datasets.Dataset` or `list[str]`, *optional*):
            The evaluation set; see [`decontaminate.decontaminate_pool`].
        decontamination ([`DecontaminationSettings`], *optional*):
            The n-gram length and the thresholds of the tests against `exclude_dataset`; the defaults when `None`.
        groups (`tuple`, *optional*):
            For a method that needs no vectors: `(group of every pool row, number of groups, k_selection)`
            ([`methods.vector_free_groups`]), the clusters in place of k-means; the clusters are then neither
            described nor mapped.
        embed_kwargs:
            How `exclude_dataset` is embedded: the pool's `encoder`, `encoder_revision`, `embedding_column`, `tokenizer` and the
            [`embed.embed_dataset`] settings.
    """
    rows, record, every_vector = None, None, embeddings
    if exclude_dataset is not None:
        keep, record = decontaminate_pool(pool, exclude_dataset, text, embeddings, settings=decontamination, **embed_kwargs)
        rows = np.flatnonzero(keep)
        # A view through an indices mapping, not a copy: flattening rewrote every kept row (minutes at 1M rows),
        # and what reads the rows left (descriptions, token counts) reads them through the mapping as fast.
        pool, embeddings = pool.select(rows), None if embeddings is None else embeddings[rows]
        if groups is None and not isinstance(k, str) and k > len(pool):
            raise InvalidArgumentError(
                f"`k`={k} is more than the {len(pool)} rows left after decontamination; lower k or use k='auto'."
            )
    budget_rows = None
    if budget is not None:
        if record is not None and isinstance(budget, numbers.Integral) and budget > len(pool):
            raise InvalidArgumentError(
                f"`budget`={budget} rows is more than the {len(pool)} pool rows left after decontamination against "
                f"the evaluation set dropped {record['removed']}; lower the budget."
            )
        budget_rows = sample.resolve_budget(budget, len(pool))
    if groups is not None:
        return _vector_free(pool, embeddings, rows, groups, budget_rows, record)
    clustering, k_selection = cluster_pool(
        embeddings, k, k_candidates=k_candidates, budget=budget_rows, seed=seed, kmeans_niter=kmeans_niter
    )
    if record is not None and record["removed"]:
        # Where each dropped row would have gone: the map and the report count the drops per cluster.
        dropped = np.asarray(record["removed_indices"], dtype=np.int64)
        nearest = (every_vector[dropped] @ clustering.centroids.T).argmax(axis=1)
        record["nearest_clusters"] = [int(c) for c in nearest]
    descriptions = None
    if text is not None:
        descriptions = describe_pool(pool, text, clustering, seed=seed)
        if rows is not None:
            for description in descriptions:
                description["example_rows"] = rows[description["example_rows"]].tolist()
    else:
        logger.info("The clusters are not described: the pool has no text layout to describe them by.")
    return PoolClusters(
        pool=pool, vectors=embeddings, rows=rows, clustering=clustering, k_selection=k_selection,
        budget_rows=budget_rows, decontamination=record, descriptions=descriptions,
        cluster_map=centroid_map(clustering.centroids),
    )


def _vector_free(pool, vectors, rows, groups, budget_rows, record) -> PoolClusters:
    """The clusters of a method that needs no vectors: its groups over the rows left (a dropped row keeps its own)."""
    labels, k, k_selection = groups
    if record is not None and record["removed"]:
        record["nearest_clusters"] = labels[np.asarray(record["removed_indices"], dtype=np.int64)].tolist()
    labels = labels if rows is None else labels[rows]
    clustering = Clustering(np.zeros((k, 0), dtype=np.float32), labels, np.zeros(len(labels), dtype=np.float32), 0.0, k)
    logger.info("Method draws without vectors: no k-means; its %d group(s) stand as the clusters.", k)
    return PoolClusters(
        pool=pool, vectors=vectors, rows=rows, clustering=clustering, k_selection=k_selection, budget_rows=budget_rows,
        decontamination=record, descriptions=None, cluster_map=None,
    )


def cluster_and_draw(pool: datasets.Dataset, args: SelectArguments, checked: CheckedArguments, embeddings, identity) -> Manifest:
    """[`decontaminate_and_cluster`], then draw the budget with `args.method`: the selection's [`Manifest`].

    Every selection runs this on its pool's rows and vectors, however they were obtained (a `datasets.Dataset`, each
    rank's share of one, or a spooled stream). With `args.exclude_dataset` the budget counts the rows left (a fraction is a
    fraction of them) and the manifest's row ids are pool rows. `embeddings` is `None` when [`methods.vectors_needed`]
    says nothing needs them.
    """
    groups = None
    if not methods.METHODS[args.method].needs_vectors:
        groups = methods.vector_free_groups(args, checked.sources, len(pool))
    clusters = decontaminate_and_cluster(
        pool, embeddings, checked.text, k=args.k, k_candidates=args.k_candidates, seed=args.seed, groups=groups,
        kmeans_niter=args.kmeans_niter, budget=args.budget, exclude_dataset=args.exclude_dataset,
        decontamination=args.decontamination, batch_size=args.encode_batch_size, desc=" ".join(filter(None, (args.desc, "Evaluation set:"))),
        **args.pick(
            "encoder", "encoder_revision", "embedding_column", "tokenizer", "device", "cache_dir", "trust_remote_code",
            "load_from_cache_file", "keep_in_memory",
        ),
    )
    clustering, vectors, rows = clusters.clustering, clusters.vectors, clusters.budget_rows
    quality, sources = checked.quality, checked.sources  # per pool row: taken on the rows left
    if clusters.rows is not None:
        quality = quality[clusters.rows] if quality is not None else None
        sources = sources[clusters.rows] if sources is not None else None

    eligible, dedup = None, None
    if args.dedup_threshold is not None:
        eligible = dedup_mask(vectors, args.dedup_threshold, quality=quality)
        dedup = {"threshold": args.dedup_threshold, "removed": int((~eligible).sum())}
        logger.info("De-duplication removed %d near-duplicate rows", dedup["removed"])
        if rows is not None and rows > int(eligible.sum()):
            raise InvalidArgumentError(
                f"`budget`={rows} rows is more than the {int(eligible.sum())} rows left after de-duplication "
                f"(dedup_threshold={args.dedup_threshold}); lower the budget or raise the threshold."
            )

    inputs = methods.DrawInputs(vectors, clustering, args.seed, quality=quality, eligible=eligible, sources=sources)
    target = target_stage(args, checked, clusters)  # None without `target_dataset`
    draw_options = args.pick("quality_temperature", "quality_weighting", "quota")
    budget = {"requested": args.budget, "rows": rows}
    if rows is not None:
        indices = target.draw(inputs, rows, **draw_options) if target else methods.draw(inputs, rows, args)
    else:
        lengths = token_lengths(
            clusters.pool, checked.render, args.tokenizer, cache_dir=args.cache_dir,
            **args.pick("desc", "num_proc", "load_from_cache_file", "keep_in_memory"),
        )
        if target is not None:
            order = target.order(inputs, lengths, args.max_tokens, **draw_options)
        else:
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
    indices = clusters.pool_rows(indices)
    if identity is None and args.embedding_column is None and not isinstance(args.encoder, str):
        identity = encoder_identity(args.encoder, args.encoder_revision)  # the arguments name an encoder object by it
    return Manifest(
        pool=pool_record(pool, read_columns(args, checked.render)),
        arguments=args.to_manifest_dict(identity),
        method=args.method,
        seed=int(args.seed),
        k=int(clustering.k),
        k_selection=clusters.k_selection,
        budget=budget,
        cluster_sizes=clustering.sizes.tolist(),
        selected_per_cluster=np.bincount(labels, minlength=clustering.k).tolist(),
        selected_indices=indices.tolist(),
        selected_clusters=labels.astype(np.int64).tolist(),
        selected_digest=indices_digest(indices),
        render=checked.render.to_dict() if checked.render is not None else None,
        encoder=None if vectors is None else encoder_record(identity, args.embedding_column, vectors.shape[1]),
        dedup=dedup,
        decontamination=clusters.decontamination,
        cluster_map=clusters.cluster_map,
        cluster_descriptions=clusters.descriptions,
        target=target.record() if target is not None else None,
    )


def target_stage(args: SelectArguments, checked: CheckedArguments, clusters: PoolClusters) -> Target | None:
    """The target stage: embed `args.target_dataset` the way the pool was embedded (as decontamination embeds its
    evaluation set) and measure each cluster's affinity to it ([`target.prepare_target`]); `None` without a target."""
    if args.target_dataset is None:
        return None
    return prepare_target(
        args.target_dataset, clusters.clustering, method=args.target_method, sharpness=args.target_sharpness,
        task_column=args.target_task_column, pool_render=checked.render or checked.text, include_answer=args.embed_answer,
        dim=clusters.vectors.shape[1], batch_size=args.encode_batch_size, desc=" ".join(filter(None, (args.desc, "Target:"))),
        **args.pick(
            "encoder", "encoder_revision", "embedding_column", "tokenizer", "device", "cache_dir", "trust_remote_code",
            "load_from_cache_file", "keep_in_memory",
        ),
    )


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
