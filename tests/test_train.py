"""`hf_idsel.train`, the recipe entry point: a recipe on 2 CPU ranks, the paper's recipe on an Alpaca-layout
pool with its chat template and reward scorer, and arguments refused before any model is loaded."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml
from helpers import make_tiny_llama, save_tiny_llama, single_thread, tiny_reward_model

from hf_idsel import InvalidArgumentError
from hf_idsel.train import BUILTIN_POOL, main, make_parser, to_trainable_rows

REPO = Path(__file__).resolve().parents[1]
LAPTOP_LORA = REPO / "recipes" / "smollm2-135m" / "iterative_sft" / "config_lora.yaml"
PAPER_LORA = REPO / "recipes" / "llama-2-7b" / "iterative_sft" / "config_lora.yaml"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with single_thread():
        yield


def free_port() -> str:
    with socket.socket() as probe:  # port 0 on the command line hung the rendezvous: ask the OS for one
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def read_rounds(output_dir) -> list[dict]:
    folder = Path(output_dir) / "selection"
    return [json.loads((folder / f"round_{r}.json").read_text()) for r in range(1, len(list(folder.glob("round_*.json"))) + 1)]


def tiny_model_dir(path, *, chat_template: bool = True) -> str:
    model, tokenizer = make_tiny_llama()
    if not chat_template:
        tokenizer.chat_template = None
    return save_tiny_llama(model, tokenizer, path)


def test_laptop_recipe_on_two_cpu_ranks(tmp_path):
    """The documented CPU launch of the laptop recipe, with a tiny Llama standing in for SmolLM2 for speed."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    recipe = yaml.safe_load(LAPTOP_LORA.read_text())
    model_dir = tiny_model_dir(tmp_path / "tiny")
    out = tmp_path / "out"
    pool_rows = 96  # of the recipe's 256: embedding fewer rows keeps the test short
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_ip", "127.0.0.1", "--main_process_port", free_port(),
        "-m", "hf_idsel.train", "--config", str(LAPTOP_LORA),
        "--model_name_or_path", model_dir, "--output_dir", str(out), "--max_pool_rows", str(pool_rows),
    ]
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",  # 2 CPU ranks over gloo even where a GPU is visible
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "terminate called" not in result.stderr  # the process group was destroyed before exit
    assert result.stdout.count("Training completed") == 1  # printed by the main process only

    budget, rounds, batch = recipe["budget"], recipe["rounds"], recipe["per_device_train_batch_size"]
    files = read_rounds(out)
    per_round = budget // rounds
    assert [f["cumulative_size"] for f in files] == [per_round * (r + 1) for r in range(rounds)]
    chosen = [row for f in files for row in f["selected"]]
    assert len(set(chosen)) == budget and all(0 <= row < pool_rows for row in chosen)
    assert all(f["scorer"] == recipe["scorer"] and f["k"] == recipe["k"] for f in files)
    # Both ranks trained: each step takes `batch` x `accumulation` rows per rank, so a round is half the steps of one
    # process.
    accumulation = recipe["gradient_accumulation_steps"]
    steps_two_ranks = math.ceil(math.ceil(per_round / (batch * 2)) / accumulation)
    assert steps_two_ranks != math.ceil(math.ceil(per_round / batch) / accumulation)
    assert [f["global_step"] for f in files] == [steps_two_ranks * (r + 1) for r in range(rounds)]
    # Every trained row was scored: the losses of both ranks were gathered.
    assert all(f["scored_rows"] == per_round for f in files)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == steps_two_ranks * rounds
    # One line a person reads per round, from the main process only, printed by the recipe's logging setup.
    lines = [line for line in result.stderr.splitlines() if "hf_idsel.trainer: round " in line]
    assert len(lines) == rounds, result.stderr[-4000:]
    for r, line in enumerate(lines, start=1):
        assert f"INFO hf_idsel.trainer: round {r}/{rounds}: drew {per_round} rows ({per_round * r} of {budget})" in line

    # The saved adapter loads with from_pretrained (onto the base named in its config) and was trained.
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert any(name.endswith("lora_B.weight") and tensor.abs().sum() > 0 for name, tensor in adapter.items())
    loaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert loaded.peft_config and loaded.config.vocab_size == 400
    # The card beside the adapter is hf_idsel's, written by the main process, not PEFT's template.
    card = (out / "README.md").read_text()
    assert "| processes | 2 |" in card and "AutoPeftModelForCausalLM" in card and "More Information Needed" not in card


