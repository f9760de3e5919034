"""Embedding cost of each representation, side by side on the same rows of the built-in pool.

    .venv/bin/python bench/representations.py [--rows 240] [--device cpu] [--out docs/representations_results.json]

Times `embed_dataset` end to end (render, fit to the encoder's length, encode; no cache) for:
- MiniLM (`sentence-transformers/all-MiniLM-L6-v2`, packaged; 256 tokens a row at most),
- SmolLM2-135M-Instruct hidden states (packaged GGUF, RDS+ pooling; 512 tokens a row at most),
and the pool-level projections of the SmolLM2 vectors (PCA whitening, random projection to 256).
Both encoders run once on a few rows first, so model loading is reported apart from throughput.
Prints rows/s of each and the ratio MiniLM / SmolLM2, measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_idsel-bench-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from hf_idsel.embed import DEFAULT_ENCODER, embed_dataset, fit_pairs, load_encoder  # noqa: E402
from hf_idsel.hidden_states import HiddenStateEncoder  # noqa: E402
from hf_idsel.pool import load_builtin_pool  # noqa: E402
from hf_idsel.render import render_batch, resolve_render_options  # noqa: E402


def balanced_rows(rows: int, seed: int) -> datasets.Dataset:
    """`rows` rows of the built-in pool, a quarter from each source (math, code, chat, knowledge)."""
    share = rows // 4
    return load_builtin_pool({"gsm8k": share, "humaneval": share, "chitchat": share, "mmlu": rows - 3 * share}, seed=seed)


def timed_embed(pool, options, encoder, device, batch_size) -> tuple[np.ndarray, float, float]:
    """`(vectors, wall seconds, CPU seconds of this process)`; CPU time varies less on a shared machine."""
    datasets.disable_caching()  # measure the encoder, not the cache
    try:
        start, cpu = time.perf_counter(), time.process_time()
        vectors, _ = embed_dataset(pool, options, encoder=encoder, device=device, batch_size=batch_size)
        return vectors, time.perf_counter() - start, time.process_time() - cpu
    finally:
        datasets.enable_caching()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=240, help="rows of the built-in pool, equal per source")
    parser.add_argument("--seed", type=int, default=0)
    # Few rows in one length-sorted batch pad everything to the longest; small batches pad about as
    # little as batches of 64 do in the 1024-row chunks of a real pool.
    parser.add_argument("--batch-size", type=int, default=16, help="encoder batch size, the same for both")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--out", default=None, help="write every number as JSON here")
    args = parser.parse_args()

    pool = balanced_rows(args.rows, args.seed)
    options = resolve_render_options(pool.column_names)
    warm = pool.select(range(8))
    results = {"rows": len(pool), "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
               "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "cpus": os.cpu_count(), "batch_size": args.batch_size}

    start = time.perf_counter()
    minilm = load_encoder(DEFAULT_ENCODER, device=args.device)
    results["minilm_load_s"] = time.perf_counter() - start
    start = time.perf_counter()
    smollm2 = HiddenStateEncoder(device=args.device)
    smollm2.encode(["warm up"])
    results["smollm2_load_s"] = time.perf_counter() - start

    encoders = {"minilm": minilm, "smollm2_hidden": smollm2}
    for name, encoder in encoders.items():
        timed_embed(warm, options, encoder, args.device, args.batch_size)  # first-call costs (threads, kernels) out of the timing
    vectors = {}
    for name, encoder in encoders.items():
        vectors[name], seconds, cpu = timed_embed(pool, options, encoder, args.device, args.batch_size)
        results[f"{name}_s"], results[f"{name}_cpu_s"] = seconds, cpu
        results[f"{name}_rows_per_s"] = len(pool) / seconds
        results[f"{name}_rows_per_cpu_s"] = len(pool) / cpu
        results[f"{name}_dim"] = int(vectors[name].shape[1])
        tokenizer = encoder.tokenizer
        # Tokens the encoder actually reads (after the prompt/answer fit, as embed_dataset does).
        specials = len(tokenizer("", add_special_tokens=True)["input_ids"])
        prompts, answers = render_batch(pool[:], options, None)
        texts = fit_pairs(prompts, answers, tokenizer, encoder.max_seq_length - specials)
        results[f"{name}_mean_tokens"] = float(np.mean([len(x) for x in tokenizer(texts)["input_ids"]]))
    for projection, dim in (("whiten", None), ("random", 256)):
        encoder = HiddenStateEncoder(projection=projection, dim=dim, seed=args.seed)
        start = time.perf_counter()
        projected = encoder.project(vectors["smollm2_hidden"])
        results[f"smollm2_{projection}_fit_s"] = time.perf_counter() - start
        results[f"smollm2_{projection}_dim"] = int(projected.shape[1])
    results["ratio_minilm_over_smollm2"] = results["minilm_rows_per_s"] / results["smollm2_hidden_rows_per_s"]
    results["cpu_ratio_minilm_over_smollm2"] = results["minilm_rows_per_cpu_s"] / results["smollm2_hidden_rows_per_cpu_s"]

    print(f"{len(pool)} rows of the built-in pool on {results['device']} ({results['torch_threads']} torch threads)")
    print(f"{'representation':<28}{'rows/s':>9}{'rows/CPU s':>12}{'dim':>6}{'tokens/row':>12}{'load s':>8}")
    for name, label in (("minilm", "MiniLM-L6 (sentence enc.)"), ("smollm2_hidden", "SmolLM2-135M hidden (RDS+)")):
        load = results["minilm_load_s" if name == "minilm" else "smollm2_load_s"]
        print(f"{label:<28}{results[f'{name}_rows_per_s']:>9.2f}{results[f'{name}_rows_per_cpu_s']:>12.2f}{results[f'{name}_dim']:>6}"
              f"{results[f'{name}_mean_tokens']:>12.0f}{load:>8.1f}")
    print(f"MiniLM is {results['ratio_minilm_over_smollm2']:.1f}x faster per row in wall time, "
          f"{results['cpu_ratio_minilm_over_smollm2']:.1f}x per CPU second; whitening the pool's SmolLM2 vectors "
          f"took {results['smollm2_whiten_fit_s']:.3f} s, a random projection to 256 {results['smollm2_random_fit_s']:.3f} s")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
