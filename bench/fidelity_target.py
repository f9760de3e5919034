"""Selecting for a target (issue 30), measured on this CPU: does aiming the selection at 32 examples of one source
lower the held-out loss on that source, and what does it cost on the others?

    .venv/bin/python bench/fidelity_target.py [--seeds 4] [--targets gsm8k,mmlu] [--threads 2] [--out docs/]
    .venv/bin/python bench/fidelity_target.py --render-only docs/fidelity_target_results.json

The setting (pre-registered in docs/fidelity.md, "Selecting for a target"):

1. Pool: the built-in real pool (GSM8K, HumanEval, chit-chat, MMLU), per source split into held-out rows (evaluation
   only), target rows (32 of GSM8K and 32 of MMLU, the two targets, in neither the pool nor the held-out set) and
   pool rows; no planted junk. Rows are conversational prompt/completion, as in bench/fidelity.py.
2. Arms under one row budget, each trained with bench/fidelity.py's `train_static` (trl SFTTrainer + LoRA on the
   packaged SmolLM2-135M-Instruct, one epoch, budget / batch steps): `random`, `balanced-random` (an equal share per
   source), `kmq` (k = 16, uniform inside clusters: no quality pre-pass, which would cost more CPU than two training
   runs on this shared machine), and, per target, `target-kmq` (kmq with `target_dataset=` the 32 examples,
   `target_method="kmq"`, default sharpness) and `target-rds` (`target_method="rds"`). The untargeted arms do not
   depend on the target: one run per seed serves both targets.
3. Metrics, per target: held-out loss on the target's source (mean per-token NLL of the gold answer given the prompt
   in the chat template; for MMLU the gold option's text "The answer is X. ...", all sources batched in one call of
   `hf_idsel.quality.answer_log_likelihood`; no MMLU accuracy), the mean held-out loss on the three other sources, the share of
   the budget drawn from the target's source, and coverage inside the target's region: the mean over the pool rows of
   the target's source of 1 - the cosine (MiniLM) to the nearest selected row. Paired differences per seed (same
   pool, held-out rows and training seed for every arm) with 95% Student-t intervals.

Reused from bench/fidelity.py by import (the names bench/gpu_fidelity.py also imports, plus the training and
training function): `DOMAINS`, `MMLU_PATTERN`, `SOURCE_ROWS`, `t_interval`, `FidelityConfig`, `load_base`,
`drop_long_prompts`, `train_static`. Writes `<out>/fidelity_target_results.json` after every run (with the
commit) and prints the markdown tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from fidelity_pool import DOMAINS, MMLU_PATTERN, SOURCE_ROWS, FidelityConfig, drop_long_prompts  # noqa: E402
from fidelity_stats import t_interval  # noqa: E402
from fidelity_train import load_base, train_static  # noqa: E402

logger = logging.getLogger("fidelity_target")

TARGET_SOURCES = ("gsm8k", "mmlu")
TARGET_ROWS = 32
UNTARGETED_ARMS = ("random", "balanced-random", "kmq")
TARGETED_ARMS = ("target-kmq", "target-rds")
# Paired differences reported: (arm, against).
COMPARISONS = (
    ("target-kmq", "random"), ("target-kmq", "balanced-random"), ("target-kmq", "kmq"),
    ("target-rds", "random"), ("target-rds", "balanced-random"), ("target-rds", "kmq"), ("target-kmq", "target-rds"),
)
METRICS = ("target_loss", "other_loss", "target_share", "target_coverage")


def config(seeds: int = 4, threads: int | None = 2, budget: int = 24) -> FidelityConfig:
    """bench/fidelity.py's CPU setting (batch 4, k 16, LoRA r 16, lr 5e-4; budget 24 unless `--budget`), without junk,
    with 8 held-out rows of each target source, 4 of chit-chat and 2 of HumanEval (sized for a shared 2-core CPU)."""
    # k is named: FidelityConfig's own default became "auto" with fidelity v2, and these runs are at k = 16.
    return FidelityConfig(
        seeds=seeds, threads=threads, budget=budget, k=16, junk_rows={"offtopic": 0, "corrupted": 0},
        heldout_rows={"gsm8k": 8, "humaneval": 2, "chitchat": 4, "mmlu": 8},
    )


# FidelityConfig fields this harness never reads (bench/fidelity.py's selection-only part, held-out floor and
# placebo): results files written before they existed still resume.
UNUSED_FIELDS = ("seeds", "selection_seeds", "min_heldout_items", "placebo_scale")


def setting(cfg: FidelityConfig, targets) -> dict:
    """The `config` a results file records: the FidelityConfig, the arms, the targets and their settings (JSON)."""
    from hf_idsel.target import DEFAULT_TARGET_SHARPNESS

    return json.loads(json.dumps({**cfg.__dict__, "arms": list(UNTARGETED_ARMS + TARGETED_ARMS), "targets": list(targets),
                                  "target_rows": TARGET_ROWS, "target_sharpness": DEFAULT_TARGET_SHARPNESS}))


def same_setting(earlier: dict, now: dict) -> bool:
    """Whether two results' configs are one setting (the seed count and the fields this harness ignores aside)."""
    def kept(config):
        return {k: v for k, v in config.items() if k not in UNUSED_FIELDS}

    return kept(earlier) == kept(now)


