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
import hf_idsel.cards, hf_idsel.hub, hf_idsel.publish, hf_idsel.rounds
print(json.dumps(sorted(name for name in ("torch", "transformers", "trl") if name in sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def _one_error_line(capsys, command):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hf-idsel {command}: error: "), captured.err
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


def test_a_missing_pool_file_is_one_line(tmp_path, capsys):
    missing = str(tmp_path / "pool.jsonl")
    assert main(["select", missing, "--budget", "2", "--out", str(tmp_path / "o")]) == 2
    assert f"POOL={missing!r}: no such file or folder" in _one_error_line(capsys, "select")


def test_a_malformed_jsonl_line_is_named_with_its_file_and_number(tmp_path, capsys):
    path = tmp_path / "pool.jsonl"
    lines = [json.dumps(r) for r in ROWS]
    lines[6] = lines[6][:-1]  # the closing brace of line 7 is lost
    path.write_text("\n".join(lines) + "\n")
    assert main(["select", str(path), "--budget", "2", "--out", str(tmp_path / "o")]) == 2
    assert f"POOL={str(path)!r}: line 7 is not valid JSON" in _one_error_line(capsys, "select")


def test_an_out_that_is_a_file_is_refused_before_the_pool_is_read(tmp_path, capsys):
    out = tmp_path / "out.txt"
    out.write_text("notes")
    # The pool does not exist either: the error names --out, so --out was checked first.
    assert main(["select", str(tmp_path / "missing.jsonl"), "--budget", "2", "--out", str(out)]) == 2
    assert f"--out {str(out)!r} is an existing file" in _one_error_line(capsys, "select")
    assert out.read_text() == "notes"
    assert main(["select", str(tmp_path / "missing.jsonl"), "--budget", "2", "--out", str(out / "sub")]) == 2
    assert "is a file, so no folder can be created under it" in _one_error_line(capsys, "select")


def test_split_of_a_single_file_is_refused(pool_file, tmp_path, capsys):
    assert main(["select", pool_file, "--budget", "2", "--split", "test", "--out", str(tmp_path / "o")]) == 2
    assert f"--split='test': POOL={pool_file!r} has splits ['train']" in _one_error_line(capsys, "select")
    assert not os.path.exists(tmp_path / "o")


def test_report_on_a_truncated_manifest_is_one_line(pool_file, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["select", pool_file, "--budget", "4", "--k", "2", "--out", str(out)]) == 0
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:200])
    capsys.readouterr()
    assert main(["report", str(out)]) == 2
    line = _one_error_line(capsys, "report")
    assert str(manifest) in line and "truncated or corrupt" in line


def test_select_keeps_an_earlier_selection_unless_overwrite(pool_file, tmp_path, capsys):
    from hf_idsel.manifest import Manifest
    from hf_idsel.hub_layout import PUSH_FILE
    from hf_idsel.publish import stage

    out = tmp_path / "out"
    assert main(["select", pool_file, "--budget", "4", "--k", "2", "--out", str(out)]) == 0
    first = (out / "manifest.json").read_text()
    capsys.readouterr()
    assert main(["select", pool_file, "--budget", "6", "--k", "2", "--out", str(out)]) == 2
    line = _one_error_line(capsys, "select")
    assert "already holds a selection (subset.parquet, manifest.json, report.md); pass --overwrite" in line
    assert (out / "manifest.json").read_text() == first
    # The earlier selection was staged for a push: --overwrite forgets that push with the rows it staged.
    subset = datasets.Dataset.from_parquet(str(out / "subset.parquet"))
    manifest = Manifest.load(str(out))
    stage(str(out), "someone/selection", subsets={"default": subset}, manifests={"default": manifest}, card=None)
    assert (out / PUSH_FILE).is_file() and (out / "data" / "default.parquet").is_file()
    assert main(["select", pool_file, "--budget", "6", "--k", "2", "--out", str(out), "--overwrite"]) == 0
    assert len(json.loads((out / "manifest.json").read_text())["selected_indices"]) == 6
    assert len(datasets.Dataset.from_parquet(str(out / "subset.parquet"))) == 6
    assert not (out / PUSH_FILE).exists() and not (out / "data").exists()


def test_report_names_a_truncated_round_file(tmp_path, capsys):
    from hf_idsel.rounds import write_round_file

    folder = tmp_path / "run" / "selection"
    record = {"round": 1, "weights": [0.5, 0.5], "cluster_scores": [1.0, None], "selected": [3, 4], "selected_per_cluster": [1, 1],
              "cumulative_size": 2, "scorer": "loss", "scored": True, "scored_rows": 2, "global_step": 1, "k": 2, "k_selection": None}
    write_round_file(str(folder), record)
    broken = write_round_file(str(folder), {**record, "round": 2})
    with open(broken, "r+") as f:
        f.truncate(40)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run")]) == 2
    line = _one_error_line(capsys, "report")
    assert broken in line and "truncated or corrupt" in line



# ---- TRL's dataset flags, decontamination and the cluster map ----


def test_select_takes_trls_dataset_flags_as_trl_parses_them(pool_file, tmp_path, capsys):
    import trl

    from hf_idsel.cli import build_parser
    from hf_idsel.train import make_parser

    flags = ["--dataset_name", pool_file, "--dataset_config", "default", "--dataset_train_split", "validation"]
    (trl_args,) = trl.TrlParser((trl.ScriptArguments,)).parse_args_into_dataclasses(flags)
    select = build_parser().parse_args(["select", *flags, "--budget", "5", "--out", str(tmp_path / "o")])
    assert (select.dataset_name, select.config, select.split) == (
        trl_args.dataset_name, trl_args.dataset_config, trl_args.dataset_train_split
    )
    script_args, _, _ = make_parser().parse_args_and_config(
        args=[*flags, "--output_dir", str(tmp_path / "t"), "--bf16", "false", "--use_cpu", "true"]
    )
    assert (script_args.dataset_name, script_args.dataset_config, script_args.dataset_train_split) == (
        trl_args.dataset_name, trl_args.dataset_config, trl_args.dataset_train_split
    )

    # The same selection as with POOL; the pool is named once.
    assert main(["select", "--dataset_name", pool_file, "--dataset_train_split", "train", "--budget", "10", "--k", "2",
                 "--out", str(tmp_path / "flags")]) == 0
    assert main(["select", pool_file, "--budget", "10", "--k", "2", "--out", str(tmp_path / "positional")]) == 0
    capsys.readouterr()
    read = [json.loads((tmp_path / d / "manifest.json").read_text())["selected_indices"] for d in ("flags", "positional")]
    assert read[0] == read[1]
    for argv in (["select", pool_file, "--dataset_name", pool_file], ["select"]):
        assert main([*argv, "--budget", "5", "--out", str(tmp_path / "x")]) == 2
        assert "Name the pool once" in capsys.readouterr().err


def test_select_exclude_drops_copies_of_an_evaluation_file_and_report_maps_the_clusters(pool_file, tmp_path, capsys):
    evaluation = tmp_path / "eval.jsonl"
    items = [{"question": ROWS[i]["instruction"].upper(), "answer": ROWS[i]["output"]} for i in (3, 25)]
    evaluation.write_text("\n".join(json.dumps(r) for r in items) + "\n")
    out = tmp_path / "out"
    argv = ["select", pool_file, "--budget", "10", "--k", "2", "--out", str(out), "--exclude", str(evaluation),
            "--exclude-split", "train", "--exclude-cosine-threshold", "none"]
    assert main(argv) == 0
    assert "decontamination: dropped 2 pool rows" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decontamination"]["removed_indices"] == [3, 25]
    assert manifest["decontamination"]["cosine_threshold"] is None
    assert len(manifest["selected_indices"]) == 10 and not {3, 25} & set(manifest["selected_indices"])

    assert main(["report", str(out), "--map", str(tmp_path / "map.png")]) == 0
    with open(tmp_path / "map.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert main([*argv[:-1], "2", "--overwrite"]) == 2
    assert "exclude_cosine_threshold" in capsys.readouterr().err
