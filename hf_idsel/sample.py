"""Sample: budgets -> per-cluster quotas -> rows inside each cluster.

One code path serves static selection (`diverse_select`) and every round of the iterative
trainer: a round is `kmq_sample` with the current cluster weights and the rows already chosen
excluded. Round 1 passes no weights, which is exactly kMQ: uniform weights of 1/k are the same in
exact arithmetic but can round a quota's remainder differently in floating point.

Inside a cluster, rows are drawn without replacement with probability proportional to
`softmax(quality / temperature)` (or to `quality` itself, "linear"), using Gumbel-top-k: a row's
priority is `log p + Gumbel noise`, and the top `quota` priorities of a cluster are an exact
weighted sample without replacement. Without a quality column the draw is uniform.

A selection aimed at a target (`hf_idsel.target`) passes cluster weights `affinity ** sharpness`
([`affinity_weights`]): the quotas become proportional to size x weight, with the same exact
rounding and the same in-cluster draw.
"""

from __future__ import annotations

import logging
import math
import numbers

import numpy as np

from .checks import scalar, short
from .errors import InvalidArgumentError

logger = logging.getLogger(__name__)

QUALITY_WEIGHTINGS = ("softmax", "linear")
QUOTA_RULES = ("proportional", "equal")


def parse_budget(value):
    """`budget` from the command line or a recipe, read as Python reads the number: "64" is 64 rows,
    "0.1" and "1.0" are fractions of the pool. A 0-dimensional numpy array is its number; anything else but a string
    is returned as it is."""
    if not isinstance(value, str):
        return scalar(value)
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    raise InvalidArgumentError(f"`budget`={value!r} is neither a row count (an int) nor a fraction of the pool (a float).")


def check_budget(budget, *, argument: str = "budget") -> None:
    """Refuse a budget that is neither an int >= 1 (rows) nor a float in (0, 1] (fraction), before the pool is known."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise InvalidArgumentError(
            f"`{argument}` must be an int (rows) or a float in (0, 1] (fraction of the pool), got {short(budget)}."
        )
    if isinstance(budget, numbers.Integral):
        if budget < 1:
            raise InvalidArgumentError(f"`{argument}`={int(budget)} must be at least 1 row.")
    elif not math.isfinite(budget) or not 0 < budget <= 1:
        raise InvalidArgumentError(
            f"`{argument}`={budget} as a float is a fraction of the pool and must be in (0, 1]; "
            "pass an int for a number of rows."
        )


def resolve_budget(budget, n: int, *, argument: str = "budget") -> int:
    """Turn a row count (int) or a fraction of the pool (float in (0, 1]) into an exact row count."""
    check_budget(budget, argument=argument)
    if isinstance(budget, numbers.Integral):
        rows = int(budget)
    else:
        rows = math.floor(budget * n + 0.5)
        if rows < 1:
            raise InvalidArgumentError(
                f"`{argument}`={budget} of {n} rows rounds to 0 rows; use a larger fraction or an int."
            )
    if rows > n:
        raise InvalidArgumentError(
            f"`{argument}`={rows} rows is more than the pool has ({n} rows); lower it or use a larger pool."
        )
    return rows


def validate_quality(values, column: str, *, weighting: str = "softmax") -> np.ndarray:
    """Quality scores as float64, refusing missing, NaN and (for linear weighting) negative values."""
    array = np.asarray([np.nan if v is None else v for v in values] if isinstance(values, list) else values)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise InvalidArgumentError(f"`quality_column`={column!r} must hold numbers, got dtype {array.dtype}.")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        raise InvalidArgumentError(
            f"`quality_column`={column!r} has {int(bad.sum())} missing/NaN/infinite values (first at row "
            f"{int(np.argmax(bad))}). Fill or drop them, e.g. `ds.filter(lambda r: r[{column!r}] is not None)`."
        )
    if weighting == "linear" and (array < 0).any():
        raise InvalidArgumentError(
            f"`quality_column`={column!r} has negative values (first at row {int(np.argmax(array < 0))}), "
            "which linear weighting cannot use as probabilities; use quality_weighting='softmax' or shift the scores."
        )
    return array


def affinity_weights(affinity, sharpness: float) -> np.ndarray:
    """Cluster weights for a target: `affinity ** sharpness` (float64; `0 ** 0` is 1, so a sharpness of 0 gives kMQ's
    uniform weights).

    Args:
        affinity (`np.ndarray`):
            Each cluster's affinity to the target, in [0, 1] ([`~target.cluster_affinity`]).
        sharpness (`float`):
            The exponent, >= 0: quotas per row of two clusters are in the ratio `(a_1 / a_2) ** sharpness`.
    """
    affinity = np.asarray(affinity, dtype=np.float64)
    if not np.isfinite(affinity).all() or (affinity < 0).any() or (affinity > 1).any():
        raise InvalidArgumentError("Cluster affinities must be finite numbers in [0, 1].")
    if not math.isfinite(sharpness) or sharpness < 0:
        raise InvalidArgumentError(f"`target_sharpness`={sharpness!r} must be a finite number >= 0.")
    return np.power(affinity, float(sharpness))


def cluster_quotas(available: np.ndarray, total: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Split `total` rows over clusters in proportion to `weights * available`, exactly.

    Largest-remainder rounding; a cluster whose share exceeds its available rows gets all of them
    and the rest is shared again among the others. Clusters with zero weight are used only when
    the positive-weight clusters cannot absorb the total.

    Args:
        available (`np.ndarray`):
            Rows each cluster can still give.
        total (`int`):
            Rows to draw; at most `available.sum()`.
        weights (`np.ndarray`, *optional*):
            Non-negative cluster weights; uniform (= size-proportional quotas) when `None`.
    """
    available = np.asarray(available, dtype=np.int64)
    if total > int(available.sum()):
        raise InvalidArgumentError(f"Cannot draw {total} rows: only {int(available.sum())} are available.")
    weights = np.ones(len(available)) if weights is None else np.asarray(weights, dtype=np.float64)
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise InvalidArgumentError("Cluster `weights` must be finite and non-negative.")
    share = weights * available
    quotas = np.zeros(len(available), dtype=np.int64)
    remaining = int(total)
    open_ = share > 0
    while remaining > 0:
        if not open_.any():
            # Only zero-weight clusters have rows left: share by size.
            share = (available - quotas).astype(np.float64)
            open_ = share > 0
        idx = np.flatnonzero(open_)
        room = available[idx] - quotas[idx]
        ideal = remaining * share[idx] / share[idx].sum()
        full = ideal >= room
        if full.any():
            quotas[idx[full]] += room[full]
            remaining -= int(room[full].sum())
            open_[idx[full]] = False
            continue
        base = np.floor(ideal).astype(np.int64)
        extra = remaining - int(base.sum())
        # Largest remainders first (compared in floating point); equal remainders go to the lower cluster id.
        order = np.lexsort((idx, -(ideal - base)))
        base[order[:extra]] += 1
        quotas[idx] += base
        remaining = 0
    return quotas