def build(cfg: FidelityConfig):
    """`(pool, heldout, targets)`: the pool (prompt/completion, `origin`), the held-out items per source (as
    bench/fidelity.py's `evaluate` takes them) and the 32 target examples of each target source (a Dataset in the
    pool's layout)."""
    from hf_idsel import load_builtin_pool

    rng = np.random.default_rng(cfg.pool_seed)
    extra = {s: TARGET_ROWS if s in TARGET_SOURCES else 0 for s in DOMAINS}
    wanted = {s: min(SOURCE_ROWS[s], cfg.heldout_rows[s] + extra[s] + cfg.pool_rows[s]) for s in DOMAINS}
    loaded = load_builtin_pool(wanted, seed=cfg.pool_seed)
    origins = np.asarray(loaded["origin"])
    records, heldout, targets = [], {}, {}
    for source in DOMAINS:
        found = np.flatnonzero(origins == source)
        rows = [loaded[int(i)]["messages"] for i in found[rng.permutation(len(found))]]
        held, rest = rows[: cfg.heldout_rows[source]], rows[cfg.heldout_rows[source] :]
        chosen, rest = rest[: extra[source]], rest[extra[source] :]
        records += [{"prompt": m[:-1], "completion": [m[-1]], "origin": source} for m in rest[: cfg.pool_rows[source]]]
        if chosen:
            targets[source] = datasets.Dataset.from_list([{"prompt": m[:-1], "completion": [m[-1]]} for m in chosen])
        items = []
        for messages in held:
            item = {"prompt": messages[:-1], "answer": messages[-1]["content"]}
            if source == "mmlu":
                match = MMLU_PATTERN.search(messages[0]["content"])
                options = [f"The answer is {x}. {match.group(x).strip()}" for x in "ABCD"] if match else []
                if item["answer"] not in options:
                    continue
                item.update(options=options, gold=options.index(item["answer"]))
            items.append(item)
        heldout[source] = items
    order = rng.permutation(len(records))
    return datasets.Dataset.from_list([records[i] for i in order]), heldout, targets


def region_coverage(embeddings: np.ndarray, region: np.ndarray, selected) -> float:
    """Mean over the `region` rows of 1 - cosine to the nearest selected row (0 for a selected row)."""
    chosen = embeddings[np.unique(np.asarray(selected, dtype=np.int64))]
    nearest = (embeddings[region] @ chosen.T).max(axis=1)
    distance = 1.0 - np.clip(nearest, -1.0, 1.0)
    distance[np.isin(region, selected)] = 0.0
    return float(distance.mean())


