"""Test environment: no Hub, a throw-away HF_HOME, quiet progress bars."""

import os
import tempfile

# Set before datasets/transformers are imported anywhere: they read these at import time.
_HOME = tempfile.mkdtemp(prefix="hf_idsel-tests-")
os.environ.setdefault("HF_HOME", _HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

datasets.disable_progress_bars()


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def planted_blobs(n_clusters: int, per_cluster: int, dim: int = 16, *, spread: float = 0.05, seed: int = 0):
    """Well-separated unit-vector blobs: returns (embeddings, true labels)."""
    rng = np.random.default_rng(seed)
    centers = unit_rows(rng.normal(size=(n_clusters, dim)))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    points = centers[labels] + spread * rng.normal(size=(len(labels), dim))
    return unit_rows(points), labels


@pytest.fixture
def blob_pool():
    """A pool with precomputed embeddings: 6 planted clusters of unequal sizes (90/60/40/30/20/10 rows)."""
    sizes = [90, 60, 40, 30, 20, 10]
    rng = np.random.default_rng(1)
    centers = unit_rows(rng.normal(size=(len(sizes), 16)))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    emb = unit_rows(centers[labels] + 0.05 * rng.normal(size=(len(labels), 16)))
    return datasets.Dataset.from_dict(
        {
            "text": [f"row {i} of blob {b}" for i, b in enumerate(labels)],
            "embedding": emb.tolist(),
            "blob": labels.tolist(),
            "quality": rng.normal(size=len(labels)).tolist(),
        }
    )


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")
