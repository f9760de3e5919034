import itertools
import re
import warnings

import numpy as np
import pytest

from hf_idsel.errors import InvalidArgumentError
from hf_idsel.sample import (
    affinity_weights,
    check_budget,
    cluster_quotas,
    kmeans_closest,
    kmq_sample,
    parse_budget,
    priority_order,
    random_order,
    random_sample,
    resolve_budget,
    row_priorities,
    token_prefix,
    validate_quality,
)


@pytest.mark.parametrize("budget, n, rows", [(10, 100, 10), (100, 100, 100), (0.1, 95, 10), (1.0, 7, 7), (0.5, 3, 2)])
def test_resolve_budget(budget, n, rows):
    assert resolve_budget(budget, n) == rows


@pytest.mark.parametrize("budget", [0, -3, 101, 1.5, 0.0, -0.2, float("nan"), True, "10", 0.001])
def test_resolve_budget_rejects(budget):
    with pytest.raises(InvalidArgumentError, match="budget"):
        resolve_budget(budget, 100)


def test_quotas_exact_and_within_one_of_proportional():
    rng = np.random.default_rng(0)
    for _ in range(300):
        sizes = rng.integers(0, 200, size=rng.integers(1, 40))
        if sizes.sum() == 0:
            continue
        total = int(rng.integers(1, sizes.sum() + 1))
        quotas = cluster_quotas(sizes, total)
        assert quotas.sum() == total
        assert (quotas <= sizes).all() and (quotas >= 0).all()
        ideal = total * sizes / sizes.sum()
        if (ideal < sizes).all() or (ideal[sizes > 0] < sizes[sizes > 0]).all():
            assert (np.abs(quotas - ideal) < 1).all()
        # A small cluster that gives rows back only ever raises the others' quotas.
        uncapped = quotas < sizes
        assert (quotas[uncapped] >= np.floor(ideal[uncapped])).all()


def test_small_clusters_give_their_rest_back():
    # Equal shares (30 each) overflow the 2-row cluster; its rest is shared by the others.
    sizes = np.array([2, 100, 100])
    quotas = cluster_quotas(sizes, 90, 1.0 / sizes)
    assert quotas.tolist() == [2, 44, 44]


def test_weights_modulate_the_size_share():
    quotas = cluster_quotas(np.array([100, 100]), 30, np.array([2.0, 1.0]))
    assert quotas.tolist() == [20, 10]
    # Zero-weight clusters only give rows once positive-weight clusters are exhausted.
    quotas = cluster_quotas(np.array([10, 50, 50]), 30, np.array([1.0, 0.0, 0.0]))
    assert quotas[0] == 10 and quotas.sum() == 30


def test_quotas_reject_too_large_total():
    with pytest.raises(InvalidArgumentError):
        cluster_quotas(np.array([3, 4]), 8)


@pytest.fixture
def labels():
    return np.repeat(np.arange(5), [50, 30, 10, 7, 3])


def test_kmq_exact_distinct_and_per_cluster_quota(labels):
    picked = kmq_sample(labels, 40, k=5, seed=3)
    assert len(picked) == 40 and len(np.unique(picked)) == 40
    counts = np.bincount(labels[picked], minlength=5)
    assert counts.tolist() == cluster_quotas(np.bincount(labels), 40).tolist()


def test_kmq_seeded(labels):
    a = kmq_sample(labels, 20, k=5, seed=1)
    assert np.array_equal(a, kmq_sample(labels, 20, k=5, seed=1))
    assert not np.array_equal(a, kmq_sample(labels, 20, k=5, seed=2))


def test_quality_shifts_the_draw_toward_high_scores(labels):
    rng = np.random.default_rng(0)
    quality = rng.normal(size=len(labels))
    means = {}
    for temperature in (None, 1.0, 0.2):
        picks = [
            kmq_sample(labels, 30, k=5, seed=s, quality=None if temperature is None else quality, temperature=temperature or 1.0)
            for s in range(40)
        ]
        means[temperature] = float(np.mean([quality[p].mean() for p in picks]))
    assert means[None] < means[1.0] < means[0.2]
    assert means[0.2] > 0.8