def row_priorities(
    n: int,
    rng: np.random.Generator,
    *,
    quality: np.ndarray | None = None,
    temperature: float = 1.0,
    weighting: str = "softmax",
) -> tuple[np.ndarray, np.ndarray]:
    """Gumbel-top-k keys: `(log p + Gumbel, Gumbel)`; sort by the first, break ties by the second."""
    gumbel = rng.gumbel(size=n)
    if quality is None:
        return gumbel, gumbel
    if weighting == "softmax":
        log_p = quality / temperature
    else:
        with np.errstate(divide="ignore"):
            log_p = np.log(quality)
    return log_p + gumbel, gumbel


def take_top(labels: np.ndarray, quotas: np.ndarray, key: np.ndarray, tiebreak: np.ndarray, eligible=None):
    """For each cluster j, the `quotas[j]` eligible rows with the highest `key`; sorted row ids."""
    k = len(quotas)
    bucket = labels.copy()
    if eligible is not None:
        bucket[~eligible] = k  # a bucket of its own that is never drawn from
    order = np.lexsort((tiebreak, -key, bucket))
    sorted_bucket = bucket[order]
    starts = np.searchsorted(sorted_bucket, np.arange(k + 1))
    rank = np.arange(len(order)) - starts[sorted_bucket]
    limit = np.append(quotas, 0)[sorted_bucket]
    return np.sort(order[rank < limit])


