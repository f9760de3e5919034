"""The seed reaches k-means (issue 29.2): `diverse_select`'s `seed` and the trainer's `selection_seed` choose the
clustering, not only the draw inside it.

The pools here have no cluster structure (points spread evenly around a circle), so k-means has many local optima of
near-equal quality and its seeding decides which one it reaches: different seeds must give different clusterings,
the same seed the same one. The draws are taken out of the picture: `method="kmeans-closest"` takes the rows nearest
each centroid (no randomness), and the trainer's clustering is read directly."""

import numpy as np

from helpers import make_pool, make_trainer
from hf_idsel import diverse_select

SEEDS = [0, 1, 2, 3]


def ring(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    """`n` unit vectors evenly around a circle in the first two of `dim` axes, each moved a little off it."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False)
    vectors = np.zeros((n, dim))
    vectors[:, 0], vectors[:, 1] = np.cos(angles), np.sin(angles)
    vectors[:, 2:] = 0.05 * rng.normal(size=(n, dim - 2))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def partition(labels) -> frozenset:
    """A clustering as a set of row sets: the same clustering under any numbering of its clusters."""
    labels = np.asarray(labels)
    return frozenset(frozenset(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels))


def test_diverse_select_seed_chooses_the_kmeans_clustering(cache_dir):
    import datasets

    pool = datasets.Dataset.from_dict({"embedding": ring(240).astype(np.float32).tolist(), "id": list(range(240))})

    def clustering(seed):
        _, manifest = diverse_select(
            pool, 12, k=6, seed=seed, method="kmeans-closest", embedding_column="embedding", return_manifest=True,
            cache_dir=cache_dir,
        )
        return tuple(manifest.selected_indices), tuple(manifest.cluster_sizes)

    runs = {seed: clustering(seed) for seed in SEEDS}
    assert len(set(runs.values())) > 1, runs  # the seed moves the centroids, hence the rows nearest them
    assert clustering(SEEDS[1]) == runs[SEEDS[1]]  # and the same seed gives the same clustering


def test_the_trainers_selection_seed_chooses_the_kmeans_clustering(tmp_path):
    pool = make_pool()  # 96 rows; their vectors are replaced by a ring: no cluster structure
    pool = pool.remove_columns("embedding").add_column("embedding", ring(len(pool)).astype(np.float32).tolist())

    def labels(seed, name):
        trainer = make_trainer(tmp_path / name, pool=pool, selection_seed=seed, k="6")
        assert trainer.k == 6
        return partition(trainer.labels)

    runs = {seed: labels(seed, f"s{seed}") for seed in SEEDS[:3]}
    assert len(set(runs.values())) > 1
    assert labels(SEEDS[1], "again") == runs[SEEDS[1]]