def test_linear_weighting_never_takes_zero_quality_rows_unless_forced():
    labels = np.zeros(10, dtype=np.int64)
    quality = np.array([0, 0, 0, 0, 1, 2, 3, 1, 1, 0], dtype=float)
    for seed in range(20):
        picked = kmq_sample(labels, 5, k=1, seed=seed, quality=quality, weighting="linear")
        assert set(picked) == {4, 5, 6, 7, 8}
    assert len(kmq_sample(labels, 8, k=1, quality=quality, weighting="linear")) == 8


def test_equal_quota_is_the_research_code_rule(labels):
    picked = kmq_sample(labels, 15, k=5, quota="equal")
    assert np.bincount(labels[picked], minlength=5).tolist() == [3, 3, 3, 3, 3]


def test_eligible_rows_only(labels):
    eligible = np.ones(len(labels), dtype=bool)
    eligible[::2] = False
    picked = kmq_sample(labels, 40, k=5, eligible=eligible)
    assert eligible[picked].all() and len(picked) == 40
    assert eligible[random_sample(len(labels), 40, eligible=eligible)].all()


def test_kmeans_closest_takes_the_rows_nearest_each_centroid(labels):
    similarity = np.linspace(0, 1, len(labels))
    picked = kmeans_closest(labels, similarity, 10, k=5)
    for j in range(5):
        members = np.flatnonzero(labels == j)
        chosen = picked[labels[picked] == j]
        assert set(chosen) == set(members[np.argsort(-similarity[members])][: len(chosen)])


def test_priority_order_prefixes_stay_near_proportional(labels):
    key, tiebreak = row_priorities(len(labels), np.random.default_rng(0))
    order = priority_order(labels, key, tiebreak, k=5)
    assert sorted(order.tolist()) == list(range(len(labels)))
    sizes = np.bincount(labels)
    for m in range(1, len(labels) + 1):  # every prefix: each cluster's count within one of its proportional share
        counts = np.bincount(labels[order[:m]], minlength=5)
        assert np.abs(counts - m * sizes / sizes.sum()).max() <= 1 + 1e-9


def test_priority_order_follows_the_key_inside_a_cluster_and_skips_ineligible_rows(labels):
    similarity = np.linspace(0, 1, len(labels))
    eligible = np.arange(len(labels)) % 3 != 0
    order = priority_order(labels, similarity, np.arange(len(labels)), k=5, eligible=eligible)
    assert sorted(order.tolist()) == np.flatnonzero(eligible).tolist()
    for j in range(5):
        in_cluster = order[labels[order] == j]
        assert (np.diff(similarity[in_cluster]) < 0).all()


def test_random_order_is_a_seeded_permutation_of_the_eligible_rows():
    eligible = np.arange(20) % 2 == 0
    order = random_order(20, seed=4, eligible=eligible)
    assert sorted(order.tolist()) == list(range(0, 20, 2))
    assert np.array_equal(order, random_order(20, seed=4, eligible=eligible))
    assert sorted(random_order(20, seed=4).tolist()) == list(range(20))


def test_token_prefix_fills_without_exceeding():
    order = np.array([3, 0, 2, 1])
    lengths = np.array([5, 7, 4, 6])
    assert token_prefix(order, lengths, 15).tolist() == [0, 2, 3]
    assert token_prefix(order, lengths, 5).tolist() == []


@pytest.mark.parametrize(
    "values, weighting, match",
    [([1.0, None, 2.0], "softmax", "missing/NaN"), ([1.0, float("nan")], "softmax", "NaN"), ([1.0, -1.0], "linear", "negative"), (["a", "b"], "softmax", "numbers")],
)
def test_validate_quality_rejects(values, weighting, match):
    with pytest.raises(InvalidArgumentError, match=match):
        validate_quality(values, "quality", weighting=weighting)