def write_alpaca_pool(path: Path, per_topic: int = 8) -> str:
    """WizardLM's layout (`instruction`, `output`) with three distinct topics."""
    topics = [
        ("What colour is the {w}?", "The {w} is blue."),
        ("Add {i} and {i}.", "{i} plus {i} is {j}."),
        ("Write a greeting for {w}.", "Hello, {w}! Nice to meet you."),
    ]
    words = ["sky", "sea", "coal", "snow", "plum", "fox", "dog", "tree"]
    with open(path, "w", encoding="utf-8") as f:
        for question, answer in topics:
            for i in range(per_topic):
                w = words[i % len(words)]
                row = {"instruction": question.format(w=w, i=i), "output": answer.format(w=w, i=i, j=2 * i)}
                f.write(json.dumps(row) + "\n")
    return str(path)


def test_paper_recipe_on_an_alpaca_pool_with_its_chat_template_and_reward_scorer(tmp_path, monkeypatch):
    """The Llama-2-7B recipe's plumbing, with tiny stand-ins for the model and the reward model: instruction/output
    rows become user/assistant turns, the recipe's Tulu template frames them (the base model has none), only the
    answers are trained, and every round is scored by the reward model."""
    monkeypatch.chdir(REPO)  # the recipe names its chat template relative to the repository root
    model, tokenizer = make_tiny_llama()
    tokenizer.chat_template = None
    model_dir = save_tiny_llama(model, tokenizer, tmp_path / "base")
    reward_dir = save_tiny_llama(tiny_reward_model(tokenizer), tokenizer, tmp_path / "rm")
    pool = write_alpaca_pool(tmp_path / "wizardlm.jsonl")
    out = tmp_path / "out"
    script_args, training_args, model_args = make_parser().parse_args_and_config([
        "--config", str(PAPER_LORA),
        "--model_name_or_path", model_dir, "--dtype", "float32", "--dataset_name", pool,
        "--budget", "12", "--k", "3", "--reward_model", reward_dir, "--generation_max_new_tokens", "4",
        "--scoring_batch_size", "4", "--epochs_per_round", "1", "--bf16", "false", "--use_cpu", "true",
        "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--gradient_checkpointing", "false",
        "--max_length", "64", "--save_strategy", "no", "--output_dir", str(out), "--disable_tqdm", "true",
        "--quality_model", model_dir,  # the recipe's quality model, stood in for by the tiny base
    ])
    assert training_args.rounds == 3 and training_args.scorer == "reward"  # from the recipe
    trainer = main(script_args, training_args, model_args)
    # Iterative kMQ, not kM-random: every pool row has a quality score and the draws read it.
    assert training_args.quality_column == "quality" and trainer.quality is not None
    assert np.isfinite(trainer.quality).all() and len(set(trainer.quality.tolist())) > 1
    assert trainer.selection_manifest().arguments["quality_column"] == "quality"

    files = read_rounds(out)
    assert [f["cumulative_size"] for f in files] == [4, 8, 12]
    assert all(f["scorer"] == "reward" for f in files)
    assert [f["scored_rows"] for f in files] == [4, 8, 12]  # the recipe scores all of D' every round
    assert "prompt" in trainer.pool.column_names and "instruction" not in trainer.pool.column_names
    first = trainer.train_dataset[0]
    text = trainer.processing_class.decode(first["input_ids"])
    assert text.startswith("<s><|user|>\n") and "\n<|assistant|>\n" in text and text.endswith("</s>\n")
    answer = trainer.processing_class.decode([t for t, label in zip(first["input_ids"], first["labels"]) if label != -100])
    assert "<|user|>" not in answer and answer.endswith("</s>\n")  # the loss covers the answer only
    assert "<|assistant|>" in (out / "chat_template.jinja").read_text()  # saved with the model


def test_to_trainable_rows_reads_the_common_layouts():
    alpaca = datasets.Dataset.from_list([{"instruction": "Sum", "input": "1 2", "output": "3", "id": 7}])
    rows = to_trainable_rows(alpaca)
    assert rows[0]["prompt"] == [{"role": "user", "content": "Sum\n\n1 2"}]
    assert rows[0]["completion"] == [{"role": "assistant", "content": "3"}]
    assert rows[0]["id"] == 7 and set(rows.column_names) == {"prompt", "completion", "id"}

    sharegpt = datasets.Dataset.from_list(
        [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}]
    )
    assert to_trainable_rows(sharegpt)[0]["messages"] == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}
    ]
    qa = to_trainable_rows(datasets.Dataset.from_list([{"question": "2+2?", "answer": "4"}]))
    assert qa[0]["completion"][0]["content"] == "4"
    chat = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    assert to_trainable_rows(chat) is chat
    with pytest.raises(InvalidArgumentError, match="gold answer"):
        to_trainable_rows(datasets.Dataset.from_list([{"text": "just text"}]))