def kmq_sample(
    labels: np.ndarray,
    budget: int,
    *,
    k: int,
    seed: int | np.random.Generator = 0,
    quality: np.ndarray | None = None,
    temperature: float = 1.0,
    weighting: str = "softmax",
    weights: np.ndarray | None = None,
    eligible: np.ndarray | None = None,
    quota: str = "proportional",
) -> np.ndarray:
    """kMQ: per-cluster quotas, then a quality-weighted draw without replacement inside each cluster.

    Args:
        labels (`np.ndarray`):
            Cluster id of every pool row.
        budget (`int`):
            Exact number of rows to return.
        k (`int`):
            Number of clusters.
        seed (`int` or `np.random.Generator`, *optional*, defaults to `0`):
            Randomness of the in-cluster draw.
        quality (`np.ndarray`, *optional*):
            Per-row quality; uniform inside a cluster when `None`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature of the quality weighting (lower = greedier).
        weighting (`str`, *optional*, defaults to `"softmax"`):
            `"softmax"` (p ~ exp(q / temperature)) or `"linear"` (p ~ q).
        weights (`np.ndarray`, *optional*):
            Cluster weights (iterative rounds); quotas are proportional to `weights * available rows`.
        eligible (`np.ndarray`, *optional*):
            Boolean mask of rows that may be drawn (rows already chosen, or de-duplicated, are not).
        quota (`str`, *optional*, defaults to `"proportional"`):
            `"proportional"` to cluster size (the paper) or `"equal"` per cluster (the research code).
    """
    rng = np.random.default_rng(seed) if not isinstance(seed, np.random.Generator) else seed
    available = np.bincount(labels if eligible is None else labels[eligible], minlength=k)
    if quota == "equal":  # with weights (a target): proportional to the weight alone
        share = (available > 0).astype(np.float64) / np.maximum(available, 1)
        weights = share if weights is None else np.asarray(weights, dtype=np.float64) * share
    quotas = cluster_quotas(available, budget, weights)
    key, tiebreak = row_priorities(len(labels), rng, quality=quality, temperature=temperature, weighting=weighting)
    return take_top(labels, quotas, key, tiebreak, eligible)


def kmeans_closest(labels, similarity, budget, *, k, eligible=None) -> np.ndarray:
    """Size-proportional quotas filled with the rows nearest each centroid."""
    available = np.bincount(labels if eligible is None else labels[eligible], minlength=k)
    quotas = cluster_quotas(available, budget)
    return take_top(labels, quotas, similarity.astype(np.float64), np.arange(len(labels)), eligible)


def random_sample(n: int, budget: int, *, seed=0, eligible=None) -> np.ndarray:
    """A uniform sample of `budget` rows (among the eligible ones)."""
    rng = np.random.default_rng(seed)
    pool = np.arange(n) if eligible is None else np.flatnonzero(eligible)
    return np.sort(rng.choice(pool, size=budget, replace=False))


def random_order(n: int, *, seed=0, eligible=None) -> np.ndarray:
    """Every eligible row in a uniformly random order (for token budgets)."""
    order = np.random.default_rng(seed).permutation(n)
    return order if eligible is None else order[eligible[order]]


def priority_order(
    labels: np.ndarray,
    key: np.ndarray,
    tiebreak: np.ndarray,
    *,
    k: int,
    eligible=None,
    quota: str = "proportional",
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Every eligible row in the order a growing budget would take it (for token budgets).

    Clusters are interleaved by Sainte-Lague seat order over their sizes (or equal shares with
    `quota="equal"`), times their `weights` when given (a target's), so any prefix has per-cluster
    counts within one of the weighted share; a cluster of weight 0 comes after every other. Inside a
    cluster rows go by descending `key`, ties by `tiebreak` (e.g. [`row_priorities`]).
    """
    n = len(labels)
    mask = np.ones(n, dtype=bool) if eligible is None else eligible
    bucket = np.where(mask, labels, k)
    order = np.lexsort((tiebreak, -key, bucket))
    order = order[bucket[order] < k]
    sorted_labels = labels[order]
    available = np.bincount(sorted_labels, minlength=k).astype(np.float64)
    share = (available > 0).astype(np.float64) if quota == "equal" else available
    if weights is not None:
        share = share * np.asarray(weights, dtype=np.float64)
    starts = np.searchsorted(sorted_labels, np.arange(k))
    rank = np.arange(len(order)) - starts[sorted_labels]
    with np.errstate(divide="ignore"):  # a zero share seats its rows at infinity: after every other cluster's
        seat = (rank + 0.5) / share[sorted_labels]
    return order[np.lexsort((sorted_labels, seat))]


def token_prefix(order: np.ndarray, lengths: np.ndarray, max_tokens: int) -> np.ndarray:
    """The longest prefix of `order` whose token lengths sum to at most `max_tokens`, sorted."""
    total = np.cumsum(lengths[order])
    count = int(np.searchsorted(total, max_tokens, side="right"))
    return np.sort(order[:count])
