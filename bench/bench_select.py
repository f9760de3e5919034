"""Foundation benchmark: where diverse_select spends its time, against baselines measured in the same run.

    .venv/bin/python bench/bench_select.py [--rows 1000] [--kmeans-rows 50000] [--sample-rows 1000000]

Prints a markdown table of ratios:
1. end-to-end `diverse_select` (render + embed + k-means + sample) vs the raw sentence-transformers
   `encode` of the same texts (target: our overhead <= 10%);
2. a cached re-run vs the first run;
3. faiss k-means with our defaults (k-means++ seeding, 20 iterations) vs the research code's setting
   (random seeding, niter=300, nredo=5) on the same embeddings: time and objective ratios
   (target: >= 20x faster at <= 1% worse objective);
4. kMQ sampling time and peak memory at 1M rows after clustering (synthetic labels and quality).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import tracemalloc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_idsel-bench-"))

import datasets  # noqa: E402
import numpy as np  # noqa: E402

import hf_idsel  # noqa: E402
from hf_idsel.cluster import kmeans  # noqa: E402
from hf_idsel.embed import DEFAULT_ENCODER, load_encoder  # noqa: E402
from hf_idsel.render import render_batch, resolve_render_options  # noqa: E402
from hf_idsel.sample import kmq_sample  # noqa: E402


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench_end_to_end(rows: int, seed: int) -> list[tuple]:
    pool = hf_idsel.load_builtin_pool({"gsm8k": rows // 4, "humaneval": min(164, rows // 8), "chitchat": rows // 4, "mmlu": rows // 4})
    options = resolve_render_options(pool.column_names)
    prompts, answers = render_batch(pool[:], options)
    texts = [f"{p}\n{a}" for p, a in zip(prompts, answers)]
    model = load_encoder(DEFAULT_ENCODER)
    model.encode(texts[:64], batch_size=64)  # warm-up, excluded from both timings
    _, raw = timed(lambda: model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))
    cache = tempfile.mkdtemp(prefix="hf_idsel-bench-cache-")
    budget = len(pool) // 10
    _, ours = timed(lambda: hf_idsel.diverse_select(pool, budget, k=16, seed=seed, cache_dir=cache, encoder=model))
    _, cached = timed(lambda: hf_idsel.diverse_select(pool, budget, k=16, seed=seed, cache_dir=cache, encoder=model))
    return [
        (f"diverse_select end to end vs raw encode ({len(pool)} real rows)", f"{ours:.1f} s vs {raw:.1f} s", ours / raw, "<= 1.10"),
        ("cached re-run vs first run", f"{cached:.2f} s vs {ours:.1f} s", cached / ours, "much < 1"),
    ]


def synthetic_embeddings(n: int, d: int, centers: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, d)).astype(np.float32)
    x = c[rng.integers(centers, size=n)] + 0.6 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_kmeans(n: int, k: int, seed: int) -> list[tuple]:
    x = synthetic_embeddings(n, 384, 4 * k, seed)
    kmeans(x[:2000], 8, seed=seed)  # warm-up: first-call imports (faiss, sklearn) are not k-means time
    ours, t_ours = timed(lambda: kmeans(x, k, seed=seed))
    research, t_research = timed(lambda: kmeans(x, k, seed=seed, niter=300, nredo=5, init="random"))
    return [
        (f"k-means time, ours vs research setting ({n} x 384, k={k})", f"{t_ours:.1f} s vs {t_research:.1f} s", t_research / t_ours, ">= 20x faster"),
        ("k-means objective, ours / research (lower is better)", f"{ours.objective:.1f} vs {research.objective:.1f}", ours.objective / research.objective, "<= 1.01"),
    ]


def bench_sampling(n: int, k: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(k, size=n)
    quality = rng.normal(size=n)
    labels_bytes = labels.nbytes + quality.nbytes
    tracemalloc.start()
    picked, seconds = timed(lambda: kmq_sample(labels, n // 10, k=k, seed=seed, quality=quality))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(picked) == n // 10
    return [
        (f"kMQ sampling at {n:,} rows, k={k}, budget {n // 10:,}", f"{seconds:.2f} s", seconds, "seconds"),
        ("  its peak extra memory / (labels + quality)", f"{peak / 2**20:.0f} MiB", peak / labels_bytes, "x inputs"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000, help="real rows for the end-to-end comparison")
    parser.add_argument("--kmeans-rows", type=int, default=50_000)
    parser.add_argument("--kmeans-k", type=int, default=256)
    parser.add_argument("--sample-rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    datasets.disable_progress_bars()

    rows = []
    rows += bench_end_to_end(args.rows, args.seed)
    rows += bench_kmeans(args.kmeans_rows, args.kmeans_k, args.seed)
    rows += bench_sampling(args.sample_rows, 1024, args.seed)
    print("| measurement | values | ratio | target |")
    print("|---|---|---|---|")
    for name, values, ratio, target in rows:
        print(f"| {name} | {values} | {ratio:.3g} | {target} |")


if __name__ == "__main__":
    main()
