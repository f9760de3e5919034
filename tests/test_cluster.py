import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from conftest import planted_blobs
from hf_idsel.cluster import assign, choose_k, default_k_candidates, kmeans
from hf_idsel.errors import InvalidArgumentError


def test_kmeans_recovers_planted_clusters_and_is_seeded():
    x, truth = planted_blobs(6, 40)
    a = kmeans(x, 6, seed=0)
    assert adjusted_rand_score(truth, a.labels) == 1.0
    assert a.sizes.sum() == len(x) and a.sizes.tolist().count(40) == 6
    b = kmeans(x, 6, seed=0)
    assert np.array_equal(a.labels, b.labels) and np.allclose(a.centroids, b.centroids)
    assert np.allclose(np.linalg.norm(a.centroids, axis=1), 1, atol=1e-5)
    assert a.objective == pytest.approx(float(np.sum(2 - 2 * a.similarity)), rel=1e-5)


def test_chunked_assignment_matches_one_shot():
    x, _ = planted_blobs(5, 30, seed=3)
    c = kmeans(x, 5, seed=1).centroids
    whole = assign(x, c)
    chunked = assign(x, c, chunk=7)
    assert np.array_equal(whole[0], chunked[0]) and np.allclose(whole[1], chunked[1])
    assert np.array_equal(whole[0], np.argmax(x @ c.T, axis=1))


def test_identical_rows_do_not_break_kmeans():
    x = np.tile(np.array([[1.0, 0.0, 0.0]], dtype=np.float32), (50, 1))
    result = kmeans(x, 4, seed=0)
    assert result.labels.min() >= 0 and result.labels.max() < 4 and len(result.labels) == 50


def test_k_one():
    x, _ = planted_blobs(3, 10)
    result = kmeans(x, 1)
    assert (result.labels == 0).all()


@pytest.mark.parametrize("k", [0, 31])
def test_k_out_of_range(k):
    x, _ = planted_blobs(3, 10)
    with pytest.raises(InvalidArgumentError, match="`k`"):
        kmeans(x, k)


def test_choose_k_recovers_the_planted_count():
    x, _ = planted_blobs(6, 50, seed=5)
    best, scores = choose_k(x, [2, 3, 4, 6, 8, 12, 16], seed=0)
    assert best == 6
    assert scores[6] == max(scores.values())


def test_default_grid():
    grid = default_k_candidates(4000)
    assert grid[0] == 2 and grid[-1] <= 400 and grid == sorted(set(grid))
    assert default_k_candidates(19) == []


def test_more_clusters_than_distinct_rows_warns_and_names_the_empty_ones(caplog):
    x = np.tile(np.eye(3, dtype=np.float32), (10, 1))  # 30 rows, 3 distinct vectors
    with caplog.at_level("WARNING", logger="hf_idsel.cluster"):
        result = kmeans(x, 5, seed=0)
    assert sorted(result.sizes.tolist()) == [0, 0, 10, 10, 10]
    assert "k-means left 2 of 5 clusters empty (the rows hold 3 distinct vectors)" in caplog.text
    assert "at most 3" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_idsel.cluster"):
        kmeans(x, 3, seed=0)
        choose_k(x, [2, 4], seed=0)  # the candidates k='auto' tries are not the clustering that is used
    assert "empty" not in caplog.text


def test_seed_and_iterations_are_checked_and_numpy_ints_accepted():
    x, _ = planted_blobs(3, 10)
    numpy_ints = kmeans(x, np.int64(3), seed=np.int64(4), niter=np.int32(5))
    assert np.array_equal(numpy_ints.labels, kmeans(x, 3, seed=4, niter=5).labels)
    with pytest.raises(InvalidArgumentError, match=r"`seed`=2147483648 must be an int in \[0, 2147483647\]"):
        kmeans(x, 3, seed=2**31)
    with pytest.raises(InvalidArgumentError, match=r"`seed`=-1"):
        choose_k(x, [2, 3], seed=-1)
    with pytest.raises(InvalidArgumentError, match=r"`niter`=0 must be an int in \[1, 2147483647\]"):
        kmeans(x, 3, niter=0)
