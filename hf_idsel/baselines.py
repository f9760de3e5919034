"""Baseline selection methods the paper (arXiv 2409.11378) compares kMQ against.

The first three work on a unit-normalised float32 embedding matrix (rows of L2 norm 1, so cosine
similarity is a dot product) and return row indices in selection order:

- [`kcenter_greedy`]: greedy k-center (farthest-point traversal).
- [`deita_select`]: Deita-style score-first selection with a cosine-similarity filter.
- [`qdit_select`]: QDIT, lazy greedy on (1 - alpha) * facility location + alpha * quality.

[`balanced_random`] needs no embeddings: a uniform draw with an equal share per data source, the
fair random baseline (unbalanced random scores about 3 points lower in arXiv 2409.11378).

Argument checks here are a second line of defence; `diverse_select` (select.py) validates first.
"""

from __future__ import annotations

import heapq
import logging
import numbers

import numpy as np

from .errors import InvalidArgumentError

logger = logging.getLogger(__name__)

# Rows per chunk when streaming the pool through a matrix product: bounds temporaries to
# `_ROW_CHUNK x (something small)` floats whatever n is.
_ROW_CHUNK = 16384
# `kcenter_greedy` works on a shortlist of the rows with the smallest similarity bounds, brings
# at most this many of them up to date per matrix product, against this many centres at a time.
_KCENTER_SHORTLIST = 4096
_KCENTER_UPDATE_BLOCK = 512
_KCENTER_CENTER_CHUNK = 4096
# Candidates checked together by `deita_select`; larger blocks use BLAS better but waste work
# past the point where the budget fills.
_DEITA_BLOCK = 1024
# Fewest / most stale candidates `qdit_select` re-evaluates together: a product with a few
# columns costs about as much as with one, and larger batches cost little extra work.
_QDIT_MIN_BATCH = 16
_QDIT_MAX_BATCH = 256
# A stale QDIT gain is updated from the floor changes since it was computed while those are at
# most n / this many, and recomputed over the whole pool otherwise.
_QDIT_INCREMENTAL_DIVISOR = 2


def _as_embeddings(embeddings) -> np.ndarray:
    emb = np.asarray(embeddings)
    if emb.ndim != 2 or emb.shape[0] == 0 or emb.shape[1] == 0:
        raise InvalidArgumentError(
            f"`embeddings` must be a non-empty 2-D array (n x d), got shape {emb.shape}."
        )
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if not np.isfinite(emb).all():
        raise InvalidArgumentError("`embeddings` contains NaN or infinite values.")
    return emb