def select(arm: str, pool, cfg: FidelityConfig, seed: int, target, cache_dir: str):
    """The pool rows an arm chooses (sorted)."""
    import hf_idsel

    kwargs = {
        "random": {"method": "random"},
        "balanced-random": {"method": "balanced-random", "source_column": "origin"},
        "kmq": {},
        "target-kmq": {"target_dataset": target, "target_method": "kmq"},
        "target-rds": {"target_dataset": target, "target_method": "rds"},
    }[arm]
    subset = hf_idsel.diverse_select(pool, budget=cfg.budget, k=cfg.k, seed=seed, cache_dir=cache_dir, **kwargs)
    return np.sort(np.asarray(subset["source_index"], dtype=np.int64))


def evaluate(model, tokenizer, heldout: dict, cfg: FidelityConfig) -> dict:
    """Held-out gold-answer loss per source (mean per-token NLL given the chat-templated prompt), one batched call."""
    from hf_idsel.quality import answer_log_likelihood

    items = [(d, item) for d in DOMAINS for item in heldout[d]]
    prompts = [tokenizer.apply_chat_template(item["prompt"], tokenize=False, add_generation_prompt=True) for _, item in items]
    was_training = model.training
    model.eval()
    try:
        ll = answer_log_likelihood(
            model, tokenizer, prompts, [item["answer"] for _, item in items], batch_size=cfg.eval_batch_size,
            max_length=cfg.eval_max_length, show_progress=False,
        )
    finally:
        model.train(was_training)
    domains = np.asarray([d for d, _ in items])
    loss = {d: float(-ll[domains == d].mean()) for d in DOMAINS if heldout[d]}
    return {"loss": loss, "loss_mean": float(np.mean(list(loss.values())))}


def metrics_for(target: str, evaluation: dict, selected: np.ndarray, origins: np.ndarray, embeddings: np.ndarray) -> dict:
    losses = evaluation["loss"] if evaluation else None
    return {
        "target_loss": losses[target] if losses else None,
        "other_loss": float(np.mean([v for d, v in losses.items() if d != target])) if losses else None,
        "target_share": float((origins[selected] == target).mean()),
        "target_coverage": region_coverage(embeddings, np.flatnonzero(origins == target), selected),
    }


