import numpy as np
import pytest

from hf_idsel.errors import InvalidArgumentError
from hf_idsel.sample import (
    cluster_quotas,
    kmeans_closest,
    kmq_sample,
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
