"""1M rows from text on this CPU, end to end: what a user without a GPU runs (issue 27).

    .venv/bin/python bench/scale_1m.py [--rows 1000000] [--items 10000] [--out docs/scale_1m_results.json]

One `diverse_select(pool, 0.1, k="auto", encoder="static", exclude_dataset=items)` on `--rows` distinct real-text
rows, then the subset and manifest written as `hf-idsel select --out` writes them. What it measures:

* The pool: the built-in pool less its held-out rows (3,863 rows, as bench/decontaminate.py), row `i` built from
  base row `i % 3,863`: the first copy as is, every later copy with a real-text fragment appended to its question
  (the first 6 to 15 words of another base row's question, chosen from `i`), so that the rows are distinct, real
  text and of the built-in pool's lengths. Rows still equal to an earlier one after that get their row number
  appended (counted in `rows_numbered`). 100 copies of evaluation items are planted at even intervals, every other
  one with Unicode noise (zero-width characters, full-width forms, combining marks): `planted_found` counts those
  dropped. The rows are written to an Arrow file chunk by chunk and memory-mapped, as a pool loaded from disk is
  (`build`, timed but no stage of the selection).
* The evaluation set: `--items` held-out rows of the built-in pool's sources that the pool does not hold (GSM8K,
  HumanEval, chitchat, MMLU, as bench/decontaminate.py), as a `messages` dataset.
* Before the timed run the static encoder's weights are built once (`warm_up`, cached like a user's second run);
  the embedding cache starts empty, so the pool is embedded.
* Stages, timed inside the one `diverse_select` call by wrapping the functions the pipeline calls:
  `render` (`render_batch`: rows to text, for the encoder and again for the n-gram test), `embed`
  (`pool_embeddings` less its rendering: tokenise, encode, write the float16 cache), `decontaminate`
  (`decontaminate_pool` less its rendering: the n-gram test, the 10k items embedded, the cosine test),
  `cluster` (`cluster_pool`: the k="auto" search and its clustering), `sample` (`methods.draw`: kMQ), `other`
  (the rest of the call: argument checks, cluster descriptions, the map, the manifest and the subset), then
  `write` (`subset.parquet` and `manifest.json`). Per stage: wall seconds, CPU seconds (user + system, every
  thread of the process), and the peak RSS while it ran (psutil, sampled every 20 ms); the process's lifetime peak
  (VmHWM) too. Goals: under 15 minutes and 8 GiB in all.
* The JSON is written after every stage, so a run cut short keeps what it measured (`complete` says whether it
  ended); it records the commit and the machine's load average at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(tempfile.gettempdir(), "hf_idsel-bench-scale-1m"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)

import numpy as np  # noqa: E402

from decontaminate import ITEMS, _commit, pool_and_held_out, unicode_noise  # noqa: E402

GOAL_WALL_S = 15 * 60
GOAL_RSS_GIB = 8.0
PLANTED = 100
STAGES = ("render", "embed", "decontaminate", "cluster", "sample", "other", "write")


class Meter:
    """Wall, CPU and peak-RSS accounting of nested stages. A stage's time excludes the stages nested in it that
    are counted on their own (`render` inside `embed` and `decontaminate`)."""

    def __init__(self, on_stage_end=None, interval: float = 0.02):
        import psutil

        self._process = psutil.Process()
        self.totals = {name: {"wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mib": 0.0, "calls": 0} for name in STAGES}
        self._open: list[dict] = []
        self._on_stage_end = on_stage_end
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.interval = interval
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def rss_mib(self) -> float:
        return self._process.memory_info().rss / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = self.rss_mib()
            with self._lock:
                for frame in self._open:
                    frame["peak"] = max(frame["peak"], rss)

    @contextlib.contextmanager
    def stage(self, name: str):
        frame = {"name": name, "wall": time.perf_counter(), "cpu": self.cpu(), "peak": self.rss_mib(), "nested_wall": 0.0, "nested_cpu": 0.0}
        with self._lock:
            self._open.append(frame)
        try:
            yield
        finally:
            wall, cpu = time.perf_counter() - frame["wall"], self.cpu() - frame["cpu"]
            with self._lock:
                self._open.remove(frame)
                frame["peak"] = max(frame["peak"], self.rss_mib())
                if self._open:  # time of a nested stage is not its parent's
                    self._open[-1]["nested_wall"] += wall
                    self._open[-1]["nested_cpu"] += cpu
                    self._open[-1]["peak"] = max(self._open[-1]["peak"], frame["peak"])
            total = self.totals[name]
            total["wall_s"] += wall - frame["nested_wall"]
            total["cpu_s"] += cpu - frame["nested_cpu"]
            total["peak_rss_mib"] = max(total["peak_rss_mib"], frame["peak"])
            total["calls"] += 1
            if self._on_stage_end is not None and name != "render":
                self._on_stage_end()

    def wrap(self, module, attribute: str, name: str) -> None:
        """Count every call of `module.attribute` as stage `name` (the pipeline looks these names up when called)."""
        function = getattr(module, attribute)

        def timed(*args, **kwargs):
            with self.stage(name):
                return function(*args, **kwargs)

        setattr(module, attribute, timed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def peak_rss_lifetime_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def question_of(messages: list[dict]) -> str:
    return next(m["content"] for m in messages if m["role"] == "user")


def pool_rows(base: list[list[dict]], rows: int, planted: dict[int, list[dict]]):
    """Row -> messages: base row `i % len(base)`, later copies with another base question's first words appended."""
    questions = [question_of(m).split() for m in base]
    for i in range(rows):
        if i in planted:
            yield planted[i]
            continue
        row, copy = i % len(base), i // len(base)
        messages = base[row]
        if copy:
            other = questions[(row * 7919 + copy * 104729) % len(base)]
            fragment = " ".join(other[: 6 + copy % 10])
            messages = [
                {**m, "content": f"{m['content']}\n\n(See also: {fragment})"} if m["role"] == "user" else m
                for m in messages
            ]
        yield messages


