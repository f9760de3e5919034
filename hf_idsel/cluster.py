"""Cluster: seeded faiss k-means on unit vectors, chunked assignment, and k chosen by silhouette.

k-means is fitted on at most `max_points_per_centroid * k` rows (a seeded sample), then every row is
assigned to its nearest centroid in chunks, so memory stays near the size of the embedding matrix.
Vectors stored as float16 ([`~cache.StoredVectors`], memory-mapped) are never loaded whole: only the
training sample and one chunk at a time are upcast to float32. On a machine where faiss sees a GPU,
training and assignment run there.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from datasets.utils.tqdm import tqdm

from .checks import MAX_INT32, check_int, check_seed
from .errors import InvalidArgumentError, MissingDependencyError

logger = logging.getLogger(__name__)

ASSIGN_CHUNK = 65536


@dataclass
class Clustering:
    """Result of [`kmeans`].

    Args:
        centroids (`np.ndarray`):
            `(k, d)` float32, unit norm.
        labels (`np.ndarray`):
            Cluster id of every row (int64).
        similarity (`np.ndarray`):
            Cosine similarity of every row to its centroid (float32).
        objective (`float`):
            Sum of squared distances of the rows to their centroids (lower is better).
        k (`int`):
            Number of clusters.
    """

    centroids: np.ndarray
    labels: np.ndarray
    similarity: np.ndarray
    objective: float
    k: int

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.k)


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise MissingDependencyError(
            "Clustering needs faiss: `pip install 'hf_idsel[cpu]'` (faiss-cpu) or `'hf_idsel[gpu]'` (faiss-gpu), "
            "never both."
        ) from err
    return faiss


def use_gpu() -> bool:
    """Whether faiss can run on a GPU here."""
    faiss = _faiss()
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def kmeans(
    embeddings: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    niter: int = 20,
    nredo: int = 1,
    max_points_per_centroid: int = 256,
    init: str = "k-means++",
    gpu: bool | None = None,
    warn_empty: bool = True,
) -> Clustering:
    """Seeded spherical k-means with faiss, fitted on a sample, then every row assigned in chunks.

    Args:
        embeddings (`np.ndarray` or [`~cache.StoredVectors`]):
            `(n, d)` unit-norm float32 rows, or stored vectors read as such. A float32 matrix above
            `max_points_per_centroid * k` rows is sampled by faiss; stored vectors by a seeded numpy draw
            of that many rows, so only the sample is ever upcast whole.
        k (`int`):
            Number of clusters, `1 <= k <= n`.
        seed (`int`, *optional*, defaults to `0`):
            Seeds both faiss's sampling and its initialisation.
        niter (`int`, *optional*, defaults to `20`):
            Lloyd iterations (the research code used 300; 20 is within 1% of its objective).
        nredo (`int`, *optional*, defaults to `1`):
            Restarts; the best objective is kept.
        max_points_per_centroid (`int`, *optional*, defaults to `256`):
            Training uses at most this many rows per centroid.
        init (`str`, *optional*, defaults to `"k-means++"`):
            `"k-means++"` seeds the centroids by k-means++ on a sample of `max(4k, 2048)` rows (random
            seeding merges well-separated clusters too often); `"random"` is faiss's own seeding.
        gpu (`bool`, *optional*):
            Force the GPU on or off; by default used when faiss sees one.
        warn_empty (`bool`, *optional*, defaults to `True`):
            Log a warning when some clusters end up without rows (more clusters than distinct rows).
    """
    n, d = embeddings.shape
    k = check_int(k, "k")
    if not 1 <= k <= n:
        raise InvalidArgumentError(f"`k`={k} must be between 1 and the number of rows ({n}).")
    seed = check_seed(seed)
    niter = check_int(niter, "niter", minimum=1, maximum=MAX_INT32)
    faiss = _faiss()
    in_memory = isinstance(embeddings, np.ndarray)
    x = np.ascontiguousarray(embeddings, dtype=np.float32) if in_memory else embeddings
    gpu = use_gpu() if gpu is None else gpu
    if k == 1:
        centroid = x.mean(axis=0, keepdims=True) if in_memory else _chunked_mean(x)
        centroids = _normalise(centroid)
    else:
        km = faiss.Kmeans(
            d,
            k,
            niter=niter,
            nredo=nredo,
            seed=seed,
            spherical=True,
            max_points_per_centroid=max_points_per_centroid,
            # Small pools are a legitimate use; faiss would print a warning for every k-means call.
            min_points_per_centroid=1,
            gpu=gpu,
            verbose=False,
        )
        init_centroids = None
        if init == "k-means++":
            from sklearn.cluster import kmeans_plusplus

            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(n, size=min(n, max(4 * k, 2048)), replace=False))
            # Greedy k-means++ (2 + log k trials per seed) is what keeps separated clusters apart; above
            # k=256 its cost (~k^2 log k) outgrows k-means itself, so plain k-means++ is used there.
            # sklearn runs faster on float64 than on float32 here.
            trials = None if k <= 64 else 1
            seeds, _ = kmeans_plusplus(x[rows].astype(np.float64), k, random_state=seed, n_local_trials=trials)
            init_centroids = np.ascontiguousarray(seeds, dtype=np.float32)
        elif init != "random":
            raise InvalidArgumentError(f"`init`={init!r}; choose 'k-means++' or 'random'.")
        train = x
        if not in_memory:
            cap = max_points_per_centroid * k
            # Past RAM: fit on a seeded sample of faiss's size, read from the stored vectors in sorted order.
            rows = np.arange(n) if n <= cap else np.sort(np.random.default_rng([seed, 1]).choice(n, size=cap, replace=False))
            train = _gather(x, rows)
        km.train(train, init_centroids=init_centroids)
        del train
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    labels, similarity = assign(x, centroids, gpu=gpu)
    # ||x - c||^2 = 2 - 2 cos for unit vectors.
    objective = float(np.sum(2.0 - 2.0 * similarity.astype(np.float64)))
    clustering = Clustering(centroids, labels, similarity, objective, k)
    if warn_empty:
        empty = int((clustering.sizes == 0).sum())
        if empty:
            distinct = len(np.unique(x, axis=0)) if in_memory else len(np.unique(x.raw(slice(None)), axis=0))
            logger.warning(
                "k-means left %d of %d clusters empty (the rows hold %d distinct vectors); they get no rows. "
                "Pass a smaller `k` (at most %d) for clusters that all hold rows.",
                empty, k, distinct, k - empty,
            )
    return clustering


def _gather(x, rows: np.ndarray, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
    """Rows `rows` of stored vectors as one float32 matrix, upcast one chunk at a time."""
    out = np.empty((len(rows), x.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), chunk):
        out[start : start + chunk] = x[rows[start : start + chunk]]
    return out


def _chunked_mean(x, chunk: int = ASSIGN_CHUNK) -> np.ndarray:
    total = np.zeros(x.shape[1], dtype=np.float64)
    for start in range(0, len(x), chunk):
        total += x[start : start + chunk].sum(axis=0, dtype=np.float64)
    return (total / len(x)).astype(np.float32)[None, :]


def assign(embeddings, centroids: np.ndarray, *, gpu: bool = False, chunk: int = ASSIGN_CHUNK):
    """Nearest centroid (by cosine) of every row, computed in chunks; returns `(labels, similarity)`.

    `embeddings` is a float32 matrix or [`~cache.StoredVectors`]; each chunk of `chunk` rows is read
    (and, for stored vectors, upcast and normalised) on its own, so only one chunk is in float32 at a time.
    """
    faiss = _faiss()
    index = faiss.IndexFlatIP(centroids.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    n = embeddings.shape[0]
    labels = np.empty(n, dtype=np.int64)
    similarity = np.empty(n, dtype=np.float32)
    starts = range(0, n, chunk)
    for start in tqdm(starts, desc="Assigning clusters", unit="chunk", disable=len(starts) < 2):
        block = np.ascontiguousarray(embeddings[start : start + chunk], dtype=np.float32)
        sims, ids = index.search(block, 1)
        labels[start : start + len(block)] = ids[:, 0]
        similarity[start : start + len(block)] = sims[:, 0]
    return labels, similarity


def default_k_candidates(n: int, max_k: int | None = None) -> list[int]:
    """A geometric grid (about x1.4 apart) from 2 up to `min(n // 10, max_k or 4096)`.

    At least ~10 rows per cluster on average: silhouette over tinier clusters says little.
    """
    upper = min(n // 10, max_k or 4096)
    grid, value = [], 2.0
    while round(value) <= upper:
        if not grid or round(value) != grid[-1]:
            grid.append(int(round(value)))
        value *= math.sqrt(2)
    return grid


def choose_k(
    embeddings: np.ndarray,
    candidates: list[int] | None = None,
    *,
    seed: int = 0,
    sample_size: int = 4000,
    niter: int = 20,
    gpu: bool | None = None,
) -> tuple[int, dict]:
    """Pick k by silhouette score (the paper's guidance), on a seeded sample of the rows.

    Args:
        embeddings (`np.ndarray`):
            `(n, d)` unit-norm rows.
        candidates (`list[int]`, *optional*):
            The k values to try; defaults to [`default_k_candidates`] of the sample size.
        seed (`int`, *optional*, defaults to `0`):
            Seeds the sample and each k-means.
        sample_size (`int`, *optional*, defaults to `4000`):
            Rows used for fitting and scoring (silhouette is quadratic in this).
        niter (`int`, *optional*, defaults to `20`):
            k-means iterations per candidate.
        gpu (`bool`, *optional*):
            As in [`kmeans`].

    Returns:
        `tuple[int, dict[int, float]]`: the best k and the silhouette score of every candidate.
    """
    from sklearn.metrics import silhouette_score

    n = embeddings.shape[0]
    seed = check_seed(seed)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(n, sample_size), replace=False))
    sample = embeddings[rows]
    grid = sorted(set(candidates)) if candidates else default_k_candidates(len(rows))
    usable = [k for k in grid if 2 <= k < len(rows)]
    if not usable:
        raise InvalidArgumentError(
            f"k='auto' has no candidate k in [2, {len(rows) - 1}] to try (candidates: {grid}); "
            "pass an explicit `k` or a larger pool."
        )
    scores = {}
    for k in tqdm(usable, desc="Choosing k (silhouette)", unit="k"):
        labels = kmeans(sample, k, seed=seed, niter=niter, gpu=gpu, warn_empty=False).labels
        if len(np.unique(labels)) < 2:
            scores[k] = -1.0  # degenerate (e.g. identical rows): silhouette is undefined
            continue
        scores[k] = float(silhouette_score(sample, labels, metric="cosine", random_state=seed))
    best = max(usable, key=lambda k: (scores[k], -k))
    logger.info("Silhouette by k: %s -> k=%d", {k: round(v, 4) for k, v in scores.items()}, best)
    return best, scores


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)