def run(seeds: int, targets: tuple, threads: int | None, out_dir: str | None, cache_dir: str, *, budget: int = 24,
        deadline: float | None = None, resume: str | None = None, train: bool = True) -> dict:
    """The runs (`train=False`: the selections alone, for the share and coverage metrics over more seeds)."""
    from hf_idsel.embed import embed_dataset
    from hf_idsel.render import resolve_render_options

    started = time.perf_counter()
    cfg = config(seeds, threads, budget)
    if threads:
        torch.set_num_threads(threads)
    datasets.disable_progress_bars()
    base, tokenizer = load_base(cfg)
    pool, heldout, target_sets = build(cfg)
    pool = drop_long_prompts(pool, tokenizer, cfg)
    t = time.perf_counter()
    embeddings, _ = embed_dataset(pool, resolve_render_options(pool.column_names), cache_dir=cache_dir)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    prepare_s = time.perf_counter() - t
    origins = np.asarray(pool["origin"])
    results = {
        "experiment": "hf_idsel selecting for a target (issue 30)",
        "command": "python bench/fidelity_target.py " + " ".join(sys.argv[1:]),
        "commit": _commit(),
        "config": setting(cfg, targets),
        "pool": {"rows": len(pool), "per_source": {d: int((origins == d).sum()) for d in DOMAINS},
                 "heldout": {d: len(v) for d, v in heldout.items()}},
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "deadline": deadline,
        "prepare_s": prepare_s,
        "runs": [],
    }
    # In order of what the comparison needs most, so that a run cut by the deadline still has paired seeds: for the
    # first target, random and target-kmq over the seeds, then target-rds, then kmq and balanced-random; then each
    # further target's arms.
    first = targets[0]
    work = [(seed, arm, None if arm in UNTARGETED_ARMS else first)
            for group in (("random", "target-kmq"), ("target-rds",), ("kmq", "balanced-random"))
            for seed in range(seeds) for arm in group]
    work += [(seed, arm, tg) for tg in targets[1:] for seed in range(seeds) for arm in TARGETED_ARMS]
    if resume:  # runs of an earlier invocation with the same setting are kept, not run again
        with open(resume) as f:
            earlier = json.load(f)
        if not same_setting(earlier["config"], results["config"]):
            raise SystemExit(f"--resume {resume}: another setting; start without --resume.")
        results["runs"] = list(earlier["runs"])
        results["resumed_from"] = {"commit": earlier["commit"], "runs": len(earlier["runs"])}
    done = {(r["seed"], r["arm"], r["target"]) for r in results["runs"]}
    work = [item for item in work if item not in done]
    for seed, arm, target in work:
        if deadline is not None and time.time() > deadline:
            logger.info("Deadline reached: %d of %d runs done.", len(results["runs"]), len(work))
            results["stopped_at_deadline"] = {"runs_done": len(results["runs"]), "runs_planned": len(work)}
            if out_dir:
                _write(out_dir, results)
            break
        t0 = time.perf_counter()
        selected = select(arm, pool, cfg, seed, target_sets[target] if target else None, cache_dir)
        select_s = time.perf_counter() - t0
        torch.manual_seed(seed)
        if not train:
            results["runs"].append({
                "arm": arm, "seed": seed, "target": target, "selected": selected.tolist(), "select_s": select_s,
                "selected_per_source": {d: int((origins[selected] == d).sum()) for d in DOMAINS},
                "per_target": {tg: metrics_for(tg, None, selected, origins, embeddings) for tg in ([target] if target else targets)},
            })
            results["summary"], results["paired"] = summarize(results)
            if out_dir:
                _write(out_dir, results, f"fidelity_target_selection_b{cfg.budget}.json")
            continue
        with tempfile.TemporaryDirectory(prefix=f"target-{arm}-{seed}-") as run_dir:
            t1 = time.perf_counter()
            trainer, _ = train_static(base, tokenizer, pool, selected, cfg, seed, run_dir)
            train_s = time.perf_counter() - t1
            t2 = time.perf_counter()
            evaluation = evaluate(trainer.model.merge_and_unload(), tokenizer, heldout, cfg)
            eval_s = time.perf_counter() - t2
        record = {
            "arm": arm, "seed": seed, "target": target, "selected": selected.tolist(),
            "selected_per_source": {d: int((origins[selected] == d).sum()) for d in DOMAINS},
            "steps": int(trainer.state.global_step), **evaluation,
            "per_target": {tg: metrics_for(tg, evaluation, selected, origins, embeddings) for tg in ([target] if target else targets)},
            "select_s": select_s, "train_s": train_s, "eval_s": eval_s, "load_average": os.getloadavg()[0],
        }
        results["runs"].append(record)
        logger.info("%s seed %d target %s: %s (select %.0fs, train %.0fs, eval %.0fs)", arm, seed, target,
                    {tg: {m: round(v, 3) for m, v in x.items()} for tg, x in record["per_target"].items()}, select_s, train_s, eval_s)
        results["total_wall_s"] = time.perf_counter() - started
        results["summary"], results["paired"] = summarize(results)
        if out_dir:
            _write(out_dir, results)
        del trainer
    return results


def _rows(results: dict, target: str) -> dict:
    """`{(arm, seed): metrics}` for one target: untargeted arms' runs read for it, targeted arms' runs aimed at it."""
    table = {}
    for r in results["runs"]:
        if r["target"] in (None, target) and target in r["per_target"]:
            table[(r["arm"], r["seed"])] = r["per_target"][target]
    return table