def build_pool(base, rows: int, items, folder: str) -> tuple["datasets.Dataset", dict]:
    """The pool as a memory-mapped Arrow file of `messages` rows, every row distinct, and where the copies went."""
    import datasets
    import pyarrow as pa

    rng = np.random.default_rng(0)
    at = np.linspace(0, rows - 1, min(PLANTED, rows // 10, len(items))).astype(int)
    chosen = rng.choice(len(items), size=len(at), replace=False)
    planted = {}
    for n, (row, item) in enumerate(zip(at, chosen)):
        messages = items[item]
        if n % 2:
            messages = [{**m, "content": unicode_noise(m["content"], rng)} for m in messages]
        planted[int(row)] = messages
    features = datasets.Features({"messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}]})
    schema = features.arrow_schema
    path = os.path.join(folder, "pool.arrow")
    seen, numbered, chunk = set(), 0, []
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        for i, messages in enumerate(pool_rows(base, rows, planted)):
            key = hash(tuple((m["role"], m["content"]) for m in messages))
            if key in seen:
                numbered += 1
                messages = [{**m, "content": f"{m['content']} (row {i})"} if m["role"] == "user" else m for m in messages]
                key = hash(tuple((m["role"], m["content"]) for m in messages))
            seen.add(key)
            chunk.append(messages)
            if len(chunk) == 10_000 or i == rows - 1:
                writer.write_table(pa.table({"messages": chunk}, schema=schema))
                chunk = []
    pool = datasets.Dataset.from_file(path)
    return pool, {"rows_numbered": numbered, "planted_rows": sorted(planted), "planted_noisy": int(len(planted) // 2)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="pool rows (default 1,000,000)")
    parser.add_argument("--items", type=int, default=sum(ITEMS.values()), help="evaluation items (default 10,000)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(BENCH), "docs", "scale_1m_results.json"))
    parser.add_argument("--work-dir", default=None, help="where the pool, the caches and the selection go (deleted after)")
    args = parser.parse_args(argv)
    if args.rows < 1000 or args.items < 10:
        parser.error("--rows must be at least 1000 and --items at least 10")

    import datasets

    import hf_idsel
    from hf_idsel import decontaminate as decontamination_module
    from hf_idsel import embed as embed_module
    from hf_idsel import methods
    from hf_idsel.embed import encoder_identity

    select_module = importlib.import_module("hf_idsel.select")
    pipeline_module = importlib.import_module("hf_idsel.pipeline")
    datasets.disable_progress_bars()

    scale = args.items / sum(ITEMS.values())
    counts = {s: max(1, round(c * scale)) for s, c in ITEMS.items()}
    counts["mmlu"] += args.items - sum(counts.values())
    results = {
        **_commit(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
        "rows": args.rows, "items": args.items, "items_per_source": counts,
        "call": 'diverse_select(pool, 0.1, k="auto", encoder="static", exclude_dataset=items, seed=0), then '
                "subset.to_parquet + manifest.save",
        "goals": {"wall_s": GOAL_WALL_S, "peak_rss_gib": GOAL_RSS_GIB},
        "complete": False,
    }

    def save():
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)

    work = args.work_dir or tempfile.mkdtemp(prefix="hf_idsel-scale-1m-")
    os.makedirs(work, exist_ok=True)
    try:
        start = time.perf_counter()
        base, items = pool_and_held_out(counts)
        pool, built = build_pool(base["messages"], args.rows, items, work)
        exclude = datasets.Dataset.from_dict({"messages": items})
        results["build"] = {"wall_s": round(time.perf_counter() - start, 2), "pool_base_rows": len(base), **built,
                            "planted_rows": len(built["planted_rows"])}
        start = time.perf_counter()
        identity = encoder_identity("static")  # builds (or reads) the distilled weights, as a first use would
        results["warm_up"] = {"static_weights_s": round(time.perf_counter() - start, 2), "encoder": identity.id}
        print(f"[scale_1m] built {len(pool):,} rows and {len(exclude):,} items; {results['warm_up']}", flush=True)
        save()

        def record_stages():
            results["stages"] = {
                name: {"wall_s": round(t["wall_s"], 2), "cpu_s": round(t["cpu_s"], 2), "peak_rss_mib": round(t["peak_rss_mib"], 1)}
                for name, t in meter.totals.items() if t["calls"]
            }
            results["peak_rss_lifetime_mib"] = round(peak_rss_lifetime_mib(), 1)
            save()

        meter = Meter(on_stage_end=record_stages)
        meter.wrap(embed_module, "render_batch", "render")
        meter.wrap(decontamination_module, "render_batch", "render")
        meter.wrap(select_module, "pool_embeddings", "embed")
        meter.wrap(pipeline_module, "decontaminate_pool", "decontaminate")
        meter.wrap(pipeline_module, "cluster_pool", "cluster")
        meter.wrap(methods, "draw", "sample")
        results["rss_before_select_mib"] = round(meter.rss_mib(), 1)
        cache = os.path.join(work, "cache")
        start, cpu = time.perf_counter(), meter.cpu()
        with meter.stage("other"):
            subset, manifest = hf_idsel.diverse_select(
                pool, 0.1, k="auto", encoder="static", exclude_dataset=exclude, seed=0, cache_dir=cache,
                return_manifest=True,
            )
        with meter.stage("write"):
            out = os.path.join(work, "selection")
            os.makedirs(out)
            subset.to_parquet(os.path.join(out, "subset.parquet"))
            manifest.save(out)
        wall, cpu = time.perf_counter() - start, meter.cpu() - cpu
        meter.close()
        record_stages()
        removed = set(manifest.decontamination["removed_indices"])
        results.update(
            total={"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)},
            selected=len(subset), k=manifest.k, k_selection=manifest.k_selection,
            removed=len(removed), planted_found=sum(row in removed for row in built["planted_rows"]),
            removed_not_planted=len(removed - set(built["planted_rows"])),
            load_average_at_end=[round(v, 2) for v in os.getloadavg()],
            complete=True,
        )
        peak_gib = results["peak_rss_lifetime_mib"] / 1024
        results["verdict"] = {
            "wall_under_15_min": wall < GOAL_WALL_S, "peak_rss_under_8_gib": peak_gib < GOAL_RSS_GIB,
            "largest_stage_by_wall": max(results["stages"], key=lambda s: results["stages"][s]["wall_s"]),
        }
        save()
        print(json.dumps({key: results[key] for key in ("total", "stages", "peak_rss_lifetime_mib", "k", "removed", "planted_found")}), flush=True)
        return results
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
