import dataclasses
import glob
import json
import math
import os
import shutil
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import (
    examples,
    junk_judge,
    make_pool,
    make_tiny_llama,
    make_tiny_tokenizer,
    make_trainer,
    read_rounds,
    save_tiny_llama,
    single_thread,
    tiny_reward_model,
    train_tiny,
)
from hf_idsel import InvalidArgumentError
from hf_idsel.cards import rounds_markdown
from hf_idsel.checkpoint import STATE_FILE, check_steps, state_digest
from hf_idsel.report import format_rounds
from hf_idsel.scorers import CallableScorer, JudgeScorer, RoundScorer
from hf_idsel.trainer import ROW_ID, IterativeSelectionConfig, IterativeSelectionTrainer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    with single_thread():
        yield


def test_rounds_are_exact_disjoint_and_junk_fades(tmp_path):
    trainer = make_trainer(tmp_path, scorer=JudgeScorer(junk_judge))
    trainer.train()
    rounds = read_rounds(trainer.args.output_dir)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["cumulative_size"] for r in rounds] == [16, 32, 48]
    assert [len(r["selected"]) for r in rounds] == [16, 16, 16]
    chosen = [row for r in rounds for row in r["selected"]]
    assert len(set(chosen)) == 48
    topics = np.array(trainer.pool["topic"])
    labels = trainer.labels
    junk_cluster = int(np.bincount(labels[topics == 3]).argmax())
    # Round 1 is kMQ: proportional quotas (4 equal clusters -> 4 rows each).
    assert rounds[0]["selected_per_cluster"] == [4, 4, 4, 4]
    # The judge rates the junk gold below the model's own answers: that cluster's weight falls.
    assert rounds[0]["weights"][junk_cluster] < 0.25
    # ...so later rounds draw (almost) nothing from it, and an unscored cluster keeps its weight.
    assert rounds[1]["selected_per_cluster"][junk_cluster] < 4
    assert rounds[1]["weights"][junk_cluster] <= rounds[0]["weights"][junk_cluster]
    metrics = [log for log in trainer.state.log_history if "selection/round" in log]
    assert [m["selection/round"] for m in metrics] == [1.0, 2.0, 3.0]
    assert all(np.isfinite(m["selection/weight_entropy"]) for m in metrics)


def test_skipping_the_last_rounds_scoring_keeps_the_selection(tmp_path):
    calls = {True: [], False: []}

    def judge_for(flag):
        def judge(prompts, completions):
            calls[flag].append(len(prompts))
            return junk_judge(prompts, completions)

        return judge

    runs = {}
    for flag in (True, False):
        trainer = make_trainer(
            tmp_path / str(flag), scorer=JudgeScorer(judge_for(flag)), score_last_round=flag
        )
        trainer.train()
        runs[flag] = read_rounds(trainer.args.output_dir)
    scored, skipped = runs[True], runs[False]
    # One scoring pass fewer (the judge rates golds and generations), and the same rows in every round.
    assert len(calls[True]) == 2 * 3 and len(calls[False]) == 2 * 2
    assert [r["selected"] for r in skipped] == [r["selected"] for r in scored]
    assert [r["weights"] for r in skipped[:2]] == [r["weights"] for r in scored[:2]]
    last = skipped[-1]
    assert last["scored"] is False and last["scored_rows"] == 0
    assert all(s is None for s in last["cluster_scores"])
    # Unscored: the weights stay those that drew the last round (renormalised over clusters with rows left).
    left = np.bincount(trainer.labels, minlength=4) - np.bincount(
        trainer.labels[[row for r in skipped for row in r["selected"]]], minlength=4
    )
    expected = np.where(left > 0, skipped[1]["weights"], 0.0)
    np.testing.assert_allclose(last["weights"], expected / expected.sum())
    assert all(r["scored"] for r in scored)
    assert "round 3: 16 rows drawn, not scored," in format_rounds(skipped)
    assert "not scored (last round)" in rounds_markdown(skipped)


@pytest.mark.parametrize("padding", [{}, {"padding_free": True, "max_length": None}], ids=["padded", "padding_free"])
def test_loss_scorer_scores_every_trained_row(tmp_path, padding):
    trainer = make_trainer(tmp_path, scorer="loss", budget=24, **padding)
    trainer.train()
    rounds = read_rounds(trainer.args.output_dir)
    assert [r["cumulative_size"] for r in rounds] == [8, 16, 24]
    assert all(r["scored_rows"] == len(r["selected"]) for r in rounds)
    assert all(s is None or np.isfinite(s) for r in rounds for s in r["cluster_scores"])
    assert abs(sum(rounds[-1]["weights"]) - 1) < 1e-9


@pytest.mark.parametrize(
    "save, checkpoint_step",
    [
        ({"save_strategy": "epoch"}, 2),  # saved after round 1 closed
        ({"save_strategy": "steps", "save_steps": 1}, 2),  # saved on round 1's last step, before it closed
        ({"save_strategy": "steps", "save_steps": 1}, 3),  # saved in the middle of round 2
    ],
)
def test_resume_continues_the_same_trajectory(tmp_path, save, checkpoint_step):
    full = make_trainer(tmp_path, scorer="loss", budget=24, **save)
    full.train()
    expected = read_rounds(full.args.output_dir)
    for f in glob.glob(os.path.join(full.args.output_dir, "selection", "round_*.json")):
        os.remove(f)
    resumed = make_trainer(tmp_path, scorer="loss", budget=24, save_strategy="no")
    resumed.train(resume_from_checkpoint=os.path.join(full.args.output_dir, f"checkpoint-{checkpoint_step}"))
    got = read_rounds(resumed.args.output_dir)
    # The resumed run closes every round not closed before the checkpoint, exactly as the full run did.
    assert [r["round"] for r in got][-2:] == [2, 3]
    for b in got:
        a = expected[b["round"] - 1]
        assert a["selected"] == b["selected"]
        assert np.allclose(a["weights"], b["weights"], atol=1e-6)


# Epochs of unequal length (restart mode; rounds of 9, 8 and 8 rows at batch 4): Trainer alone would
# place the resume at global_step // steps_per_epoch and re-train part of a round.


