"""The held-out evaluation: items never drawn from the pool a model trained on, exact item counts and
determinism, HumanEval code really executed (and only on request), `hf-idsel eval`, the per-round
evaluation inside IterativeSelectionTrainer (round files, logs, report), and, on the packaged
SmolLM2, numbers that move when the model is trained."""

import copy
import json

import numpy as np
import pytest

from helpers import make_pool, make_tiny_llama, make_trainer, save_tiny_llama, single_thread
from hf_idsel import InvalidArgumentError
from hf_idsel.cli import main
from hf_idsel.evaluation import (
    check_round_evaluation,
    evaluate_model,
    evaluate_round,
    extract_code,
    extract_final_number,
    held_out_items,
    humaneval_passed,
)
from hf_idsel.pool import load_builtin_pool
from hf_idsel.report import format_rounds, read_rounds
from hf_idsel.rounds import RoundRecord

# A pool that leaves GSM8K and HumanEval rows out, as a pool built for a clean evaluation would.
SMALLER = {"gsm8k": 1200, "humaneval": 140}


@pytest.fixture(scope="module")
def smaller_pool():
    return load_builtin_pool(SMALLER)


def test_held_out_items_never_come_from_the_pool_and_are_exact_and_deterministic(smaller_pool):
    in_pool = set(smaller_pool["origin_id"])
    for task, n in (("gsm8k", 30), ("mmlu", 40), ("humaneval", 24)):
        items = held_out_items(task, n, exclude=smaller_pool)
        ids = [item["origin_id"] for item in items]
        assert len(ids) == len(set(ids)) == n and not in_pool & set(ids), task
        assert ids == [item["origin_id"] for item in held_out_items(task, n, exclude=list(in_pool))]
        if task != "humaneval":  # humaneval's 24 are every row held out, whatever the seed
            assert ids != [item["origin_id"] for item in held_out_items(task, n, exclude=smaller_pool, seed=1)]
    # HumanEval has exactly 164 - 140 rows left; GSM8K all its rows are in the default pool.
    with pytest.raises(InvalidArgumentError, match=r"humaneval: 24 rows are held out .* fewer than the 25"):
        held_out_items("humaneval", 25, exclude=smaller_pool)
    with pytest.raises(InvalidArgumentError, match=r"gsm8k: 0 rows .*load_builtin_pool\(\{'gsm8k'"):
        held_out_items("gsm8k", 1, exclude=load_builtin_pool())
    item = held_out_items("gsm8k", 1, exclude=smaller_pool)[0]
    assert item["gold"].endswith(f"#### {item['number']}") and item["messages"][-1]["role"] == "user"
    assert held_out_items("mmlu", 1)[0]["letter"] in "ABCD"


def test_answers_are_read_like_gsm8k_and_humaneval_answers():
    assert extract_final_number("She has 3 + 4 = 7 apples.\n#### 1,200") == "1200"
    assert extract_final_number("So the answer is $18.00.") == "18"
    assert extract_final_number("The total is -3.50 and then 12") == "12"
    assert extract_final_number("no number") is None
    assert extract_code("Here:\n```python\ndef f():\n    return 1\n```\nDone") == "def f():\n    return 1\n"
    assert extract_code("```\nx = 1") == "x = 1"


def test_humaneval_code_is_executed_against_the_tasks_tests(smaller_pool):
    item = held_out_items("humaneval", 1, exclude=smaller_pool)[0]
    problem = item["problem"]
    assert humaneval_passed(problem, item["gold"])  # the canonical solution, fenced like the pool's answers
    assert humaneval_passed(problem, problem["canonical_solution"])  # a bare body continues the prompt
    assert not humaneval_passed(problem, f"```python\ndef {problem['entry_point']}(*args):\n    return None\n```")
    loop = f"def {problem['entry_point']}(*args):\n    while True:\n        pass\n"
    assert not humaneval_passed(problem, loop, timeout=0.5)


def test_humaneval_and_unknown_tasks_are_refused_before_any_work():
    model, tokenizer = make_tiny_llama()
    with pytest.raises(InvalidArgumentError, match="allow_code_execution"):
        evaluate_model(model, tokenizer, ["humaneval"])
    with pytest.raises(InvalidArgumentError, match=r"unknown tasks \['arc'\]"):
        evaluate_model(model, tokenizer, "mmlu,arc")
    with pytest.raises(InvalidArgumentError, match="`items` must be a positive int"):
        evaluate_model(model, tokenizer, ["mmlu"], items=0)
    with pytest.raises(InvalidArgumentError, match="without an `origin_id` column"):
        evaluate_model(model, tokenizer, ["mmlu"], exclude=make_pool())