def _laptop_args(tmp_path, *overrides):
    return make_parser().parse_args_and_config([
        "--config", str(LAPTOP_LORA),
        "--model_name_or_path", str(tmp_path / "no-model-here"),  # loading it would fail: errors must come first
        "--output_dir", str(tmp_path / "out"), *overrides,
    ])


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["--max_pool_rows", "40"], r"`budget`=64 rows is more than the pool has \(40 rows\)"),
        (["--budget", "8", "--rounds", "9"], r"`rounds`=9 is larger than the budget"),
        (["--k", "300"], r"`k`=300 must be between 1 and the number of pool rows \(256\)"),
        (["--dataset_streaming", "true"], r"`dataset_streaming`"),
        (["--scorer", "reward"], r"`reward_model`"),
        (["--scorer", "judge"], r"JudgeScorer"),
        (["--chat_template_path", "recipes/chat_templates/missing.jinja"], r"`chat_template_path`="),
        (["--eval_strategy", "epoch"], rf"`dataset_name`='{BUILTIN_POOL}' has no test split"),
        (["--budget", "10.5"], r"`budget`=10.5 as a float is a fraction of the pool"),
        (["--load_in_4bit", "true", "--use_peft", "false"], r"`use_peft`"),
        (["--quality_model", "x", "--preset", "research_code"], r"`quality_model` weights the draw inside clusters"),
        (["--exclude_dataset", "builtin"], r"`exclude_dataset`='builtin' is the pool itself"),
        (["--exclude_dataset", "x.jsonl", "--exclude_ngram_threshold", "1.5"], r"`exclude_ngram_threshold`"),
        (["--exclude_dataset", "missing-eval.jsonl"], r"`exclude_dataset`="),
    ],
)
def test_arguments_are_refused_before_the_model_loads(tmp_path, monkeypatch, overrides, match):
    monkeypatch.chdir(REPO)
    with pytest.raises(InvalidArgumentError, match=match):
        main(*_laptop_args(tmp_path, *overrides))


def test_missing_model_and_dataset_are_named(tmp_path):
    script_args, training_args, model_args = _laptop_args(tmp_path)
    model_args.model_name_or_path = None
    with pytest.raises(InvalidArgumentError, match="`model_name_or_path` is required"):
        main(script_args, training_args, model_args)
    model_args.model_name_or_path = "x"
    script_args.dataset_name = None
    with pytest.raises(InvalidArgumentError, match="`dataset_name` is required"):
        main(script_args, training_args, model_args)


def test_pools_that_cannot_train_are_refused_before_the_model_loads(tmp_path):
    text_only = tmp_path / "notes.jsonl"
    text_only.write_text('{"text": "a"}\n{"text": "b"}\n')
    with pytest.raises(InvalidArgumentError, match="none of which hold a prompt and its gold answer"):
        main(*_laptop_args(tmp_path, "--dataset_name", str(text_only)))
    notes = tmp_path / "notes.txt"  # the pool loader reads .txt (one `text` column) for selection; training refuses it
    notes.write_text("a\nb\n")
    with pytest.raises(InvalidArgumentError, match="none of which hold a prompt and its gold answer"):
        main(*_laptop_args(tmp_path, "--dataset_name", str(notes)))
    pairs = write_alpaca_pool(tmp_path / "pairs.jsonl")  # one file, one split: nothing to evaluate on
    with pytest.raises(InvalidArgumentError, match=r"`dataset_test_split`='test': `dataset_name`=.*has splits \['train'\]"):
        main(*_laptop_args(tmp_path, "--dataset_name", pairs, "--eval_strategy", "epoch"))
    odd = tmp_path / "pool.xml"
    odd.write_text("<rows/>")
    with pytest.raises(InvalidArgumentError, match=r"`dataset_name`=.*unsupported file type '.xml'"):
        main(*_laptop_args(tmp_path, "--dataset_name", str(odd)))


