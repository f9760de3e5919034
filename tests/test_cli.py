import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from hf_idsel import diverse_select, load_selection
from hf_idsel.cli import main

REPO = Path(__file__).resolve().parents[1]

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


def test_push_and_report_never_import_the_training_stack(blob_pool, tmp_path):
    """`hf-idsel push` and `hf-idsel report` run where torch, transformers and TRL are slow to import or absent: in a
    fresh interpreter, their code paths (and the card renderer a push uses) leave all three unimported."""
    subset, manifest = diverse_select(blob_pool, 20, k=4, embedding_column="embedding", return_manifest=True)
    out = tmp_path / "out"
    manifest.save(str(out / "manifest.json"))
    subset.to_parquet(str(out / "subset.parquet"))
    code = f"""
import json, sys
from hf_idsel.cli import main
assert main(["report", {str(out)!r}, "--plot", {str(tmp_path / "plot.png")!r}]) == 0
assert main(["push", {str(out)!r}]) == 2  # never pushed and no --repo-id: refused once the push path is imported
import hf_idsel.cards, hf_idsel.publish, hf_idsel.rounds
print(json.dumps(sorted(name for name in ("torch", "transformers", "trl") if name in sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
