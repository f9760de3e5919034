"""Behaviour of the baseline selectors in `hf_idsel.baselines` (k-center, Deita, QDIT)."""

import logging

import numpy as np
import pytest

from hf_idsel import baselines
from hf_idsel.baselines import deita_select, kcenter_greedy, qdit_select
from hf_idsel.errors import InvalidArgumentError


def _unit(a):
    a = np.asarray(a, dtype=np.float64)
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def _random_pool(n, d, seed):
    rng = np.random.default_rng(seed)
    return _unit(rng.standard_normal((n, d))), rng.random(n)


def _blobs(n_blobs, per_blob, d, seed, noise=0.02):
    """Well separated clusters on the sphere; returns embeddings and each row's blob id."""
    rng = np.random.default_rng(seed)
    centers = _unit(rng.standard_normal((n_blobs, d)))
    labels = np.repeat(np.arange(n_blobs), per_blob)
    rng.shuffle(labels)
    emb = _unit(centers[labels] + noise * rng.standard_normal((len(labels), d)))
    return emb, labels


def _run(method, emb, scores, budget):
    if method == "kcenter":
        return kcenter_greedy(emb, budget, seed=3)
    if method == "deita":
        return deita_select(emb, scores, budget)
    return qdit_select(emb, scores, budget)


METHODS = ["kcenter", "deita", "qdit"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [1, 17, 300])
def test_exact_budget_distinct_indices(method, budget):
    emb, scores = _random_pool(300, 16, seed=1)
    out = _run(method, emb, scores, budget)
    assert out.dtype == np.int64
    assert out.ndim == 1 and len(out) == budget
    assert len(np.unique(out)) == budget
    assert out.min() >= 0 and out.max() < 300


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(method):
    emb, scores = _random_pool(400, 16, seed=2)
    a = _run(method, emb, scores, 40)
    b = _run(method, emb.copy(), scores.copy(), 40)
    np.testing.assert_array_equal(a, b)


def test_kcenter_seed_controls_first_pick():
    emb, _ = _random_pool(500, 8, seed=3)
    firsts = {int(kcenter_greedy(emb, 3, seed=s)[0]) for s in range(6)}
    assert len(firsts) > 1
    assert int(kcenter_greedy(emb, 1, seed=11)[0]) == int(np.random.default_rng(11).integers(500))


def test_kcenter_matches_bruteforce_farthest_point():
    emb, _ = _random_pool(150, 6, seed=4)
    budget = 25
    first = int(np.random.default_rng(7).integers(150))
    e = emb.astype(np.float64)
    chosen = [first]
    while len(chosen) < budget:
        dist = np.linalg.norm(e[:, None, :] - e[None, chosen, :], axis=2).min(axis=1)
        dist[chosen] = -1.0
        chosen.append(int(np.argmax(dist)))
    np.testing.assert_array_equal(kcenter_greedy(emb, budget, seed=7), chosen)


@pytest.mark.parametrize(
    ("shortlist", "block", "chunk"), [(8, 3, 5), (40, 1, 1), (4096, 512, 4096)]
)
def test_kcenter_lazy_updates_match_bruteforce(monkeypatch, shortlist, block, chunk):
    # Tiny shortlists and blocks force rebuilds and many partial updates.
    monkeypatch.setattr(baselines, "_KCENTER_SHORTLIST", shortlist)
    monkeypatch.setattr(baselines, "_KCENTER_UPDATE_BLOCK", block)
    monkeypatch.setattr(baselines, "_KCENTER_CENTER_CHUNK", chunk)
    emb, _ = _random_pool(300, 5, seed=21)
    e = emb.astype(np.float64)
    closest = e @ e[int(np.random.default_rng(2).integers(300))]
    chosen = [int(np.random.default_rng(2).integers(300))]
    closest[chosen[0]] = np.inf
    while len(chosen) < 60:
        j = int(np.argmin(closest))
        chosen.append(j)
        closest = np.maximum(closest, e @ e[j])
        closest[chosen] = np.inf
    np.testing.assert_array_equal(kcenter_greedy(emb, 60, seed=2), chosen)


def test_kcenter_picks_one_row_per_planted_blob():
    emb, labels = _blobs(8, 40, 32, seed=5)
    for seed in range(3):
        out = kcenter_greedy(emb, 8, seed=seed)
        assert sorted(labels[out].tolist()) == list(range(8))