def test_evaluate_model_scores_every_task_and_is_deterministic(smaller_pool):
    model, tokenizer = make_tiny_llama()
    with single_thread():
        run = lambda: evaluate_model(  # noqa: E731
            model, tokenizer, ["gsm8k", "mmlu", "humaneval"], items=4, exclude=smaller_pool, allow_code_execution=True,
            max_new_tokens=12, show_progress=False,
        )
        first, second = run(), run()
    assert first == second
    metrics = first["metrics"]
    assert set(metrics) == {"gsm8k/exact_match", "gsm8k/gold_logprob", "mmlu/accuracy", "mmlu/gold_logprob", "humaneval/pass@1"}
    for name in ("gsm8k/exact_match", "mmlu/accuracy", "humaneval/pass@1"):
        assert metrics[name] in (0.0, 0.25, 0.5, 0.75, 1.0), name  # shares of 4 items
    assert metrics["gsm8k/gold_logprob"] < 0 and metrics["mmlu/gold_logprob"] < 0
    assert {task: len(ids) for task, ids in first["items"].items()} == {"gsm8k": 4, "mmlu": 4, "humaneval": 4}


def test_hf_idsel_eval_writes_the_metrics_and_refuses_code_execution_unasked(tmp_path, capsys, caplog):
    folder = save_tiny_llama(*make_tiny_llama(), tmp_path / "tiny")
    # Refused before the model is loaded: the model path does not even exist.
    assert main(["eval", str(tmp_path / "missing"), "--tasks", "humaneval"]) == 2
    assert "--allow_code_execution" in capsys.readouterr().err
    out = tmp_path / "eval.json"
    with single_thread():
        # The default pool holds every GSM8K row: gsm8k is skipped with a warning, mmlu is evaluated.
        assert main(["eval", folder, "--items", "3", "--out", str(out)]) == 0
    assert "Skipping gsm8k" in caplog.text
    saved = json.loads(out.read_text())
    assert list(saved["metrics"]) == ["mmlu/accuracy", "mmlu/gold_logprob"] and len(saved["items"]["mmlu"]) == 3
    assert not set(saved["items"]["mmlu"]) & set(load_builtin_pool()["origin_id"])
    assert f"mmlu/accuracy: {saved['metrics']['mmlu/accuracy']:.4f}" in capsys.readouterr().out


def test_the_trainer_evaluates_after_every_round(tmp_path, caplog):
    skipped = [item["origin_id"] for item in held_out_items("mmlu", 3)]
    pool = make_pool()
    # Pool rows named like MMLU rows: the per-round evaluation must leave those out.
    pool = pool.add_column("origin_id", skipped + [f"row/{i}" for i in range(len(pool) - 3)])
    with single_thread():
        trainer = make_trainer(tmp_path, pool=pool, budget=16, rounds=2, round_eval_tasks=["mmlu"], round_eval_items=3)
        trainer.train()
    rounds = read_rounds(trainer.args.output_dir)
    assert [sorted(r.eval["metrics"]) for r in rounds] == [["mmlu/accuracy", "mmlu/gold_logprob"]] * 2
    items = rounds[0].eval["items"]["mmlu"]
    assert items == rounds[1].eval["items"]["mmlu"] and not set(items) & set(skipped)
    logged = [h for h in trainer.state.log_history if "eval/mmlu/accuracy" in h]
    assert [h["eval/mmlu/gold_logprob"] for h in logged] == [r.eval["metrics"]["mmlu/gold_logprob"] for r in rounds]
    # Training between the rounds moved the model, so its log-likelihood of the gold answers moved.
    assert rounds[0].eval["metrics"]["mmlu/gold_logprob"] != rounds[1].eval["metrics"]["mmlu/gold_logprob"]
    text = format_rounds(rounds)
    assert f"eval after it: mmlu/accuracy {rounds[1].eval['metrics']['mmlu/accuracy']:.3f}" in text
    # Round files written before `eval` existed still load.
    old = {k: v for k, v in rounds[0].to_dict().items() if k != "eval"}
    assert RoundRecord.from_dict(old).eval is None


def test_round_eval_config_is_checked_up_front(tmp_path):
    with pytest.raises(InvalidArgumentError, match="round_eval_allow_code_execution"):
        make_trainer(tmp_path, round_eval_tasks=["humaneval"])
    with pytest.raises(InvalidArgumentError, match="`round_eval_items`=0 must be an int >= 1"):
        make_trainer(tmp_path, round_eval_tasks=["mmlu"], round_eval_items=0)


