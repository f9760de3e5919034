"""Smoke test of bench/fidelity.py (the fidelity experiment of issue 6) at a tiny size, with a tiny
random llama instead of SmolLM2, plus exact checks of its junk and coverage accounting."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

from helpers import single_thread

_PATH = os.path.join(os.path.dirname(__file__), "..", "bench", "fidelity.py")
_spec = importlib.util.spec_from_file_location("fidelity", _PATH)
fidelity = importlib.util.module_from_spec(_spec)
sys.modules["fidelity"] = fidelity  # dataclasses look their module up while the class is built
_spec.loader.exec_module(fidelity)

from hf_idsel.pool import builtin_pool_available

pytestmark = pytest.mark.skipif(not builtin_pool_available()[0], reason="the built-in pool's packages are not installed")


def tiny_config(**overrides):
    values = dict(
        model="tiny",
        seeds=2,
        arms=("random", "kmq", "kmq-kauto", "iter-loss", "iter-loss-restart", "junk-only", "oracle-clean"),
        pool_rows={"gsm8k": 14, "humaneval": 8, "chitchat": 14, "mmlu": 14},
        junk_rows={"offtopic": 6, "corrupted": 6},
        heldout_rows={"gsm8k": 2, "humaneval": 2, "chitchat": 2, "mmlu": 3},
        budget=12,
        rounds=3,
        batch_size=2,
        k=4,
        max_length=384,
        eval_max_length=400,
        min_answer_tokens=8,
        learning_rate=5e-3,
        lora_r=4,
        lora_alpha=8,
        threads=1,
        device="cpu",
    )
    values.update(overrides)
    return fidelity.FidelityConfig(**values)


def test_junk_share_counts_exactly():
    is_junk = np.array([0, 1, 1, 0, 1, 0], dtype=bool)
    assert fidelity.junk_share([1, 2, 4], is_junk) == 1.0
    assert fidelity.junk_share([0, 3, 5], is_junk) == 0.0
    assert fidelity.junk_share([0, 1, 2, 3], is_junk) == 0.5
    with pytest.raises(ValueError):
        fidelity.junk_share([], is_junk)


def test_coverage_is_zero_for_the_full_pool_and_grows_as_the_selection_shrinks():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert fidelity.coverage_distance(emb, np.arange(50)) == 0.0
    small, large = fidelity.coverage_distance(emb, [0, 1]), fidelity.coverage_distance(emb, np.arange(25))
    assert small > large > 0
    # Exactly the mean distance to the nearest chosen row, chosen rows counting 0.
    expected = np.mean([0.0 if i in (0, 1) else 1 - max(emb[i] @ emb[0], emb[i] @ emb[1]) for i in range(50)])
    assert small == pytest.approx(expected, abs=1e-6)
    # Duplicated rows in a selection change nothing.
    assert fidelity.coverage_distance(emb, [0, 1, 1, 0]) == pytest.approx(small)


def test_t_interval_matches_a_hand_computed_case():
    # 1..5: mean 3, sample sd sqrt(2.5); t(0.975, 4 df) = 2.7764451051977987 (tables: 2.776).
    got = fidelity.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * np.sqrt(2.5) / np.sqrt(5)
    assert got["mean"] == 3.0 and got["n"] == 5
    assert got["std"] == pytest.approx(np.sqrt(2.5))
    assert got["low"] == pytest.approx(3.0 - half) and got["high"] == pytest.approx(3.0 + half)
    assert got["low"] == pytest.approx(1.0368, abs=1e-4)
    # Two values: t(0.975, 1 df) = 12.706; a wider level gives a wider interval.
    two = fidelity.t_interval([0.0, 2.0])
    assert two["high"] - two["mean"] == pytest.approx(12.706204736 * np.sqrt(2) / np.sqrt(2))
    assert fidelity.t_interval([1.0, 2.0, 3.0, 4.0, 5.0], level=0.99)["low"] < got["low"]
    # One value has a mean but no interval.
    assert fidelity.t_interval([0.5]) == {"mean": 0.5, "std": None, "n": 1, "low": None, "high": None}
    with pytest.raises(ValueError):
        fidelity.t_interval([])


def _run(arm, seed, loss, junk):
    return {"arm": arm, "seed": seed, "loss": {"gsm8k": loss}, "loss_mean": loss, "junk_share": junk, "coverage": 0.5}


def test_paired_differences_pair_by_seed_and_skip_unpaired_seeds():
    runs = [
        _run("random", 0, 1.50, 0.20), _run("random", 1, 1.40, 0.10), _run("random", 2, 1.60, 0.30),
        _run("kmq", 0, 1.45, 0.10), _run("kmq", 1, 1.38, 0.05), _run("kmq", 2, 1.52, 0.20),
        _run("kmq", 3, 9.99, 0.90),  # no random run for seed 3: not paired
    ]
    paired = fidelity.paired_differences(runs, "random", metrics=("loss_mean", "junk_share", "coverage", "mmlu_acc"))
    assert set(paired) == {"kmq"}
    loss = paired["kmq"]["loss_mean"]
    assert loss["seeds"] == [0, 1, 2] and loss["per_seed"] == pytest.approx([-0.05, -0.02, -0.08])
    assert loss["mean"] == pytest.approx(-0.05)
    # sd of (-0.05, -0.02, -0.08) is 0.03; t(0.975, 2 df) = 4.302652729911275.
    assert loss["high"] == pytest.approx(-0.05 + 4.302652729911275 * 0.03 / np.sqrt(3))
    assert loss["high"] > 0  # the same differences are "within noise" at 3 seeds
    assert paired["kmq"]["junk_share"]["per_seed"] == pytest.approx([-0.10, -0.05, -0.10])
    assert paired["kmq"]["coverage"]["std"] == 0.0 and paired["kmq"]["coverage"]["low"] == 0.0
    assert "mmlu_acc" not in paired["kmq"]  # absent from the runs: not invented
    # The rendered table shows the interval and marks one that excludes 0.
    table = fidelity.paired_table({"paired": {"random": paired}}, "random", metrics=("loss_mean", "junk_share"))
    assert "| kmq | -0.050 [" in table and "]* |" in table


def test_arms_needing_a_scorer_option_hf_idsel_lacks_are_refused_before_any_work(monkeypatch):
    from hf_idsel.scorers import LikelihoodScorer

    monkeypatch.setitem(fidelity.ARMS, "iter-bogus", fidelity.Arm("iterative", scorer="likelihood",
                                                                 scorer_options={"no_such_option": 1}))
    with pytest.raises(ValueError, match="iter-bogus.*no_such_option.*--arms"):
        fidelity.run_experiment(tiny_config(arms=("random", "iter-bogus")), progress=False)
    # The free-reference arm runs only where LikelihoodScorer documents reference="base".
    if '"base"' in (LikelihoodScorer.__doc__ or ""):
        fidelity.check_scorer_options(["iter-likelihood-base"])
    else:
        with pytest.raises(ValueError, match='iter-likelihood-base.*reference="base"'):
            fidelity.check_scorer_options(["iter-likelihood-base"])


def test_every_arm_is_one_table_entry():
    assert set(fidelity.DEFAULT_ARMS) | set(fidelity.REPRESENTATION_ARMS) | {"oracle-clean", "junk-only"} == set(fidelity.ARMS)
    assert {"kmq", "kmq-kauto", "iter-loss-restart", "iter-likelihood-restart", "iter-likelihood-base"} <= set(fidelity.DEFAULT_ARMS)
    for name, arm in fidelity.ARMS.items():
        assert arm.kind in ("static", "iterative", "control"), name
        assert (arm.kind == "iterative") == (arm.scorer is not None), name
    assert fidelity.ARMS["kmq-kauto"].k == "auto" and fidelity.ARMS["kmq"].k is None


def test_pool_marks_junk_and_never_holds_out_pool_rows():
    cfg = tiny_config()
    pool, heldout = fidelity.build_pool(cfg)
    kinds = np.asarray(pool["kind"])
    assert (kinds == "offtopic").sum() == 6 and (kinds == "corrupted").sum() == 6
    assert np.array_equal(np.asarray(pool["is_junk"]), kinds != "clean")
    assert (kinds == "clean").sum() == 14 + 8 + 14 + 14
    pool_prompts = {json.dumps(p) for p in pool["prompt"]}
    for domain, items in heldout.items():
        assert items, domain
        assert not any(json.dumps(item["prompt"]) in pool_prompts for item in items), domain
    for item in heldout["mmlu"]:
        assert len(item["options"]) == 4 and item["options"][item["gold"]] == item["answer"]
    # Junk answers are not the gold answers of their questions: GSM8K answers end with "#### <number>".
    junk_answers = [c[0]["content"] for c, k in zip(pool["completion"], kinds) if k != "clean"]
    assert not any("####" in a for a in junk_answers)


@pytest.mark.scripts
def test_tiny_experiment_writes_consistent_results(tmp_path):
    cfg = tiny_config()
    out = str(tmp_path / "out")
    with single_thread():
        results = fidelity.run_experiment(cfg, out_dir=out, cache_dir=str(tmp_path / "cache"), progress=False)
    on_disk = json.load(open(os.path.join(out, "fidelity_results.json")))
    assert on_disk["summary"] == json.loads(json.dumps(results["summary"]))
    assert not on_disk["partial"]
    for name in ("fidelity_loss.png", "fidelity_selection.png", "fidelity_rounds.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000
        os.remove(os.path.join(out, name))
    # --render-only redraws every plot from the JSON alone, training nothing.
    rendered = fidelity.main(["--render-only", "--out", out])
    assert rendered["summary"] == on_disk["summary"]
    for name in ("fidelity_loss.png", "fidelity_selection.png", "fidelity_rounds.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000
    assert {"config", "versions", "timings", "pool", "clustering", "base_model", "runs", "summary"} <= set(on_disk)
    assert on_disk["timings"]["total_wall_s"] > 0

    runs = results["runs"]
    assert [(r["seed"], r["arm"]) for r in runs] == [(s, a) for s in range(2) for a in cfg.arms]
    is_junk = np.asarray(results["pool"]["is_junk"], dtype=bool)
    assert results["pool"]["junk_rows"] == int(is_junk.sum()) > 0
    # Same budget and the same number of optimizer steps in every arm, static and iterative.
    assert results["equal_steps"] and {r["steps"] for r in runs} == {cfg.budget // cfg.batch_size}
    for r in runs:
        selected = np.asarray(r["selected"])
        assert len(selected) == cfg.budget == len(set(selected.tolist()))
        assert r["junk_share"] == pytest.approx(is_junk[selected].mean())
        assert sum(r["selected_per_kind"].values()) == cfg.budget
        assert set(r["loss"]) == set(fidelity.DOMAINS) and all(np.isfinite(v) and v > 0 for v in r["loss"].values())
        assert 0 <= r["mmlu_acc"] <= 1
        assert 0 < r["coverage"] < 1
    by_arm = {a: [r for r in runs if r["arm"] == a] for a in cfg.arms}
    assert all(r["junk_share"] == 1.0 for r in by_arm["junk-only"])
    assert all(r["junk_share"] == 0.0 for r in by_arm["oracle-clean"])
    for r in by_arm["iter-loss"]:
        # Over all rounds: the rounds' rows are disjoint and together make the selection.
        assert [len(x["selected"]) for x in r["rounds"]] == [cfg.budget // cfg.rounds] * cfg.rounds
        assert sorted(sum((x["selected"] for x in r["rounds"]), [])) == sorted(r["selected"])
        shares = [x["junk_share"] for x in r["rounds"]]
        assert r["junk_share"] == pytest.approx(np.mean(shares))

    # Pairing: within a seed, every arm at the config's k used one clustering; kmq-kauto its own
    # (k chosen by silhouette), the same for both of its uses; iterative arms drew the same round 1.
    of_run = results["pairing"]["clustering_of_run"]
    for seed in range(2):
        fixed = {of_run[f"{a}/{seed}"] for a in ("random", "kmq", "iter-loss", "iter-loss-restart")}
        assert fixed == {f"{seed}:{cfg.k}"}
        auto = results["clustering"][of_run[f"kmq-kauto/{seed}"]]
        assert auto["k_requested"] == "auto" and auto["k_selection"]["mode"] == "auto"
        # k="auto": the smallest near-tie of the best silhouette (see cluster.choose_k).
        assert auto["k"] == auto["k_selection"]["chosen"] == auto["k_selection"]["ties"]["tied"][0]
        first = [r["rounds"][0]["selected"] for r in runs if r["seed"] == seed and r.get("rounds")]
        assert len(first) == 2 and sorted(first[0]) == sorted(first[1])
        # Both see the weights of the shared clustering's k clusters.
        assert all(len(r["rounds"][0]["weights"]) == cfg.k for r in runs if r["seed"] == seed and r.get("rounds"))
        assert 0 <= results["pairing"]["round1_in_kmq"][f"iter-loss/{seed}"] <= 1
    # Restart retrains from the base on all rows each round: the evaluated model saw budget / batch
    # steps like every other arm, out of more steps in all.
    for r in by_arm["iter-loss-restart"]:
        assert r["steps"] == cfg.budget // cfg.batch_size < r["steps_total"]
    # Paired differences against random and kmq, per seed, in the JSON and in the tables.
    paired = on_disk["paired"]
    assert set(paired) == {"random", "kmq"} and "random" not in paired["random"]
    for arm in ("kmq", "iter-loss"):
        d = paired["random"][arm]["loss_mean"]
        expected = [next(x["loss_mean"] for x in runs if x["arm"] == arm and x["seed"] == s)
                    - next(x["loss_mean"] for x in runs if x["arm"] == "random" and x["seed"] == s) for s in range(2)]
        assert d["seeds"] == [0, 1] and d["per_seed"] == pytest.approx(expected)
        assert d["low"] <= d["mean"] <= d["high"]
    assert "Paired differences against `kmq`" in fidelity.render_tables(results)

    summary = results["summary"]
    assert summary["random"]["coverage_vs_random"] == 1.0
    values = [r["junk_share"] for r in by_arm["kmq"]]
    assert summary["kmq"]["junk_share"]["mean"] == pytest.approx(np.mean(values))
    assert summary["kmq"]["junk_share"]["std"] == pytest.approx(np.std(values, ddof=1))
    table = fidelity.markdown_table(results)
    assert all(f"| {arm} |" in table for arm in cfg.arms) and "| untrained |" in table
    # The selection table's rows per domain and junk kind add up to the budget for every arm.
    for line in fidelity.selection_table(results).splitlines()[3:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        counts = [float(c) for c in cells[1:-1]]
        assert sum(counts) == pytest.approx(cfg.budget), line
        if cells[0] == "junk-only":
            assert counts[-2] + counts[-1] == pytest.approx(cfg.budget)
    # The time table: one row per arm, its total the mean of that arm's train + evaluate seconds.
    times = fidelity.time_table(results)
    for arm in cfg.arms:
        row = next(line for line in times.splitlines() if line.startswith(f"| {arm} |"))
        expected = np.mean([r["train_s"] + r["eval_s"] for r in by_arm[arm]])
        assert float(row.strip("|").split("|")[-1]) == pytest.approx(expected, abs=0.51)
    assert f"{len(cfg.arms)} arms x 2 seeds" in times


def test_unequal_steps_are_refused():
    with pytest.raises(ValueError, match="multiple of rounds x batch size"):
        fidelity.run_experiment(tiny_config(budget=13), progress=False)


def test_command_line_flags_reach_the_config_and_bad_arms_fail_before_any_work(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, **kwargs):  # records the config the command line built; runs nothing
        seen["cfg"] = cfg
        raise SystemExit(0)

    monkeypatch.setattr(fidelity, "run_experiment", fake_run)
    with pytest.raises(SystemExit):
        fidelity.main(["--gpu-scaled", "--seeds", "7", "--budget", "24", "--arms", "random,kmq", "--out", str(tmp_path)])
    cfg = seen["cfg"]
    assert (cfg.seeds, cfg.budget, cfg.arms) == (7, 24, ("random", "kmq"))
    assert (cfg.scale, cfg.k, cfg.device) == (fidelity.GPU_SCALED["scale"], fidelity.GPU_SCALED["k"], "cuda")
    with pytest.raises(SystemExit):
        fidelity.main(["--out", str(tmp_path)])
    assert seen["cfg"].arms == fidelity.DEFAULT_ARMS and seen["cfg"].seeds == 5 and seen["cfg"].scale == 1.0
    monkeypatch.undo()
    with pytest.raises(ValueError, match="unknown arms"):
        fidelity.main(["--arms", "random,no-such-arm", "--out", str(tmp_path)])