def test_a_base_model_without_chat_template_needs_one(tmp_path):
    """A conversational pool and a tokenizer without a chat template: refused before the weights are read."""
    _, tokenizer = make_tiny_llama()
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path / "tokenizer-only")  # no weights: loading the model would raise
    pool = write_alpaca_pool(tmp_path / "pool.jsonl")
    with pytest.raises(InvalidArgumentError, match="`chat_template_path`"):
        main(*_laptop_args(
            tmp_path, "--model_name_or_path", str(tmp_path / "tokenizer-only"), "--dataset_name", pool,
            "--budget", "6", "--k", "3",
        ))


def test_cli_train_then_report(tmp_path, capsys, caplog):
    """`hf-idsel train` runs the same entry point in-process; `hf-idsel report` reads its output directory."""
    from hf_idsel.cli import main as cli

    out = tmp_path / "out"
    argv = ["train", "--config", str(LAPTOP_LORA), "--model_name_or_path", tiny_model_dir(tmp_path / "tiny"),
            "--output_dir", str(out), "--max_pool_rows", "96", "--budget", "16"]
    assert cli(argv) == 0
    files = read_rounds(out)
    assert [f["cumulative_size"] for f in files] == [8, 16]
    # While training, one INFO line per round names the clusters whose weight moved most by their terms, with the
    # weights of the round files (the recipe's softmax rule moves them after round 1).
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_idsel.trainer" and r.getMessage().startswith("round ")]
    assert len(lines) == 2 and all(r.levelname == "INFO" for r in caplog.records if r.getMessage() in lines)
    assert lines[0].startswith("round 1/2: drew 8 rows (8 of 16); weight up: cluster ")
    assert lines[1].startswith("round 2/2: drew 8 rows (16 of 16); ")
    # The recipe's schedule moves the weights from the first step: no warm-up step at learning rate 0.
    state = json.loads((out / "trainer_state.json").read_text())
    rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    assert len(rates) == 2 and rates[0] > 0
    moved = np.asarray(files[0]["weights"]) - 1 / 8
    up, down = int(np.argmax(moved)), int(np.argmin(moved))
    assert f"weight up: cluster {up} {files[0]['cluster_terms'][up]!r} 0.125 -> {files[0]['weights'][up]:.3g}" in lines[0]
    assert f"down: cluster {down} {files[0]['cluster_terms'][down]!r} 0.125 -> {files[0]['weights'][down]:.3g}" in lines[0]
    card = (out / "README.md").read_text()  # the recipe's card: hf_idsel's, not PEFT's template
    assert "| method | iterative-kmq |" in card and "| budget | 16 rows |" in card and "More Information Needed" not in card
    capsys.readouterr()
    assert cli(["report", str(out), "--plot", str(tmp_path / "run.png")]) == 0
    printed = capsys.readouterr().out
    assert "16 of 96 rows, method=iterative-kmq" in printed and "2 round(s), k=8" in printed
    assert (tmp_path / "run.png").read_bytes().startswith(b"\x89PNG")


def test_train_excludes_an_evaluation_set_named_like_the_pool(tmp_path, capsys):
    """`--exclude_dataset` (+ thresholds; a local file needs no split: its only split is taken) loads the evaluation
    set like the pool, the trainer never draws the pool rows that copy its items, and the run's manifest, card and
    report say so."""
    from hf_idsel.cli import main as cli
    from hf_idsel.manifest import Manifest
    from hf_idsel.hub_layout import STAGING_DIR

    pool = write_alpaca_pool(tmp_path / "pool.jsonl")
    rows = [json.loads(line) for line in open(pool)]
    evaluation = tmp_path / "eval.jsonl"  # two pool rows copied verbatim, one unrelated item
    copies = [rows[3], rows[12], {"instruction": "Name a prime number.", "output": "Seven."}]
    evaluation.write_text("".join(json.dumps(row) + "\n" for row in copies))
    script_args, training_args, model_args = make_parser().parse_args_and_config([
        "--config", str(LAPTOP_LORA), "--model_name_or_path", tiny_model_dir(tmp_path / "tiny"),
        "--dataset_name", pool, "--max_pool_rows", "24", "--budget", "12", "--k", "3",
        "--exclude_dataset", str(evaluation), "--exclude_ngram", "4",
        "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true",
    ])
    assert (script_args.exclude_dataset, script_args.exclude_dataset_split) == (str(evaluation), None)
    assert (script_args.exclude_ngram, script_args.exclude_ngram_threshold, script_args.exclude_cosine_threshold) == (4, 0.6, 0.99)
    trainer = main(script_args, training_args, model_args)
    record = trainer.decontamination
    assert record["removed_indices"] == [3, 12] and record["matched_items"] == [0, 1] and record["ngram"] == 4
    assert record["exclude"]["num_rows"] == 3
    assert len(trainer.selection.selected()) == 12 and not {3, 12} & set(trainer.selection.selected())
    manifest = Manifest.load(str(tmp_path / "out" / STAGING_DIR / "manifest.json"))
    assert manifest.decontamination == record and sum(manifest.cluster_sizes) == 22
    assert "| decontamination | dropped 2 pool rows" in (tmp_path / "out" / "README.md").read_text()
    capsys.readouterr()
    assert cli(["report", str(tmp_path / "out"), "--map", str(tmp_path / "map.png")]) == 0
    assert "decontamination: dropped 2 pool rows" in capsys.readouterr().out
    assert (tmp_path / "map.png").read_bytes().startswith(b"\x89PNG")


