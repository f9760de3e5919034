"""bench/fidelity.py (the fidelity experiment, issues 6 and 26): its statistics (t-interval, exact
sign-flip p-value, Holm, minimal detectable effect, the pre-registered contrasts and scorer rule), the
answer-only held-out scoring, the placebo scorer and the static cluster prior, the provenance of a run,
and (marked `scripts`) a tiny end-to-end run with a tiny random llama instead of SmolLM2."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import single_thread

_BENCH = os.path.join(os.path.dirname(__file__), "..", "bench")
sys.path.insert(0, os.path.abspath(_BENCH))

import fidelity  # noqa: E402
import fidelity_arms  # noqa: E402
import fidelity_pool  # noqa: E402
import fidelity_stats  # noqa: E402
import fidelity_train  # noqa: E402

from hf_idsel.pool import builtin_pool_available  # noqa: E402

needs_pool = pytest.mark.skipif(not builtin_pool_available()[0], reason="the built-in pool's packages are not installed")


def tiny_config(**overrides):
    values = dict(
        model="tiny",
        seeds=2,
        arms=("random", "kmq", "iter-default", "iter-placebo", "kmq-clusterq", "balanced-random", "iter-loss", "junk-only",
              "oracle-clean"),
        pool_rows={"gsm8k": 14, "humaneval": 8, "chitchat": 14, "mmlu": 14},
        junk_rows={"offtopic": 6, "corrupted": 6},
        heldout_rows={"gsm8k": 2, "humaneval": 2, "chitchat": 2, "mmlu": 3},
        min_heldout_items=8,
        budget=12,
        rounds=3,
        batch_size=2,
        max_length=384,
        eval_max_length=400,
        min_answer_tokens=8,
        learning_rate=5e-3,
        lora_r=4,
        lora_alpha=8,
        threads=1,
        device="cpu",
        selection_seeds=4,
    )
    values.update(overrides)
    return fidelity_pool.FidelityConfig(**values)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------


def test_sign_flip_p_is_exact_over_all_sign_patterns():
    # All 6 differences positive: only "all +" and "all -" reach |mean| >= the observed one, so p = 2/64.
    assert fidelity_stats.sign_flip_p([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(2 / 64)
    # One negative: sum 1.7 of 2.1 total; flipping any subset whose sum is <= 0.2 keeps |sum| >= 1.7:
    # {}, {0.1}, {0.2}, i.e. 3 patterns and their 3 mirror images -> 6/64.
    assert fidelity_stats.sign_flip_p([0.1, -0.2, 0.3, 0.4, 0.5, 0.6]) == pytest.approx(6 / 64)
    assert fidelity_stats.sign_flip_p([0.0] * 6) == 1.0
    assert fidelity_stats.sign_flip_p([0.3]) == 1.0
    # Symmetric in the sign of the data; the smallest p at 6 seeds is above Holm's first step (0.05 / 3).
    assert fidelity_stats.sign_flip_p([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6]) == pytest.approx(2 / 64)
    assert 2 / 64 > 0.05 / 3
    with pytest.raises(ValueError):
        fidelity_stats.sign_flip_p([])


def test_holm_adjusts_step_down_in_the_given_order():
    # Sorted: 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> made non-decreasing: 0.03, 0.06, 0.06.
    assert fidelity_stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert fidelity_stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    adjusted = fidelity_stats.holm([0.02, None, 0.01])
    assert adjusted[1] is None and adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.02)


def test_minimal_detectable_effect_matches_the_t_formula():
    # sd 1, n 6, alpha 0.05, power 0.8: (t(0.975, 5) + t(0.8, 5)) / sqrt(6) = (2.570582 + 0.919544) / 2.449490.
    assert fidelity_stats.minimal_detectable_effect(1.0, 6) == pytest.approx((2.570582 + 0.919544) / np.sqrt(6), abs=1e-5)
    # Stricter level, wider MDE; proportional to sd; none below 2 seeds.
    assert fidelity_stats.minimal_detectable_effect(1.0, 6, alpha=0.05 / 3) > fidelity_stats.minimal_detectable_effect(1.0, 6)
    assert fidelity_stats.minimal_detectable_effect(0.02, 6) == pytest.approx(0.02 * fidelity_stats.minimal_detectable_effect(1.0, 6))
    assert fidelity_stats.minimal_detectable_effect(1.0, 1) is None


def test_t_interval_matches_a_hand_computed_case():
    # 1..5: mean 3, sample sd sqrt(2.5); t(0.975, 4 df) = 2.7764451051977987.
    got = fidelity_stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451051977987 * np.sqrt(2.5) / np.sqrt(5)
    assert got["mean"] == 3.0 and got["n"] == 5 and got["std"] == pytest.approx(np.sqrt(2.5))
    assert got["low"] == pytest.approx(3.0 - half) and got["high"] == pytest.approx(3.0 + half)
    assert fidelity_stats.t_interval([0.5]) == {"mean": 0.5, "std": None, "n": 1, "low": None, "high": None}
    with pytest.raises(ValueError):
        fidelity_stats.t_interval([])


def _run(arm, seed, answer_loss, junk=0.2):
    return {"arm": arm, "seed": seed, "loss": {"gsm8k": answer_loss}, "loss_answer": answer_loss, "junk_share": junk,
            "coverage": 0.5}


def test_contrasts_pair_by_seed_correct_by_holm_and_quote_the_mde():
    rng = np.random.default_rng(0)
    runs = []
    for s in range(6):
        base = 1.5 + rng.normal(0, 0.05)
        runs += [_run("iter-default", s, base - 0.03 - 0.001 * s), _run("iter-placebo", s, base),
                 _run("kmq-clusterq", s, base - 0.03 + (0.01 if s % 2 else -0.01)), _run("kmq", s, base + 0.1),
                 _run("random", s, base + 0.1 + (0.02 if s < 3 else -0.02))]
    runs.append(_run("iter-default", 7, 0.0))  # no placebo at seed 7: not paired
    found = fidelity_stats.contrasts(runs, fidelity_arms.CONTRASTS)
    assert [(c["arm"], c["reference"]) for c in found] == list(fidelity_arms.CONTRASTS)
    placebo, prior, kmq = found
    assert placebo["seeds"] == list(range(6)) and placebo["per_seed"] == pytest.approx([-0.03 - 0.001 * s for s in range(6)])
    assert placebo["p_sign_flip"] == pytest.approx(2 / 64)  # every seed agrees in sign
    assert placebo["p_t"] < 1e-6 and placebo["passes"] and placebo["mean"] < 0
    assert prior["p_t"] > 0.05 and not prior["passes"]
    ps = [c["p_t"] for c in found]
    assert [c["p_t_holm"] for c in found] == pytest.approx(fidelity_stats.holm(ps))
    assert [c["p_sign_flip_holm"] for c in found] == pytest.approx(fidelity_stats.holm([c["p_sign_flip"] for c in found]))
    for c in found:
        assert c["mde_alpha"] == pytest.approx(0.05 / 3)
        assert c["mde"] == pytest.approx(fidelity_stats.minimal_detectable_effect(c["std"], 6, 0.05 / 3))
    assert kmq["mean"] == pytest.approx(0.0, abs=1e-12) and not kmq["passes"]
    # The rule: the default stays only if it beats the placebo after Holm; otherwise the cheapest scorer.
    assert fidelity_stats.scorer_decision(found, "likelihood")["default_scorer"] == "likelihood"
    flipped = [dict(c, passes=False) if c["reference"] == "iter-placebo" else c for c in found]
    decision = fidelity_stats.scorer_decision(flipped, "likelihood")
    assert decision["default_scorer"] == "loss" and decision["changed"] and "does not beat the placebo" in decision["reason"]
    worse = [dict(c, mean=+0.03) if c["reference"] == "iter-placebo" else c for c in found]
    assert fidelity_stats.scorer_decision(worse, "likelihood")["default_scorer"] == "loss"
    assert not fidelity_stats.scorer_decision(fidelity_stats.contrasts(runs[:2], fidelity_arms.CONTRASTS), "likelihood")["decided"]


def test_paired_differences_pair_by_seed_and_skip_unpaired_seeds():
    runs = [_run("random", 0, 1.50), _run("random", 1, 1.40), _run("random", 2, 1.60),
            _run("kmq", 0, 1.45), _run("kmq", 1, 1.38), _run("kmq", 2, 1.52), _run("kmq", 3, 9.99)]
    paired = fidelity_stats.paired_differences(runs, "random", metrics=("loss_answer", "coverage", "mmlu_acc"))
    loss = paired["kmq"]["loss_answer"]
    assert loss["seeds"] == [0, 1, 2] and loss["per_seed"] == pytest.approx([-0.05, -0.02, -0.08])
    assert loss["high"] == pytest.approx(-0.05 + 4.302652729911275 * 0.03 / np.sqrt(3))
    assert loss["p_sign_flip"] == pytest.approx(2 / 8)
    assert "mmlu_acc" not in paired["kmq"]  # absent from the runs: not invented


# --------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------


def test_provenance_records_the_commit_and_a_dirty_tree(tmp_path):
    root = tmp_path / "repo"
    (root / "bench").mkdir(parents=True)
    (root / "bench" / "x.py").write_text("a = 1\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q", str(root)], check=True)
    subprocess.run(git + ["-C", str(root), "add", "."], check=True)
    subprocess.run(git + ["-C", str(root), "commit", "-qm", "x"], check=True)
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    clean = fidelity_stats.provenance(str(root))
    assert clean["commit"] == head and len(head) == 40 and clean["dirty"] is False
    (root / "bench" / "x.py").write_text("a = 2\n")
    (root / "notes.txt").write_text("outside the code paths\n")
    dirty = fidelity_stats.provenance(str(root))
    assert dirty["commit"] == head and dirty["dirty"] and dirty["dirty_paths"] == ["bench/x.py"] and dirty["diff_sha256"]
    (root / "bench" / "new.py").write_text("b = 1\n")  # untracked code counts too
    assert "bench/new.py" in fidelity_stats.provenance(str(root))["dirty_paths"]
    assert fidelity_stats.provenance(str(tmp_path))["commit"] is None  # not a git checkout


def _results(commit, runs, dirty=False, **config):
    return {"code": {"commit": commit, "dirty": dirty}, "config": {"budget": 24, "arms": ["random"], "seeds": 6, **config},
            "pool": {"digest": "p"}, "runs": runs, "clustering": {}, "command": "c", "library_defaults": {"scorer": "likelihood"}}


def test_runs_of_different_commits_or_dirty_trees_are_never_merged():
    a = _results("a" * 40, [_run("random", s, 1.5) for s in range(6)])
    b = _results("b" * 40, [_run("kmq", s, 1.4) for s in range(6)])
    with pytest.raises(ValueError, match="different commits"):
        fidelity.merge_results(a, b)
    with pytest.raises(ValueError, match="uncommitted"):
        fidelity.merge_results(a, _results("a" * 40, b["runs"], dirty=True))
    with pytest.raises(ValueError, match="records no commit"):
        fidelity.merge_results(a, _results(None, b["runs"]))
    with pytest.raises(ValueError, match="configurations"):
        fidelity.merge_results(a, _results("a" * 40, b["runs"], budget=36))
    with pytest.raises(ValueError, match="both results hold runs"):
        fidelity.merge_results(a, _results("a" * 40, a["runs"][:1]))
    merged = fidelity.merge_results(a, _results("a" * 40, b["runs"]))
    assert len(merged["runs"]) == 12 and merged["paired"]["random"]["kmq"]["loss_answer"]["mean"] == pytest.approx(-0.1)


def test_a_run_from_a_dirty_tree_is_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(fidelity, "provenance", lambda: {"commit": "c" * 40, "dirty": True, "dirty_paths": ["bench/x.py"]})
    monkeypatch.setattr(fidelity, "load_base", lambda cfg: pytest.fail("loaded a model"))
    with pytest.raises(ValueError, match="commit first.*--allow-dirty"):
        fidelity.run_experiment(tiny_config(), progress=False)


# --------------------------------------------------------------------------------------------
# Held-out answer loss: the answer's own tokens only
# --------------------------------------------------------------------------------------------


def _mmlu_item(letter="B", option_text="Paris"):
    options = {"A": "London", "B": "Paris", "C": "Rome", "D": "Berlin"}
    question = ("What is the capital of France?\nA. London\nB. Paris\nC. Rome\nD. Berlin\n\n"
                "Answer with the letter of the correct option.")
    answer = f"The answer is {letter}. {option_text if option_text else options[letter]}"
    return question, answer


def test_mmlu_is_scored_on_the_answer_letter_only():
    question, answer = _mmlu_item()
    assert fidelity_pool.mmlu_letter(question, answer) == "B"
    assert fidelity_pool.mmlu_letter(question, "The answer is B. Rome") is None  # letter and option disagree
    heldout = {"mmlu": [{"prompt": [{"role": "user", "content": question}], "answer": answer, "letter": "B", "gold": 1}],
               "gsm8k": [{"prompt": [{"role": "user", "content": "1+1?"}], "answer": "2 #### 2"}]}
    pairs = fidelity_pool.scored_pairs(heldout, lambda messages: "<" + messages[0]["content"] + ">")
    assert ("gsm8k", "<1+1?>", "2 #### 2") in pairs
    # MMLU: the template words are context, the letter alone is scored; nothing after it.
    assert ("mmlu", "<" + question + ">The answer is", " B") in pairs


def test_mmlu_loss_ignores_template_tokens_and_equals_the_letters_likelihood():
    from helpers import make_tiny_llama

    from hf_idsel.quality import answer_log_likelihood

    model, tokenizer = make_tiny_llama()
    cfg = tiny_config()
    question, answer = _mmlu_item("A")
    item = {"prompt": [{"role": "user", "content": question}], "answer": answer, "letter": "A", "gold": 0}
    with single_thread():
        got = fidelity_train.evaluate(model, tokenizer, {"mmlu": [item]}, cfg)
        # A different template text after the letter, or another option text, changes nothing: not scored.
        other = dict(item, answer="The answer is A. something else entirely, at length")
        assert fidelity_train.evaluate(model, tokenizer, {"mmlu": [other]}, cfg)["loss"]["mmlu"] == got["loss"]["mmlu"]
        context = fidelity_train.render_prompt(tokenizer, item["prompt"]) + "The answer is"
        letter_ll = answer_log_likelihood(model, tokenizer, [context], [" A"], max_length=cfg.eval_max_length, show_progress=False)[0]
        assert got["loss"]["mmlu"] == pytest.approx(-letter_ll, rel=1e-5)
        # The whole answer (template included) would be a different number.
        whole = answer_log_likelihood(model, tokenizer, [context[: -len("The answer is")]], [answer], show_progress=False)[0]
        assert abs(-whole - got["loss"]["mmlu"]) > 1e-3
        # The single-forward path (one-token letters) and the per-letter path agree.
        fast = fidelity_train.letter_log_likelihoods(model, tokenizer, [context, context + " maybe"], letters=("A",))
        slow = answer_log_likelihood(model, tokenizer, [context, context + " maybe"], [" A", " A"], show_progress=False)
        assert fast[:, 0] == pytest.approx(slow, rel=1e-5)
    assert got["items"]["mmlu"] == 1 and got["mmlu_acc"] in (0.0, 1.0)
    assert np.isnan(got["loss_answer"]) and got["loss_mean_all"] == got["loss"]["mmlu"]  # MMLU is not in the primary metric


# --------------------------------------------------------------------------------------------
# Arms: the placebo and the static prior
# --------------------------------------------------------------------------------------------


def test_placebo_scores_are_seeded_per_seed_and_round_and_have_the_asked_spread():
    from hf_idsel.scorers import RoundScorer

    a = fidelity_arms.placebo_cluster_scores(8, seed=3, round_index=1, scale=0.7)
    assert np.array_equal(a, fidelity_arms.placebo_cluster_scores(8, seed=3, round_index=1, scale=0.7))
    assert not np.allclose(a, fidelity_arms.placebo_cluster_scores(8, seed=3, round_index=2, scale=0.7))
    assert not np.allclose(a, fidelity_arms.placebo_cluster_scores(8, seed=4, round_index=1, scale=0.7))
    assert np.allclose(fidelity_arms.placebo_cluster_scores(8, 3, 1, 1.4), 2 * a)  # scale multiplies
    many = fidelity_arms.placebo_cluster_scores(20000, seed=0, round_index=1, scale=0.7)
    assert many.std() == pytest.approx(0.7, rel=0.03) and abs(many.mean()) < 0.03
    # The spread it copies: the sample sd over the default arm's scored clusters (None = not scored).
    assert fidelity_arms.matched_scale([1.0, None, 3.0]) == pytest.approx(np.sqrt(2.0))
    assert fidelity_arms.matched_scale([1.0, None]) == 0.0

    scorer = fidelity_arms.PlaceboScorer({("p0", "g0"): 0, ("p1", "g1"): 2, ("p2", "g2"): 2}, k=3, seed=5, scales=[0.5, 2.0])
    assert isinstance(scorer, RoundScorer) and scorer.needs_generation is False and scorer.name == "placebo"
    first = scorer(["p0", "p1", "p2"], ["g0", "g1", "g2"], None)
    z1 = fidelity_arms.placebo_cluster_scores(3, 5, 1, 0.5)
    assert first.tolist() == [z1[0], z1[2], z1[2]]  # each row scores its cluster's draw
    second = scorer(["p1"], ["g1"], None)
    assert second.tolist() == [fidelity_arms.placebo_cluster_scores(3, 5, 2, 2.0)[2]]  # round 2, its own scale
    assert scorer.drawn == [z1.tolist(), fidelity_arms.placebo_cluster_scores(3, 5, 2, 2.0).tolist()]
    with pytest.raises(KeyError, match="not pool rows"):
        scorer(["unknown"], ["g"], None)


def test_placebo_replay_moves_the_weights_by_the_placebo_draws_and_its_rows_follow_them():
    from hf_idsel.rounds import update_weights

    cfg = tiny_config(budget=24, rounds=3)
    labels = np.repeat(np.arange(4), 30)
    quality = np.zeros(len(labels))
    scales = [3.0, 3.0]
    rounds = fidelity_arms.replay_placebo(labels, quality, 4, cfg, seed=2, scales=scales)
    assert [len(r["selected"]) for r in rounds] == [8, 8, 8]
    assert len({row for r in rounds for row in r["selected"]}) == 24  # no row twice
    # Round r's weights: the trainer's softmax update of the previous weights by the placebo's draws for (seed, r).
    weights = np.full(4, 0.25)
    for r in (1, 2):
        z = fidelity_arms.placebo_cluster_scores(4, 2, r, scales[r - 1])
        scored = [c for c in range(4) if rounds[r - 1]["cluster_scores"][c] is not None]
        assert [rounds[r - 1]["cluster_scores"][c] for c in scored] == pytest.approx(z[scored].tolist())
        full = np.array([z[c] if c in scored else np.nan for c in range(4)])
        weights = update_weights(weights, full, rule="softmax", temperature=1.0)
        assert rounds[r - 1]["weights"] == pytest.approx(weights.tolist())
    # The draws decide the later rounds: no spread leaves the weights uniform and draws other rows.
    flat = fidelity_arms.replay_placebo(labels, quality, 4, cfg, seed=2, scales=[0.0, 0.0])
    assert flat[0]["selected"] == rounds[0]["selected"] and flat[1]["weights"] == pytest.approx([0.25] * 4)
    assert [r["selected"] for r in flat[1:]] != [r["selected"] for r in rounds[1:]]
    assert fidelity_arms.quick_selection("iter-placebo", labels, quality, None, 4, cfg, 2, scales).tolist() == [
        row for r in rounds for row in r["selected"]]


def test_cluster_prior_uses_the_trainers_weight_rule_and_one_kmq_draw():
    from hf_idsel.rounds import update_weights

    cfg = tiny_config(budget=12)
    labels = np.repeat(np.arange(3), [10, 20, 30])
    quality = np.concatenate([np.full(10, -1.0), np.full(20, -2.0), np.full(30, -3.0)])
    weights, means = fidelity_arms.cluster_prior(labels, quality, 3, temperature=1.0)
    assert means == pytest.approx([-1.0, -2.0, -3.0])
    soft = np.exp([-1.0, -2.0, -3.0]) / np.exp([-1.0, -2.0, -3.0]).sum()
    assert weights == pytest.approx(soft / soft.sum())  # softmax(s / T) x uniform, renormalised
    assert weights == pytest.approx(update_weights(np.full(3, 1 / 3), means, rule="softmax", temperature=1.0))
    rows, info = fidelity_arms.prior_selection(labels, quality, 3, cfg, seed=0)
    assert len(rows) == 12 == len(set(rows.tolist())) and info["weights"] == pytest.approx(weights.tolist())
    # Cluster 0 (best quality, fewest rows) gets more than its size share; cluster 2 less.
    per_cluster = np.bincount(labels[rows], minlength=3)
    assert per_cluster[0] > 12 * 10 / 60 and per_cluster[2] < 12 * 30 / 60
    # Equal quality everywhere: uniform weights, and the draw is exactly kMQ's.
    flat = np.zeros(60)
    same, _ = fidelity_arms.prior_selection(labels, flat, 3, cfg, seed=4)
    assert same.tolist() == fidelity_arms.quick_selection("kmq", labels, flat, None, 3, cfg, seed=4).tolist()


def test_every_arm_is_one_table_entry_and_the_default_set_follows_the_library(monkeypatch):
    arms = fidelity_arms.default_arms()
    assert {"random", "kmq", "iter-default", "iter-placebo", "kmq-clusterq", "balanced-random"} <= set(arms)
    assert "iter-likelihood" not in fidelity_arms.ARMS and "iter-likelihood-base" not in fidelity_arms.ARMS
    for name, arm in fidelity_arms.ARMS.items():
        assert arm.kind in ("static", "prior", "iterative", "control"), name
    assert fidelity_arms.ARMS["iter-default"].scorer is None  # the library's default, read at run time
    assert ("iter-loss" in arms) == (fidelity_arms.library_default("scorer") != "loss")
    monkeypatch.setattr(fidelity_arms, "library_default", lambda name: "loss")
    assert "iter-loss" not in fidelity_arms.default_arms()  # it would be iter-default twice
    # The placebo runs after the default arm, whose spread it copies.
    assert fidelity_arms.run_order(["iter-placebo", "random", "iter-default"]) == ["iter-default", "iter-placebo", "random"]
    assert set(fidelity_arms.SELECTION_ONLY_ARMS) <= set(arms)


# --------------------------------------------------------------------------------------------
# Pool and configuration
# --------------------------------------------------------------------------------------------


def test_junk_share_and_coverage_count_exactly():
    is_junk = np.array([0, 1, 1, 0, 1, 0], dtype=bool)
    assert fidelity_pool.junk_share([1, 2, 4], is_junk) == 1.0 and fidelity_pool.junk_share([0, 1, 2, 3], is_junk) == 0.5
    with pytest.raises(ValueError):
        fidelity_pool.junk_share([], is_junk)
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    assert fidelity_pool.coverage_distance(emb, np.arange(50)) == 0.0
    small = fidelity_pool.coverage_distance(emb, [0, 1])
    expected = np.mean([0.0 if i in (0, 1) else 1 - max(emb[i] @ emb[0], emb[i] @ emb[1]) for i in range(50)])
    assert small == pytest.approx(expected, abs=1e-6) and fidelity_pool.coverage_distance(emb, [0, 1, 1]) == pytest.approx(small)


@needs_pool
def test_pool_marks_junk_and_holds_out_mmlu_items_with_their_letter():
    cfg = tiny_config()
    pool, heldout = fidelity_pool.build_pool(cfg)
    kinds = np.asarray(pool["kind"])
    assert (kinds == "offtopic").sum() == 6 and (kinds == "corrupted").sum() == 6
    assert np.array_equal(np.asarray(pool["is_junk"]), kinds != "clean")
    pool_prompts = {json.dumps(p) for p in pool["prompt"]}
    for domain, items in heldout.items():
        assert items and not any(json.dumps(item["prompt"]) in pool_prompts for item in items), domain
    for item in heldout["mmlu"]:
        assert item["answer"].startswith(f"The answer is {item['letter']}. ") and "ABCD"[item["gold"]] == item["letter"]
    # The default configuration holds out at least 80 items.
    assert sum(fidelity_pool.FidelityConfig().heldout_rows.values()) >= 80 == fidelity_pool.FidelityConfig().min_heldout_items


def test_bad_configurations_are_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(fidelity, "load_base", lambda cfg: pytest.fail("loaded a model"))
    with pytest.raises(ValueError, match="multiple of rounds x batch size"):
        fidelity.run_experiment(tiny_config(budget=13), progress=False, allow_dirty=True)
    with pytest.raises(ValueError, match="unknown arms"):
        fidelity.run_experiment(tiny_config(arms=("random", "no-such-arm")), progress=False, allow_dirty=True)
    with pytest.raises(ValueError, match="iter-placebo copies"):
        fidelity.run_experiment(tiny_config(arms=("random", "iter-placebo")), progress=False, allow_dirty=True)


def test_command_line_flags_reach_the_config(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg, **kwargs):  # records the config the command line built; runs nothing
        seen["cfg"], seen["kwargs"] = cfg, kwargs
        raise SystemExit(0)

    monkeypatch.setattr(fidelity, "run_experiment", fake_run)
    with pytest.raises(SystemExit):
        fidelity.main(["--seeds", "7", "--budget", "24", "--arms", "random,kmq", "--selection-seeds", "50",
                       "--allow-dirty", "--out", str(tmp_path)])
    cfg = seen["cfg"]
    assert (cfg.seeds, cfg.budget, cfg.arms, cfg.selection_seeds) == (7, 24, ("random", "kmq"), 50)
    assert seen["kwargs"]["allow_dirty"] is True
    with pytest.raises(SystemExit):
        fidelity.main(["--out", str(tmp_path)])
    cfg = seen["cfg"]
    assert cfg.arms is None and cfg.seeds == 6 and cfg.k == "auto" and cfg.selection_seeds == 200
    assert seen["kwargs"]["allow_dirty"] is False and seen["kwargs"]["deadline"] is None
    with pytest.raises(SystemExit):
        fidelity.main(["--out", str(tmp_path), "--deadline", "1700000000"])
    assert seen["kwargs"]["deadline"] == 1700000000.0 and seen["kwargs"]["train_deadline"] is None


def test_deadline_parses_utc_clock_times_and_a_run_starts_only_when_it_fits():
    import datetime

    when = datetime.datetime.fromtimestamp(fidelity.parse_deadline("17:55"), tz=datetime.timezone.utc)
    assert (when.hour, when.minute, when.second) == (17, 55, 0)
    assert when.date() == datetime.datetime.now(datetime.timezone.utc).date()
    assert fidelity.parse_deadline("1700000000.5") == 1700000000.5
    assert fidelity.run_fits(1.0, "random", {}) == (True, 0.0)  # nothing measured: the first run always starts
    times = {"random": [100.0, 120.0], "iter-default": [300.0]}
    assert fidelity.run_fits(126.0, "random", times) == (True, pytest.approx(126.0))  # its own slowest x 1.05
    assert not fidelity.run_fits(125.0, "random", times)[0]
    assert fidelity.run_fits(314.0, "kmq", times) == (False, pytest.approx(315.0))  # not run yet: the slowest of any


# --------------------------------------------------------------------------------------------
# End to end, tiny (pytest -m scripts)
# --------------------------------------------------------------------------------------------


@needs_pool
@pytest.mark.scripts
def test_seeds_zero_runs_the_selection_only_part_alone(tmp_path):
    cfg = tiny_config(seeds=0, selection_seeds=2, placebo_scale=0.5)
    with single_thread():
        results = fidelity.run_experiment(cfg, out_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"), progress=False,
                                          allow_dirty=True)
    assert results["runs"] == [] and results["base_model"] is None and not results["scorer_decision"]["decided"]
    part = results["selection_only"]
    assert part["seeds"] == 2 and part["placebo_scale"] == 0.5 and "iter-placebo" in part["arms"]
    tables = fidelity.render_tables(results)
    assert "Selection only (2 seeds" in tables and "Paired against `kmq`" in tables
    assert f"k = {part['k_per_seed'][0]} in" in tables
    assert fidelity.main(["--render-only", "--out", str(tmp_path)])["selection_only"] == json.loads(json.dumps(part))


@needs_pool
@pytest.mark.scripts
def test_tiny_experiment_writes_consistent_results(tmp_path):
    cfg = tiny_config()
    out = str(tmp_path / "out")
    with single_thread():
        results = fidelity.run_experiment(cfg, out_dir=out, cache_dir=str(tmp_path / "cache"), progress=False, allow_dirty=True)
    on_disk = json.load(open(os.path.join(out, "fidelity_results.json")))
    assert on_disk["summary"] == json.loads(json.dumps(results["summary"])) and not on_disk["partial"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=fidelity_stats.repo_root(), capture_output=True, text=True).stdout.strip()
    assert on_disk["code"]["commit"] == head and isinstance(on_disk["code"]["dirty"], bool)
    assert on_disk["versions"]["hf_idsel"] and on_disk["library_defaults"]["scorer"] == fidelity_arms.library_default("scorer")
    for name in ("fidelity_loss.png", "fidelity_selection.png", "fidelity_rounds.png"):
        assert os.path.getsize(os.path.join(out, name)) > 1000
    rendered = fidelity.main(["--render-only", "--out", out])  # redraws from the JSON alone
    assert rendered["summary"] == on_disk["summary"]

    runs = results["runs"]
    order = fidelity_arms.run_order(cfg.arms)
    assert [(r["seed"], r["arm"]) for r in runs] == [(s, a) for s in range(2) for a in order]
    is_junk = np.asarray(results["pool"]["is_junk"], dtype=bool)
    assert results["equal_steps"] and {r["steps"] for r in runs} == {cfg.budget // cfg.batch_size}
    for r in runs:
        selected = np.asarray(r["selected"])
        assert len(selected) == cfg.budget == len(set(selected.tolist()))
        assert r["junk_share"] == pytest.approx(is_junk[selected].mean())
        assert set(r["loss"]) == set(fidelity_pool.DOMAINS) and r["items"]["mmlu"] > 0
        assert r["loss_answer"] == pytest.approx(np.mean([r["loss"][d] for d in fidelity_pool.PRIMARY_DOMAINS]))
    by = {(r["arm"], r["seed"]): r for r in runs}
    for seed in range(2):
        default, placebo = by[("iter-default", seed)], by[("iter-placebo", seed)]
        # The placebo copied the default arm's spread, round by round, and drew seeded scores.
        assert placebo["placebo_scales"] == [fidelity_arms.matched_scale(x["cluster_scores"]) for x in default["rounds"] if x["scored"]]
        assert placebo["placebo_scores"][0] == pytest.approx(
            fidelity_arms.placebo_cluster_scores(placebo["k"], seed, 1, placebo["placebo_scales"][0]).tolist())
        assert placebo["scorer"] == "placebo" and default["scorer"] == fidelity_arms.library_default("scorer")
        assert sorted(placebo["rounds"][0]["selected"]) == sorted(default["rounds"][0]["selected"])  # shared round 1
        # The prior arm and kmq draw on the shared clustering at the k that k="auto" chose.
        assert by[("kmq-clusterq", seed)]["k"] == by[("kmq", seed)]["k"] == default["k"]
        assert by[("kmq", seed)]["k_selection"]["mode"] == "auto" and by[("kmq", seed)]["k_selection"]["silhouette"]
        assert by[("junk-only", seed)]["junk_share"] == 1.0 and by[("oracle-clean", seed)]["junk_share"] == 0.0
    assert [(c["arm"], c["reference"]) for c in on_disk["contrasts"]] == list(fidelity_arms.CONTRASTS)
    assert on_disk["scorer_decision"]["decided"]
    part = on_disk["selection_only"]
    assert part["seeds"] == 4 and part["arms"] == list(fidelity_arms.SELECTION_ONLY_ARMS) and len(part["k_per_seed"]) == 4
    assert all(len(part["per_seed"][a]) == 4 for a in part["arms"])
    tables = fidelity.render_tables(results)
    assert "Pre-registered contrasts" in tables and "Selection only (4 seeds" in tables and "idle machine" in tables


def test_the_target_harness_runs_at_its_documented_k_and_resumes_files_from_before_v2_fields():
    """bench/fidelity_target.py's setting is k = 16 (docs/fidelity.md, its results files), whatever
    FidelityConfig's own default; a results file written before the v2 fields existed is the same setting."""
    import fidelity_target

    cfg = fidelity_target.config(seeds=5, threads=2, budget=8)
    assert (cfg.k, cfg.budget, cfg.seeds) == (16, 8, 5) and fidelity_pool.FidelityConfig().k == "auto"
    with open(os.path.join(_BENCH, "..", "docs", "fidelity_target_results.json")) as f:
        earlier = json.load(f)["config"]
    now = fidelity_target.setting(cfg, fidelity_target.TARGET_SOURCES)
    assert fidelity_target.same_setting(earlier, {**now, "seeds": 8})
    assert not fidelity_target.same_setting(earlier, {**now, "k": "auto"})
    assert not fidelity_target.same_setting(earlier, {**now, "budget": 24})
