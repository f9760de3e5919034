"""The loop a user runs, end to end, offline, in a fresh folder (issue 25): the laptop recipe trains a tiny model for 2
rounds on a seeded sample of the built-in pool with a local exclusion file and pushes to the (loopback) Hub;
`hf-idsel eval` scores the output folder, holding out exactly the run's pool, and writes the model card; another
process, elsewhere and with no pool passed, rebuilds round 2 from the Hub and gets the same rows; a selection of a
local file is pushed too, and no pushed file names a path of this machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_tiny_llama, save_tiny_llama, single_thread

from hf_idsel.cli import main
from hf_idsel.evaluation import held_out_items
from hf_idsel.pool import load_builtin_pool, sample_pool

REPO = Path(__file__).resolve().parents[1]
LAPTOP_LORA = REPO / "recipes" / "smollm2-135m" / "iterative_sft" / "config_lora.yaml"
SEED, POOL_ROWS, BUDGET = 7, 96, 16  # a seed that is neither the recipe's (42) nor the library's default (0)

REBUILD = """
import hashlib, json, sys
import hf_idsel
subset = hf_idsel.load_selection(sys.argv[1], config="round_2")
texts = json.dumps([row["messages"] for row in subset], sort_keys=True).encode()
print(json.dumps({"rows": list(subset["source_index"]), "messages": hashlib.sha256(texts).hexdigest()}))
"""


def _files_holding(files: dict, needles) -> list[str]:
    return [name for name, content in files.items() for needle in needles if needle.encode() in content]


@pytest.mark.slow
def test_select_train_evaluate_publish_and_rebuild_elsewhere(hub, tmp_path, monkeypatch, capsys):
    import hashlib

    home = tmp_path / "work"
    home.mkdir()
    monkeypatch.chdir(home)
    save_tiny_llama(*make_tiny_llama(), home / "tiny")
    # The pool the recipe will draw: the built-in pool at the run's seed, then its max_pool_rows sample.
    pool = sample_pool(load_builtin_pool(seed=SEED), POOL_ROWS, seed=SEED)
    copied = [pool[3], pool[40]]  # the evaluation set holds two pool rows verbatim
    exclusion = home / "eval_set.jsonl"
    exclusion.write_text("".join(json.dumps({"messages": row["messages"]}) + "\n" for row in copied))
    model_repo, out = hub.repo("journey"), Path("run")  # relative, as the recipe's output_dir is

    with single_thread():
        assert main([
            "train", "--config", str(LAPTOP_LORA), "--model_name_or_path", "tiny", "--output_dir", str(out),
            "--max_pool_rows", str(POOL_ROWS), "--budget", str(BUDGET), "--seed", str(SEED),
            "--exclude_dataset", str(exclusion), "--exclude_ngram", "8",
            "--push_to_hub", "true", "--hub_model_id", model_repo, "--hub_license", "apache-2.0", "--disable_tqdm", "true",
        ]) == 0
    rounds = [json.loads((out / "selection" / f"round_{r}.json").read_text()) for r in (1, 2)]
    assert [f["cumulative_size"] for f in rounds] == [BUDGET // 2, BUDGET]
    staged = json.loads((out / "_hf_idsel_selection" / "manifest.json").read_text())
    assert staged["decontamination"]["removed_indices"] == [3, 40]
    assert staged["pool"]["source"] == {
        "path": "builtin", "seed": str(SEED), "rows_per_source": staged["pool"]["source"]["rows_per_source"],
        "sample_rows": str(POOL_ROWS), "sample_seed": str(SEED),
    }

    # Evaluate the output folder: the adapter on the base its run recorded; held out, the run's own pool.
    report = home / "eval.json"
    with single_thread():
        assert main(["eval", str(out), "--tasks", "mmlu", "--items", "4", "--model_card", str(out), "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["exclude_pool"].startswith("the run's pool")
    assert result["items"]["mmlu"] == [item["origin_id"] for item in held_out_items("mmlu", 4, exclude=pool)]
    assert not set(result["items"]["mmlu"]) & set(pool["origin_id"])
    assert "| mmlu | accuracy |" in (out / "README.md").read_text()
    assert main(["push", str(out)]) == 0  # the card with its evaluation goes to the model repo

    # Elsewhere, in a fresh process, with no pool passed: round 2 rebuilt from the Hub is the run's round 2.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, **hub.env(), "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", REBUILD, f"{model_repo}-selection"], cwd=elsewhere, env=env, capture_output=True,
        text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rebuilt = json.loads(done.stdout.strip().splitlines()[-1])
    chosen = sorted(rounds[1]["selected"])
    assert rebuilt["rows"] == chosen
    expected = hashlib.sha256(json.dumps([row["messages"] for row in pool.select(chosen)], sort_keys=True).encode()).hexdigest()
    assert rebuilt["messages"] == expected

    # A selection of a local file, pushed: no file on the Hub names a path of this machine.
    local_pool = home / "pool.jsonl"
    local_pool.write_text("".join(
        json.dumps({"instruction": f"{verb} sentence {i}.", "output": f"Done {i}."}) + "\n"
        for verb in ("Translate", "Summarise") for i in range(12)
    ))
    selection_repo = hub.repo("journey-local")
    assert main(["select", str(local_pool), "--budget", "6", "--k", "2", "--out", str(home / "picked")]) == 0
    assert main(["push", str(home / "picked"), "--repo_id", selection_repo, "--license", "cc-by-4.0"]) == 0
    # (PEFT's adapter_config.json and Trainer's training_args.bin keep the base model and output_dir as given: relative here.)
    local = {str(tmp_path), os.path.realpath(tmp_path)}
    for repo, kind in ((selection_repo, "dataset"), (f"{model_repo}-selection", "dataset"), (model_repo, "model")):
        files = hub.server.files(repo, kind)
        assert files and _files_holding(files, local) == [], repo
    capsys.readouterr()
