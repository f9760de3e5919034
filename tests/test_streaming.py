"""diverse_select on a streamed pool (datasets.IterableDataset): embedded while streaming, the same selection as
the map-style pool, only the chosen rows materialised."""

import json
import os

import datasets
import numpy as np
import pytest

import hf_idsel
from hf_idsel import load_selection
from hf_idsel.errors import IdselError, InvalidArgumentError


def text_pool(n=90):
    rng = np.random.default_rng(0)
    topics = ["cooking pasta", "python lists", "tax forms", "football rules", "tidal waves"]
    rows = []
    for i in range(n):
        topic = topics[i % len(topics)]
        rows.append({"prompt": f"Question {i} about {topic}: {rng.integers(1000)}?", "completion": f"About {topic}.", "id": i})
    return datasets.Dataset.from_list(rows)


def test_a_stream_gives_the_selection_of_the_same_rows_loaded_whole(cache_dir, tmp_path):
    pool = text_pool()
    # The stream is read from local JSON files by load_dataset(..., streaming=True), in two shards.
    files = []
    for shard in range(2):
        path = tmp_path / f"part-{shard}.jsonl"
        with open(path, "w") as f:
            for row in pool.select(range(shard * 45, (shard + 1) * 45)):
                f.write(json.dumps(row) + "\n")
        files.append(str(path))
    stream = datasets.load_dataset("json", data_files=files, split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    whole, expected = hf_idsel.diverse_select(pool, 23, k=6, seed=2, return_manifest=True, cache_dir=cache_dir)
    subset, manifest = hf_idsel.diverse_select(stream, 23, k=6, seed=2, return_manifest=True, cache_dir=cache_dir)
    assert len(subset) == 23  # exact budget
    assert manifest.selected_indices == expected.selected_indices
    assert manifest.selected_clusters == expected.selected_clusters
    assert subset["source_index"] == whole["source_index"]
    assert subset["cluster"] == whole["cluster"]
    assert subset["prompt"] == whole["prompt"] and subset["id"] == whole["id"]  # every column, not only the embedded ones
    assert manifest.pool["num_rows"] == 90 and manifest.pool["digest"] == expected.pool["digest"]
    # The manifest rebuilds the subset from the map-style pool, its digests checked.
    assert load_selection(manifest.to_dict(), pool.select_columns(["prompt", "completion"]))["source_index"] == subset["source_index"]
    # The temporary vectors and columns are gone; the map-style run's cache entry stays.
    assert not [name for name in os.listdir(cache_dir) if name.startswith("stream-")]


def test_a_stream_of_precomputed_float16_vectors_matches_the_dataset(cache_dir):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 16))
    vectors = (centres[np.arange(500) % 4] + 0.1 * rng.normal(size=(500, 16))).astype(np.float16)
    features = datasets.Features({"embedding": datasets.List(datasets.Value("float16")), "quality": datasets.Value("float64")})
    pool = datasets.Dataset.from_dict({"embedding": vectors.tolist(), "quality": rng.normal(size=500).tolist()}, features=features)
    stream = pool.to_iterable_dataset(num_shards=3)
    common = dict(k=4, embedding_column="embedding", quality_column="quality", return_manifest=True, cache_dir=cache_dir)
    _, expected = hf_idsel.diverse_select(pool, 0.1, **common)
    subset, manifest = hf_idsel.diverse_select(stream, 0.1, **common)
    assert len(subset) == 50
    assert manifest.selected_indices == expected.selected_indices
    assert manifest.selected_clusters == expected.selected_clusters
    assert np.array_equal(np.asarray(subset["embedding"], dtype=np.float16), vectors[manifest.selected_indices])


def test_a_stream_that_changes_between_passes_is_refused(cache_dir):
    pool = text_pool(60)
    passes = []

    def rows():
        passes.append(1)
        order = range(60) if len(passes) == 1 else reversed(range(60))  # the second pass comes back in another order
        for i in order:
            yield pool[i]

    stream = datasets.IterableDataset.from_generator(rows, features=pool.features)
    with pytest.raises(IdselError, match="other rows on its second pass"):
        hf_idsel.diverse_select(stream, 10, k=3, cache_dir=cache_dir)


def test_stream_arguments_are_checked_on_the_first_batch_before_embedding(cache_dir, monkeypatch):
    import hf_idsel.embed

    def no_encoder(*args, **kwargs):
        raise AssertionError("the encoder must not load for a refused call")

    monkeypatch.setattr(hf_idsel.embed, "load_encoder", no_encoder)
    stream = text_pool(20).to_iterable_dataset()
    with pytest.raises(InvalidArgumentError, match="quality_column"):
        hf_idsel.diverse_select(stream, 10, k=3, quality_column="missing", cache_dir=cache_dir)
    with pytest.raises(InvalidArgumentError, match="dry_run"):
        hf_idsel.diverse_select(stream, 10, k=3, dry_run=True, cache_dir=cache_dir)
    with pytest.raises(InvalidArgumentError, match="budget"):
        hf_idsel.diverse_select(stream, 0, k=3, cache_dir=cache_dir)

    def nothing():
        yield from ()

    empty = datasets.IterableDataset.from_generator(nothing, features=datasets.Features({"prompt": datasets.Value("string")}))
    with pytest.raises(InvalidArgumentError, match="empty"):
        hf_idsel.diverse_select(empty, 1, cache_dir=cache_dir)


def test_a_budget_above_the_streamed_pool_is_refused_after_the_first_pass(cache_dir):
    stream = text_pool(20).to_iterable_dataset()
    with pytest.raises(InvalidArgumentError, match="budget"):
        hf_idsel.diverse_select(stream, 21, k=3, cache_dir=cache_dir)


def test_the_cli_streams_a_local_file_and_writes_the_same_selection(blob_pool, tmp_path, capsys):
    from hf_idsel.cli import main

    path = str(tmp_path / "pool.jsonl")
    blob_pool.to_json(path)
    common = ["--budget", "25", "--k", "6", "--embedding-column", "embedding", "--quality-column", "quality"]
    assert main(["select", path, *common, "--out", str(tmp_path / "whole")]) == 0
    assert main(["select", path, *common, "--streaming", "--out", str(tmp_path / "streamed")]) == 0
    whole = datasets.Dataset.from_parquet(str(tmp_path / "whole" / "subset.parquet"))
    streamed = datasets.Dataset.from_parquet(str(tmp_path / "streamed" / "subset.parquet"))
    assert len(streamed) == 25
    assert streamed["source_index"] == whole["source_index"] and streamed["cluster"] == whole["cluster"]
    assert streamed["text"] == whole["text"]
    assert main(["select", "builtin", "--budget", "5", "--streaming", "--out", str(tmp_path / "b")]) == 2
    assert "--streaming" in capsys.readouterr().err