def test_round_evaluation_needs_an_unsharded_model_and_says_when_pool_rows_may_be_evaluated(tmp_path, caplog):
    from hf_idsel import IterativeSelectionConfig

    pool = make_pool()
    args = IterativeSelectionConfig(output_dir=str(tmp_path), budget=16, round_eval_tasks=["mmlu"], round_eval_items=3, use_cpu=True)
    with pytest.raises(InvalidArgumentError, match="DeepSpeed ZeRO-3 or FSDP model cannot do alone"):
        check_round_evaluation(args, pool, sharded=True)
    with caplog.at_level("WARNING", logger="hf_idsel.evaluation"):
        check_round_evaluation(args, pool.add_column("origin_id", [f"row/{i}" for i in range(len(pool))]), sharded=False)
        assert "origin_id" not in caplog.text
        check_round_evaluation(args, pool, sharded=False)
    assert "the pool has no `origin_id` column" in caplog.text
    check_round_evaluation(IterativeSelectionConfig(output_dir=str(tmp_path), budget=16, use_cpu=True), pool, sharded=True)

    # A round's evaluation is evaluate_model with the run's settings, items held out from the pool.
    skipped = [item["origin_id"] for item in held_out_items("mmlu", 3)]
    pool = pool.add_column("origin_id", skipped + [f"row/{i}" for i in range(len(pool) - 3)])
    model, tokenizer = make_tiny_llama()
    with single_thread():
        result = evaluate_round(model, tokenizer, args, pool)
        again = evaluate_model(model, tokenizer, ["mmlu"], items=3, exclude=pool, seed=args.selection_seed, show_progress=False)
    assert result == again and not set(result["items"]["mmlu"]) & set(skipped)


@pytest.mark.slow
def test_smollm2_held_out_scores_move_when_it_is_trained_on_the_answer_format(smollm2, tmp_path):
    """LoRA on MMLU rows of the pool, a few steps at a high learning rate: the held-out MMLU items' gold
    answers become likelier (the pool's answers open with "The answer is <letter>")."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from hf_idsel.evaluation import _render, mmlu_option_logprobs
    from hf_idsel.quality import answer_log_likelihood

    base, tokenizer = smollm2
    pool = load_builtin_pool({"gsm8k": 0, "humaneval": 0, "chitchat": 0, "mmlu": 16})
    # SmolLM2 splits the options "The answer is A" ... "D" at the letter: one pass scores all four, as four passes would.
    prompts = [_render(tokenizer, item["messages"]) for item in held_out_items("mmlu", 3, exclude=pool)]
    options = [f"The answer is {x}" for x in "ABCD"]
    one_pass = mmlu_option_logprobs(base, tokenizer, prompts, show_progress=False)
    each = answer_log_likelihood(base, tokenizer, [p for p in prompts for _ in options], options * 3, show_progress=False)
    np.testing.assert_allclose(one_pass, each.reshape(3, 4), atol=1e-4)
    before = evaluate_model(base, tokenizer, ["mmlu"], items=16, exclude=pool, show_progress=False)
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in pool["messages"]]
    rows = [dict(tokenizer(t, truncation=True, max_length=192)) for t in texts]
    for row in rows:
        row["labels"] = list(row["input_ids"])
    collate = lambda batch: tokenizer.pad(batch, return_tensors="pt")  # noqa: E731

    def collator(batch):
        labels = [b.pop("labels") for b in batch]
        out = collate(batch)
        width = out["input_ids"].shape[1]
        import torch

        out["labels"] = torch.tensor([l + [-100] * (width - len(l)) for l in labels])
        return out

    args = TrainingArguments(
        str(tmp_path / "run"), per_device_train_batch_size=4, learning_rate=2e-3, num_train_epochs=1, report_to="none",
        use_cpu=True, save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0, remove_unused_columns=False,
    )
    Trainer(model=model, args=args, train_dataset=rows, data_collator=collator).train()
    after = evaluate_model(model, tokenizer, ["mmlu"], items=16, exclude=pool, show_progress=False)
    assert after["items"] == before["items"]
    gain = after["metrics"]["mmlu/gold_logprob"] - before["metrics"]["mmlu/gold_logprob"]
    print(f"SmolLM2 MMLU held-out: before {before['metrics']}, after {after['metrics']}")
    assert gain > 0.1, (before, after)
    assert np.isfinite(after["metrics"]["mmlu/accuracy"])