def summarize(results: dict) -> tuple[dict, dict]:
    summary, paired = {}, {}
    for target in results["config"]["targets"]:
        rows = _rows(results, target)
        summary[target] = {}
        for arm in UNTARGETED_ARMS + TARGETED_ARMS:
            seeds = sorted(s for a, s in rows if a == arm)
            if seeds:
                summary[target][arm] = {
                    m: t_interval([rows[(arm, s)][m] for s in seeds]) for m in METRICS if rows[(arm, seeds[0])][m] is not None
                }
        paired[target] = {}
        for arm, against in COMPARISONS:
            seeds = sorted(s for a, s in rows if a == arm and (against, s) in rows)
            if seeds:
                paired[target][f"{arm} - {against}"] = {
                    m: t_interval([rows[(arm, s)][m] - rows[(against, s)][m] for s in seeds])
                    for m in METRICS if rows[(arm, seeds[0])][m] is not None
                }
    return summary, paired


def markdown(results: dict) -> str:
    """Per target: each arm's mean +- std over seeds, and the paired differences (mean [95% CI]); "-" where a
    metric was not measured (selection-only runs have no losses)."""
    def cell(x, digits=3):
        if x is None:
            return "-"
        if x["low"] is None:
            return f"{x['mean']:+.{digits}f} (n=1)"
        return f"{x['mean']:+.{digits}f} [{x['low']:+.{digits}f}, {x['high']:+.{digits}f}]"

    def spread(x):
        return "-" if x is None else f"{x['mean']:.3f} ± {x['std'] or 0:.3f}"

    lines = []
    for target, arms in results["summary"].items():
        lines += [f"\n### Target: {target}\n", "| arm | seeds | target-source loss | other-source loss | share of budget from "
                  f"{target} | coverage distance in {target}'s region |", "|---|---|---|---|---|---|"]
        for arm, m in arms.items():
            lines.append(f"| {arm} | {m['target_share']['n']} | " + " | ".join(spread(m.get(k)) for k in METRICS) + " |")
        lines += ["", "| paired difference (mean [95% CI]) | target-source loss | other-source loss | share | coverage distance |",
                  "|---|---|---|---|---|"]
        for name, m in results["paired"][target].items():
            lines.append(f"| {name} (n={m['target_share']['n']}) | " + " | ".join(cell(m.get(k)) for k in METRICS) + " |")
    return "\n".join(lines)


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _write(out_dir: str, results: dict, name: str = "fidelity_target_results.json") -> None:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--targets", default=",".join(TARGET_SOURCES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget", type=int, default=24)
    parser.add_argument("--selection-only", action="store_true", help="Select only (share and coverage), no training.")
    parser.add_argument("--resume", default=None, metavar="JSON", help="Keep the runs of this results file (same setting).")
    parser.add_argument("--deadline", default=None, help="HH:MM (UTC): start no run after it; the results so far are kept.")
    parser.add_argument("--out", default=None)
    parser.add_argument("--cache-dir", default=os.path.join(tempfile.gettempdir(), "hf_idsel_fidelity_target_cache"))
    parser.add_argument("--render-only", default=None, metavar="JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.render_only:
        with open(args.render_only) as f:
            print(markdown(json.load(f)))
        return 0
    targets = tuple(t for t in args.targets.split(",") if t)
    unknown = [t for t in targets if t not in TARGET_SOURCES]
    if unknown:
        parser.error(f"--targets {unknown}: choose from {list(TARGET_SOURCES)}")
    deadline = None
    if args.deadline:
        import datetime

        now = datetime.datetime.now(datetime.timezone.utc)
        hour, minute = (int(x) for x in args.deadline.split(":"))
        deadline = now.replace(hour=hour, minute=minute, second=0, microsecond=0).timestamp()
    results = run(args.seeds, targets, args.threads, args.out, args.cache_dir, budget=args.budget, deadline=deadline, resume=args.resume,
                  train=not args.selection_only)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
