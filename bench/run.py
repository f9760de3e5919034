"""One entry point for the performance benchmarks: foundation, trainer, scale curve (and GPU path).

    .venv/bin/python bench/run.py [--quick] [--out docs/] [--trainer-model tiny [smollm2]]

Runs, in this order, in one process (the scale curve spawns one subprocess per pool size):
1. the foundation benchmark (`bench/bench_select.py`): `diverse_select` end to end vs the raw encoder
   on the same real rows, a cached re-run, our k-means setting vs the research code's setting;
2. the trainer benchmark (`bench/bench_trainer.py`): IterativeSelectionTrainer vs a plain
   SFTTrainer over the same steps, and per-cluster vs full generation scoring;
3. the scale curve (`bench/scale.py`): time and peak memory at 10k, 100k, 1M rows, plus the
   real encoder's throughput;
4. k="auto" (`bench/k_auto.py`): `choose_k` at 200k rows against one k-means at the k it chose;
5. the GPU path (faiss-gpu k-means, bf16 encoder) when torch sees a CUDA device and faiss has GPU
   support; otherwise the outputs say "no GPU in this run".

Writes `<out>/performance.md` (ratio table, scale table and plot, machine description),
`<out>/performance_results.json` (every number) and `<out>/performance_scale.png`.
`--quick` shrinks every size for a smoke test (about a minute); its numbers are not meaningful.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_idsel-bench-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

NO_GPU = "no GPU in this run"

# Every size, for the default run and for --quick.
FULL = {
    "select": {"rows": 800, "repeats": 2, "k": 16},
    "kmeans": {"n": 50_000, "k": 256},
    "encoders": {"rows": 2000, "k": 32, "repeats": 1},
    "trainer": {
        "tiny": {"rows": 64, "rounds": 2, "k": 8, "repeats": 3, "pool_rows": None, "scoring": True},
        # Full fine-tuning of SmolLM2-135M on this CPU takes ~12 s a step: 4 steps a side, no scoring comparison.
        "smollm2": {"rows": 16, "rounds": 2, "k": 4, "repeats": 2, "pool_rows": None, "scoring": False},
    },
    "scale": {"sizes": [10_000, 100_000, 1_000_000], "k": 1024, "encoder_rows": 2000, "stored_sizes": [1_000_000, 10_000_000]},
    "gpu": {"sizes": [100_000, 1_000_000], "k": 1024, "encoder_rows": 2000},
    # k="auto" at 200k rows (bench/k_auto.py runs the whole synthetic validation, 50k to 200k rows).
    "k_auto": {"pools": [(200_000, 2048)], "dim": 64, "spread": 0.6},
}
QUICK = {
    "select": {"rows": 60, "repeats": 1, "k": 4},
    "kmeans": {"n": 3000, "k": 16},
    "encoders": {"rows": 60, "k": 4, "repeats": 1},
    "trainer": {
        "tiny": {"rows": 16, "rounds": 2, "k": 4, "repeats": 1, "scoring": True,
                 "pool_rows": {"gsm8k": 16, "humaneval": 8, "chitchat": 16, "mmlu": 16}},
        "smollm2": {"rows": 8, "rounds": 2, "k": 4, "repeats": 1, "scoring": False,
                    "pool_rows": {"gsm8k": 16, "humaneval": 8, "chitchat": 16, "mmlu": 16}},
    },
    "scale": {"sizes": [1000, 4000], "k": 16, "encoder_rows": 32, "stored_sizes": [4000]},
    "gpu": {"sizes": [4000], "k": 16, "encoder_rows": 32},
    "k_auto": {"pools": [(6_000, 48)], "dim": 64, "spread": 0.6},
}

# name -> (what "ours" is, what the baseline is, target, test of the target)
RATIO_SPECS = {
    "select_vs_raw_encode": ("diverse_select end to end (render, embed, k-means, kMQ, manifest), fresh cache",
                             "raw SentenceTransformer.encode of the same texts", "<= 1.10", lambda r: r <= 1.10),
    "cached_rerun": ("diverse_select re-run, embeddings cached", "the same call with a fresh cache", "much < 1", lambda r: r < 0.2),
    "kmeans_speedup": ("our k-means (k-means++ seeding, niter=20, nredo=1)",
                       "research setting (random seeding, niter=300, nredo=5, every iteration run as in the research code), same data",
                       ">= 20x", lambda r: r >= 20),
    "kmeans_speedup_faiss_early_stop": ("our k-means", "research setting as faiss 1.15 runs it (early stopping on by default)",
                                        "> 1", lambda r: r > 1),
    "kmeans_objective": ("our k-means objective (sum of squared distances)", "research setting's objective", "<= 1.01", lambda r: r <= 1.01),
    "trainer_overhead": ("IterativeSelectionTrainer (loss scorer) construction + train()",
                         "plain SFTTrainer construction + train(), same steps and rows", "<= 1.05", lambda r: r <= 1.05),
    "scoring_cost": ("perplexity scoring of a per-cluster sample", "scoring every trained row of the round", "< 1", lambda r: r < 1),
    "k_auto_time": ("k='auto' (choose_k on the default grid: the whole pool clustered per candidate, sampled silhouette)",
                    "one kmeans at the chosen k, same rows", "<= 15", lambda r: r <= 15),
    "static_encoder_speedup": ('static encoder (`encoder="static"`), embed_dataset rows/s',
                               "the packaged all-MiniLM-L6-v2, same rows (rows/s)", ">= 5x", lambda r: r >= 5),
    "static_partition_agreement": ("adjusted Rand index of k-means partitions, static vs MiniLM (seed 0)",
                                   "the same between MiniLM partitions with other k-means seeds (noise floor)", "close to 1",
                                   lambda r: r >= 0.8),
    "length_sort": ("MiniLM encode, chunks of the whole pool's length order", "chunks in pool order, each sorted inside",
                    "< 1", lambda r: r < 1),
    "gpu_kmeans_speedup": ("k-means on the GPU (faiss-gpu)", "k-means on the CPU, same rows and k", "> 1", lambda r: r > 1),
    "gpu_encoder_speedup": ("bf16 encoder on the GPU (embed_dataset rows/s)", "fp32 encoder on the CPU (rows/s)", "> 1", lambda r: r > 1),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def gpu_status() -> dict:
    """Whether this run can take the GPU path, and why not."""
    import torch

    from hf_idsel.cluster import use_gpu

    cuda = torch.cuda.is_available()
    faiss_gpu = use_gpu()
    status = {"torch_cuda": cuda, "faiss_gpus": faiss_gpu, "available": cuda and faiss_gpu}
    if cuda:
        status["device_name"] = torch.cuda.get_device_name(0)
    if not status["available"]:
        reasons = []
        if not cuda:
            reasons.append("torch.cuda.is_available() is False")
        if not faiss_gpu:
            reasons.append("faiss sees no GPU (faiss-cpu installed, or no device)")
        status["note"] = f"{NO_GPU}: " + "; ".join(reasons)
    return status


def machine_info() -> dict:
    import faiss
    import psutil
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "faiss_package": "faiss-gpu" if _version("faiss-gpu") else ("faiss-cpu" if _version("faiss-cpu") else "unknown"),
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "numpy": _version("numpy"),
        "datasets": _version("datasets"),
        "transformers": _version("transformers"),
        "trl": _version("trl"),
        "sentence_transformers": _version("sentence-transformers"),
        "niceness": os.nice(0),
        "loadavg_start": list(os.getloadavg()),
    }
    return info


def ratio_row(name: str, ours: float, baseline: float, ours_text: str, baseline_text: str, ratio: float | None = None) -> dict:
    what, against, target, meets = RATIO_SPECS[name]
    ratio = ours / baseline if ratio is None else ratio
    return {
        "name": name, "label": name, "ours": what, "baseline": against, "ours_value": ours_text, "baseline_value": baseline_text,
        "ratio": ratio, "target": target, "meets_target": bool(meets(ratio)) if math.isfinite(ratio) else False,
    }


def run_select(cfg: dict, seed: int, encoder) -> tuple[dict, list]:
    import bench_select

    e2e = bench_select.measure_end_to_end(cfg["select"]["rows"], seed, k=cfg["select"]["k"], encoder=encoder,
                                          repeats=cfg["select"]["repeats"])
    log(f"select: end to end {e2e['diverse_select_s']:.1f} s vs raw encode {e2e['raw_encode_s']:.1f} s")
    km = bench_select.measure_kmeans(cfg["kmeans"]["n"], cfg["kmeans"]["k"], seed)
    log(f"select: k-means {km['ours_s']:.1f} s vs research setting {km['research_s']:.1f} s")
    rows = [
        ratio_row("select_vs_raw_encode", e2e["diverse_select_s"], e2e["raw_encode_s"],
                  f"{e2e['diverse_select_s']:.2f} s", f"{e2e['raw_encode_s']:.2f} s ({e2e['rows']} real rows)"),
        ratio_row("cached_rerun", e2e["cached_rerun_s"], e2e["diverse_select_s"], f"{e2e['cached_rerun_s']:.2f} s", f"{e2e['diverse_select_s']:.2f} s"),
        ratio_row("kmeans_speedup", km["ours_s"], km["research_s"], f"{km['ours_s']:.2f} s",
                  f"{km['research_s']:.2f} s ({km['rows']:,} x 384, k={km['k']})", ratio=km["research_s"] / km["ours_s"]),
        ratio_row("kmeans_speedup_faiss_early_stop", km["ours_s"], km["research_early_stop_s"], f"{km['ours_s']:.2f} s",
                  f"{km['research_early_stop_s']:.2f} s", ratio=km["research_early_stop_s"] / km["ours_s"]),
        ratio_row("kmeans_objective", km["ours_objective"], km["research_objective"], f"{km['ours_objective']:.1f}", f"{km['research_objective']:.1f}"),
    ]
    return {"end_to_end": e2e, "kmeans": km}, rows


def run_encoders(cfg: dict, seed: int, encoder) -> tuple[dict, list]:
    import bench_select

    c = cfg["encoders"]
    m = bench_select.measure_encoders(c["rows"], seed, k=c["k"], encoder=encoder, repeats=c["repeats"])
    log(f"encoders: static {m['static_rows_per_s']:.0f} rows/s vs MiniLM {m['minilm_rows_per_s']:.1f}; "
        f"ARI {m['ari_static_vs_minilm']:.3f} (floor {m['ari_minilm_seeds']:.3f})")
    rows = [
        ratio_row("static_encoder_speedup", m["static_s"], m["minilm_s"], f"{m['static_rows_per_s']:.0f} rows/s",
                  f"{m['minilm_rows_per_s']:.1f} rows/s ({m['rows']} real rows)", ratio=m["minilm_s"] / m["static_s"]),
        ratio_row("static_partition_agreement", m["ari_static_vs_minilm"], m["ari_minilm_seeds"],
                  f"ARI {m['ari_static_vs_minilm']:.3f}, NMI {m['nmi_static_vs_minilm']:.3f}",
                  f"ARI {m['ari_minilm_seeds']:.3f}, NMI {m['nmi_minilm_seeds']:.3f} (k={m['k']})"),
        ratio_row("length_sort", m["whole_sorted_s"], m["chunk_sorted_s"], f"{m['whole_sorted_s']:.2f} s",
                  f"{m['chunk_sorted_s']:.2f} s ({m['rows']} rows, {m['chunk']}-row chunks)"),
    ]
    return m, rows


def run_trainer(cfg: dict, models: list[str], encoder) -> tuple[dict, list]:
    import bench_trainer
    import torch

    results, rows = {}, []
    for model in models:
        threads = torch.get_num_threads()
        if model == "tiny":
            # A 2-layer model's ops are tiny: with 2 OpenMP threads on a shared 2-core machine, spin-waiting
            # dominated and single runs varied 10x. One thread gives stable timings for both sides.
            torch.set_num_threads(1)
        try:
            t = cfg["trainer"][model]
            m = bench_trainer.measure_trainer(model, rows=t["rows"], rounds=t["rounds"], k=t["k"], repeats=t["repeats"],
                                              pool_rows=t["pool_rows"], scoring=t["scoring"], encoder=encoder)
            m["torch_threads"] = torch.get_num_threads()
        finally:
            torch.set_num_threads(threads)
        log(f"trainer[{model}]: {m['ours_s']:.2f} s vs plain {m['plain_s']:.2f} s over {m['steps']} steps")
        results[model] = m
        row = ratio_row("trainer_overhead", m["ours_s"], m["plain_s"], f"{m['ours_s']:.2f} s",
                        f"{m['plain_s']:.2f} s ({model} model, {m['steps']} steps, median of {m['repeats']})")
        row["model"], row["label"] = model, f"{row['name']} ({model})"
        rows.append(row)
        if "scoring_all_s" in m:
            row = ratio_row("scoring_cost", m["scoring_sampled_s"], m["scoring_all_s"],
                            f"{m['scoring_sampled_s']:.2f} s ({m['scored_sampled_rows']} rows)",
                            f"{m['scoring_all_s']:.2f} s ({m['scored_all_rows']} rows, {model} model)")
            row["model"], row["label"] = model, f"{row['name']} ({model})"
            rows.append(row)
    return results, rows


def run_k_auto(cfg: dict, seed: int) -> tuple[list, list]:
    import k_auto

    c = cfg["k_auto"]
    results, rows = [], []
    for n, true_k in c["pools"]:
        r = k_auto.measure(n, true_k, c["dim"], c["spread"], seed)
        log(f"k-auto: {n:,} rows, true k={true_k}: chose {r['chosen_k']} in {r['k_auto_s']:.1f} s, "
            f"one k-means at it {r['kmeans_at_chosen_k_s']:.1f} s")
        results.append(r)
        row = ratio_row("k_auto_time", r["k_auto_s"], r["kmeans_at_chosen_k_s"], f"{r['k_auto_s']:.1f} s (chose k={r['chosen_k']})",
                        f"{r['kmeans_at_chosen_k_s']:.1f} s ({n:,} x {c['dim']}, {true_k} planted clusters)")
        row["label"] = f"k_auto_time ({n:,} rows)"
        rows.append(row)
    return results, rows


def run_scale(cfg: dict, seed: int, encoder, out: str) -> dict:
    import scale

    s = cfg["scale"]
    result = scale.scale_curve(s["sizes"], s["k"], encoder_rows=s["encoder_rows"], seed=seed, encoder=encoder,
                               log=lambda m: log(m), stored_sizes=s.get("stored_sizes", ()))
    log(f"scale: encoder {result['encoder']['rows_per_s']:.1f} rows/s on {result['encoder']['rows']} real rows")
    return result


def run_gpu(cfg: dict, seed: int, status: dict, scale_result: dict) -> tuple[dict, list]:
    """faiss-gpu k-means and a bf16 encoder, only where both exist. Never fakes a number."""
    if not status["available"]:
        log(status["note"])
        return {"available": False, "note": status["note"], "status": status}, []
    import scale

    g = cfg["gpu"]
    points = []
    for n in g["sizes"]:
        points.append(scale.measure_size(n, min(g["k"], n), seed=seed, phases=("stages",), gpu=True))
        log(f"gpu: k-means at n={n:,}: {points[-1]['stages']['kmeans_s']:.2f} s")
    enc_bf16 = scale.measure_encoder(g["encoder_rows"], device="cuda", dtype="bfloat16")
    enc_fp32 = scale.measure_encoder(g["encoder_rows"], device="cuda", dtype="float32")
    result = {"available": True, "status": status, "points": points, "encoder_bf16": enc_bf16, "encoder_fp32_cuda": enc_fp32}
    rows = []
    cpu_by_n = {p["rows"]: p for p in scale_result["points"] if "stages" in p and p["k"] == min(g["k"], p["rows"])}
    for p in points:
        cpu = cpu_by_n.get(p["rows"])
        if cpu is not None:
            rows.append(ratio_row("gpu_kmeans_speedup", p["stages"]["kmeans_s"], cpu["stages"]["kmeans_s"],
                                  f"{p['stages']['kmeans_s']:.2f} s", f"{cpu['stages']['kmeans_s']:.2f} s ({p['rows']:,} rows, k={p['k']})",
                                  ratio=cpu["stages"]["kmeans_s"] / p["stages"]["kmeans_s"]))
    cpu_rate = scale_result["encoder"]["rows_per_s"]
    rows.append(ratio_row("gpu_encoder_speedup", enc_bf16["rows_per_s"], cpu_rate, f"{enc_bf16['rows_per_s']:.0f} rows/s",
                          f"{cpu_rate:.0f} rows/s", ratio=enc_bf16["rows_per_s"] / cpu_rate))
    return result, rows


def _fmt_ratio(r: float) -> str:
    return f"{r:.3g}" if math.isfinite(r) else "n/a"


def render_markdown(results: dict, png_name: str) -> str:
    m, cfg = results["machine"], results["config"]
    lines = [
        "# Performance",
        "",
        f"Measured {results['date']} by `{results['command']}` in {results['wall_seconds'] / 60:.1f} min"
        + (" (**--quick: smoke-test sizes, the numbers mean nothing**)" if results["quick"] else "") + ".",
        "Every baseline was measured in the same run, on the same machine, on the same data.",
        "",
        "## Machine",
        "",
        f"- {m['cpu_count']} CPUs ({m['cpus_usable']} usable), {m['memory_gib']} GiB RAM, {m['processor']}, {m['platform']}",
        f"- Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), faiss {m['faiss']} ({m['faiss_package']}, "
        f"{m['faiss_omp_threads']} OpenMP threads), numpy {m['numpy']}, datasets {m['datasets']}, transformers {m['transformers']}, "
        f"trl {m['trl']}, sentence-transformers {m['sentence_transformers']}",
        f"- GPU: {results['gpu']['status'].get('device_name', 'none')}"
        + ("" if results["gpu"]["available"] else f" ({results['gpu']['note']})"),
        f"- Run at niceness {m['niceness']}; 1/5/15-min load average {_loads(m['loadavg_start'])} at the start and "
        f"{_loads(m['loadavg_end'])} at the end. On a machine shared with other jobs (a load above 0 before this run "
        "starts) single timings vary, by 2x and more for sub-second ones; repeated measurements alternate the two sides.",
        "",
        "## Ratios against baselines",
        "",
        "| measurement | ours | baseline | ratio | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["ratios"]:
        lines.append(
            f"| {row['label']} | {row['ours']}: {row['ours_value']} | {row['baseline']}: {row['baseline_value']} | "
            f"{_fmt_ratio(row['ratio'])} | {row['target']} | {'yes' if row['meets_target'] else 'no'} |"
        )
    lines += ["", "Ratios are ours / baseline, except the `*speedup*` rows (baseline time / ours).", ""]
    lines += _details(results)
    lines += _scale_section(results, png_name)
    lines += _k_auto_section(results)
    lines += _gpu_section(results)
    return "\n".join(lines) + "\n"


def _loads(values) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


def _details(results: dict) -> list[str]:
    sel, km = results["select"]["end_to_end"], results["select"]["kmeans"]
    lines = [
        "## What each ratio measures",
        "",
        f"- `select_vs_raw_encode`: {sel['rows']} real rows of `load_builtin_pool()` (GSM8K, HumanEval, chitchat, MMLU), "
        f"`diverse_select(pool, {sel['budget']}, k={sel['k']}, encoder=<loaded model>)` with an empty cache, against "
        "`model.encode(texts, batch_size=64, normalize_embeddings=True)` of the same rendered texts; the encoder is loaded "
        f"and warmed up outside both timings. Fastest of {sel['repeats']} alternated run(s) each: ours "
        f"{_seconds(sel['diverse_select_runs_s'])}, raw {_seconds(sel['raw_encode_runs_s'])}.",
        "- `cached_rerun`: the same call again with the cache of the first: the encoder is not run.",
        f"- `kmeans_speedup`/`kmeans_objective`: `hf_idsel.cluster.kmeans` on {km['rows']:,} synthetic unit vectors (384 dims, "
        f"mixture of {4 * km['k']} Gaussians), k={km['k']}: ours ({km['ours_setting']}) vs {km['research_setting']}. "
        "faiss 1.15 stops Lloyd iterations once the objective stops improving (`ClusteringParameters.early_stop_threshold` "
        "defaults to 0), which the research code's faiss did not: the baseline of `kmeans_speedup` turns that off "
        f"to run what the research code ran, `kmeans_speedup_faiss_early_stop` keeps it on. Lloyd iterations actually run: "
        f"ours {km['ours_iterations']}, research setting {km['research_iterations']} (all), with early stopping "
        f"at least {km['research_early_stop_iterations_recorded']} over its 5 restarts (faiss keeps statistics only up to its best "
        f"restart). Objectives: ours {km['ours_objective']:.1f}, research "
        f"{km['research_objective']:.1f}, research with early stopping {km['research_early_stop_objective']:.1f}.",
    ]
    enc = results.get("encoders")
    if enc:
        lines.append(
            f"- `static_encoder_speedup` / `static_partition_agreement`: {enc['rows']} real rows of `load_builtin_pool()` "
            f"(mean {enc['mean_chars']:.0f} characters a row), `embed_dataset` with an empty cache, each encoder loaded and "
            f"warmed up outside the timing. The static encoder ({enc['static_identity']}, {enc['static_dim']} dims) built its "
            f"weights once in {enc['static_build_s']:.0f} s (not in the ratio; later runs load them in {enc['static_load_s']:.2f} s). "
            f"Agreement: `kmeans(x, k={enc['k']})`; the floor is the mean over MiniLM seeds 1-3 against seed 0."
        )
        lines.append(
            f"- `length_sort`: MiniLM `encode` (batch 64) of the same fitted texts in {enc['chunk']}-row chunks; fastest of "
            f"alternated runs: whole-pool order {_seconds(enc['whole_sorted_runs_s'])}, per-chunk {_seconds(enc['chunk_sorted_runs_s'])}. "
            f"Same rows in the same order: {enc['length_sort_same_rows']}; bitwise equal: {enc['length_sort_bitwise_equal']} "
            f"(largest difference {enc['length_sort_max_abs_diff']:.1e})."
        )
    for model, t in results["trainer"].items():
        lines.append(
            f"- `trainer_overhead` ({model}): budget {t['budget']} rows in {t['rounds']} rounds, k={t['k']}, {t['steps']} optimizer "
            f"steps (plain SFTTrainer: {t['plain_steps']} steps over round 1's rows), pool of {t['pool_rows']} real rows with "
            f"precomputed embeddings, torch threads {t['torch_threads']}. Both sides include trainer construction (dataset "
            f"preparation) and `train()`; median of {t['repeats']} alternated runs: ours {_seconds(t['ours_runs_s'])}, plain "
            f"{_seconds(t['plain_runs_s'])}. The difference, {t['ours_s'] - t['plain_s']:.2f} s, is a fixed cost (preparing the "
            "whole pool, round selection and scoring, the selection plot), not a per-step one: it shrinks relative to training "
            "as models and step counts grow."
        )
        if "spearman" in t:
            lines.append(
                f"- `scoring_cost` ({model}): perplexity scoring (48 generated tokens per row) of {t['scored_sampled_rows']} rows "
                f"sampled per cluster vs all {t['scored_all_rows']} rows of the last round; Spearman correlation of the two "
                f"cluster rankings: {t['spearman']:.3f} over {t['spearman_clusters']} clusters."
            )
    return lines + [""]


def _seconds(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values) + " s"


def _scale_section(results: dict, png_name: str) -> list[str]:
    import scale

    s = results["scale"]
    enc = s["encoder"]
    return [
        "## Scale curve",
        "",
        f"![time and peak memory against pool size]({png_name})",
        "",
        scale.table(s),
        "",
        f"Synthetic unit-norm embeddings (mixture of {s['centers']} Gaussians, {s['dim']} dims), k={s['k']}, budget 10% of the pool, "
        "each pool size in its own subprocess. What the columns include:",
        "",
        "- **k-means s / kMQ s**: `hf_idsel.cluster.kmeans(x, k)` (k-means++ seeding on max(4k, 2048) rows, faiss training on "
        "at most 256 k rows, assignment of every row in chunks) then `hf_idsel.sample.kmq_sample` with a quality column, on the "
        "in-memory float32 matrix.",
        "- **diverse_select s**: `diverse_select(pool, n // 10, k=k, embedding_column=\"embedding\", quality_column=\"quality\")` "
        "on a `datasets.Dataset` holding the same vectors as an Arrow fixed-size-list column (building it is not timed): reading, "
        "checking and normalising the column (a copy), k-means, kMQ, the manifest (sha256 of the vectors and quality) and the "
        "subset. No text is embedded here.",
        "- **CPU s**: user + system CPU seconds of the subprocess over the same timed run, all threads (with 2 threads it "
        "can reach twice the wall time); on a machine shared with other jobs it varies less than the wall time.",
        "- **RSS peak +MiB**: the process's RSS sampled every 5 ms (psutil) during the phase, minus its RSS when the phase "
        "started (the embedding matrix, already loaded, is not counted). **tracemalloc peak**: a second run of the same phase "
        "under tracemalloc: Python and numpy allocations only (faiss's and Arrow's buffers are invisible to it). "
        "**ru_maxrss**: the subprocess's lifetime peak, data construction included.",
        f"- **embedding s (EXTRAPOLATED)**: not measured at these sizes. `hf_idsel.embed.embed_dataset` with the packaged "
        f"all-MiniLM-L6-v2 on CPU was measured at **{enc['rows_per_s']:.1f} rows/s** on {enc['rows']} real rows "
        f"({enc['seconds']:.1f} s; sources {', '.join(enc['sources'])}); the column is pool rows / that rate. Real pools with "
        "shorter or longer texts embed faster or slower." + _embed_share(s),
        "",
    ] + _stored_section(s)


def _stored_section(s: dict) -> list[str]:
    import scale

    if not s.get("stored"):
        return []
    at_1m = [p for p in s["stored"] if p["rows"] == 1_000_000]
    goal = (f" Goal: RSS peak increment at 1M rows at most 2x the float16 matrix; measured "
            f"{at_1m[0]['rss_increment_over_float16']:.2f}x ({'met' if at_1m[0]['rss_increment_over_float16'] <= 2 else 'NOT met'})."
            if at_1m else "")
    return [
        "### Past RAM: float16 vectors memory-mapped from an Arrow file",
        "",
        scale.stored_table(s["stored"]),
        "",
        "The vectors are written chunk by chunk as float16 to an Arrow file (never whole in memory; not timed) and "
        "`datasets.Dataset.from_file` memory-maps it. `diverse_select(pool, n // 10, k=k, embedding_column=\"embedding\", "
        "quality_column=\"quality\")` runs once in a fresh subprocess after a 2,000-row warm-up: the column is read as "
        "`hf_idsel.cache.StoredVectors` (zero-copy views, rows normalised in float32 as they are read), k-means is fitted on "
        "a seeded sample of 256 k rows and every row is assigned in chunks. The RSS counts the pages of the mapped file "
        "that were read (the whole file, by the assignment and the manifest's digests)." + goal,
        "",
    ]


def _embed_share(s: dict) -> str:
    shares = [p["extrapolated_embed_s"] / p["diverse_select"]["seconds"] for p in s["points"] if "diverse_select" in p]
    if not shares:
        return ""
    return (f" At these sizes the (extrapolated) embedding time is {min(shares):.0f}x to {max(shares):.0f}x the measured "
            "selection time from precomputed vectors, so a fresh CPU selection is bound by the encoder.")


def _k_auto_section(results: dict) -> list[str]:
    if "k_auto" not in results:  # results written before k="auto" was benchmarked
        return []
    lines = ["## k=\"auto\"", "",
             "`choose_k` on synthetic pools with planted clusters (`bench/k_auto.py`; its full run covers 50k to 200k rows "
             "and true k from 12 to 2048, see docs/method.md):", "",
             "| pool rows | true k | chosen k | ratio | ARI | candidates tried | k=auto s | one k-means s | time ratio | picker before |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["k_auto"]:
        lines.append(f"| {r['rows']:,} | {r['true_k']} | {r['chosen_k']} | {r['ratio_to_true_k']:.2f} | {r['ari_at_chosen_k']:.3f} | "
                     f"{r['candidates_tried']} | {r['k_auto_s']:.1f} | {r['kmeans_at_chosen_k_s']:.1f} | {r['time_ratio']:.1f} | "
                     f"{r['old_picker_k']} |")
    return lines + [""]


def _gpu_section(results: dict) -> list[str]:
    g = results["gpu"]
    if not g["available"]:
        return ["## GPU path", "", f"{g['note']}. No GPU numbers are reported; on a machine where torch sees CUDA and faiss-gpu "
                "is installed, the same command adds faiss-gpu k-means and bf16 encoder throughput here. For a bare GPU image "
                "(torch, transformers, sentence-transformers; no faiss, datasets or trl) the prepared script `bench/gpu.py` "
                "measures float16 encoder rows/s, k-means at 1M rows and a 1M-row selection (see its docstring).", ""]
    lines = ["## GPU path", "", f"Device: {g['status'].get('device_name')}.", "",
             "| pool rows | k | k-means on GPU s | kMQ s |", "|---|---|---|---|"]
    for p in g["points"]:
        lines.append(f"| {p['rows']:,} | {p['k']} | {p['stages']['kmeans_s']:.2f} | {p['stages']['kmq_s']:.3f} |")
    b, f = g["encoder_bf16"], g["encoder_fp32_cuda"]
    lines += ["", f"Encoder (`embed_dataset`, {b['rows']} real rows): bf16 on {b['device']} {b['rows_per_s']:.0f} rows/s, "
              f"fp32 on {f['device']} {f['rows_per_s']:.0f} rows/s.", ""]
    return lines


# performance.md below this line is written by hand (measurements of other scripts, dated); this script keeps it.
KEPT_MARKER = "<!-- Measured separately: bench/run.py keeps everything below this line. -->"


def write_markdown(out: str, generated: str) -> None:
    """Write `<out>/performance.md`: the generated part, then the hand-written part of the file already there."""
    path = os.path.join(out, "performance.md")
    kept = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
        if KEPT_MARKER in old:
            kept = old[old.index(KEPT_MARKER):]
    with open(path, "w") as f:
        f.write(generated.rstrip("\n") + "\n\n" + kept if kept else generated)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument("--out", default=os.path.join(HERE, "..", "docs"), help="folder for performance.md, .json and .png")
    parser.add_argument("--trainer-model", nargs="+", default=["tiny"], choices=["tiny", "smollm2"],
                        help="models for the trainer overhead benchmark (smollm2: the packaged SmolLM2-135M, slow on CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: rewrite performance.md and the plot from <out>/performance_results.json")
    args = parser.parse_args(argv)
    png_name = "performance_scale.png"
    if args.render_only:
        import scale

        with open(os.path.join(args.out, "performance_results.json")) as f:
            results = json.load(f)
        scale.plot(results["scale"], os.path.join(args.out, png_name), gpu_points=results["gpu"].get("points"))
        write_markdown(args.out, render_markdown(results, png_name))
        return results

    started = time.perf_counter()
    import datasets

    from hf_idsel.embed import DEFAULT_ENCODER, load_encoder

    datasets.disable_progress_bars()
    cfg = QUICK if args.quick else FULL
    os.makedirs(args.out, exist_ok=True)
    machine = machine_info()
    status = gpu_status()
    encoder = load_encoder(DEFAULT_ENCODER, device="cpu")  # one CPU encoder object shared by every CPU measurement

    select, ratios = run_select(cfg, args.seed, encoder)
    encoders, encoder_rows = run_encoders(cfg, args.seed, encoder)
    ratios += encoder_rows
    trainer, trainer_rows = run_trainer(cfg, args.trainer_model, encoder)
    ratios += trainer_rows
    scale_result = run_scale(cfg, args.seed, encoder, args.out)
    k_auto_results, k_auto_rows = run_k_auto(cfg, args.seed)
    ratios += k_auto_rows
    gpu, gpu_rows = run_gpu(cfg, args.seed, status, scale_result)
    ratios += gpu_rows

    import scale

    scale.plot(scale_result, os.path.join(args.out, png_name), gpu_points=gpu.get("points"))
    machine["loadavg_end"] = list(os.getloadavg())
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/run.py" + (" --quick" if args.quick else "")
        + ("" if args.trainer_model == ["tiny"] else " --trainer-model " + " ".join(args.trainer_model)),
        "quick": args.quick,
        "config": cfg,
        "machine": machine,
        "ratios": ratios,
        "select": select,
        "encoders": encoders,
        "trainer": trainer,
        "scale": scale_result,
        "k_auto": k_auto_results,
        "gpu": gpu,
        "wall_seconds": time.perf_counter() - started,
    }
    with open(os.path.join(args.out, "performance_results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    write_markdown(args.out, render_markdown(results, png_name))
    log(f"wrote {os.path.join(args.out, 'performance.md')} in {results['wall_seconds']:.0f} s")
    print(render_markdown(results, png_name).split("## What each ratio measures")[0])
    return results


if __name__ == "__main__":
    main()