def test_train_target_dataset_leans_round_one_to_the_target(tmp_path):
    """`--target_dataset` (a local file, loaded like the pool) reaches the trainer: round 1 leans to the target's
    topic, and the run records the target."""
    pool = write_alpaca_pool(tmp_path / "pool.jsonl")
    target = tmp_path / "target.jsonl"  # new sums: the pool's second topic
    target.write_text("".join(json.dumps({"instruction": f"Add {i} and {i}.", "output": f"{i} plus {i} is {2 * i}."}) + "\n" for i in range(20, 26)))
    script_args, training_args, model_args = make_parser().parse_args_and_config([
        "--config", str(LAPTOP_LORA), "--model_name_or_path", tiny_model_dir(tmp_path / "tiny"),
        "--dataset_name", pool, "--budget", "9", "--k", "3", "--target_dataset", str(target), "--target_sharpness", "8",
        "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true",
    ])
    assert (script_args.target_dataset, training_args.target_sharpness) == (str(target), 8.0)
    trainer = main(script_args, training_args, model_args)
    assert trainer.target["num_rows"] == 6 and trainer.target["sharpness"] == 8.0
    round_one = trainer.selection.rounds[0]["selected"] if trainer.selection.rounds else trainer.selection.current_rows
    sums = sum(" plus " in json.dumps(trainer.pool[int(r)]) for r in round_one)
    assert sums > len(round_one) / 2


def test_an_exclude_dataset_with_several_splits_needs_its_split_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    folder = tmp_path / "evaluation"
    items = datasets.Dataset.from_dict({"question": ["What is 2 plus 2?"], "answer": ["4"]})
    datasets.DatasetDict({"train": items, "test": items}).save_to_disk(str(folder))
    with pytest.raises(InvalidArgumentError, match=r"has splits \['train', 'test'\]: pass `exclude_dataset_split`"):
        main(*_laptop_args(tmp_path, "--exclude_dataset", str(folder)))


def test_train_errors_on_the_command_line_are_one_line_naming_the_flag(tmp_path, monkeypatch, capsys):
    from hf_idsel.cli import main as cli

    monkeypatch.chdir(REPO)
    argv = ["train", "--config", str(LAPTOP_LORA), "--model_name_or_path", str(tmp_path / "no-model-here"),
            "--output_dir", str(tmp_path / "out")]
    for flags, expected in (
        (["--quality_temperature", "nan"], "hf-idsel train: error: --quality_temperature nan must be a finite number > 0"),
        (["--exclude_dataset", "builtin"], "hf-idsel train: error: --exclude_dataset 'builtin' is the pool itself"),
        (["--k", "300"], "hf-idsel train: error: --k 300 must be between 1 and the number of pool rows (256)"),
    ):
        assert cli([*argv, *flags]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), lines
    with pytest.raises(SystemExit) as stopped:  # argparse's own errors: one line too, status 2
        cli([*argv, "--no_such_flag", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stopped.value.code == 2 and len(lines) == 1 and "unrecognized arguments: --no_such_flag 1" in lines[0]
    recipe = tmp_path / "recipe.yaml"  # a key no dataclass has: one line, not TRL's ValueError traceback
    recipe.write_text(yaml.safe_dump({**yaml.safe_load(LAPTOP_LORA.read_text()), "bogus_key": 1}))
    assert cli(["train", "--config", str(recipe), "--output_dir", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Unknown arguments from config file: ['--bogus_key', '1']" in lines[0], lines