def _check_budget(budget, n: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise InvalidArgumentError(f"`budget` must be an integer, got {budget!r}.")
    budget = int(budget)
    if budget < 1 or budget > n:
        raise InvalidArgumentError(
            f"`budget` must be between 1 and the number of rows ({n}), got {budget}."
        )
    return budget


def _as_scores(scores, n: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.shape[0] != n:
        raise InvalidArgumentError(
            f"`scores` must be a 1-D array with one score per row ({n}), got shape {s.shape}."
        )
    if not np.isfinite(s).all():
        raise InvalidArgumentError("`scores` contains NaN or infinite values.")
    return s


def _scored_inputs(embeddings, scores, budget) -> tuple[np.ndarray, np.ndarray, int]:
    emb = _as_embeddings(embeddings)
    budget = _check_budget(budget, emb.shape[0])
    return emb, _as_scores(scores, emb.shape[0]), budget


def _as_unit_number(value, name: str, *, include_zero: bool) -> float:
    interval = "[0, 1]" if include_zero else "(0, 1]"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(f"`{name}` must be a number in {interval}, got {value!r}.")
    value = float(value)
    if not (0.0 <= value if include_zero else 0.0 < value) or not value <= 1.0:
        raise InvalidArgumentError(f"`{name}` must be in {interval}, got {value}.")
    return value


def _score_order(scores: np.ndarray) -> np.ndarray:
    # Stable sort of the negated scores: descending score, ties by lower index.
    return np.argsort(-scores, kind="stable")


def kcenter_greedy(embeddings: np.ndarray, budget: int, *, seed: int = 0) -> np.ndarray:
    """Greedy k-center (farthest-point traversal).

    Starts from one row drawn with `np.random.default_rng(seed)`, then repeatedly adds the row
    farthest from its nearest chosen row. On unit vectors the Euclidean distance is
    `sqrt(2 - 2 cos)`, so this is the row with the smallest maximum cosine similarity to the
    chosen set. Ties go to the lowest index. Once only duplicates of chosen rows remain, the
    rest are still filled deterministically without repeats.

    The result is that of the plain O(n * d)-per-step loop (up to float rounding of near-ties),
    computed lazily: each row keeps its
    similarity to the centres applied to it so far (a lower bound of the true one) and only the
    rows that could be the farthest are brought up to date, many centres at a time in one matrix
    product. Worst case O(n * d * budget) like the plain loop; typically far less, since rows
    close to a centre are rarely revisited. Memory O(n + budget * d).

    Args:
        embeddings (`np.ndarray`):
            Unit-normalised embedding matrix of shape `(n, d)`.
        budget (`int`):
            Number of rows to select, between 1 and `n`.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the generator that picks the first row.

    Returns:
        `np.ndarray`: `budget` distinct row indices (`np.int64`) in selection order.
    """
    emb = _as_embeddings(embeddings)
    n, d = emb.shape
    budget = _check_budget(budget, n)

    selected = np.empty(budget, dtype=np.int64)
    selected[0] = int(np.random.default_rng(seed).integers(n))
    if budget == 1:
        return selected
    centers = np.empty((budget, d), dtype=np.float32)
    centers[0] = emb[selected[0]]
    # closest[i]: max cosine similarity of row i to centers[:applied[i]], a lower bound of its
    # similarity to the whole chosen set. Chosen rows hold +inf so exact duplicates of them are
    # never confused with them.
    closest = np.empty(n, dtype=np.float32)
    for start in range(0, n, _ROW_CHUNK):
        chunk = slice(start, start + _ROW_CHUNK)
        np.dot(emb[chunk], centers[0], out=closest[chunk])
    closest[selected[0]] = np.inf
    applied = np.ones(n, dtype=np.int64)

    def bring_up_to_date(rows: np.ndarray, k: int) -> None:
        # Rows are grouped by how many centres they lack, so that one long-stale row does not
        # make the whole group recompute centres the others already have.
        rows = rows[np.argsort(-applied[rows], kind="stable")]
        lacking = k - applied[rows]  # ascending
        start = 0
        while start < len(rows):
            end = int(np.searchsorted(lacking, 2 * lacking[start] + 16, side="right"))
            group = rows[start:end]
            first = int(applied[group[-1]])
            best, group_emb = closest[group], emb[group]
            for c0 in range(first, k, _KCENTER_CENTER_CHUNK):
                sims = group_emb @ centers[c0 : min(c0 + _KCENTER_CENTER_CHUNK, k)].T
                np.maximum(best, sims.max(axis=1), out=best)
            closest[group] = best
            applied[group] = k
            start = end

    def shortlist() -> tuple[np.ndarray, float]:
        # The rows with the smallest bounds (sorted, so argmin ties go to the lowest index) and
        # a bound that every row outside the shortlist is known to be at or above.
        if np.count_nonzero(closest < np.inf) <= _KCENTER_SHORTLIST:
            return np.flatnonzero(closest < np.inf), np.inf
        part = np.argpartition(closest, _KCENTER_SHORTLIST)
        return np.sort(part[:_KCENTER_SHORTLIST]), float(closest[part[_KCENTER_SHORTLIST]])

    pool, outside_bound = shortlist()
    for k in range(1, budget):  # k centres chosen so far
        just_rebuilt = False
        while True:
            if len(pool) == 0:
                pool, outside_bound = shortlist()
            j = int(pool[np.argmin(closest[pool])])
            if applied[j] < k:
                stale = pool[applied[pool] < k]
                if len(stale) > _KCENTER_UPDATE_BLOCK:
                    stale = stale[np.argpartition(closest[stale], _KCENTER_UPDATE_BLOCK)]
                    stale = stale[:_KCENTER_UPDATE_BLOCK]
                bring_up_to_date(stale, k)
                just_rebuilt = False
                continue
            if closest[j] < outside_bound:
                break
            if just_rebuilt:
                # Only ties at the bound are left (duplicates): settle them exactly.
                rest = np.flatnonzero((closest < np.inf) & (applied < k))
                for r0 in range(0, len(rest), _ROW_CHUNK):
                    bring_up_to_date(rest[r0 : r0 + _ROW_CHUNK], k)
                j = int(np.argmin(closest))
                break
            pool, outside_bound = shortlist()
            just_rebuilt = True
        selected[k] = j
        centers[k] = emb[j]
        closest[j] = np.inf
        pool = pool[pool != j]
    return selected


def deita_select(
    embeddings: np.ndarray, scores: np.ndarray, budget: int, *, threshold: float = 0.9
) -> np.ndarray:
    """Deita-style selection: score first, skip rows too similar to what is already chosen.

    Visits rows by descending score (ties by lower index) and keeps a row if its cosine
    similarity to every chosen row is below `threshold` (cosine distance above
    `1 - threshold`). Candidates are checked a block at a time: one matrix product against the
    chosen set, one inside the block, then sequential acceptance within the block, which gives
    exactly the row-by-row result. If one pass keeps fewer than `budget` rows, the rest is filled
    with the highest-scoring rows not yet chosen and a warning is logged. Cost: at most
    O(n * budget * d) for the similarity checks, usually far less since the scan stops once
    `budget` rows are kept.

    Args:
        embeddings (`np.ndarray`):
            Unit-normalised embedding matrix of shape `(n, d)`.
        scores (`np.ndarray`):
            One quality score per row, shape `(n,)`; higher is better.
        budget (`int`):
            Number of rows to select, between 1 and `n`.
        threshold (`float`, *optional*, defaults to `0.9`):
            Cosine-similarity threshold in `(0, 1]`: a row is skipped if its similarity to some
            chosen row is at least this. Higher values skip fewer rows.

    Returns:
        `np.ndarray`: `budget` distinct row indices (`np.int64`) in selection order.
    """
    emb, s, budget = _scored_inputs(embeddings, scores, budget)
    n = emb.shape[0]
    threshold = _as_unit_number(threshold, "threshold", include_zero=False)

    order = _score_order(s)
    kept = greedy_diverse_filter(emb, order, threshold, max_keep=budget)
    k = len(kept)
    selected = np.empty(budget, dtype=np.int64)
    selected[:k] = kept

    if k < budget:
        missing = budget - k
        is_chosen = np.zeros(n, dtype=bool)
        is_chosen[selected[:k]] = True
        selected[k:] = order[~is_chosen[order]][:missing]
        logger.warning(
            "deita_select: only %d of %d rows passed the cosine-similarity threshold %.4g; "
            "filled the remaining %d with the highest-scoring rows not yet chosen. Raise "
            "`deita_threshold` (towards 1) to skip fewer near-duplicates and avoid this.",
            k,
            budget,
            threshold,
            missing,
        )
    return selected


def qdit_select(
    embeddings: np.ndarray, scores: np.ndarray, budget: int, *, alpha: float = 0.5
) -> np.ndarray:
    """QDIT (Bukharin & Zhao, 2023): greedy quality-diversity trade-off.

    Greedily maximises `f(S) = (1 - alpha) * D(S) + alpha * Q(S)`, where
    `D(S) = mean_x max_{s in S} sim(x, s)` is facility location over the whole pool with
    `sim = (1 + cos) / 2` in `[0, 1]`, and `Q(S) = sum_{s in S} q(s) / budget` with `q` the
    scores min-max normalised to `[0, 1]` (all 0 when the scores are constant). `f` is monotone
    submodular, so the lazy greedy (stale gains are upper bounds, kept in a heap) returns the
    plain greedy's selection; ties go to the lowest index (up to float rounding of near-ties).

    Cost: a gain evaluation is O(n * d) the first time and, after that, O(d) per floor change
    since its last evaluation (rows whose nearest chosen row changed), batched into matrix
    products of up to 256 candidates (memory O(256 * n)). Flat pools need many evaluations:
    about 130 per step on 20k random 384-d rows (about a minute on 2 cores for budget 2k).

    Args:
        embeddings (`np.ndarray`):
            `(n, d)` unit-norm vectors; similarities are shifted into `[0, 1]` as above.
        scores (`np.ndarray`):
            Quality of each of the `n` rows (higher is better), min-max normalised before use.
        budget (`int`):
            Rows to choose, from 1 to `n`.
        alpha (`float`, *optional*, defaults to `0.5`):
            Weight of quality against diversity, in `[0, 1]`: `0` is pure facility location,
            `1` is the top-`budget` rows by score.

    Returns:
        `np.ndarray`: `budget` distinct row indices (`np.int64`) in selection order.
    """
    emb, s, budget = _scored_inputs(embeddings, scores, budget)
    n = emb.shape[0]
    alpha = _as_unit_number(alpha, "alpha", include_zero=True)

    if alpha == 1.0:
        # Gains are q(c) / budget whatever S is: the greedy is the top-`budget` by score.
        return _score_order(s)[:budget].astype(np.int64)
    span = s.max() - s.min()
    q = (s - s.min()) / span if span > 0 else np.zeros(n)
    quality_gain = alpha * q / budget
    # In cosine space max(0, sim(x, c) - cur(x)) = max(0, cos(x, c) - floor(x)) / 2 with
    # floor = 2 * cur - 1, which starts at -1 (S empty). div_sum[c] holds
    # sum_x max(0, cos(x, c) - floor(x)) as of step fresh_at[c]; the gain is then
    # div_scale * div_sum[c] + quality_gain[c].
    div_scale = (1.0 - alpha) / (2.0 * n)
    floor = np.full(n, -1.0, dtype=np.float32)
    # With floor = -1 the sums reduce to n * (1 + mean(x) . c): O(n * d), no n x n pass.
    mean_vec = emb.mean(axis=0, dtype=np.float64)
    div_sum = n * (1.0 + emb.astype(np.float64) @ mean_vec)
    fresh_at = np.zeros(n, dtype=np.int64)

    # Log of floor changes in step order: event j raised floor[ev_row[j]] by ev_gap[j] from
    # ev_old[j]; the events of step t are ev_start[t]:ev_start[t + 1]. A stale sum only needs the
    # events since it was computed (few per step once S is large), not the whole pool.
    ev_row = np.empty(n, dtype=np.int64)
    ev_old = np.empty(n, dtype=np.float32)
    ev_gap = np.empty(n, dtype=np.float32)
    ev_start = np.zeros(budget + 1, dtype=np.int64)
    n_events = 0
    max_incremental = n // _QDIT_INCREMENTAL_DIVISOR

    def full_sums(cands: np.ndarray) -> np.ndarray:
        cand_emb = emb[cands]
        sums = np.zeros(len(cands))
        for r0 in range(0, n, _ROW_CHUNK):
            cos = cand_emb @ emb[r0 : r0 + _ROW_CHUNK].T  # len(cands) x rows
            cos -= floor[r0 : r0 + _ROW_CHUNK]
            np.maximum(cos, 0.0, out=cos)
            sums += cos.sum(axis=1, dtype=np.float64)
        return sums

    def sum_drops(cands: np.ndarray, first_event: np.ndarray, event_emb: np.ndarray, lo: int):
        # The drop telescopes over events: raising floor(x) from a by g lowers the sum of c by
        # max(0, cos - a) - max(0, cos - a - g) = clip(cos - a, 0, g). event_emb holds the rows
        # of events lo:n_events; candidate j only counts those from first_event[j] on.
        start = int(first_event.min())
        cos = emb[cands] @ event_emb[start - lo :].T  # len(cands) x events
        cos -= ev_old[start:n_events]
        np.clip(cos, 0.0, ev_gap[start:n_events], out=cos)
        skip = first_event - start
        return np.array([cos[j, skip[j] :].sum(dtype=np.float64) for j in range(len(cands))])

    def refresh(cands: np.ndarray, step: int) -> None:
        first_event = ev_start[fresh_at[cands]]
        incremental = n_events - first_event <= max_incremental
        if incremental.any():
            # Most recent first, grouped so that one long window is not paid by all columns.
            order = np.argsort(-first_event[incremental], kind="stable")
            inc, inc_first = cands[incremental][order], first_event[incremental][order]
            lo = int(inc_first[-1])
            event_emb = emb[ev_row[lo:n_events]]
            window = n_events - inc_first
            start = 0
            while start < len(inc):
                end = int(np.searchsorted(window, 2 * window[start] + 64, side="right"))
                end = max(end, min(start + _QDIT_MIN_BATCH, len(inc)))
                group = slice(start, end)
                if window[end - 1] > 0:
                    div_sum[inc[group]] -= sum_drops(inc[group], inc_first[group], event_emb, lo)
                start = end
        if not incremental.all():
            full = cands[~incremental]
            div_sum[full] = full_sums(full)
        fresh_at[cands] = step

    # Heap of (-upper bound, index): the top is the largest bound, ties to the lowest index.
    # Stale gains are upper bounds by submodularity; an entry fresh for this step on top wins.
    heap = [(-g, i) for i, g in enumerate((div_scale * div_sum + quality_gain).tolist())]
    heapq.heapify(heap)
    selected = np.empty(budget, dtype=np.int64)
    # Stale entries refreshed per matrix product; adapts to how many the last step needed, since
    # one product of many columns costs far less per column than many products of one.
    batch_size = _QDIT_MIN_BATCH
    for step in range(budget):
        refreshed = 0
        while fresh_at[heap[0][1]] != step:
            batch = []
            while heap and len(batch) < batch_size and fresh_at[heap[0][1]] != step:
                batch.append(heapq.heappop(heap)[1])
            idx = np.asarray(batch, dtype=np.int64)
            refresh(idx, step)
            gains = div_scale * div_sum[idx] + quality_gain[idx]
            for i, g in zip(batch, gains.tolist()):
                heapq.heappush(heap, (-g, i))
            refreshed += len(batch)
            batch_size = min(2 * batch_size, _QDIT_MAX_BATCH)
        batch_size = min(max(_QDIT_MIN_BATCH, refreshed // 2), _QDIT_MAX_BATCH)
        _, c = heapq.heappop(heap)
        selected[step] = c
        if step == budget - 1:
            break
        new_cos = emb @ emb[c]
        changed = np.flatnonzero(new_cos > floor)
        k = len(changed)
        if n_events + k > len(ev_row):
            grow = max(len(ev_row), k)
            ev_row = np.concatenate([ev_row, np.empty(grow, dtype=np.int64)])
            ev_old = np.concatenate([ev_old, np.empty(grow, dtype=np.float32)])
            ev_gap = np.concatenate([ev_gap, np.empty(grow, dtype=np.float32)])
        ev_row[n_events : n_events + k] = changed
        ev_old[n_events : n_events + k] = floor[changed]
        ev_gap[n_events : n_events + k] = new_cos[changed] - floor[changed]
        n_events += k
        ev_start[step + 1] = n_events
        floor[changed] = new_cos[changed]
    return selected


def balanced_random(sources, budget: int, *, seed: int = 0, eligible: np.ndarray | None = None) -> np.ndarray:
    """Balanced random: the same number of rows from every source, uniform inside each source.

    A source with fewer rows than its share gives all of them and the rest is shared again among the
    others; shares that do not divide evenly go by largest remainder, then to the source that sorts
    first. The draw inside each source is seeded, so the same sources, budget and seed give the same rows.

    Args:
        sources (`array-like`):
            Each row's source (any sortable values, e.g. dataset names); no missing values.
        budget (`int`):
            Exact number of rows to return.
        seed (`int`, *optional*, defaults to `0`):
            Seed of the draw inside each source.
        eligible (`np.ndarray`, *optional*):
            Boolean mask of the rows that may be drawn.

    Returns:
        `np.ndarray`: `budget` distinct row ids (`np.int64`), sorted.
    """
    from .sample import kmq_sample

    names, codes = np.unique(np.asarray(sources), return_inverse=True)
    available = len(codes) if eligible is None else int(np.asarray(eligible).sum())
    budget = _check_budget(budget, available)
    return kmq_sample(codes.astype(np.int64), budget, k=len(names), seed=seed, eligible=eligible, quota="equal")


def greedy_diverse_filter(
    embeddings: np.ndarray, order: np.ndarray, threshold: float, *, max_keep: int | None = None
) -> np.ndarray:
    """Visit rows in `order`; keep a row if its cosine similarity to every kept row is below `threshold`.

    The scan Deita uses, and semantic de-duplication too. Candidates are checked a block at a
    time (one product against the kept set, one inside the block, then sequential acceptance in
    the block), which gives exactly the row-by-row result.

    Args:
        embeddings (`np.ndarray`):
            Unit-normalised `(n, d)` rows.
        order (`np.ndarray`):
            Row ids in visiting order (e.g. by descending quality).
        threshold (`float`):
            Cosine similarity in `(0, 1]` at or above which a row counts as a near-duplicate.
        max_keep (`int`, *optional*):
            Stop once this many rows are kept.

    Returns:
        `np.ndarray`: kept row ids (`np.int64`) in visiting order.
    """
    emb = _as_embeddings(embeddings)
    order = np.asarray(order, dtype=np.int64)
    limit = len(order) if max_keep is None else int(max_keep)
    kept_emb = np.empty((min(limit, len(order)), emb.shape[1]), dtype=np.float32)
    kept = np.empty(min(limit, len(order)), dtype=np.int64)
    count = 0
    for start in range(0, len(order), _DEITA_BLOCK):
        cand = order[start : start + _DEITA_BLOCK]
        x = emb[cand]
        if count:
            max_sim = np.full(len(cand), -np.inf, dtype=np.float32)
            for c0 in range(0, count, _ROW_CHUNK):
                sims = x @ kept_emb[c0 : min(c0 + _ROW_CHUNK, count)].T
                np.maximum(max_sim, sims.max(axis=1), out=max_sim)
            keep = max_sim < threshold
            cand, x = cand[keep], x[keep]
        if len(cand) == 0:
            continue
        gram = x @ x.T
        blocked = np.zeros(len(cand), dtype=bool)
        for i in range(len(cand)):
            if blocked[i]:
                continue
            kept[count] = cand[i]
            kept_emb[count] = x[i]
            count += 1
            if count == limit:
                return kept[:count]
            blocked[i + 1 :] |= gram[i, i + 1 :] >= threshold
    return kept[:count]
