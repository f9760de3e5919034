import json
import os
import subprocess
import sys

import datasets
import pytest

from hf_idsel import load_selection
from hf_idsel.cli import main

ROWS = [
    {"instruction": f"Translate sentence {i} into French.", "output": f"Phrase {i} en francais."} for i in range(20)
] + [{"instruction": f"Compute {i} times 3.", "output": f"{3 * i}"} for i in range(20)]


@pytest.fixture
def pool_file(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    return str(path)


def test_select_writes_subset_manifest_and_report(pool_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["select", pool_file, "--budget", "10", "--k", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "10 of 40 rows" in printed and "method=kmq" in printed
    subset = datasets.Dataset.from_parquet(str(out / "subset.parquet"))
    assert len(subset) == 10 and {"instruction", "output", "source_index", "cluster"} <= set(subset.column_names)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["selected_indices"] == subset["source_index"]
    # Two clusters of 20 (translation vs arithmetic): 5 rows from each.
    assert sorted(manifest["selected_per_cluster"]) == [5, 5]
    assert "pool rows" in (out / "report.md").read_text()
    pool = datasets.load_dataset("json", data_files=pool_file, split="train")
    assert load_selection(str(out), pool)["source_index"] == subset["source_index"]


def test_bad_budget_is_a_clear_error(pool_file, tmp_path, capsys):
    assert main(["select", pool_file, "--budget", "41", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "budget" in err and "40 rows" in err
    assert not os.path.exists(tmp_path / "o")


def test_dry_run_prints_the_plan(pool_file, tmp_path, capsys):
    assert main(["select", pool_file, "--budget", "0.5", "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "Select 20 rows of 40" in capsys.readouterr().out


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "hf-idsel")
    result = subprocess.run([exe, "select", "--help"], capture_output=True, text=True, check=True)
    assert "--budget" in result.stdout and "--max-tokens" in result.stdout