@pytest.mark.parametrize(
    "variant",
    [
        "generation scorer",
        "last checkpoint",
        "restart mode",
        "unequal rounds",
    ],
)
def test_resume_edge_cases_continue_the_same_trajectory(tmp_path, variant):
    config = {"budget": 25 if variant == "unequal rounds" else 24}  # 25 rows: rounds of 9, 8 and 8
    if variant == "generation scorer":  # scores come from generation after the resume, not from saved losses
        config["scorer"] = JudgeScorer(junk_judge)
    if variant == "restart mode":
        config["round_mode"] = "restart"
    full = make_trainer(tmp_path, save_strategy="epoch", **config)
    full.train()
    expected = full.selection.rounds
    checkpoints = sorted(glob.glob(os.path.join(full.args.output_dir, "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[1]))
    target = checkpoints[1 if variant == "unequal rounds" else 0]  # saved when round 2 (1) closed
    if variant == "last checkpoint":  # resume_from_checkpoint=True finds the latest one in output_dir
        for later in checkpoints[1:]:
            shutil.rmtree(later)
        target = True
    resumed = make_trainer(tmp_path, save_strategy="no", **config)
    resumed.train(resume_from_checkpoint=target)
    got = resumed.selection.rounds
    assert [r["selected"] for r in got] == [r["selected"] for r in expected]
    assert np.allclose([r["weights"] for r in got], [r["weights"] for r in expected], atol=1e-6)
    assert resumed.state.global_step == full.state.global_step
    # The resumed schedule is the planned one and ends where the full run's did.
    assert resumed.state.max_steps == full.state.max_steps == full.state.global_step
    assert resumed.lr_scheduler.get_last_lr() == full.lr_scheduler.get_last_lr() and max(full.lr_scheduler.get_last_lr()) == 0.0


def test_resume_refuses_a_pool_whose_rows_changed_under_the_same_clustering(tmp_path, caplog):
    full = make_trainer(tmp_path, scorer="loss", budget=24, save_strategy="epoch")
    full.train()
    checkpoint = os.path.join(full.args.output_dir, "checkpoint-2")
    pool = make_pool()
    rows = pool.to_list()
    same_cluster = [i for i, row in enumerate(rows) if row["topic"] == rows[0]["topic"]][:2]
    # The vectors stay where they were, so the clustering is identical: only the rows' content moved.
    swapped = [dict(row) for row in rows]
    a, b = same_cluster
    swapped[a]["messages"], swapped[b]["messages"] = rows[b]["messages"], rows[a]["messages"]
    edited = [dict(row) for row in rows]
    edited[5]["messages"] = [{"role": "user", "content": "Something else"}, {"role": "assistant", "content": "Yes."}]
    for changed in (swapped, edited):
        resumed = make_trainer(tmp_path / "again", pool=datasets.Dataset.from_list(changed), budget=24, save_strategy="no")
        assert resumed.selection.labels_digest == full.selection.labels_digest
        with pytest.raises(InvalidArgumentError, match="content of the pool changed"):
            resumed.train(resume_from_checkpoint=checkpoint)
    other_k = make_trainer(tmp_path / "k3", budget=24, k="3", save_strategy="no")
    with pytest.raises(InvalidArgumentError, match="`k`: 4 in the checkpoint, 3 now"):
        other_k.train(resume_from_checkpoint=checkpoint)
    # A checkpoint written before content checks (and before the round plan) still resumes, with a warning that says
    # what was not checked.
    state_file = os.path.join(checkpoint, "hf_idsel_selection.json")
    state = json.load(open(state_file))
    for name in ("pool_digest", "format_version", "plan", "digest"):
        del state[name]
    json.dump(state, open(state_file, "w"))
    old = make_trainer(tmp_path / "old", budget=24, save_strategy="no")
    with caplog.at_level("WARNING", logger="hf_idsel.rounds"):
        old.train(resume_from_checkpoint=checkpoint)
    assert "predates content checks" in caplog.text
    assert [r["selected"] for r in old.selection.rounds] == [r["selected"] for r in full.selection.rounds]


def _padding(lengths, order, batch_size):
    batches = [[lengths[p] for p in order[i : i + batch_size]] for i in range(0, len(order), batch_size)]
    return sum(max(b) * len(b) - sum(b) for b in batches)


@pytest.mark.parametrize("strategy", ["group_by_length", "sequential"])
def test_train_sampling_strategy_orders_each_rounds_rows(tmp_path, strategy):
    baseline = make_trainer(tmp_path / "random", per_device_train_batch_size=2)
    trainer = make_trainer(tmp_path, per_device_train_batch_size=2, train_sampling_strategy=strategy)
    # The strategy orders a round's rows; it never changes which rows are drawn.
    assert trainer.selection.current_rows == baseline.selection.current_rows
    positions = trainer.round_sampler.positions
    order = list(trainer.round_sampler)
    assert sorted(order) == sorted(positions)
    assert order == list(trainer.round_sampler)  # same seed and epoch, same order (every rank agrees)
    row_of = trainer.train_dataset[ROW_ID]
    seen = [r for batch in trainer.get_train_dataloader() for r in batch[ROW_ID].tolist()]
    assert seen == [row_of[p] for p in order]  # the dataloader follows the sampler
    if strategy == "sequential":
        assert seen == trainer.selection.current_rows  # the order the rows were drawn in
    else:
        lengths = trainer._token_lengths()
        shuffles = [_padding(lengths, list(baseline.round_sampler), 2)]
        for epoch in range(1, 10):
            baseline.round_sampler.set_epoch(epoch)
            shuffles.append(_padding(lengths, list(baseline.round_sampler), 2))
        assert _padding(lengths, order, 2) < np.mean(shuffles)
        trainer.round_sampler.set_epoch(1)
        assert list(trainer.round_sampler) != order
    trainer.train()
    assert [r["cumulative_size"] for r in read_rounds(trainer.args.output_dir)] == [16, 32, 48]


def test_restart_mode_trains_each_round_on_everything_so_far(tmp_path):
    trainer = make_trainer(tmp_path, scorer=JudgeScorer(junk_judge), round_mode="restart", budget=24)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    rounds = read_rounds(trainer.args.output_dir)
    assert [r["cumulative_size"] for r in rounds] == [8, 16, 24]
    assert len(trainer.round_sampler.positions) == 24  # the last round saw all selected rows
    assert any(not np.allclose(initial[n], p.detach()) for n, p in trainer.model.named_parameters())


# Hand-computed: 48 rows in 3 rounds of 16, batch 4, 3 batches per optimizer step. "continue" trains 4 batches a
# round (2 steps: 3 + a partial 1); "restart" trains 16, 32 and 48 rows = 4, 8, 12 batches = 2 + 3 + 4 steps.
@pytest.mark.parametrize("mode, steps", [("continue", [2, 2, 2]), ("restart", [2, 3, 4])])
def test_the_lr_schedule_covers_exactly_the_steps_that_run(tmp_path, mode, steps):
    from transformers import TrainerCallback

    trainer = make_trainer(
        tmp_path, round_mode=mode, gradient_accumulation_steps=3, lr_scheduler_type="linear", warmup_steps=0.25
    )
    optimizer_steps = []

    class CountSteps(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            optimizer_steps.append(state.global_step)

    trainer.add_callback(CountSteps())
    trainer.train()
    total = sum(steps)
    assert len(optimizer_steps) == trainer.state.global_step == trainer.state.max_steps == total
    assert [r["global_step"] for r in trainer.selection.rounds] == np.cumsum(steps).tolist()
    # Warm-up is a share of the steps that run, and the schedule ends at its final value (0 for linear). In
    # "continue" one schedule spans the run; in "restart" every round is a fresh run with the whole schedule.
    peak = trainer.args.learning_rate

    def linear(n):
        warmup = math.ceil(0.25 * n)
        return [peak * t / warmup if t < warmup else peak * (n - t) / (n - warmup) for t in range(n)]

    expected = linear(total) if mode == "continue" else [lr for n in steps for lr in linear(n)]
    logged = [log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log]
    assert np.allclose(logged, expected, rtol=1e-6)
    assert trainer.lr_scheduler.get_last_lr()[0] == 0.0


def test_restart_mode_refuses_a_schedule_that_cannot_start_over(tmp_path):
    with pytest.raises(InvalidArgumentError, match="reduce_lr_on_plateau"):
        make_trainer(tmp_path, round_mode="restart", lr_scheduler_type="reduce_lr_on_plateau")


def test_an_epoch_smaller_than_one_batch_per_process_is_refused(tmp_path):
    trainer = make_trainer(tmp_path, budget=24, per_device_train_batch_size=16, dataloader_drop_last=True)
    with pytest.raises(InvalidArgumentError, match="less than one batch per process"):
        trainer.train()


@pytest.mark.parametrize("mode", ["restart", "continue"])
def test_restart_mode_resets_weights_and_optimizer_after_every_round_but_the_last(tmp_path, mode):
    from transformers import TrainerCallback

    trainer = make_trainer(tmp_path, round_mode=mode, budget=24)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    seen = []

    class AfterEachRound(TrainerCallback):  # runs after the trainer's own callback has closed the round
        def on_epoch_end(self, args, state, control, **kwargs):
            reset = all(torch.equal(p.detach(), initial[n]) for n, p in trainer.model.named_parameters() if n in initial)
            optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
            seen.append((reset, len(optimizer.state)))

    trainer.add_callback(AfterEachRound())
    trainer.train()
    if mode == "restart":  # back to the start, with a fresh optimizer, before rounds 2 and 3; not after the last
        assert [r for r, _ in seen] == [True, True, False] and [n for _, n in seen][:2] == [0, 0]
    else:  # one continuous run: nothing is reset, the optimizer keeps its moments
        assert [r for r, _ in seen] == [False, False, False] and all(n > 0 for _, n in seen)


@pytest.mark.parametrize("rule", ["softmax", "linear", "softmax_replace", "research"])  # "research": an old name
def test_the_weight_rule_inside_the_trainer_is_the_one_asked_for(tmp_path, rule):
    from hf_idsel.rounds import WEIGHT_RULE_ALIASES, WEIGHT_RULES, update_weights

    def by_topic(prompts, golds, generations):  # the same score for a topic every round: the paper rule compounds
        return [next(v for key, v in (("colour", 1.0), ("plus", 0.5), ("hello", 0.0), ("about", -1.0)) if key in p) for p in prompts]

    canonical = WEIGHT_RULE_ALIASES.get(rule, rule)
    if rule in WEIGHT_RULE_ALIASES:
        with pytest.warns(DeprecationWarning, match=f"now called '{canonical}'"):
            trainer = make_trainer(tmp_path, scorer=by_topic, budget=24, weight_update=rule, weight_temperature=0.5)
    else:
        trainer = make_trainer(tmp_path, scorer=by_topic, budget=24, weight_update=rule, weight_temperature=0.5)
    trainer.train()
    rounds = read_rounds(trainer.args.output_dir)
    previous = [0.25] * 4
    for r in rounds:
        scores = [np.nan if s is None else s for s in r["cluster_scores"]]
        expected = update_weights(np.asarray(previous), np.asarray(scores), rule=canonical, temperature=0.5)
        np.testing.assert_allclose(r["weights"], expected, atol=1e-9)
        for other_rule in set(WEIGHT_RULES) - {canonical}:
            other = update_weights(np.asarray(previous), np.asarray(scores), rule=other_rule, temperature=0.5)
            if r["round"] > 1:  # the rules part ways once the weights are no longer uniform
                assert not np.allclose(r["weights"], other, atol=1e-6)
        assert r["weight_update"] == canonical  # round files and manifests record the canonical name
        previous = r["weights"]
    assert trainer.selection_manifest().arguments["weight_update"] == canonical


def test_k_auto_inside_the_trainer_finds_the_planted_clusters(tmp_path):
    trainer = make_trainer(tmp_path, k="auto", budget=24)
    assert trainer.k == 4 and trainer.k_selection["mode"] == "auto" and trainer.k_selection["budget"] == 24
    trainer.train()
    rounds = read_rounds(trainer.args.output_dir)
    assert all(r["k"] == 4 and r["k_selection"] == trainer.k_selection for r in rounds)
    assert trainer.selection_manifest().k_selection == trainer.k_selection


def test_lora(tmp_path):
    from peft import LoraConfig

    trainer = make_trainer(
        tmp_path, scorer=JudgeScorer(junk_judge), budget=16, rounds=2,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    assert [r["cumulative_size"] for r in read_rounds(trainer.args.output_dir)] == [8, 16]
    assert any("lora" in n for n, p in trainer.model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"budget": 500}, "budget"),
        ({"budget": 10, "rounds": 11}, "rounds"),
        ({"scorer": "reward"}, "reward model"),
        ({"scorer": "judge"}, "JudgeScorer"),
        ({"k": "500"}, "`k`"),
    ],
)
def test_bad_selection_arguments(tmp_path, config, match):
    with pytest.raises(InvalidArgumentError, match=match):
        make_trainer(tmp_path, **config)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"rounds": 0}, "rounds"),
        ({"packing": True}, "packing"),
        ({"max_steps": 5}, "max_steps"),
        ({"train_sampling_strategy": "batch_rebalance"}, "group_by_length"),
    ],
)
def test_bad_config(tmp_path, config, match):
    with pytest.raises(InvalidArgumentError, match=match):
        IterativeSelectionConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, **config)


