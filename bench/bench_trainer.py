"""Trainer benchmark: the iterative loop's cost against a plain SFTTrainer, and generation scoring's
cost with per-cluster sampling against scoring every trained row (the paper's way).

    .venv/bin/python bench/bench_trainer.py [--model tiny|smollm2] [--rows 64] [--rounds 2] [--repeats 3]

Prints a markdown table:
1. wall time of IterativeSelectionTrainer (scorer="loss", embeddings precomputed so only the loop
   is measured: construction + train(), including its dataset preparation and round scoring) vs a
   plain trl.SFTTrainer (construction + train()) over the same number of optimizer steps on the
   first round's rows (target <= 1.05). With `--repeats N` both runs are repeated N times in
   alternating order from the same initial weights and the medians are compared, so neither side
   pays the process's one-time warm-ups alone;
2. perplexity scoring of one round with `scored_rows_per_cluster` rows per cluster vs every row,
   and the Spearman correlation of the two cluster rankings.

`measure_trainer(...)` returns the raw numbers as a dict; `bench/run.py` calls it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_idsel-bench-"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

import hf_idsel  # noqa: E402
from hf_idsel import scorers  # noqa: E402
from hf_idsel.rounds import cluster_scores, sample_rows_per_cluster  # noqa: E402
from hf_idsel.render import prompt_and_answer, resolve_render_options  # noqa: E402
from hf_idsel.pipeline import pool_embeddings  # noqa: E402
from hf_idsel.trainer import IterativeSelectionConfig, IterativeSelectionTrainer  # noqa: E402

DEFAULT_POOL = {"gsm8k": 150, "humaneval": 50, "chitchat": 150, "mmlu": 150}


def load_model(name: str):
    if name == "tiny":
        from helpers import make_tiny_llama

        return make_tiny_llama()
    from hf_idsel.quality import load_reference_model, unquantized

    model, tokenizer, _, _ = load_reference_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    return unquantized(model), tokenizer


def common_args(out: str, max_length: int) -> dict:
    return dict(
        output_dir=out, per_device_train_batch_size=4, learning_rate=1e-4, max_length=max_length, report_to="none",
        bf16=False, use_cpu=True, save_strategy="no", logging_steps=10, seed=0, disable_tqdm=True,
    )


def measure_trainer(
    model_name: str = "tiny",
    *,
    rows: int = 64,
    rounds: int = 2,
    k: int = 8,
    per_cluster: int = 2,
    max_length: int = 256,
    repeats: int = 1,
    pool_rows: dict | None = None,
    scoring: bool = True,
    encoder=None,
) -> dict:
    """Iterative loop vs plain SFTTrainer (same steps, same start weights), and optional scoring comparison.

    The pool's embeddings are computed once, before any timing, and passed as `embedding_column`.
    """
    datasets.disable_progress_bars()
    pool = hf_idsel.load_builtin_pool(pool_rows or DEFAULT_POOL)
    options = resolve_render_options(pool.column_names)
    embeddings, _ = pool_embeddings(pool, options, **({"encoder": encoder} if encoder is not None else {}))
    pool = pool.add_column("embedding", np.asarray(embeddings).tolist())  # StoredVectors: read as float32

    model, tokenizer = load_model(model_name)
    start_state = {name: v.clone() for name, v in model.state_dict().items()}

    def run_ours():
        model.load_state_dict(start_state)
        config = IterativeSelectionConfig(
            budget=rows, rounds=rounds, k=str(k), embedding_column="embedding", scorer="loss",
            **common_args(tempfile.mkdtemp(), max_length),
        )
        started = time.perf_counter()
        trainer = IterativeSelectionTrainer(model, args=config, train_dataset=pool, processing_class=tokenizer)
        trainer.train()
        return trainer, time.perf_counter() - started

    def run_plain(round_rows):
        model.load_state_dict(start_state)
        plain_config = SFTConfig(num_train_epochs=rounds, **common_args(tempfile.mkdtemp(), max_length))
        train_rows = pool.select(round_rows).remove_columns("embedding")
        started = time.perf_counter()
        plain = SFTTrainer(model, args=plain_config, train_dataset=train_rows, processing_class=tokenizer)
        plain.train()
        return plain, time.perf_counter() - started

    ours_times, plain_times = [], []
    trainer, t = run_ours()
    ours_times.append(t)
    round_rows = trainer.selection.rounds[0]["selected"]
    steps = trainer.state.global_step
    plain, t = run_plain(round_rows)
    plain_times.append(t)
    plain_steps = plain.state.global_step
    for i in range(1, repeats):
        # Alternate which side goes first.
        order = (run_plain, run_ours) if i % 2 else (run_ours, run_plain)
        for fn in order:
            if fn is run_ours:
                trainer, t = run_ours()
                ours_times.append(t)
            else:
                _, t = run_plain(round_rows)
                plain_times.append(t)

    result = {
        "model": model_name,
        "pool_rows": len(pool),
        "k": k,
        "budget": rows,
        "rounds": rounds,
        "steps": steps,
        "plain_steps": plain_steps,
        "repeats": repeats,
        "ours_s": statistics.median(ours_times),
        "plain_s": statistics.median(plain_times),
        "ours_runs_s": ours_times,
        "plain_runs_s": plain_times,
    }
    if not scoring:
        return result

    # Generation scoring of the last round: a per-cluster sample against every trained row.
    last = np.asarray(trainer.selection.rounds[-1]["selected"])
    chat = resolve_render_options(pool.column_names, tokenizer=tokenizer)
    scorer = scorers.PerplexityScorer(show_progress=False).bind(model, tokenizer)

    def score(subset):
        pairs = [prompt_and_answer(pool[int(r)], chat, tokenizer) for r in subset]
        prompts, golds = [p for p, _ in pairs], [g for _, g in pairs]
        generations = scorers.generate_answers(model, tokenizer, prompts, max_new_tokens=48, show_progress=False)
        return cluster_scores(trainer.labels, subset, scorer(prompts, golds, generations), trainer.k)

    sampled_rows = sample_rows_per_cluster(trainer.labels, last, per_cluster, seed=0)
    started = time.perf_counter()
    sampled = score(sampled_rows)
    t_sampled = time.perf_counter() - started
    started = time.perf_counter()
    full = score(last)
    t_full = time.perf_counter() - started
    both = np.isfinite(sampled) & np.isfinite(full)
    rho = spearmanr(sampled[both], full[both]).statistic if both.sum() > 2 else float("nan")
    result.update(
        scored_sampled_rows=len(sampled_rows),
        scored_all_rows=len(last),
        scoring_sampled_s=t_sampled,
        scoring_all_s=t_full,
        spearman=float(rho),
        spearman_clusters=int(both.sum()),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=["tiny", "smollm2"])
    parser.add_argument("--rows", type=int, default=64, help="selection budget (rows over all rounds)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--per-cluster", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1, help="alternating repeats of both runs; medians are compared")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 suits the tiny model)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    m = measure_trainer(
        args.model, rows=args.rows, rounds=args.rounds, k=args.k, per_cluster=args.per_cluster,
        max_length=args.max_length, repeats=args.repeats,
    )
    print(f"model={m['model']}, {m['pool_rows']} real rows, k={m['k']}, budget={m['budget']}, rounds={m['rounds']}, {m['steps']} steps")
    print("| measurement | values | ratio | target |")
    print("|---|---|---|---|")
    print(f"| iterative trainer (loss scorer) vs plain SFTTrainer, {m['steps']} steps | {m['ours_s']:.1f} s vs {m['plain_s']:.1f} s | {m['ours_s'] / m['plain_s']:.3f} | <= 1.05 |")
    print(f"| perplexity scoring: {m['scored_sampled_rows']} sampled rows vs all {m['scored_all_rows']} | {m['scoring_sampled_s']:.1f} s vs {m['scoring_all_s']:.1f} s | {m['scoring_sampled_s'] / m['scoring_all_s']:.3f} | < 1 |")
    print(f"| Spearman of cluster rankings, sampled vs all ({m['spearman_clusters']} clusters) | | {m['spearman']:.3f} | close to 1 |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