# ------------------------------------------------------------------------------------------------
# Added with the mutation run (scripts/mutation_test.py, docs/testing.md): each test below kills
# mutants of sample.py that the tests above let through.
# ------------------------------------------------------------------------------------------------


def _exactly(message):
    """A `match=` pattern for exactly this error message."""
    return "^" + re.escape(message) + "$"


def test_parse_budget_reads_numbers_as_python_does():
    assert parse_budget("64") == 64 and isinstance(parse_budget("64"), int)
    assert parse_budget("0.1") == 0.1
    one = parse_budget("1.0")  # the whole pool, not one row
    assert one == 1.0 and isinstance(one, float)
    assert parse_budget(7) == 7 and parse_budget(0.5) == 0.5
    with pytest.raises(InvalidArgumentError, match=_exactly(
        "`budget`='ten' is neither a row count (an int) nor a fraction of the pool (a float)."
    )):
        parse_budget("ten")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: check_budget(0), "`budget`=0 must be at least 1 row."),
        (lambda: resolve_budget(0, 100), "`budget`=0 must be at least 1 row."),
        (lambda: resolve_budget(-2, 100, argument="max_rows"), "`max_rows`=-2 must be at least 1 row."),
        (
            lambda: check_budget(True),
            "`budget` must be an int (rows) or a float in (0, 1] (fraction of the pool), got True.",
        ),
        (
            lambda: resolve_budget(0.0, 100),
            "`budget`=0.0 as a float is a fraction of the pool and must be in (0, 1]; pass an int for a number of rows.",
        ),
        (
            lambda: resolve_budget(1.5, 1000),
            "`budget`=1.5 as a float is a fraction of the pool and must be in (0, 1]; pass an int for a number of rows.",
        ),
        (
            lambda: check_budget(float("inf"), argument="fraction"),
            "`fraction`=inf as a float is a fraction of the pool and must be in (0, 1]; pass an int for a number of rows.",
        ),
        (
            lambda: resolve_budget(0.001, 100),
            "`budget`=0.001 of 100 rows rounds to 0 rows; use a larger fraction or an int.",
        ),
        (
            lambda: resolve_budget(101, 100),
            "`budget`=101 rows is more than the pool has (100 rows); lower it or use a larger pool.",
        ),
    ],
)
def test_budget_errors_name_the_argument_and_say_what_to_do(call, message):
    with pytest.raises(InvalidArgumentError, match=_exactly(message)):
        call()


def test_the_smallest_budgets_are_accepted():
    check_budget(1)
    assert resolve_budget(1, 5) == 1
    assert resolve_budget(0.01, 100) == 1
    assert resolve_budget(0.005, 100) == 1  # rounds half up: half a row is one row
    assert resolve_budget(1.0, 100) == 100


def test_quotas_are_integer_row_counts_and_bad_inputs_are_named():
    sizes = np.array([2.0, 100.0, 100.0])  # counts that arrive as floats give the same quotas
    quotas = cluster_quotas(sizes, 90, 1.0 / sizes)
    assert quotas.dtype.kind == "i" and quotas.tolist() == [2, 44, 44]
    with pytest.raises(InvalidArgumentError, match=_exactly("Cannot draw 8 rows: only 7 are available.")):
        cluster_quotas(np.array([3, 4]), 8)
    for weights in ([1.0, -0.5], [1.0, np.nan], [np.inf, 1.0]):
        with pytest.raises(InvalidArgumentError, match=_exactly("Cluster `weights` must be finite and non-negative.")):
            cluster_quotas(np.array([3, 4]), 2, np.array(weights))


def test_zero_weight_clusters_of_one_row_still_give_their_row():
    # Only the weighted cluster is wanted, but the total needs every row: the 1-row clusters give theirs.
    assert cluster_quotas(np.array([5, 1, 1]), 7, np.array([1.0, 0.0, 0.0])).tolist() == [5, 1, 1]


