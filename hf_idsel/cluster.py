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
# k="auto": the top of the paper's k sweep, the fewest rows per cluster a candidate may average, and the
# rows the silhouette is averaged over.
MAX_AUTO_K = 8192
MIN_ROWS_PER_CLUSTER = 16
SILHOUETTE_SAMPLE = 20000
SILHOUETTE_CHUNK = 2048


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
    """Powers of two and their geometric midpoints (about x1.41 apart) from 2 up to
    `min(max_k or 8192, n // 16)`.

    8192 is the top of the paper's sweep (64 ... 8192). The floor of 16 rows per cluster on average keeps
    clusters large enough that their k-means centroids are more than a handful of rows; 8192 is reached from
    131,072 rows; pools of 20 to 31 rows get k=2 only. Any k in the grid's range has a grid point within a factor of 1.2.
    """
    # Pools of 20 to 31 rows keep the one candidate (k=2, 10 rows a cluster) they had before the floor was 16.
    upper = min(n // MIN_ROWS_PER_CLUSTER if n >= 2 * MIN_ROWS_PER_CLUSTER else n // 10, max_k or MAX_AUTO_K)
    grid = [int(round(2 ** (e / 2))) for e in range(2, 2 * int(math.log2(max(upper, 1))) + 2)]
    return [k for k in grid if k <= upper]


def silhouette(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    sample_size: int | None = SILHOUETTE_SAMPLE,
    seed: int = 0,
    chunk: int = SILHOUETTE_CHUNK,
) -> tuple[float, float]:
    """Cosine silhouette of a clustering of the whole pool, estimated on a seeded sample of rows.

    For unit vectors the mean cosine distance of a row `x` to the rows of cluster `c` is
    `1 - x . S_c / n_c`, with `S_c` the sum of the cluster's rows, so each sampled row's `a(i)` and `b(i)`
    are exact (against every row of every cluster) at the cost of one `(chunk, d) x (d, k)` product; only
    the choice of rows is sampled. With `sample_size >= n` the result is the exact silhouette
    (`sklearn.metrics.silhouette_score(embeddings, labels, metric="cosine")`).

    Args:
        embeddings (`np.ndarray`):
            `(n, d)` unit-norm rows.
        labels (`np.ndarray`):
            Cluster id (`0 <= id < k`) of every row.
        sample_size (`int`, *optional*, defaults to `20000`):
            Rows whose silhouette is averaged (uniform, without replacement); `None` scores every row.
        seed (`int`, *optional*, defaults to `0`):
            Seeds the sample.
        chunk (`int`, *optional*, defaults to `2048`):
            Sampled rows per matrix product (memory: `chunk * k` floats).

    Returns:
        `tuple[float, float]`: the silhouette (`-1.0` when fewer than two clusters hold rows, where it is
        undefined) and the standard error of the sample mean (0 when every row is scored).
    """
    from scipy.sparse import csr_matrix

    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    n = len(x)
    k = int(labels.max()) + 1
    sizes = np.bincount(labels, minlength=k)
    if int((sizes > 0).sum()) < 2:
        return -1.0, 0.0
    members = csr_matrix((np.ones(n, dtype=np.float32), (labels, np.arange(n))), shape=(k, n))
    sums = np.ascontiguousarray(members @ x, dtype=np.float32).T  # (d, k): S_c as columns
    if sample_size is None or sample_size >= n:
        rows = np.arange(n)
    else:
        rows = np.sort(np.random.default_rng(check_seed(seed)).choice(n, size=sample_size, replace=False))
    empty = sizes == 0
    scores = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), chunk):
        block = rows[start : start + chunk]
        xb = x[block]
        own = labels[block]
        # Mean cosine distance to every cluster; the row's own cluster excludes the row itself.
        dots = (xb @ sums).astype(np.float64)
        mean_dist = 1.0 - dots / np.maximum(sizes, 1)
        self_dot = np.einsum("ij,ij->i", xb, xb).astype(np.float64)
        own_size = sizes[own]
        own_dots = dots[np.arange(len(block)), own]
        a = ((own_size - 1) - (own_dots - self_dot)) / np.maximum(own_size - 1, 1)
        mean_dist[:, empty] = np.inf
        mean_dist[np.arange(len(block)), own] = np.inf
        b = mean_dist.min(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.nan_to_num((b - a) / np.maximum(a, b))
        s[own_size == 1] = 0.0  # sklearn's convention for singleton clusters
        scores[start : start + len(block)] = s
    if len(rows) == n:
        return float(scores.mean()), 0.0
    # Standard error of a mean of a sample drawn without replacement (finite population correction).
    error = float(scores.std(ddof=1) / math.sqrt(len(rows)) * math.sqrt(1 - len(rows) / n))
    return float(scores.mean()), error


@dataclass
class KSelection:
    """Result of [`choose_k`].

    Args:
        k (`int`):
            The chosen number of clusters.
        silhouette (`dict[int, float]`):
            Estimated silhouette of the whole pool's clustering at every candidate tried, by ascending k.
        standard_error (`dict[int, float]`):
            Standard error of each estimate.
        clustering (`Clustering`):
            The whole pool's clustering at the chosen k (what [`kmeans`] returns for it).
        sample_size (`int`):
            Rows the silhouette was averaged over.
        grid (`list[int]`):
            The candidate grid; with the default grid, not every point is tried (see [`choose_k`]).
        search (`str`):
            `"coarse-to-fine"` (default grid) or `"every candidate"` (the user's list).
    """

    k: int
    silhouette: dict
    standard_error: dict
    clustering: Clustering
    sample_size: int
    grid: list
    search: str

    def record(self) -> dict:
        """The `k_selection` entry of a manifest: mode, the curve and the estimator's settings (JSON values)."""
        return {
            "mode": "auto",
            "candidates": sorted(self.silhouette),
            "silhouette": {str(c): s for c, s in self.silhouette.items()},
            "standard_error": {str(c): e for c, e in self.standard_error.items()},
            "chosen": self.k,
            "grid": list(self.grid),
            "search": self.search,
            "estimator": {
                "metric": "cosine",
                "clustering": "whole pool",
                "sample_size": self.sample_size,
                "min_rows_per_cluster": MIN_ROWS_PER_CLUSTER,
            },
        }


def choose_k(
    embeddings: np.ndarray,
    candidates: list[int] | None = None,
    *,
    seed: int = 0,
    sample_size: int = SILHOUETTE_SAMPLE,
    niter: int = 20,
    gpu: bool | None = None,
) -> KSelection:
    """Pick k by the silhouette of the whole pool's clustering (the paper's guidance).

    Each candidate k is judged on what `kmeans(embeddings, k)` would return for the pool (faiss fits on its
    sample of at most 256 rows per centroid, then every row is assigned), scored by [`silhouette`] on a seeded
    sample of rows. Clustering a 4,000-row sample instead (what hf_idsel did before) capped k at 362 and
    biased it low: with few rows per cluster, clusters split by k-means look poorly separated and the sample's
    silhouette peaks below the pool's structure.

    With the default grid ([`default_k_candidates`]) the search is coarse-to-fine: every power of two first,
    then the grid's midpoints on either side of the best. A user's `candidates` are all tried.

    Args:
        embeddings (`np.ndarray`):
            `(n, d)` unit-norm rows.
        candidates (`list[int]`, *optional*):
            The k values to try (those outside `[2, n - 1]` are skipped); defaults to
            `default_k_candidates(n)`.
        seed (`int`, *optional*, defaults to `0`):
            Seeds each k-means (as the final clustering is seeded) and the silhouette's sample.
        sample_size (`int`, *optional*, defaults to `20000`):
            Rows whose silhouette is averaged; every row when the pool is no larger.
        niter (`int`, *optional*, defaults to `20`):
            k-means iterations per candidate.
        gpu (`bool`, *optional*):
            As in [`kmeans`].

    Returns:
        [`KSelection`]: the chosen k (ties: the smaller k), the silhouette curve and the pool's clustering at k.
    """
    n = embeddings.shape[0]
    seed = check_seed(seed)
    sample_size = check_int(sample_size, "sample_size", minimum=2, maximum=MAX_INT32)
    if candidates:
        grid = sorted(set(int(c) for c in candidates))
        search = "every candidate"
    else:
        grid = default_k_candidates(n)
        search = "coarse-to-fine"
    usable = [k for k in grid if 2 <= k < n]
    if not usable:
        raise InvalidArgumentError(
            f"k='auto' has no candidate k in [2, {n - 1}] to try (candidates: {grid}); "
            "pass an explicit `k`, `k_candidates`, or a pool of at least 20 rows."
        )
    scores, errors = {}, {}
    best = None  # (score, -k, clustering): only the best clustering is kept, each holds n labels

    def score(ks, desc):
        nonlocal best
        for k in tqdm(ks, desc=desc, unit="k"):
            clustering = kmeans(embeddings, k, seed=seed, niter=niter, gpu=gpu, warn_empty=False)
            scores[k], errors[k] = silhouette(embeddings, clustering.labels, sample_size=sample_size, seed=seed)
            if best is None or (scores[k], -k) > best[:2]:
                best = (scores[k], -k, clustering)

    if search == "coarse-to-fine":
        powers = [k for k in usable if k & (k - 1) == 0] or usable
        score(powers, "Choosing k (silhouette, powers of two)")
        at = usable.index(-best[1])
        score([k for k in usable[max(at - 1, 0) : at + 2] if k not in scores], "Choosing k (silhouette, refining)")
    else:
        score(usable, "Choosing k (silhouette)")
    chosen = -best[1]
    curve = {c: scores[c] for c in sorted(scores)}
    logger.info("Silhouette by k: %s -> k=%d", {c: round(v, 4) for c, v in curve.items()}, chosen)
    return KSelection(
        k=chosen,
        silhouette=curve,
        standard_error={c: errors[c] for c in sorted(errors)},
        clustering=best[2],
        sample_size=min(n, sample_size),
        grid=usable,
        search=search,
    )


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)