@pytest.mark.parametrize("shortlist", [4, 4096])
def test_kcenter_duplicates_fill_without_repeats(monkeypatch, shortlist):
    # A shortlist smaller than the groups of tied duplicates forces the exact tie-settling path.
    monkeypatch.setattr(baselines, "_KCENTER_SHORTLIST", shortlist)
    rng = np.random.default_rng(6)
    distinct = _unit(rng.standard_normal((5, 8)))
    emb = np.repeat(distinct, 4, axis=0)  # 20 rows, 5 distinct vectors
    out = kcenter_greedy(emb, 18, seed=0)
    assert len(np.unique(out)) == 18
    # The first 5 picks reach every distinct vector before any duplicate.
    assert sorted((out[:5] // 4).tolist()) == list(range(5))
    np.testing.assert_array_equal(out, kcenter_greedy(emb, 18, seed=0))


def _deita_reference(emb, scores, budget, threshold):
    order = np.argsort(-scores, kind="stable")
    chosen = []
    for i in order:
        if all(float(emb[i] @ emb[j]) < threshold for j in chosen):
            chosen.append(int(i))
            if len(chosen) == budget:
                break
    return chosen


def test_deita_skips_duplicates_and_prefers_high_scores():
    rng = np.random.default_rng(7)
    m = 60
    distinct = _unit(rng.standard_normal((m, 32)))
    gram = distinct @ distinct.T
    np.fill_diagonal(gram, -1.0)
    assert gram.max() < 0.9  # precondition: the distinct rows are far apart
    emb = np.concatenate([distinct, distinct])  # row i and i + m are exact duplicates
    scores = rng.random(2 * m)
    budget = 40
    out = deita_select(emb, scores, budget, threshold=0.9)
    assert len(out) == budget
    assert len(np.unique(out % m)) == budget  # never both copies of a row
    sims = emb[out] @ emb[out].T
    np.fill_diagonal(sims, -1.0)
    assert sims.max() < 0.9
    # Each distinct row enters through its better copy, best distinct rows first.
    best_copy_score = np.maximum(scores[:m], scores[m:])
    expected_rows = np.argsort(-best_copy_score, kind="stable")[:budget]
    np.testing.assert_array_equal(out % m, expected_rows)
    for i in out:
        assert scores[i] == best_copy_score[i % m]


def test_deita_without_near_duplicates_is_top_by_score():
    emb, scores = _random_pool(200, 64, seed=8)
    scores[::7] = 0.5  # ties resolve to the lower index
    out = deita_select(emb, scores, 50, threshold=0.95)
    np.testing.assert_array_equal(out, np.argsort(-scores, kind="stable")[:50])


@pytest.mark.parametrize("block", [1, 7, 1024])
def test_deita_blocks_match_row_by_row(monkeypatch, block):
    # Low dimension and a strict threshold: many rows rejected, across block boundaries.
    emb, scores = _random_pool(600, 4, seed=9)
    monkeypatch.setattr(baselines, "_DEITA_BLOCK", block)
    expected = _deita_reference(emb, scores, 600, 0.8)
    assert 20 < len(expected) < 600
    budget = len(expected)
    np.testing.assert_array_equal(deita_select(emb, scores, budget, threshold=0.8), expected)


def test_deita_fills_up_when_threshold_too_strict(caplog):
    rng = np.random.default_rng(10)
    emb = np.repeat(_unit(rng.standard_normal((1, 16))), 50, axis=0)  # all rows identical
    scores = rng.random(50)
    with caplog.at_level(logging.WARNING, logger="hf_idsel.baselines"):
        out = deita_select(emb, scores, 12, threshold=0.9)
    assert len(out) == 12 and len(np.unique(out)) == 12
    # One row passes the filter (the best); the rest are filled in score order.
    np.testing.assert_array_equal(out, np.argsort(-scores, kind="stable")[:12])
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 1
    assert "filled the remaining 11" in messages[0]
    assert "deita_threshold" in messages[0]


def test_deita_no_warning_when_pass_fills_budget(caplog):
    emb, scores = _random_pool(100, 32, seed=11)
    with caplog.at_level(logging.WARNING, logger="hf_idsel.baselines"):
        deita_select(emb, scores, 30, threshold=0.9)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_qdit_alpha_one_is_top_by_score():
    emb, scores = _random_pool(300, 16, seed=12)
    scores[::5] = 0.25  # ties resolve to the lower index
    out = qdit_select(emb, scores, 60, alpha=1.0)
    np.testing.assert_array_equal(out, np.argsort(-scores, kind="stable")[:60])


def test_qdit_alpha_zero_covers_planted_blobs():
    emb, labels = _blobs(8, 30, 32, seed=13)
    scores = np.random.default_rng(13).random(len(labels))
    out = qdit_select(emb, scores, 8, alpha=0.0)
    assert sorted(labels[out].tolist()) == list(range(8))


def _qdit_naive(emb, scores, budget, alpha):
    e = emb.astype(np.float64)
    sim = (1.0 + e @ e.T) / 2.0  # sim[x, c]
    span = scores.max() - scores.min()
    q = (scores - scores.min()) / span if span > 0 else np.zeros(len(scores))
    cur = np.zeros(len(e))
    chosen = []
    for _ in range(budget):
        gain = (1 - alpha) * np.maximum(0.0, sim - cur[:, None]).mean(axis=0)
        gain += alpha * q / budget
        gain[chosen] = -np.inf
        c = int(np.argmax(gain))
        chosen.append(c)
        cur = np.maximum(cur, sim[:, c])
    return chosen


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("seed", [14, 15])
def test_qdit_lazy_matches_naive_greedy(alpha, seed):
    emb, scores = _random_pool(160, 8, seed=seed)
    budget = 30
    np.testing.assert_array_equal(
        qdit_select(emb, scores, budget, alpha=alpha), _qdit_naive(emb, scores, budget, alpha)
    )


@pytest.mark.parametrize("divisor", [1, 4, 10**9])
def test_qdit_incremental_and_full_refresh_match_naive(monkeypatch, divisor):
    # divisor 1: stale gains are nearly always updated from the changed rows only;
    # 10**9: always recomputed over the whole pool.
    monkeypatch.setattr(baselines, "_QDIT_INCREMENTAL_DIVISOR", divisor)
    emb, scores = _random_pool(200, 6, seed=19)
    np.testing.assert_array_equal(
        qdit_select(emb, scores, 60, alpha=0.2), _qdit_naive(emb, scores, 60, 0.2)
    )


@pytest.mark.parametrize("batch", [1, 8])
def test_qdit_duplicates_fill_without_repeats(monkeypatch, batch):
    # Picking a duplicate of a chosen row changes no floor; later refreshes see no changes.
    monkeypatch.setattr(baselines, "_QDIT_MIN_BATCH", batch)
    monkeypatch.setattr(baselines, "_QDIT_MAX_BATCH", batch)
    rng = np.random.default_rng(20)
    emb = np.repeat(_unit(rng.standard_normal((6, 8))), 5, axis=0)  # 30 rows, 6 distinct
    scores = rng.random(30)
    out = qdit_select(emb, scores, 20, alpha=0.3)
    assert len(np.unique(out)) == 20
    np.testing.assert_array_equal(out, _qdit_naive(emb, scores, 20, 0.3))


def test_qdit_lazy_matches_naive_on_clustered_pool(monkeypatch):
    # Single-column re-evaluations exercise the lazy loop differently from the batched default.
    monkeypatch.setattr(baselines, "_QDIT_MIN_BATCH", 1)
    monkeypatch.setattr(baselines, "_QDIT_MAX_BATCH", 1)
    emb, _ = _blobs(6, 25, 16, seed=16, noise=0.3)
    scores = np.random.default_rng(16).random(len(emb))
    np.testing.assert_array_equal(
        qdit_select(emb, scores, 20, alpha=0.4), _qdit_naive(emb, scores, 20, 0.4)
    )


def test_qdit_constant_scores_is_pure_diversity():
    emb, labels = _blobs(5, 20, 16, seed=17)
    out = qdit_select(emb, np.full(len(emb), 3.0), 5, alpha=0.5)
    np.testing.assert_array_equal(out, _qdit_naive(emb, np.zeros(len(emb)), 5, 0.0))
    assert sorted(labels[out].tolist()) == list(range(5))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda e, s: kcenter_greedy(e, 0), "budget"),
        (lambda e, s: kcenter_greedy(e, 11), "budget"),
        (lambda e, s: deita_select(e, s, 0), "budget"),
        (lambda e, s: qdit_select(e, s, 11), "budget"),
        (lambda e, s: deita_select(e, s[:9], 3), "scores"),
        (lambda e, s: qdit_select(e, s[:9], 3), "scores"),
        (lambda e, s: deita_select(e, s, 3, threshold=0.0), "threshold"),
        (lambda e, s: deita_select(e, s, 3, threshold=1.5), "threshold"),
        (lambda e, s: qdit_select(e, s, 3, alpha=-0.1), "alpha"),
        (lambda e, s: qdit_select(e, s, 3, alpha=1.01), "alpha"),
        (lambda e, s: kcenter_greedy(e[0], 1), "embeddings"),
    ],
)
def test_invalid_arguments_raise(call, name):
    emb, scores = _random_pool(10, 4, seed=18)
    with pytest.raises(InvalidArgumentError, match=f"`{name}`"):
        call(emb, scores)


