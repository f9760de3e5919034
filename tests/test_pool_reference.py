"""Pools record a reference that travels (issue 25.2): the built-in pool's whole recipe (rows per source, seed, a
sample's size and seed), a local file's path, rebuilt row for row by `load_pool_source`; `load_selection` with no
pool rebuilds it from the manifest, on this machine or from the Hub; what cannot be rebuilt says what to pass."""

import json

import datasets
import pytest

import hf_idsel
from hf_idsel import InvalidArgumentError, SelectionMismatchError, diverse_select
from hf_idsel.manifest import Manifest
from hf_idsel.pool import load_builtin_pool, load_pool, load_pool_source, pool_source, sample_pool

COUNTS = {"gsm8k": 40, "humaneval": 10, "chitchat": 30, "mmlu": 40}


def _same_rows(a: datasets.Dataset, b: datasets.Dataset) -> bool:
    return a["origin_id"] == b["origin_id"] and [r["messages"] for r in a] == [r["messages"] for r in b]


def test_the_built_in_pools_recipe_and_its_sample_rebuild_the_same_rows():
    pool = load_builtin_pool(COUNTS, seed=11)
    reference = pool_source(pool)
    assert reference == {"path": "builtin", "seed": "11", "rows_per_source": "gsm8k=40,humaneval=10,chitchat=30,mmlu=40"}
    sample = sample_pool(pool, 50, seed=11)
    assert pool_source(sample) == {**reference, "sample_rows": "50", "sample_seed": "11"}
    assert _same_rows(load_pool_source(pool_source(sample)), sample)
    # Another seed is another pool: the seed is part of the recipe.
    assert not _same_rows(load_pool_source({**reference, "seed": "12"}), pool)
    # A pool changed since it was built, or a sample of a sample, has no reference: it is not what one would build.
    assert pool_source(pool.map(lambda row: row)) is None and pool_source(sample_pool(sample, 20, seed=0)) is None
    with pytest.raises(InvalidArgumentError, match="`sample_seed`='x' is not an int"):
        load_pool_source({**pool_source(sample), "sample_seed": "x"})


def test_load_selection_without_a_pool_rebuilds_it_from_the_manifest(tmp_path):
    pool = sample_pool(load_builtin_pool(COUNTS, seed=11), 60, seed=11)
    subset, manifest = diverse_select(pool, 12, method="random", seed=4, return_manifest=True)
    path = manifest.save(str(tmp_path / "manifest.json"))
    rebuilt = hf_idsel.load_selection(path)
    assert rebuilt["source_index"] == subset["source_index"] and _same_rows(rebuilt.remove_columns(["source_index", "cluster"]), subset.remove_columns(["source_index", "cluster"]))

    # A manifest from before the recipe was recorded: rebuilt with seed 0, the mismatch says what to pass.
    old = json.loads(open(path).read())
    old["pool"]["source"] = {"path": "builtin"}
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(SelectionMismatchError, match=r"load_builtin_pool\(seed=<the training seed>\)"):
        hf_idsel.load_selection(str(tmp_path / "old.json"))


def test_a_local_file_pool_rebuilds_here_and_is_named_by_file_and_digest_elsewhere(tmp_path):
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "output": f"{i}."}) + "\n" for i in range(30)))
    pool = load_pool(str(data))
    assert pool_source(pool) == {"path": str(data), "split": "train"}
    subset, manifest = diverse_select(pool, 6, method="random", seed=0, return_manifest=True)
    path = manifest.save(str(tmp_path / "manifest.json"))
    assert hf_idsel.load_selection(path)["source_index"] == subset["source_index"]
    data.rename(tmp_path / "moved.jsonl")  # elsewhere: the file is not at its recorded path
    with pytest.raises(InvalidArgumentError, match=rf"local file 'pool.jsonl' \(content digest {manifest.pool['digest']}\)"):
        hf_idsel.load_selection(path)
    assert hf_idsel.load_selection(path, load_pool(str(tmp_path / "moved.jsonl")))["source_index"] == subset["source_index"]


def test_load_selection_from_the_hub_rebuilds_the_pool_it_records(hub, tmp_path):
    pool = sample_pool(load_builtin_pool(COUNTS, seed=11), 60, seed=11)
    subset, manifest = diverse_select(pool, 12, method="random", seed=4, return_manifest=True)
    repo = hub.repo("rebuild")
    hf_idsel.push_selection(subset, repo, manifest=manifest, local_dir=str(tmp_path / "stage"), license="mit")
    pushed = Manifest.load(hub.server.files(repo)["manifest.json"].decode())
    assert pushed.pool["source"] == pool_source(pool)
    assert hf_idsel.load_selection(repo)["source_index"] == subset["source_index"]
