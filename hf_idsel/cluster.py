"""Cluster: seeded faiss k-means on unit vectors, chunked assignment, and k chosen by silhouette (the paper's range).

k-means is fitted on at most `max_points_per_centroid * k` rows (a seeded sample), then every row is
assigned to its nearest centroid in chunks, so memory stays near the size of the embedding matrix.
Vectors stored as float16 ([`~cache.StoredVectors`], memory-mapped) are never loaded whole: only the
training sample and one chunk at a time are upcast to float32. On a machine where faiss sees a GPU,
training and assignment run there.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass

import numpy as np
from datasets.utils.tqdm import tqdm

from .checks import MAX_INT32, check_choice, check_int, check_seed
from .errors import InvalidArgumentError, MissingDependencyError

logger = logging.getLogger(__name__)

ASSIGN_CHUNK = 65536
# k="auto": the top and bottom of the paper's k sweep, the fewest rows per cluster a candidate may average, the
# span (a factor) of the fallback candidates below the cap when the cap is under 64, the width of the near-tie
# band in standard deviations, how many top candidates are re-run with a second seed, and the rows the
# silhouette is averaged over.
MAX_AUTO_K = 8192
PAPER_MIN_K = 64
MIN_ROWS_PER_CLUSTER = 16
FALLBACK_SPAN = 4
TIE_Z = 2.0
SEED_CHECK_TOP = 3
# The rules of choose_k, and the `k` strings that select them.
K_RULES = ("paper", "global")
AUTO_K = {"auto": "paper", "auto-global": "global"}
_HALF_NORMAL_MEDIAN = statistics.NormalDist().inv_cdf(0.75)  # median |z| of a standard normal z
SILHOUETTE_SAMPLE = 20000
SILHOUETTE_CHUNK = 2048
# Above this many rows k="auto" runs its search on a seeded sample of them (16 rows a cluster at k = 8192), then
# clusters the whole pool once at the chosen k: each candidate's k-means on the whole pool costs rows x k.
SEARCH_ROWS = MIN_ROWS_PER_CLUSTER * MAX_AUTO_K


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


def k_range(n: int, budget: int | None = None, *, rule: str = "paper", max_k: int | None = None) -> tuple[int, int]:
    """The smallest and largest k that `k="auto"` may try on a pool of `n` rows, as `(lower, upper)`.

    `upper` is `min(max_k or 8192, n // 16)` (`n // 10` for pools of 20 to 31 rows); with `rule="paper"` and a
    row budget it is also below half the budget (the largest int under `budget / 2`, at least 2), so that each
    cluster can get more than two of the budget's rows. `lower` is 2 for `rule="global"`. For `rule="paper"` it
    is 64, the bottom of the paper's sweep, when `upper` reaches 64; a smaller pool or budget (under 1,024 rows,
    or a budget under 130 rows) falls back to the largest feasible candidates, from a quarter of `upper` (at
    least 2) up to it: two octaves at the fine end, where the paper's regime is, rather than the pool's top
    level that a search from k = 2 finds.

    Args:
        n (`int`):
            Rows in the pool.
        budget (`int`, *optional*):
            Rows the selection keeps; `None` (a token budget, or no budget known) sets no cap.
        rule (`str`, *optional*, defaults to `"paper"`):
            `"paper"` or `"global"` (see [`choose_k`]).
        max_k (`int`, *optional*):
            A lower ceiling than 8192.
    """
    check_choice(rule, "rule", K_RULES)
    if budget is not None:
        budget = check_int(budget, "budget", minimum=1)
    # Pools of 20 to 31 rows keep the one candidate (k=2, 10 rows a cluster) they had before the floor was 16.
    upper = min(n // MIN_ROWS_PER_CLUSTER if n >= 2 * MIN_ROWS_PER_CLUSTER else n // 10, max_k or MAX_AUTO_K)
    if rule == "global":
        return 2, upper
    if budget is not None:
        upper = min(upper, max(2, (budget - 1) // 2))
    lower = PAPER_MIN_K if upper >= PAPER_MIN_K else max(2, math.ceil(upper / FALLBACK_SPAN))
    return lower, upper


def default_k_candidates(n: int, budget: int | None = None, *, rule: str = "paper", max_k: int | None = None) -> list[int]:
    """The candidate grid of `k="auto"`: powers of two and their geometric midpoints (about x1.41 apart) in
    [`k_range`]`(n, budget, rule=rule, max_k=max_k)`.

    With `rule="paper"` that is 64 ... `min(8192, n // 16, budget / 2)`; with `rule="global"` 2 ... `min(8192,
    n // 16)`. 8192 is the top of the paper's sweep (64 ... 8192). The floor of 16 rows per cluster on average
    keeps clusters large enough that their k-means centroids are more than a handful of rows; 8192 is reached
    from 131,072 rows. Any k in the grid's range has a grid point within a factor of 1.2.
    """
    lower, upper = k_range(n, budget, rule=rule, max_k=max_k)
    grid = [int(round(2 ** (e / 2))) for e in range(2, 2 * int(math.log2(max(upper, 1))) + 2)]
    return [k for k in grid if lower <= k <= upper]


def warn_if_k_near_budget(k: int, budget: int | None) -> bool:
    """Log a warning when `k` is at least half the row budget (whatever chose k); returns whether it warned.

    The paper keeps k much smaller than the budget: with `k >= budget / 2` most clusters get two rows or fewer,
    so kMQ's per-cluster quotas are mostly rounding and the iterative scores rest on a row or two a cluster.
    """
    if budget is None or k < budget / 2:
        return False
    logger.warning(
        "k=%d clusters is at least half the budget of %d rows: most clusters get two rows or fewer (the paper keeps "
        "k much smaller than the budget). Pass a smaller `k`, or k='auto', which stays below budget / 2.",
        k, budget,
    )
    return True


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


def local_maxima(curve: dict) -> list[int]:
    """The candidates whose score is a local maximum of `curve` (`{k: score}`), by ascending k.

    A candidate counts when its score is above the next smaller candidate's and at least the next larger one's
    (so a flat top counts once, at its smallest k); an end of the curve needs only its one neighbour.
    """
    ks = sorted(curve)
    peaks = []
    for i, k in enumerate(ks):
        left = curve[ks[i - 1]] if i > 0 else -math.inf
        right = curve[ks[i + 1]] if i + 1 < len(ks) else -math.inf
        if curve[k] > left and curve[k] >= right:
            peaks.append(int(k))
    return peaks


def seed_spread(first: dict, second: dict) -> float:
    """The k-means seed-to-seed standard deviation of one silhouette score, from candidates scored under two seeds.

    Each candidate `k` in both `{k: score}` maps gives one difference `d = first[k] - second[k]`, normal with
    standard deviation `sqrt(2) * sd` if the seeds only jitter the clustering. The estimate is the median of
    `|d|` over `sqrt(2) * 0.6745` (the median of a half-normal), 0 with no candidate in common. The median, not
    the mean of `d ** 2`: one run caught in a poor local optimum (on six planted blobs, k = 8 scored 0.72 with
    one seed and 0.45 with the next) says that candidate is unreliable, not that every candidate is.
    """
    diffs = [abs(first[k] - second[k]) for k in first if k in second]
    if not diffs:
        return 0.0
    return statistics.median(diffs) / (math.sqrt(2) * _HALF_NORMAL_MEDIAN)


def near_ties(silhouette: dict, standard_error: dict, spread: float, *, z: float = TIE_Z) -> list[int]:
    """The candidates whose score cannot be told from the best one's, by ascending k.

    The best is the highest score (the smaller k on an exact tie). A candidate `k` ties with it when
    `best_score - score[k] <= z * sqrt(se[best] ** 2 + se[k] ** 2 + 2 * spread ** 2)`: the noise of the difference
    of two single-run estimates, each with its sampling error (`standard_error`) and the k-means seed-to-seed
    spread ([`seed_spread`]). The sampling errors of two candidates scored on the same rows are correlated, so
    the band is wider than their difference's own error, erring towards a tie.
    """
    best = max(silhouette, key=lambda k: (silhouette[k], -k))
    top = silhouette[best]
    return [
        int(k)
        for k in sorted(silhouette)
        if top - silhouette[k] <= z * math.sqrt(standard_error[best] ** 2 + standard_error[k] ** 2 + 2 * spread**2)
    ]


@dataclass
class KSelection:
    """Result of [`choose_k`].

    Args:
        k (`int`):
            The chosen number of clusters.
        silhouette (`dict[int, float]`):
            Estimated silhouette of the whole pool's clustering at every candidate tried, by ascending k.
        standard_error (`dict[int, float]`):
            Standard error of each estimate (the choice of rows scored).
        clustering (`Clustering`):
            The whole pool's clustering at the chosen k (what [`kmeans`] returns for it).
        sample_size (`int`):
            Rows the silhouette was averaged over.
        grid (`list[int]`):
            The candidate grid; with the default grid, not every point is tried (see [`choose_k`]).
        search (`str`):
            `"coarse-to-fine"` (default grid) or `"every candidate"` (the user's list).
        rule (`str`, *optional*, defaults to `"global"`):
            `"paper"` or `"global"` (see [`choose_k`]).
        budget (`int`, *optional*):
            The row budget the candidates were capped by (`None`: no cap).
        k_range (`tuple[int, int]`, *optional*):
            `(lower, upper)` of the default grid ([`k_range`]); `None` for the user's candidates.
        best (`int`, *optional*):
            The candidate with the highest silhouette (the chosen k unless a near-tie went to a smaller one).
        seed_check (`dict`, *optional*):
            Rule `"paper"`: `{"seed": s, "silhouette": {k: score}, "spread": sd}`, the top candidates' scores
            when k-means is re-run with seed `s` (the silhouette's rows unchanged) and the seed-to-seed standard
            deviation of one score ([`seed_spread`]).
        tied (`list[int]`, *optional*):
            Rule `"paper"`: the candidates within the noise band of the best ([`near_ties`]); the smallest is chosen.
        search_rows (`int`, *optional*):
            Rows of the seeded sample the candidates were clustered and scored on; `None` when the search
            clustered the whole pool.
    """

    k: int
    silhouette: dict
    standard_error: dict
    clustering: Clustering
    sample_size: int
    grid: list
    search: str
    rule: str = "global"
    budget: int | None = None
    k_range: tuple | None = None
    best: int | None = None
    seed_check: dict | None = None
    tied: list | None = None
    search_rows: int | None = None

    @property
    def local_maxima(self) -> list[int]:
        return local_maxima(self.silhouette)

    def record(self) -> dict:
        """The `k_selection` entry of a manifest: mode, the curve, its local maxima, the rule and how near-ties
        were broken, and the estimator's settings (JSON values)."""
        record = {
            "mode": "auto",
            "rule": self.rule,
            "candidates": sorted(self.silhouette),
            "silhouette": {str(c): s for c, s in self.silhouette.items()},
            "standard_error": {str(c): e for c, e in self.standard_error.items()},
            "chosen": self.k,
            "best": self.best if self.best is not None else self.k,
            "local_maxima": self.local_maxima,
            "budget": self.budget,
            "range": None if self.k_range is None else {
                "lower": self.k_range[0], "upper": self.k_range[1], "fallback": self.rule == "paper" and self.k_range[0] < PAPER_MIN_K
            },
            "grid": list(self.grid),
            "search": self.search,
            "estimator": {
                "metric": "cosine",
                "clustering": "whole pool" if self.search_rows is None else "seeded sample",
                "sample_size": self.sample_size,
                "min_rows_per_cluster": MIN_ROWS_PER_CLUSTER,
            },
        }
        if self.search_rows is not None:
            record["estimator"]["search_rows"] = self.search_rows
        if self.seed_check is not None:
            record["seed_check"] = {
                "seed": self.seed_check["seed"],
                "silhouette": {str(c): s for c, s in self.seed_check["silhouette"].items()},
                "spread": self.seed_check["spread"],
            }
            record["ties"] = {"z": TIE_Z, "tied": list(self.tied), "rule": "smallest k"}
        return record


def choose_k(
    embeddings: np.ndarray,
    candidates: list[int] | None = None,
    *,
    budget: int | None = None,
    rule: str = "paper",
    seed: int = 0,
    sample_size: int = SILHOUETTE_SAMPLE,
    search_rows: int = SEARCH_ROWS,
    niter: int = 20,
    gpu: bool | None = None,
) -> KSelection:
    """Pick k by the silhouette of the whole pool's clustering, inside the paper's range (its section 2.1).

    Each candidate k is judged on what `kmeans(embeddings, k)` would return for the pool (faiss fits on its
    sample of at most 256 rows per centroid, then every row is assigned), scored by [`silhouette`] on a seeded
    sample of rows. With the default grid ([`default_k_candidates`]) the search is coarse-to-fine: every power
    of two first, then the grid's midpoints on either side of the best. A user's `candidates` are all tried.

    `rule="paper"` (`k="auto"`): candidates from 64 up to `min(8192, n // 16, budget / 2)` (see [`k_range`] for
    smaller pools and budgets). Real pools are nested (source > task > topic) and the silhouette prefers the top
    level; the paper searched 64 ... 8192 and kept k much smaller than the budget. The three best candidates
    are clustered again with another seed (`seed + 1`, or `seed - 1` at the top of the seed range) and scored
    on the same rows: their differences measure the k-means seed-to-seed spread. Every candidate within the
    noise band of the best ([`near_ties`]: two standard deviations of a difference of two scores, from the
    sampling errors and that spread) is a near-tie, and the smallest of them is chosen: the silhouette cannot
    tell them apart, and fewer clusters give each cluster more of the budget's rows, so its quota and the
    iterative scores rest on more rows. The chosen clustering is still the first seed's.

    A pool of more than `search_rows` rows (131,072 by default: 16 rows a cluster at k = 8192) is searched on a
    seeded uniform sample of that many rows (at least 16 rows a cluster of the largest candidate): every
    candidate is clustered and scored on the sample, and the whole pool is clustered once, at the chosen k, as
    `kmeans(embeddings, k)` clusters it. A candidate's k-means on the whole pool costs rows x k, which at a
    million rows made the search most of a selection's time.

    `rule="global"` (`k="auto-global"`): candidates from 2 (no budget cap), and the highest score wins (ties:
    the smaller k), with no second seed: hf_idsel's `k="auto"` before the paper's rule.

    Args:
        embeddings (`np.ndarray`):
            `(n, d)` unit-norm rows.
        candidates (`list[int]`, *optional*):
            The k values to try (those outside `[2, n - 1]` are skipped); defaults to
            `default_k_candidates(n, budget, rule=rule)`.
        budget (`int`, *optional*):
            Rows the selection keeps: caps the default grid below `budget / 2` (rule `"paper"`), and a chosen
            `k >= budget / 2` logs a warning ([`warn_if_k_near_budget`]).
        rule (`str`, *optional*, defaults to `"paper"`):
            `"paper"` or `"global"`, as above.
        seed (`int`, *optional*, defaults to `0`):
            Seeds each k-means (as the final clustering is seeded) and the silhouette's sample.
        sample_size (`int`, *optional*, defaults to `20000`):
            Rows whose silhouette is averaged; every row when the pool is no larger.
        search_rows (`int`, *optional*, defaults to `131072`):
            Pools above this many rows are searched on a seeded sample of this many rows (more when a candidate
            needs them for 16 rows a cluster), as above.
        niter (`int`, *optional*, defaults to `20`):
            k-means iterations per candidate.
        gpu (`bool`, *optional*):
            As in [`kmeans`].

    Returns:
        [`KSelection`]: the chosen k, the silhouette curve and the pool's clustering at k.
    """
    n = embeddings.shape[0]
    seed = check_seed(seed)
    sample_size = check_int(sample_size, "sample_size", minimum=2, maximum=MAX_INT32)
    search_rows = check_int(search_rows, "search_rows", minimum=2, maximum=MAX_INT32)
    lower_upper = k_range(n, budget, rule=rule)  # checks rule and budget
    if budget is not None:
        budget = int(budget)
    if candidates:
        grid = sorted(set(int(c) for c in candidates))
        search, lower_upper = "every candidate", None
    else:
        grid = default_k_candidates(n, budget, rule=rule)
        search = "coarse-to-fine"
        if rule == "paper" and lower_upper[0] < PAPER_MIN_K and grid:
            logger.info(
                "k='auto': %d rows%s allow k up to %d (16 rows a cluster%s), below the paper's floor of %d; trying "
                "the largest feasible candidates %s.",
                n, f" and a budget of {budget} rows" if budget is not None else "", lower_upper[1],
                ", k < budget / 2" if budget is not None else "", PAPER_MIN_K, grid,
            )
    usable = [k for k in grid if 2 <= k < n]
    if not usable:
        raise InvalidArgumentError(
            f"k='auto' has no candidate k in [2, {n - 1}] to try (candidates: {grid}); "
            "pass an explicit `k`, `k_candidates`, or a pool of at least 20 rows."
        )
    searched, rows = embeddings, None
    if n > search_rows:
        rows_needed = min(n, max(search_rows, MIN_ROWS_PER_CLUSTER * max(usable)))
        if rows_needed < n:
            rows = np.sort(np.random.default_rng([seed, 2]).choice(n, size=rows_needed, replace=False))
            searched = embeddings[rows] if isinstance(embeddings, np.ndarray) else _gather(embeddings, rows)
            logger.info("k='auto': searching k on a seeded sample of %d of the pool's %d rows.", rows_needed, n)
    scores, errors, kept = {}, {}, {}

    def score(ks, desc):
        for k in tqdm(ks, desc=desc, unit="k"):
            clustering = kmeans(searched, k, seed=seed, niter=niter, gpu=gpu, warn_empty=False)
            scores[k], errors[k] = silhouette(searched, clustering.labels, sample_size=sample_size, seed=seed)
            if rows is not None:
                continue  # the sample's clusterings are not the pool's: the pool is clustered once, at the chosen k
            # The global rule keeps only its best clustering (each holds n labels); the paper's keeps every one,
            # since a near-tie may go to any candidate.
            if rule == "paper" or not kept or (scores[k], -k) > max((scores[c], -c) for c in kept):
                if rule == "global":
                    kept.clear()
                kept[k] = clustering

    def best():
        return max(scores, key=lambda k: (scores[k], -k))

    if search == "coarse-to-fine":
        powers = [k for k in usable if k & (k - 1) == 0] or usable
        score(powers, "Choosing k (silhouette, powers of two)")
        at = usable.index(best())
        score([k for k in usable[max(at - 1, 0) : at + 2] if k not in scores], "Choosing k (silhouette, refining)")
    else:
        score(usable, "Choosing k (silhouette)")
    top = best()
    chosen, seed_check, tied = top, None, None
    if rule == "paper":
        other = seed + 1 if seed < MAX_INT32 else seed - 1
        rerun = sorted(scores, key=lambda k: (-scores[k], k))[:SEED_CHECK_TOP]
        again = {}
        for k in tqdm(sorted(rerun), desc="Choosing k (seed spread)", unit="k"):
            labels = kmeans(searched, k, seed=other, niter=niter, gpu=gpu, warn_empty=False).labels
            again[k] = silhouette(searched, labels, sample_size=sample_size, seed=seed)[0]
        spread = seed_spread({k: scores[k] for k in again}, again)
        seed_check = {"seed": other, "silhouette": again, "spread": spread}
        tied = near_ties(scores, errors, spread)
        chosen = tied[0]
    curve = {c: scores[c] for c in sorted(scores)}
    logger.info(
        "Silhouette by k: %s; local maxima %s%s -> k=%d",
        {c: round(v, 4) for c, v in curve.items()}, local_maxima(curve),
        f"; near-ties of the best (k={top}) within the noise (seed spread {seed_check['spread']:.4f}): {tied}"
        if tied is not None else "",
        chosen,
    )
    warn_if_k_near_budget(chosen, budget)
    if rows is not None:
        kept[chosen] = kmeans(embeddings, chosen, seed=seed, niter=niter, gpu=gpu, warn_empty=False)
    return KSelection(
        k=chosen,
        silhouette=curve,
        standard_error={c: errors[c] for c in sorted(errors)},
        clustering=kept[chosen],
        sample_size=min(len(searched), sample_size),
        grid=usable,
        search=search,
        rule=rule,
        budget=budget,
        k_range=lower_upper,
        best=top,
        seed_check=seed_check,
        tied=tied,
        search_rows=None if rows is None else len(rows),
    )


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)