@pytest.mark.parametrize("method", ["kmq", "closest"])
def test_draws_spend_the_exact_budget_on_eligible_rows_when_clusters_are_spent(labels, method):
    # As in a late round: the last cluster has no row left and most of the largest one is gone.
    eligible = np.ones(len(labels), dtype=bool)
    eligible[labels == 4] = False
    eligible[np.flatnonzero(labels == 0)[5:]] = False
    similarity = np.linspace(0, 1, len(labels))
    if method == "kmq":
        picked = kmq_sample(labels, 30, k=5, seed=0, eligible=eligible)
    else:
        picked = kmeans_closest(labels, similarity, 30, k=5, eligible=eligible)
    assert len(picked) == 30 and eligible[picked].all()
    expected = cluster_quotas(np.bincount(labels[eligible], minlength=5), 30)
    assert np.bincount(labels[picked], minlength=5).tolist() == expected.tolist()
    if method == "closest":
        for j in range(4):
            members = np.flatnonzero((labels == j) & eligible)
            nearest = members[np.argsort(-similarity[members])][: expected[j]]
            assert set(picked[labels[picked] == j]) == set(nearest)


def test_calls_that_leave_options_out_use_the_documented_defaults(labels):
    quality = np.random.default_rng(5).normal(size=len(labels))
    np.testing.assert_array_equal(
        kmq_sample(labels, 20, k=5, quality=quality),
        kmq_sample(labels, 20, k=5, seed=0, quality=quality, temperature=1.0, weighting="softmax", quota="proportional"),
    )
    default = row_priorities(len(labels), np.random.default_rng(1), quality=quality)
    explicit = row_priorities(len(labels), np.random.default_rng(1), quality=quality, temperature=1.0, weighting="softmax")
    np.testing.assert_array_equal(default[0], explicit[0])
    np.testing.assert_array_equal(random_sample(30, 10), random_sample(30, 10, seed=0))
    np.testing.assert_array_equal(random_order(30), random_order(30, seed=0))


def test_equal_quota_gives_every_nonempty_cluster_the_same_claim():
    labels = np.repeat(np.arange(4), [1, 10, 10, 10])  # cluster 0 has a single row
    # Two rows for four equal claims: ties go to the lower cluster ids, the 1-row cluster included.
    assert np.bincount(labels[kmq_sample(labels, 2, k=4, quota="equal")], minlength=4).tolist() == [1, 1, 0, 0]
    assert np.bincount(labels[kmq_sample(labels, 4, k=4, quota="equal")], minlength=4).tolist() == [1, 1, 1, 1]
    # A token budget's order takes one row of every cluster first, then keeps the others level.
    key, tiebreak = row_priorities(len(labels), np.random.default_rng(0))
    order = priority_order(labels, key, tiebreak, k=4, quota="equal")
    assert sorted(order.tolist()) == list(range(len(labels)))
    assert sorted(labels[order[:4]].tolist()) == [0, 1, 2, 3]
    for m in range(4, len(labels) + 1):
        counts = np.bincount(labels[order[:m]], minlength=4)[1:]
        assert counts.max() - counts.min() <= 1


def test_random_sample_is_seeded_and_without_replacement():
    assert random_sample(20, 20, seed=3).tolist() == list(range(20))
    picked = random_sample(50, 10, seed=3)
    assert len(set(picked.tolist())) == 10 and (np.diff(picked) > 0).all()
    np.testing.assert_array_equal(picked, random_sample(50, 10, seed=3))
    assert not np.array_equal(picked, random_sample(50, 10, seed=4))