# --- balanced random -------------------------------------------------------------------------------


def _sources(sizes):
    return np.repeat([f"src{i}" for i in range(len(sizes))], sizes)


@pytest.mark.parametrize(
    "sizes, budget, expected",
    [
        ([50, 30, 20], 30, [10, 10, 10]),  # an equal share each
        ([50, 30, 20], 31, [11, 10, 10]),  # the one left over goes to the first source
        ([50, 30, 4], 40, [18, 18, 4]),  # a small source gives all it has; the others share the rest
        ([5, 5, 90], 100, [5, 5, 90]),  # the whole pool
    ],
)
def test_balanced_random_takes_an_equal_exact_share_per_source(sizes, budget, expected):
    sources = _sources(sizes)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(sources))  # sources interleaved, not in blocks
    sources = sources[order]
    rows = baselines.balanced_random(sources, budget, seed=5)
    assert len(rows) == budget and len(np.unique(rows)) == budget and np.all(np.diff(rows) > 0)
    counts = [int((sources[rows] == f"src{i}").sum()) for i in range(len(sizes))]
    assert counts == expected


def test_balanced_random_is_seeded_and_uniform_inside_a_source():
    sources = _sources([200, 200])
    first = baselines.balanced_random(sources, 20, seed=1)
    assert np.array_equal(first, baselines.balanced_random(sources, 20, seed=1))
    assert not np.array_equal(first, baselines.balanced_random(sources, 20, seed=2))
    # Over many seeds every row of a source is drawn about equally often (10 of 200 each time).
    hits = np.zeros(400)
    for seed in range(400):
        hits[baselines.balanced_random(sources, 20, seed=seed)] += 1
    assert hits.sum() == 8000 and hits.min() > 3 and hits.max() < 45  # expectation 20 per row