def test_generation_scorer_needs_gold_answers(tmp_path):
    pool = datasets.Dataset.from_list(
        [{"messages": [{"role": "user", "content": f"hi {i}"}], "embedding": [1.0, float(i)]} for i in range(12)]
    )
    with pytest.raises(InvalidArgumentError, match="gold completion"):
        make_trainer(tmp_path, pool=pool, scorer=JudgeScorer(junk_judge), budget=6, k="2")


@pytest.mark.parametrize(
    "scorer, mode, variant", [("judge", "continue", "vectors"), ("loss", "restart", "vectors"), ("likelihood", "continue", "lora-hidden")]
)
def test_two_ranks_hold_the_same_selection(tmp_path, scorer, mode, variant):
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free loopback port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    script = os.path.join(os.path.dirname(__file__), "ddp_trainer_run.py")
    path = [os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH")]  # keep the caller's path
    # CPU ranks over gloo on any machine: two ranks on one visible GPU would collide under NCCL.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(filter(None, path))}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port, script, str(tmp_path), scorer, mode, variant],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.load(open(tmp_path / f"rank_{i}.json")) for i in range(2)]
    assert ranks[0]["world"] == ranks[1]["world"] == 2
    assert ranks[0]["rounds"] == ranks[1]["rounds"] and ranks[0]["labels"] == ranks[1]["labels"]
    if variant == "lora-hidden":  # each rank embedded its share with the untrained model; the clusters are one
        assert ranks[0]["encoder"] == ranks[1]["encoder"] and ranks[0]["encoder"]["id"].startswith("hidden-states:")
        assert len(set(ranks[0]["labels"])) == 4
    # The main process describes the clusters and broadcasts the descriptions with the labels.
    assert ranks[0]["descriptions"] == ranks[1]["descriptions"] and len(ranks[0]["descriptions"]) == 4
    assert [r["cumulative_size"] for r in ranks[0]["rounds"]] == [8, 16, 24]
    # Rows scored on both ranks were gathered: every round has scores from more than one rank's share.
    files = read_rounds(str(tmp_path))
    assert [f["selected"] for f in files] == [r["selected"] for r in ranks[0]["rounds"]]
    if scorer == "loss":
        assert all(f["scored_rows"] == 8 for f in files)
    # The schedule covers the steps both ranks ran: rounds of 8 rows (restart: 8, 16, 24) at 2 ranks x batch 2.
    steps = 2 + 2 + 2 if mode == "continue" else 2 + 4 + 6
    assert all(r["global_step"] == r["max_steps"] == steps and r["last_lr"] == 0.0 for r in ranks)


@pytest.mark.slow
def test_real_smollm2_and_minilm_two_rounds_on_a_real_pool(tmp_path, smollm2):
    """What only real parts show: the real encoder embeds a real pool inside the trainer, and LoRA trains a real
    chat model through its own template (the round logic itself is covered on the tiny model)."""
    import copy

    from peft import LoraConfig

    import hf_idsel

    pool = hf_idsel.load_builtin_pool({"gsm8k": 8, "humaneval": 8, "chitchat": 8, "mmlu": 8})
    model, tokenizer = copy.deepcopy(smollm2[0]), smollm2[1]
    args = IterativeSelectionConfig(
        output_dir=str(tmp_path / "run"), budget=8, rounds=2, k="4", per_device_train_batch_size=4,
        max_length=128, learning_rate=1e-3, report_to="none", bf16=False, use_cpu=True, save_strategy="no",
        logging_steps=1, seed=0, disable_tqdm=True, scorer="loss",
    )
    trainer = IterativeSelectionTrainer(
        model, args=args, train_dataset=pool, processing_class=tokenizer,
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    assert trainer.encoder_info["id"] == "sentence-transformers/all-MiniLM-L6-v2" and trainer.encoder_info["dim"] == 384
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    rounds = read_rounds(trainer.args.output_dir)
    assert [r["cumulative_size"] for r in rounds] == [4, 8]
    assert all(r["scored_rows"] == 4 and all(np.isfinite(s) for s in r["cluster_scores"] if s is not None) for r in rounds)
    assert before and all("lora" in n for n in before)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in trainer.model.named_parameters() if n in before)


def _clean_and_junk_texts(tokenizer):
    from hf_idsel.render import prompt_and_answer, resolve_render_options

    pool = make_pool()
    options = resolve_render_options(pool.column_names, tokenizer=tokenizer)
    pairs = [prompt_and_answer(row, options, tokenizer) for row in pool]
    return pool, pairs, np.array(pool["topic"])


def _junk_weight(trainer):
    rounds = read_rounds(trainer.args.output_dir)
    topics = np.array(trainer.pool["topic"])
    junk = int(np.bincount(trainer.labels[topics == 3]).argmax())
    return rounds[0]["weights"][junk], rounds[0]["cluster_scores"], junk


class _BoilerplateScorer(RoundScorer):
    """A user's own scorer, written against the one interface every text scorer has."""

    name = "no-boilerplate"
    needs_generation = False

    def __init__(self):
        self.calls = 0

    def _score(self, prompts, golds, generations):
        self.calls += 1
        return [-5.0 if "subscribe" in g else 1.0 for g in golds]


@pytest.mark.parametrize("kind", ["object", "callable"])
def test_custom_scorer_object_or_callable_comes_in_through_scorer(tmp_path, kind):
    calls = []

    def score(prompts, golds, generations):  # a plain function: gold judged against the model's answer
        calls.append(len(prompts))
        return np.subtract(junk_judge(prompts, golds), junk_judge(prompts, generations))

    scorer = _BoilerplateScorer() if kind == "object" else score
    trainer = make_trainer(tmp_path, scorer=scorer, budget=24)
    assert trainer.scorer is scorer if kind == "object" else isinstance(trainer.scorer, CallableScorer)
    trainer.train()
    weight, scores, junk = _junk_weight(trainer)
    assert weight < 0.25 and scores[junk] == min(s for s in scores if s is not None)
    name = "no-boilerplate" if kind == "object" else "callable"
    assert {r["scorer"] for r in read_rounds(trainer.args.output_dir)} == {name}
    assert trainer.selection_manifest().arguments["scorer"] == name
    assert (scorer.calls if kind == "object" else len(calls)) == 3  # one scoring pass per round


def test_scorer_argument_refuses_what_is_not_a_scorer(tmp_path):
    with pytest.raises(InvalidArgumentError, match="`scorer` must be a name"):
        make_trainer(tmp_path, scorer=3)


def test_reward_scorer_cuts_the_junk_cluster(tmp_path):
    import torch

    from hf_idsel.scorers import RewardScorer

    tokenizer = make_tiny_tokenizer()
    _, pairs, topics = _clean_and_junk_texts(tokenizer)
    reward = tiny_reward_model(tokenizer)
    texts = [p + a for p, a in pairs]
    targets = torch.tensor([-1.0 if t == 3 else 1.0 for t in topics])
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    optimizer = torch.optim.AdamW(reward.parameters(), lr=1e-2)
    reward.train()
    for _ in range(30):  # a reward model that rates scraped boilerplate below real answers
        loss = torch.nn.functional.mse_loss(reward(**batch).logits[:, 0], targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    reward.eval()
    trainer = make_trainer(
        tmp_path, scorer=RewardScorer(reward, tokenizer, show_progress=False), budget=24
    )
    trainer.train()
    weight, scores, junk = _junk_weight(trainer)
    assert weight < 0.25
    assert scores[junk] == min(s for s in scores if s is not None)


def test_likelihood_scorer_cuts_the_junk_cluster(tmp_path):
    from hf_idsel.scorers import LikelihoodScorer

    reference, tokenizer = make_tiny_llama(seed=1)
    _, pairs, topics = _clean_and_junk_texts(tokenizer)
    # The reference has read real answers, never the boilerplate: it finds junk gold unlikely.
    train_tiny(reference, tokenizer, [p + a for (p, a), t in zip(pairs, topics) if t != 3], steps=60)
    trainer = make_trainer(
        tmp_path, budget=24, scorer=LikelihoodScorer(reference, tokenizer=tokenizer, show_progress=False)
    )
    trainer.train()
    weight, scores, junk = _junk_weight(trainer)
    assert weight < 0.25
    assert scores[junk] == min(s for s in scores if s is not None)


def test_prompt_completion_pool_from_a_model_path_with_eval(tmp_path):
    model, tokenizer = make_tiny_llama()
    path = save_tiny_llama(model, tokenizer, tmp_path / "tiny")
    chat = make_pool()
    pool = datasets.Dataset.from_dict(
        {
            "prompt": [row["messages"][0]["content"] for row in chat],
            "completion": [row["messages"][1]["content"] for row in chat],
            "embedding": chat["embedding"],
        }
    )
    args = IterativeSelectionConfig(
        output_dir=str(tmp_path / "run"), budget=16, rounds=2, k="4", embedding_column="embedding",
        per_device_train_batch_size=4, max_length=64, report_to="none", bf16=False, use_cpu=True,
        save_strategy="no", eval_strategy="epoch", per_device_eval_batch_size=4, disable_tqdm=True, scorer="loss",
    )
    trainer = IterativeSelectionTrainer(
        path, args=args, train_dataset=pool, eval_dataset=pool.select(range(8)).remove_columns("embedding"),
        processing_class=tokenizer,
    )
    trainer.train()
    assert [r["cumulative_size"] for r in read_rounds(trainer.args.output_dir)] == [8, 16]
    assert sum("eval_loss" in log for log in trainer.state.log_history) == 2


def test_reward_model_that_cannot_read_the_pool_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from hf_idsel.scorers import RewardScorer

    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(["alpha beta gamma"], trainer=trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")
    # No chat template in this tokenizer: score the policy's rendered text (the check reads what the model would).
    reward = RewardScorer(tiny_reward_model(tokenizer), tokenizer, show_progress=False, template="policy")
    with pytest.raises(InvalidArgumentError, match="reward_model"):
        make_trainer(tmp_path, scorer=reward)


def test_config_parses_from_the_command_line(tmp_path):
    from transformers import HfArgumentParser

    (config,) = HfArgumentParser(IterativeSelectionConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--budget", "100", "--k", "8", "--rounds", "2", "--epochs_per_round", "2",
         "--scorer", "perplexity", "--use_cpu", "--bf16", "False", "--seed", "7"]
    )
    assert (config.budget, config.k_value, config.scorer) == (100, 8, "perplexity")
    assert config.num_train_epochs == 4 and config.selection_seed == 7
    assert IterativeSelectionConfig(output_dir=str(tmp_path), budget=0.25, use_cpu=True, bf16=False).budget == 0.25
    with pytest.raises(InvalidArgumentError, match=r"`scorer`='vibes'; choose one of \['loss', 'reward'"):
        HfArgumentParser(IterativeSelectionConfig).parse_args_into_dataclasses(["--output_dir", "x", "--scorer", "vibes"])


def test_budget_means_the_same_as_in_diverse_select(tmp_path):
    """An int is rows, a float in (0, 1] a fraction: `--budget 1` is one row, `--budget 1.0` the whole pool."""
    import trl
    import yaml

    from hf_idsel.sample import resolve_budget

    def parsed(*argv):
        (config,) = trl.TrlParser((IterativeSelectionConfig,)).parse_args_and_config(
            ["--output_dir", str(tmp_path), "--use_cpu", "--bf16", "False", *argv]
        )
        return config.budget

    assert parsed("--budget", "1") == 1 and isinstance(parsed("--budget", "1"), int)
    assert parsed("--budget", "1.0") == 1.0 and isinstance(parsed("--budget", "1.0"), float)
    assert [resolve_budget(parsed("--budget", b), 96) for b in ("1", "1.0", "0.5", "24")] == [1, 96, 48, 24]
    recipe = tmp_path / "recipe.yaml"
    for value, rows in ((1, 1), (1.0, 96), (0.25, 24)):
        recipe.write_text(yaml.safe_dump({"budget": value}))
        assert resolve_budget(parsed("--config", str(recipe)), 96) == rows
    assert len(make_trainer(tmp_path, budget=3, rounds=1).selection.current_rows) == 3
    with pytest.raises(InvalidArgumentError, match=r"`budget`=24.0 as a float is a fraction"):
        IterativeSelectionConfig(output_dir=str(tmp_path), budget=24.0, use_cpu=True, bf16=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none; run on a GPU machine)")
@pytest.mark.parametrize("scorer", ["loss", "perplexity", "likelihood", "reward", "judge"])
def test_every_scorer_trains_on_cuda_in_bf16(tmp_path, scorer):
    model, tokenizer = make_tiny_llama()
    extra = {"scorer": JudgeScorer(junk_judge)} if scorer == "judge" else {"scorer": scorer}
    if scorer == "likelihood":  # loaded from a path by the trainer, so it must land on the trainer's device
        extra["reference_model"] = save_tiny_llama(*make_tiny_llama(seed=1), tmp_path / "reference")
    if scorer == "reward":
        extra["reward_model"] = save_tiny_llama(tiny_reward_model(tokenizer), tokenizer, tmp_path / "reward")
    on_cpu = make_trainer(tmp_path / "cpu", **extra)
    trainer = make_trainer(tmp_path / "cuda", model=model, bf16=True, use_cpu=False, **extra)
    # Round 1 is drawn before any training: the device cannot change it.
    assert trainer.selection.current_rows == on_cpu.selection.current_rows
    trainer.train()
    assert next(trainer.model.parameters()).device.type == "cuda"
    rounds = read_rounds(trainer.args.output_dir)
    assert [r["cumulative_size"] for r in rounds] == [16, 32, 48]
    assert len({row for r in rounds for row in r["selected"]}) == 48
    for r in rounds:
        assert sum(r["weights"]) == pytest.approx(1.0)
        assert all(np.isfinite(s) for s in r["cluster_scores"] if s is not None)
    if scorer == "judge":
        topics = np.array(trainer.pool["topic"])
        junk = int(np.bincount(trainer.labels[topics == 3]).argmax())
        assert rounds[0]["weights"][junk] < 0.25


def test_padding_free_batches_are_split_back_into_rows():
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from hf_idsel.scorers import per_row_loss as _per_row_loss

    model, tokenizer = make_tiny_llama()
    texts = ["What colour is the sky? The sky is blue.", "Hello!", "def add(a, b):\n    return a + b\n"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    examples = [{"input_ids": i, "labels": [-100, -100] + i[2:]} for i in ids]  # loss on the "answer" only
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(examples)
    flat = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True, pad_to_multiple_of=64)(
        examples
    )
    assert flat["input_ids"].shape[0] == 1 and flat["input_ids"].shape[1] == 64  # one row, with trailing padding
    with torch.no_grad():
        expected = _per_row_loss(model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"]), padded["labels"])
        # A varlen (flash-attention) forward of the flat row gives each example's own logits side by side;
        # the trailing padding's logits are noise that its -100 labels must hide.
        logits = [model(input_ids=torch.tensor([i])).logits for i in ids]
        tail = flat["input_ids"].shape[1] - sum(len(i) for i in ids)
        logits = torch.cat(logits + [torch.randn(1, tail, logits[0].shape[-1])], dim=1)
        got = _per_row_loss(SimpleNamespace(logits=logits), flat["labels"], flat["position_ids"], rows=len(texts))
    assert got.shape == (3,)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "scorer, mode, which",
    [
        ("judge", "continue", "selected"),  # generation scorer over all of D'
        ("judge", "continue", "round"),
        ("loss", "continue", "selected"),  # earlier rounds' rows get a forward pass
        ("loss", "restart", "round"),  # restart trains on all of D', but only this round's rows are scored
    ],
)
def test_scored_rows_is_the_same_setting_for_every_scorer(tmp_path, scorer, mode, which):
    trainer = make_trainer(
        tmp_path, scorer=JudgeScorer(junk_judge) if scorer == "judge" else "loss", budget=24, round_mode=mode,
        scored_rows=which, scored_rows_per_cluster=0,
    )
    trainer.train()
    rounds = read_rounds(trainer.args.output_dir)
    expected = [r["cumulative_size"] if which == "selected" else len(r["selected"]) for r in rounds]
    assert [r["scored_rows"] for r in rounds] == expected == ([8, 16, 24] if which == "selected" else [8, 8, 8])
    # Every cluster the scored rows touch has a finite score.
    for r in rounds:
        rows = [row for done in rounds[: r["round"]] for row in done["selected"]] if which == "selected" else r["selected"]
        touched = set(trainer.labels[rows].tolist())
        assert all(r["cluster_scores"][c] is not None and np.isfinite(r["cluster_scores"][c]) for c in touched)
        assert all(r["cluster_scores"][c] is None for c in set(range(4)) - touched)


def test_the_loss_scorer_rescores_earlier_rounds_with_the_training_loss(tmp_path):
    # At learning rate 0 the model never changes, so the forward pass over round 1's rows in round 2 must give
    # exactly the losses those rows had in training: round 2's cluster means over all of D' are then the
    # size-weighted means of the "round" run's round 1 and round 2 cluster means.
    per_round = make_trainer(tmp_path / "a", budget=24, learning_rate=0.0, scored_rows="round")
    per_round.train()
    everything = make_trainer(tmp_path / "b", budget=24, learning_rate=0.0, scored_rows="selected")
    everything.train()
    one, two = per_round.selection.rounds[:2]
    assert everything.selection.rounds[1]["selected"] == two["selected"]
    n1, n2 = np.asarray(one["selected_per_cluster"]), np.asarray(two["selected_per_cluster"])
    m1 = np.asarray([np.nan if v is None else v for v in one["cluster_scores"]])
    m2 = np.asarray([np.nan if v is None else v for v in two["cluster_scores"]])
    expected = (np.nan_to_num(m1) * n1 + np.nan_to_num(m2) * n2) / (n1 + n2)
    np.testing.assert_allclose(everything.selection.rounds[1]["cluster_scores"], expected, rtol=1e-5)
    assert everything.selection.rounds[1]["scored_rows"] == 16


def test_research_code_preset_sets_every_choice_and_draws_its_quotas(tmp_path):
    pool = make_pool()
    topics = np.asarray(pool["topic"])
    pool = pool.select(np.flatnonzero((topics != 1) | (np.arange(len(pool)) % 2 == 0)))  # clusters of 24, 12, 24, 24
    trainer = make_trainer(tmp_path, pool=pool, preset="research_code", scorer=JudgeScorer(junk_judge), budget=48)
    a = trainer.args
    assert (a.quota, a.weight_update, a.weight_temperature, a.round_mode, a.scored_rows, a.embed_answer) == (
        "equal", "softmax_replace", 1.0, "restart", "selected", False
    )
    assert trainer._render.include_answer is False  # prompt-only text
    trainer.train()
    rounds = read_rounds(a.output_dir)
    assert rounds[0]["selected_per_cluster"] == [4, 4, 4, 4]  # int(16 / 4) each, not size-proportional
    # Round 2 follows the weights alone (no cluster ran out yet); round 3 finds the small cluster nearly empty.
    ideal = 16 * np.asarray(rounds[0]["weights"])
    assert np.abs(np.asarray(rounds[1]["selected_per_cluster"]) - ideal).max() < 1
    # Scored: up to scored_rows_per_cluster (4) rows of each cluster among all rows selected so far.
    so_far = np.cumsum([r["selected_per_cluster"] for r in rounds], axis=0)
    assert [r["scored_rows"] for r in rounds] == np.minimum(so_far, 4).sum(axis=1).tolist()
    manifest = trainer.selection_manifest()
    assert manifest.arguments["preset"] == "research_code" and manifest.render["include_answer"] is False


@pytest.mark.parametrize(
    "config, match",
    [
        ({"preset": "research_code", "weight_update": "linear"}, "`preset`='research_code' sets `weight_update`='softmax_replace', but"),
        ({"preset": "research_code", "round_mode": "continue"}, None),  # the default value: the preset sets it
        ({"preset": "research_code", "quality_column": "q"}, "draws uniformly inside clusters"),
        ({"preset": "paper"}, r"`preset`='paper'; choose one of \['research_code'\]"),
        ({"scored_rows": "all"}, r"`scored_rows`='all'; choose one of \['round', 'selected'\]"),
        ({"quota": "sized"}, r"`quota`='sized'; choose one of \['proportional', 'equal'\]"),
        ({"embed_answer": "no"}, r"`embed_answer`='no' must be True or False"),
    ],
)
def test_preset_and_round_fields_are_checked(tmp_path, config, match):
    if match is None:
        args = IterativeSelectionConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False, **config)
        assert args.round_mode == "restart"
        return
    with pytest.raises(InvalidArgumentError, match=match):
        IterativeSelectionConfig(output_dir=str(tmp_path), report_to="none", **config)


def test_likelihood_scorer_with_the_base_as_reference_inside_the_trainer(tmp_path, monkeypatch):
    from peft import LoraConfig

    from hf_idsel import scorers

    loads = []
    monkeypatch.setattr(scorers, "load_reference_model", lambda *a, **k: loads.append(a))
    # Without adapters the base is a frozen copy of the starting weights, not a model loaded from anywhere.
    without = make_trainer(tmp_path / "full", scorer="likelihood", reference_model="base", budget=16, rounds=2)
    assert without.scorer._frozen is not None and loads == []
    trainer = make_trainer(
        tmp_path, scorer="likelihood", reference_model="base", budget=16, rounds=2,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    rounds = read_rounds(trainer.args.output_dir)
    assert loads == [] and [r["scorer"] for r in rounds] == ["likelihood", "likelihood"]
    assert all(r["scored_rows"] > 0 for r in rounds)
    assert all(s is None or np.isfinite(s) for r in rounds for s in r["cluster_scores"])


def test_loss_scorer_over_all_rows_refuses_a_sharded_model_before_training(tmp_path, monkeypatch):
    # ZeRO-3 / FSDP cannot run on this CPU: the sharding is the one thing faked here.
    monkeypatch.setattr(IterativeSelectionTrainer, "_model_is_sharded", lambda self: True)
    with pytest.raises(InvalidArgumentError, match="a sharded model \\(DeepSpeed ZeRO-3, FSDP\\) cannot run"):
        make_trainer(tmp_path, budget=24, scored_rows="selected")
    make_trainer(tmp_path, budget=24, scored_rows="selected", round_mode="restart")  # restart trains all of D'


# --- the default scorer: loss, by the rule docs/fidelity.md pre-registered; likelihood's reference is the base ---


def test_the_default_scorer_is_loss_and_likelihood_scores_against_the_base_model():
    config = IterativeSelectionConfig(output_dir="unused", use_cpu=True, bf16=False, report_to="none")
    assert (config.scorer, config.reference_model) == ("loss", "base")


@pytest.mark.parametrize("lora", [True, False])
def test_the_base_reference_scores_as_a_frozen_copy_of_the_starting_model_would(tmp_path, lora):
    """With LoRA the base is the model with its adapters off; without, a frozen copy of the starting weights. Either
    way the rounds must be those of an explicit reference holding the starting weights."""
    import copy

    from peft import LoraConfig

    from hf_idsel.scorers import LikelihoodScorer

    extra = {"peft_config": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")} if lora else {}
    model = make_tiny_llama()[0]
    start = copy.deepcopy(model)
    base = make_trainer(tmp_path / "base", model=model, scorer="likelihood", budget=24, **extra)
    assert base.scorer.uses_base and (base.scorer._frozen is None) == lora
    base.train()
    if not lora:  # the copy kept the starting weights while the model trained
        assert all(torch.equal(a, b) for a, b in zip(base.scorer._frozen.parameters(), start.parameters()))
        assert any(not torch.equal(a, b) for a, b in zip(base.model.parameters(), start.parameters()))
    explicit = LikelihoodScorer(copy.deepcopy(start), tokenizer=make_tiny_llama()[1], batch_size=8, show_progress=False)
    other = make_trainer(tmp_path / "explicit", model=copy.deepcopy(start), scorer=explicit, budget=24, **extra)
    other.train()
    assert [r["selected"] for r in base.selection.rounds] == [r["selected"] for r in other.selection.rounds]
    assert np.allclose([r["weights"] for r in base.selection.rounds], [r["weights"] for r in other.selection.rounds], atol=1e-5)
    assert base.selection.rounds[1]["weights"] != base.selection.rounds[0]["weights"]  # the scores moved the weights


def test_the_base_reference_of_a_sharded_model_without_adapters_is_refused(tmp_path, monkeypatch):
    # ZeRO-3 / FSDP cannot run on this CPU machine: the check that reads them is what is replaced.
    monkeypatch.setattr(IterativeSelectionTrainer, "_model_is_sharded", lambda self: True)
    with pytest.raises(InvalidArgumentError, match="reference_model='base' needs LoRA adapters.*peft_config"):
        make_trainer(tmp_path, scorer="likelihood", budget=24)


# ---- resume: the checkpoint's round plan and state are checked before anything trains ----


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """A run of 24 rows in 3 rounds of 2 optimizer steps each, with a checkpoint after every step."""
    full = make_trainer(tmp_path_factory.mktemp("checkpointed"), budget=24, save_strategy="steps", save_steps=1)
    full.train()
    return full


def _checkpoint(run, step: int, tmp_path) -> str:
    """A copy of the run's checkpoint at `step` that a test may damage."""
    target = tmp_path / "checkpoints" / f"checkpoint-{step}"
    shutil.copytree(os.path.join(run.args.output_dir, f"checkpoint-{step}"), target)
    return str(target)


def _edit_state(checkpoint: str, edit, *, seal: bool = False) -> None:
    """Apply `edit` to the checkpoint's state file; with `seal`, store the digest of the edited content."""
    path = os.path.join(checkpoint, STATE_FILE)
    data = json.load(open(path))
    edit(data)
    if seal:
        data["digest"] = state_digest(data)
    json.dump(data, open(path, "w"))


def _as_format_1(data: dict) -> None:
    """A state as hf_idsel wrote it before the round plan and the digest."""
    for name in ("format_version", "plan", "digest"):
        data.pop(name)


@pytest.mark.parametrize(
    "change, named",
    [
        ({"rounds": 4}, ["`rounds`: 3 in the checkpoint, 4 now"]),  # trained 28 rows of a 24-row budget
        ({"budget": 30, "rounds": 2}, ["`budget`: 24 in the checkpoint, 30 now", "`rounds`: 3 in the checkpoint, 2 now"]),
        ({"weight_update": "linear"}, ["`weight_update`: 'softmax' in the checkpoint, 'linear' now"]),
        ({"round_mode": "restart"}, ["`round_mode`: 'continue' in the checkpoint, 'restart' now"]),
        ({"scorer": "likelihood"}, ["`scorer`: 'loss' in the checkpoint, 'likelihood' now", "`reference_model`: not used"]),
        ({"scorer": JudgeScorer(junk_judge)}, ["`scorer`: 'loss' in the checkpoint, 'judge' now"]),
        ({"quota": "equal"}, ["`quota`: 'proportional' in the checkpoint, 'equal' now"]),
        ({"scored_rows": "selected"}, ["`scored_rows`: 'round' in the checkpoint, 'selected' now"]),
        ({"weight_temperature": 0.5}, ["`weight_temperature`: 1.0 in the checkpoint, 0.5 now"]),
        ({"score_last_round": False}, ["`score_last_round`: True in the checkpoint, False now"]),
        ({"epochs_per_round": 2}, ["`epochs_per_round`: 1 in the checkpoint, 2 now"]),
        ({"selection_seed": 1}, ["`selection_seed`: 0 in the checkpoint, 1 now"]),
        ({"k": "3"}, ["`k`: 4 in the checkpoint, 3 now"]),
        ({"train_sampling_strategy": "sequential"}, ["`train_sampling_strategy`: 'random' in the checkpoint, 'sequential' now"]),
    ],
    ids=lambda v: ",".join(v) if isinstance(v, dict) else None,
)
def test_resume_refuses_a_changed_plan_naming_the_setting(checkpointed, tmp_path, change, named):
    resumed = make_trainer(tmp_path, **{"budget": 24, **change})
    checkpoint = os.path.join(checkpointed.args.output_dir, "checkpoint-3")  # in the middle of round 2
    with pytest.raises(InvalidArgumentError) as caught:
        resumed.train(resume_from_checkpoint=checkpoint)
    message = str(caught.value)
    assert all(part in message for part in named), message
    assert message.startswith(f"`resume_from_checkpoint`: {checkpoint}/{STATE_FILE} was saved by a run with another")
    assert message.endswith("Resume with the original config, or start a new run in another `output_dir`.")
    assert "\n" not in message
    # Refused before anything trained or was written.
    assert resumed.state.global_step == 0 and not os.path.exists(os.path.join(resumed.args.output_dir, "selection"))


def test_resume_allows_the_settings_that_keep_the_selection(checkpointed, tmp_path):
    checkpoint = os.path.join(checkpointed.args.output_dir, "checkpoint-3")
    # The same rows per optimizer step and steps per epoch; logging, saving, output, Hub and scoring batch settings.
    allowed = dict(
        per_device_train_batch_size=2, gradient_accumulation_steps=2, scoring_batch_size=2, logging_steps=3,
        save_strategy="steps", save_steps=100, run_name="again", hub_dataset_id="someone/elsewhere", pool_id="someone/pool",
    )
    resumed = make_trainer(tmp_path, budget=24, **allowed)
    resumed.train(resume_from_checkpoint=checkpoint)
    expected = checkpointed.selection.rounds
    assert [r["selected"] for r in resumed.selection.rounds] == [r["selected"] for r in expected]
    assert np.allclose([r["weights"] for r in resumed.selection.rounds], [r["weights"] for r in expected], atol=1e-6)
    assert resumed.state.global_step == checkpointed.state.global_step == 6
    # 5 rows a step: still 2 steps an epoch, but the resumed epoch would skip 5 rows where 4 were trained.
    for name, value, named in (
        ("per_device_train_batch_size", 5, "the rows per optimizer step (all processes): 4 in the checkpoint, 5 now"),
        ("gradient_accumulation_steps", 2, "the optimizer steps of each epoch: [2, 2, 2] in the checkpoint, [1, 1, 1] now"),
    ):
        other = make_trainer(tmp_path / name, budget=24, **{name: value})
        with pytest.raises(InvalidArgumentError, match="another batch plan") as caught:
            other.train(resume_from_checkpoint=checkpoint)
        assert named in str(caught.value) and "`per_device_train_batch_size`, `gradient_accumulation_steps`" in str(caught.value)
        assert not os.path.exists(os.path.join(other.args.output_dir, "selection"))


def _repeat_a_row(data):
    data["current_rows"] = [data["current_rows"][0]] * 8


def _replace_a_row(data):
    taken = set(data["current_rows"]) | {row for r in data["rounds"] for row in r["selected"]}
    data["current_rows"][0] = next(row for row in range(96) if row not in taken)


def _shift_the_weights(data):
    weights = data["rounds"][0]["weights"]
    weights[0], weights[1] = weights[1], weights[0]
    data["weights"] = list(weights)


@pytest.mark.parametrize(
    "damage, match",
    [
        # The one row repeated 8 times trained on duplicates and wrote a manifest its own loader refused.
        (lambda c: _edit_state(c, _repeat_a_row), r": `current_rows` repeats row \d+; the file is damaged or was edited"),
        (lambda c: _edit_state(c, _repeat_a_row, seal=True), r": `current_rows` repeats row \d+"),
        # A truncated file gave a raw JSONDecodeError.
        (lambda c: open(os.path.join(c, STATE_FILE), "r+").truncate(700), r" is not valid JSON \(.+ at line 1 column \d+\): the file is truncated"),
        (lambda c: _edit_state(c, _replace_a_row), r": its content does not match its `digest`"),
        (lambda c: _edit_state(c, _replace_a_row, seal=True), r": `current_rows` are not the 8 rows round 2 draws under this plan"),
        (lambda c: _edit_state(c, _shift_the_weights, seal=True), r": `rounds\[0\].weights` are not what the weight rule gives"),
        (lambda c: _edit_state(c, lambda d: d.update(pending_losses=[[960, 1.0]]), seal=True), r": `pending_losses`: .*\[960, 1.0\]"),
        (lambda c: _edit_state(c, lambda d: d.update(epochs_done=2, epoch_end_steps=[2, 4]), seal=True), r"`epochs_done`=2 does not close"),
        (lambda c: _edit_state(c, lambda d: d["plan"].update(budget_rows=25), seal=True), r"the budget in rows: 25 in the checkpoint, 24 now"),
        (lambda c: _edit_state(c, lambda d: d.update(format_version=3)), r"`format_version`=3 is not a format this hf_idsel reads"),
        (lambda c: _edit_state(c, _as_format_1, seal=False) or _edit_state(c, _repeat_a_row), r"`current_rows` repeats row"),
    ],
    ids=["repeated row", "repeated row, sealed", "truncated", "edited", "edited, sealed", "weights, sealed",
         "pending loss outside the pool", "epochs", "plan, sealed", "future format", "format 1, repeated row"],
)
def test_a_damaged_state_is_refused_naming_the_file_and_field(checkpointed, tmp_path, damage, match):
    checkpoint = _checkpoint(checkpointed, 3, tmp_path)
    damage(checkpoint)
    resumed = make_trainer(tmp_path, budget=24)
    with pytest.raises(InvalidArgumentError, match=match) as caught:
        resumed.train(resume_from_checkpoint=checkpoint)
    assert str(caught.value).startswith(f"`resume_from_checkpoint`: {checkpoint}/{STATE_FILE}") and "\n" not in str(caught.value)
    assert resumed.state.global_step == 0 and not os.path.exists(os.path.join(resumed.args.output_dir, "selection"))


def test_a_state_that_belongs_to_another_checkpoint_is_refused(checkpointed, tmp_path):
    checkpoint = _checkpoint(checkpointed, 3, tmp_path)
    shutil.copy(os.path.join(checkpointed.args.output_dir, "checkpoint-5", STATE_FILE), os.path.join(checkpoint, STATE_FILE))
    resumed = make_trainer(tmp_path, budget=24)
    with pytest.raises(InvalidArgumentError, match=r"does not belong to this checkpoint's training state \(global step 3; "
                       r"the state has 2 epochs done, ending at steps \[2, 4\]"):
        resumed.train(resume_from_checkpoint=checkpoint)
    assert not os.path.exists(os.path.join(resumed.args.output_dir, "selection"))


def test_a_state_from_before_the_plan_resumes_with_a_warning_unless_its_rounds_disagree(checkpointed, tmp_path, caplog):
    checkpoint = _checkpoint(checkpointed, 3, tmp_path)
    _edit_state(checkpoint, _as_format_1)
    old = make_trainer(tmp_path / "old", budget=24)
    with caplog.at_level("WARNING", logger="hf_idsel.checkpoint"):
        old.train(resume_from_checkpoint=checkpoint)
    assert "predates the round plan (format 1)" in caplog.text and "cannot be checked" in caplog.text
    assert [r["selected"] for r in old.selection.rounds] == [r["selected"] for r in checkpointed.selection.rounds]
    # Unsafe: its round 1 was not drawn under the plan of the run that resumes it.
    for change, match in (
        ({"rounds": 4}, r"`rounds\[0\].selected` are not the 6 rows round 1 draws under this plan"),
        ({"budget": 30, "rounds": 2}, r"`rounds\[0\].selected` are not the 15 rows round 1 draws"),
        ({"weight_update": "linear"}, r"`rounds\[0\].weight_update`='softmax' is not what this run records"),
        ({"scorer": JudgeScorer(junk_judge)}, r"`rounds\[0\].scorer`='loss' is not what this run records"),
    ):
        resumed = make_trainer(tmp_path / str(len(change)), **{"budget": 24, **change})
        with pytest.raises(InvalidArgumentError, match=match):
            resumed.train(resume_from_checkpoint=checkpoint)
        assert resumed.state.global_step == 0


# Property tests: an edit of a checkpoint's state file gives an identical resume or a clean InvalidArgumentError. The
# resumes are checked up to the first training step (`_load_selection_state`, the scorer's `restore`, `check_steps`);
# training from an identical state is the identical trajectory (the tests above).

# Fields a state may change without a digest to vouch for them: what training measured (losses, scores, evaluation)
# and, in a state of format 1, the fields it predates.
_MEASURED = {"pending_losses"}
_MEASURED_PER_ROUND = {"cluster_scores", "scored_rows", "eval"}
_PREDATED = {"pool_digest", "epoch_end_steps"}
_PREDATED_PER_ROUND = {"weight_update", "cluster_terms"}


@pytest.fixture(scope="module")
def resumer(checkpointed, tmp_path_factory):
    return make_trainer(tmp_path_factory.mktemp("resumer"), budget=24)


def _what_decides(state, mode: str) -> dict:
    """The state without its measurements (and, for format 1, without the fields it predates)."""
    free, per_round = set(_MEASURED), set(_MEASURED_PER_ROUND)
    if mode == "format 1":
        free, per_round = free | _PREDATED, per_round | _PREDATED_PER_ROUND
    data = {name: value for name, value in dataclasses.asdict(state).items() if name not in free}
    data["rounds"] = [{n: v for n, v in r.items() if n not in per_round} for r in data["rounds"]]
    return json.loads(json.dumps(data))


def _json_values():
    leaves = (
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=6) | st.sampled_from(["sha256:" + "0" * 64, "softmax", "loss", ""])
    )
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)


def _edit_somewhere(draw, data):
    """Change one place of the JSON tree `data` (in place): replace, delete, add, duplicate, move or nudge a value."""
    parent, key = None, None
    node = data
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        parent, key = node, draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        node = node[key]
    operation = draw(st.sampled_from(["replace", "delete", "add", "duplicate", "swap", "nudge"]))
    if isinstance(node, (dict, list)) and operation in ("add", "duplicate", "swap") and node:
        if isinstance(node, dict):
            node[draw(st.text(max_size=5))] = draw(_json_values())
        elif operation == "add":
            node.insert(draw(st.integers(0, len(node))), draw(_json_values()))
        elif operation == "duplicate":
            node.append(node[draw(st.integers(0, len(node) - 1))])
        else:
            i, j = draw(st.integers(0, len(node) - 1)), draw(st.integers(0, len(node) - 1))
            node[i], node[j] = node[j], node[i]
    elif parent is not None and operation == "delete":
        del parent[key]
    elif parent is not None and operation == "nudge" and isinstance(node, (int, float)) and not isinstance(node, bool):
        parent[key] = node + draw(st.sampled_from([1, -1, 0.5, 1e-6]))
    elif parent is not None:
        parent[key] = draw(_json_values())


def _try_resume(trainer, path: str, global_step: int):
    """What a resume of `path` does up to its first training step: the state it resumes, or the error it raises."""
    try:
        state, recorded = trainer._load_selection_state(path)
        state.pending_losses = trainer.scorer.state()  # what the scorer took back
        check_steps(recorded, state, rows_per_step=4, epoch_steps=[2, 2, 2], global_step=global_step, where=path)
    except InvalidArgumentError as err:
        return err
    finally:
        trainer.scorer.reset()
    return state



@settings(max_examples=examples(150))
@given(data=st.data(), step=st.integers(1, 6), mode=st.sampled_from(["plain", "sealed", "format 1"]))
def test_any_edit_of_a_state_resumes_identically_or_is_refused(checkpointed, resumer, tmp_path_factory, data, step, mode):
    source = os.path.join(checkpointed.args.output_dir, f"checkpoint-{step}", STATE_FILE)
    original = _try_resume(resumer, source, step)
    assert not isinstance(original, Exception), original
    text = open(source).read()
    content = json.loads(text)
    if mode == "format 1":
        _as_format_1(content)
    if data.draw(st.booleans()):  # an edit of the JSON tree, then written as hf_idsel writes
        _edit_somewhere(data.draw, content)
        if mode == "sealed" and isinstance(content, dict):
            content["digest"] = state_digest(content)
        text = json.dumps(content)
    else:  # damage to the bytes: cut short, or a character replaced
        text = json.dumps(content) if mode == "format 1" else text
        at = data.draw(st.integers(0, len(text)))
        text = text[:at] if data.draw(st.booleans()) else text[:at] + data.draw(st.characters()) + text[at + 1:]
    path = os.path.join(str(tmp_path_factory.mktemp("edited")), STATE_FILE)
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(text)
    got = _try_resume(resumer, path, step)
    if isinstance(got, InvalidArgumentError):
        assert "\n" not in str(got) and path in str(got), str(got)
    elif mode == "plain":
        assert dataclasses.asdict(got) == dataclasses.asdict(original)
    else:
        assert _what_decides(got, mode) == _what_decides(original, mode)
