import json

import datasets
import pytest

from hf_idsel import InvalidArgumentError, Manifest, SelectionMismatchError, diverse_select, load_selection


@pytest.fixture
def selection(blob_pool, tmp_path):
    subset, manifest = diverse_select(blob_pool, 30, embedding_column="embedding", k="auto", return_manifest=True, seed=4)
    path = manifest.save(str(tmp_path / "manifest.json"))
    return subset, manifest, path


def test_manifest_records_the_selection(selection, blob_pool):
    subset, manifest, path = selection
    data = json.loads(open(path).read())
    assert data["pool"]["num_rows"] == 250 and data["pool"]["digest"].startswith("sha256:")
    assert data["method"] == "kmq" and data["seed"] == 4 and data["k"] == 6
    assert data["selected_indices"] == subset["source_index"]
    assert data["selected_clusters"] == subset["cluster"]
    assert sum(data["cluster_sizes"]) == 250 and sum(data["selected_per_cluster"]) == 30
    assert data["encoder"] == {"embedding_column": "embedding", "dim": 16}
    assert "datasets" in data["versions"] and "faiss-cpu" in data["versions"]
    assert data["arguments"]["budget"] == 30 and data["arguments"]["k"] == "auto"


def test_load_selection_round_trips(selection, blob_pool):
    subset, _, path = selection
    rebuilt = load_selection(path, blob_pool)
    assert rebuilt.to_dict() == subset.to_dict()
    again = load_selection(path, blob_pool, recompute=True)
    assert again.to_dict() == subset.to_dict()


def test_load_selection_refuses_a_different_pool(selection, blob_pool):
    subset, _, path = selection
    # The selection read the embeddings: a change to one vector is refused...
    edited = blob_pool.map(lambda row, i: {"embedding": row["embedding"][::-1] if i == 7 else row["embedding"]}, with_indices=True)
    with pytest.raises(SelectionMismatchError, match="content differs"):
        load_selection(path, edited)
    # ...and so is a change to a column it never read, since that column comes back in the subset:
    # the error names it, and leaving it out of the pool loads the same rows without it.
    rescored = blob_pool.map(lambda row: {"quality": 0.0})
    with pytest.raises(SelectionMismatchError, match=r"columns \['quality'\].*remove_columns"):
        load_selection(path, rescored)
    without = load_selection(path, rescored.remove_columns("quality"))
    assert without.to_dict() == subset.remove_columns("quality").to_dict()
    # A column added afterwards is not recorded, so it cannot be verified: refused by name.
    with pytest.raises(SelectionMismatchError, match=r"\['score'\].*does not record"):
        load_selection(path, blob_pool.add_column("score", [0.0] * 250))
    with pytest.raises(SelectionMismatchError, match="rows"):
        load_selection(path, blob_pool.select(range(200)))
    # Reordering the pool changes what the row ids point at.
    with pytest.raises(SelectionMismatchError):
        load_selection(path, blob_pool.shuffle(seed=0))


def test_edited_manifest_is_refused(selection, blob_pool):
    _, manifest, path = selection
    data = manifest.to_dict()
    data["selected_indices"][0] = (data["selected_indices"][0] + 1) % 250
    with pytest.raises(SelectionMismatchError, match="digest"):
        load_selection(data, blob_pool)
    with pytest.raises(InvalidArgumentError, match="missing fields"):
        Manifest.load({"method": "kmq"})
    with pytest.raises(InvalidArgumentError, match="no such local file"):
        Manifest.load(str(path) + ".missing")


def test_rerun_from_a_manifest_on_a_reloaded_pool(selection, blob_pool, tmp_path):
    subset, _, path = selection
    blob_pool.to_parquet(str(tmp_path / "pool.parquet"))
    reloaded = datasets.load_dataset("parquet", data_files=str(tmp_path / "pool.parquet"), split="train")
    assert load_selection(path, reloaded)["source_index"] == subset["source_index"]