def test_balanced_random_skips_ineligible_rows():
    sources = _sources([10, 10])
    eligible = np.ones(20, dtype=bool)
    eligible[:7] = False  # src0 keeps 3 rows
    rows = baselines.balanced_random(sources, 10, seed=0, eligible=eligible)
    assert eligible[rows].all() and (rows < 10).sum() == 3 and (rows >= 10).sum() == 7
    with pytest.raises(InvalidArgumentError, match="`budget`"):
        baselines.balanced_random(sources, 14, eligible=eligible)


def test_diverse_select_balanced_random_by_source_column(blob_pool):
    from hf_idsel import diverse_select

    pool = blob_pool.add_column("origin", [["a", "b", "c", "d"][i % 4] if i < 200 else "e" for i in range(len(blob_pool))])
    subset, manifest = diverse_select(
        pool, 41, method="balanced-random", source_column="origin", embedding_column="embedding", k=4, seed=2,
        return_manifest=True,
    )
    counts = {name: subset["origin"].count(name) for name in "abcde"}
    assert counts == {"a": 9, "b": 8, "c": 8, "d": 8, "e": 8}
    assert manifest.arguments["source_column"] == "origin"
    again = diverse_select(pool, 41, method="balanced-random", source_column="origin", embedding_column="embedding", k=4, seed=2)
    assert again["source_index"] == subset["source_index"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(), "balanced-random.*source_column"),
        (dict(source_column="nope"), "`source_column`='nope' is not a column"),
        (dict(source_column=""), "`source_column`"),
    ],
)
def test_diverse_select_balanced_random_refuses_a_missing_source_column(blob_pool, kwargs, match):
    from hf_idsel import diverse_select

    with pytest.raises(InvalidArgumentError, match=match):
        diverse_select(blob_pool, 10, method="balanced-random", embedding_column="embedding", **kwargs)


def test_diverse_select_balanced_random_refuses_a_source_column_of_vectors(blob_pool):
    from hf_idsel import diverse_select

    with pytest.raises(InvalidArgumentError, match="`source_column`='embedding' holds list"):
        diverse_select(blob_pool, 10, method="balanced-random", source_column="embedding", embedding_column="embedding")