def test_linear_weighting_takes_zero_quality_without_a_warning():
    labels = np.zeros(6, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        picked = kmq_sample(labels, 3, k=1, quality=np.array([0.0, 1.0, 0.0, 2.0, 3.0, 0.0]), weighting="linear")
    assert picked.tolist() == [1, 3, 4]


def _inclusion_probabilities(p, m):
    """Exact chance that each row is among `m` rows drawn one by one without replacement, row i with chance ~ p_i."""
    pi = np.zeros(len(p))
    for drawn in itertools.permutations(range(len(p)), m):
        chance, left = 1.0, 1.0
        for i in drawn:
            chance *= p[i] / left
            left -= p[i]
        pi[list(drawn)] += chance
    return pi


@pytest.mark.parametrize("quota", [1, 2])
@pytest.mark.parametrize("weighting", ["linear", "softmax"])
def test_in_cluster_draw_is_an_exact_weighted_sample_without_replacement(weighting, quota):
    p = np.array([0.1, 0.2, 0.3, 0.4])
    # linear: p ~ quality; softmax: p ~ exp(quality / temperature), whatever the shift of the scores.
    temperature = 0.5
    row_quality = p if weighting == "linear" else temperature * np.log(p) + 3.0
    clusters = 10  # ten independent 4-row clusters per call, each drawing `quota` rows
    labels = np.repeat(np.arange(clusters), len(p))
    quality = np.tile(row_quality, clusters)
    counts = np.zeros(len(p))
    draws = 300
    for seed in range(draws):
        picked = kmq_sample(labels, quota * clusters, k=clusters, seed=seed, quality=quality,
                            temperature=temperature, weighting=weighting)
        assert np.bincount(labels[picked], minlength=clusters).tolist() == [quota] * clusters
        counts += np.bincount(picked % len(p), minlength=len(p))
    # 3,000 draws per row: a standard error under 0.01, so 0.025 is a wide margin for seeded draws.
    np.testing.assert_allclose(counts / (draws * clusters), _inclusion_probabilities(p, quota), atol=0.025)


def test_validate_quality_accepts_what_each_weighting_can_use():
    ratings = validate_quality([1, 5, 3], "rating")  # integer ratings are scores too
    assert ratings.dtype == np.float64 and ratings.tolist() == [1.0, 5.0, 3.0]
    # softmax takes any finite score (e.g. log-likelihoods); linear takes zeros (never drawn).
    assert validate_quality(np.array([-3.5, 0.0, 2.0]), "loglik").tolist() == [-3.5, 0.0, 2.0]
    assert validate_quality(np.array([0.0, 0.5, 1.0]), "q", weighting="linear").tolist() == [0.0, 0.5, 1.0]


def test_validate_quality_errors_point_at_the_first_bad_row():
    with pytest.raises(InvalidArgumentError, match=re.escape(
        "`quality_column`='q' has 2 missing/NaN/infinite values (first at row 2). Fill or drop them"
    )):
        validate_quality([1.0, 2.0, None, float("inf")], "q")
    with pytest.raises(InvalidArgumentError, match=_exactly(
        "`quality_column`='q' has negative values (first at row 2), which linear weighting cannot use as "
        "probabilities; use quality_weighting='softmax' or shift the scores."
    )):
        validate_quality([1.0, 0.0, -2.0, -1.0], "q", weighting="linear")


# --- Issue 29.2: exact quotas at capacity edges, for any capacities and weights ---

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from helpers import examples  # noqa: E402


def test_a_capped_heavy_cluster_gives_its_rest_to_the_others_exactly():
    """The report's case: cluster 0 (1 row, weight 3.95) is owed 1.9 rows of 50 and can give 1. A rule that hands the
    largest remainder to a cluster already at capacity, or shares the rest against the capped cluster's weight too,
    comes out one row short (49)."""
    quotas = cluster_quotas(np.array([1, 100]), 50, np.array([3.95, 1.0]))
    assert quotas.tolist() == [1, 49] and quotas.sum() == 50
    # The same edge with more clusters: two capped clusters, the rest split by weight x size among the others.
    quotas = cluster_quotas(np.array([1, 2, 100, 100]), 101, np.array([3.95, 9.0, 1.0, 1.0]))
    assert quotas.tolist() == [1, 2, 49, 49]


@st.composite
def _capacities_weights_budget(draw):
    k = draw(st.integers(1, 8))
    # Small clusters next to large ones: the capacity edges, where a share is cut to the rows a cluster holds.
    capacities = draw(st.lists(st.one_of(st.integers(0, 3), st.integers(0, 120)), min_size=k, max_size=k))
    weight = st.one_of(st.just(0.0), st.floats(1e-3, 20.0), st.sampled_from([1.0, 3.95, 0.25]))
    weights = draw(st.one_of(st.none(), st.lists(weight, min_size=k, max_size=k)))
    budget = draw(st.integers(0, sum(capacities) + 5))
    return np.array(capacities), weights, budget


@settings(max_examples=examples(300), deadline=None)
@given(case=_capacities_weights_budget())
def test_quotas_spend_exactly_the_budget_for_any_capacities_and_weights(case):
    """Exact budgets are a promise: the quotas add up to min(budget, rows available), within each cluster's rows; a
    budget above the rows available is refused by name, never silently cut."""
    capacities, weights, budget = case
    w = None if weights is None else np.array(weights)
    if budget > capacities.sum():
        with pytest.raises(InvalidArgumentError, match=f"Cannot draw {budget} rows: only {capacities.sum()} are available"):
            cluster_quotas(capacities, budget, w)
        budget = int(capacities.sum())
    quotas = cluster_quotas(capacities, budget, w)
    assert quotas.sum() == min(budget, capacities.sum())
    assert (quotas >= 0).all() and (quotas <= capacities).all()
    if w is not None and (quotas[w == 0] > 0).any():
        # Zero-weight clusters are used only once every cluster with a positive weight is spent.
        assert (quotas[w > 0] == capacities[w > 0]).all()


# ---- a target's cluster weights (issue 30) in the draws and in the token-budget order ----


def test_affinity_weights_are_affinity_to_the_sharpness_and_refuse_what_is_not_an_affinity():
    np.testing.assert_array_equal(affinity_weights([0.0, 0.5, 1.0], 2.0), [0.0, 0.25, 1.0])
    np.testing.assert_array_equal(affinity_weights([0, 1], 0), [1.0, 1.0])  # 0 ** 0 is 1: kMQ's own weights
    for bad in ([0.5, 1.0001], [-0.01, 0.5], [float("nan"), 0.5], [float("inf")]):
        with pytest.raises(InvalidArgumentError, match=r"^Cluster affinities must be finite numbers in \[0, 1\]\.$"):
            affinity_weights(bad, 1.0)
    for bad in (-0.5, float("inf"), float("nan")):
        with pytest.raises(InvalidArgumentError, match=r"^`target_sharpness`=.* must be a finite number >= 0\.$"):
            affinity_weights([0.5], bad)


def test_weighted_quotas_multiply_the_weights_into_each_quota_rule():
    """Proportional quotas share by weight x rows; equal quotas by the weight alone; and the token-budget order
    interleaves clusters the same way, a cluster of weight 0 after every other (without a divide warning)."""
    labels = np.repeat(np.arange(3), [10, 20, 30])
    draw = {q: np.bincount(labels[kmq_sample(labels, 12, k=3, weights=np.array([2.0, 1.0, 1.0]), quota=q)], minlength=3).tolist()
            for q in ("proportional", "equal")}
    assert draw == {"proportional": [4, 3, 5], "equal": [6, 3, 3]}
    key, tiebreak = np.zeros(60), np.arange(60)
    for quota, first in (("proportional", [6, 6, 0]), ("equal", [8, 4, 0])):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            order = priority_order(labels, key, tiebreak, k=3, quota=quota, weights=np.array([2.0, 1.0, 0.0]))
        assert np.bincount(labels[order[:12]], minlength=3).tolist() == first, quota
        assert sorted(order.tolist()) == list(range(60)) and (labels[order[-30:]] == 2).all()
