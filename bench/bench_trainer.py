"""Trainer benchmark: the iterative loop's cost against a plain SFTTrainer, and generation scoring's
cost with per-cluster sampling against scoring every trained row (the paper's way).

    .venv/bin/python bench/bench_trainer.py [--model tiny|smollm2] [--rows 64] [--rounds 2]

Prints a markdown table:
1. wall time of IterativeSelectionTrainer (scorer="loss", embeddings precomputed so only the loop
   is measured) vs a plain trl.SFTTrainer over the same number of optimizer steps (target <= 1.05);
2. perplexity scoring of one round with `scored_rows_per_cluster` rows per cluster vs every row,
   and the Spearman correlation of the two cluster rankings.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_idsel-bench-"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from trl import SFTConfig, SFTTrainer  # noqa: E402

import hf_idsel  # noqa: E402
from hf_idsel import scorers  # noqa: E402
from hf_idsel.render import prompt_and_answer, resolve_render_options  # noqa: E402
from hf_idsel.select import embed_and_cluster  # noqa: E402
from hf_idsel.trainer import IterativeSelectionConfig, IterativeSelectionTrainer  # noqa: E402


def load_model(name: str):
    if name == "tiny":
        from _tiny import make_tiny_llama

        return make_tiny_llama()
    from hf_idsel.quality import load_reference_model, unquantized

    model, tokenizer, _, _ = load_reference_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    return unquantized(model), tokenizer


def common_args(out: str, max_length: int) -> dict:
    return dict(
        output_dir=out, per_device_train_batch_size=4, learning_rate=1e-4, max_length=max_length, report_to="none",
        bf16=False, use_cpu=True, save_strategy="no", logging_steps=10, seed=0, disable_tqdm=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=["tiny", "smollm2"])
    parser.add_argument("--rows", type=int, default=64, help="selection budget (rows over all rounds)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--per-cluster", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 suits the tiny model)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()

    pool = hf_idsel.load_builtin_pool({"gsm8k": 150, "humaneval": 50, "chitchat": 150, "mmlu": 150})
    options = resolve_render_options(pool.column_names)
    embeddings, clustering, _, _ = embed_and_cluster(pool, options, k=args.k)
    pool = pool.add_column("embedding", embeddings.tolist())

    model, tokenizer = load_model(args.model)
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    config = IterativeSelectionConfig(
        budget=args.rows, rounds=args.rounds, k=str(args.k), embedding_column="embedding", scorer="loss",
        **common_args(tempfile.mkdtemp(), args.max_length),
    )
    started = time.perf_counter()
    trainer = IterativeSelectionTrainer(model, args=config, train_dataset=pool, processing_class=tokenizer)
    trainer.train()
    ours = time.perf_counter() - started
    steps = trainer.state.global_step

    model.load_state_dict(start_state)
    round_rows = trainer.selection.rounds[0]["selected"]
    plain_config = SFTConfig(num_train_epochs=args.rounds, **common_args(tempfile.mkdtemp(), args.max_length))
    started = time.perf_counter()
    plain = SFTTrainer(model, args=plain_config, train_dataset=pool.select(round_rows).remove_columns("embedding"), processing_class=tokenizer)
    plain.train()
    baseline = time.perf_counter() - started

    # Generation scoring of the last round: a per-cluster sample against every trained row.
    rows = np.asarray(trainer.selection.rounds[-1]["selected"])
    chat = resolve_render_options(pool.column_names, tokenizer=tokenizer)
    scorer = scorers.PerplexityScorer(show_progress=False).bind(model, tokenizer)

    def score(subset):
        pairs = [prompt_and_answer(pool[int(r)], chat, tokenizer) for r in subset]
        prompts, golds = [p for p, _ in pairs], [g for _, g in pairs]
        generations = scorers.generate_answers(model, tokenizer, prompts, max_new_tokens=48, show_progress=False)
        return scorers.cluster_scores(trainer.labels, subset, scorer(prompts, golds, generations), trainer.k)

    sampled_rows = scorers.sample_rows_per_cluster(trainer.labels, rows, args.per_cluster, seed=0)
    started = time.perf_counter()
    sampled = score(sampled_rows)
    t_sampled = time.perf_counter() - started
    started = time.perf_counter()
    full = score(rows)
    t_full = time.perf_counter() - started
    both = np.isfinite(sampled) & np.isfinite(full)
    rho = spearmanr(sampled[both], full[both]).statistic if both.sum() > 2 else float("nan")

    print(f"model={args.model}, {len(pool)} real rows, k={args.k}, budget={args.rows}, rounds={args.rounds}, {steps} steps")
    print("| measurement | values | ratio | target |")
    print("|---|---|---|---|")
    print(f"| iterative trainer (loss scorer) vs plain SFTTrainer, {steps} steps | {ours:.1f} s vs {baseline:.1f} s | {ours / baseline:.3f} | <= 1.05 |")
    print(f"| perplexity scoring: {len(sampled_rows)} sampled rows vs all {len(rows)} | {t_sampled:.1f} s vs {t_full:.1f} s | {t_sampled / t_full:.3f} | < 1 |")
    print(f"| Spearman of cluster rankings, sampled vs all ({int(both.sum())} clusters) | | {rho:.3f} | close to 1 |")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
