"""The n-gram decontamination test at scale: 10k, 100k and 1M pool rows against 10k evaluation items.

    .venv/bin/python bench/decontaminate.py [--sizes 10000 100000 1000000] [--items 10000] [--old-max 1000000]
                                            [--out docs/decontamination_scale_results.json] [--quick]

The pool is the built-in pool (3,863 rows: 100 GSM8K and 20 HumanEval rows held out) rendered as decontamination
reads it, its rows repeated and made distinct with a row-number suffix ("... (row 123456)"); 100 rows at even
intervals are replaced by copies of evaluation items, half of them with Unicode noise (zero-width characters, full-
width forms, combining marks), so each run also checks that every planted copy is found. The evaluation set is
10,000 items the pool does not hold: 100 GSM8K, 20 HumanEval, 2,000 chitchat conversations and 7,880 MMLU questions.

Each measurement runs in its own process and reports wall time, CPU time (user + system) and peak resident memory
(and the memory before the call, so the test's own share shows): `after`, `hf_idsel.decontaminate.ngram_overlap`
reading the pool from a generator, at every size; `before`, the implementation it replaced (per-text Python sets of
n-gram tuples, copied below from commit c95dcfb), given the pool as a list (it reads it twice), at sizes up to
`--old-max` (every size by default). The results JSON records the commit it ran at.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections import Counter

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_idsel-bench-"))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

# The built-in pool less these held-out rows, as in tests/test_decontaminate.py.
POOL_ROWS = {"gsm8k": 1219, "humaneval": 144}
ALL_ROWS = {"gsm8k": 1319, "humaneval": 164, "chitchat": 4017, "mmlu": 14042}
ITEMS = {"gsm8k": 100, "humaneval": 20, "chitchat": 2000, "mmlu": 7880}
PLANTED = 100
THRESHOLD = 0.6
ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad")


# ---- the implementation before issue 28.3 (hf_idsel/decontaminate.py at commit c95dcfb), for the "before" column ----

_LEGACY_PUNCTUATION = re.compile(r"[^\w\s]")


def legacy_words(text: str) -> list[str]:
    return _LEGACY_PUNCTUATION.sub("", text.lower()).split()


def legacy_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = legacy_words(text)
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def legacy_ngram_overlap(pool_texts: list[str], exclude_texts: list[str], n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """c95dcfb's test: an n-gram in 1% of all texts, pool and evaluation set together (and in 10), is a template."""
    index: dict[tuple[str, ...], list[int]] = {}
    for item, text in enumerate(exclude_texts):
        for gram in legacy_ngrams(text, n):
            index.setdefault(gram, []).append(item)
    row_hits = [[gram for gram in legacy_ngrams(text, n) if gram in index] for text in pool_texts]
    rows_with = Counter(gram for hits in row_hits for gram in hits)
    common = max(10, int(np.ceil(0.01 * (len(pool_texts) + len(exclude_texts)))))
    index = {gram: items for gram, items in index.items() if len(items) + rows_with[gram] < common}
    sizes = np.zeros(len(exclude_texts), dtype=np.int64)
    for items in index.values():
        sizes[items] += 1
    overlap = np.zeros(len(pool_texts))
    best = np.full(len(pool_texts), -1, dtype=np.int64)
    for row, grams in enumerate(row_hits):
        hits: dict[int, int] = {}
        for gram in grams:
            for item in index.get(gram, ()):
                hits[item] = hits.get(item, 0) + 1
        if hits:
            items = np.fromiter(hits, dtype=np.int64, count=len(hits))
            shares = np.fromiter(hits.values(), dtype=np.float64, count=len(hits)) / sizes[items]
            top = int(np.argmax(shares))
            overlap[row], best[row] = shares[top], items[top]
    return overlap, best


# ---- data ----


def pool_and_held_out(items_per_source: dict[str, int], seed: int = 1):
    """The built-in pool less the held-out rows, and `items_per_source` rows of each source it does not hold (drawn
    with `seed`, in source order), as `messages` lists."""
    from hf_idsel.pool import load_builtin_pool

    pool = load_builtin_pool(POOL_ROWS)
    used = set(pool["origin_id"])
    items = []
    for source, count in items_per_source.items():
        if not count:
            continue
        rows = load_builtin_pool({s: (ALL_ROWS[s] if s == source else 0) for s in ALL_ROWS})
        free = [m for origin, m in zip(rows["origin_id"], rows["messages"]) if origin not in used]
        picked = np.random.default_rng(seed).choice(len(free), size=count, replace=False)
        items += [free[i] for i in sorted(picked)]
    return pool, items


def texts_of(messages_rows: list) -> list[str]:
    """Rows as decontamination reads them (the selection's rendering of a `messages` column: prompt, then answer)."""
    import datasets

    from hf_idsel.decontaminate import iter_texts
    from hf_idsel.render import resolve_render_options

    dataset = datasets.Dataset.from_dict({"messages": messages_rows})
    return list(iter_texts(dataset, resolve_render_options(dataset.column_names), None))


def unicode_noise(text: str, rng, kinds=("zero-width", "full-width", "combining")) -> str:
    """`text` as a copy that reads the same (or nearly): zero-width characters inserted at about 1 position in 8,
    letters, digits and punctuation turned to their full-width forms with probability 1/2, combining marks added
    after about 1 letter in 10 (and the text decomposed, NFD)."""
    if "combining" in kinds:
        text = unicodedata.normalize("NFD", text)
    out = []
    for ch in text:
        if "full-width" in kinds and "!" <= ch <= "~" and rng.random() < 0.5:
            ch = chr(ord(ch) + 0xFEE0)
        out.append(ch)
        if "combining" in kinds and ch.isalpha() and rng.random() < 0.1:
            out.append(chr(int(rng.integers(0x300, 0x370))))
        if "zero-width" in kinds and rng.random() < 0.125:
            out.append(ZERO_WIDTH[int(rng.integers(len(ZERO_WIDTH)))])
    return "".join(out)


def planted_rows(size: int, items: list[str], seed: int = 0) -> dict[int, tuple[int, str]]:
    """Row -> (item, text): `PLANTED` copies of items at even intervals, every other one with Unicode noise."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, size - 1, PLANTED).astype(int)
    chosen = rng.choice(len(items), size=PLANTED, replace=False)
    return {
        int(row): (int(item), unicode_noise(items[item], rng) if i % 2 else items[item])
        for i, (row, item) in enumerate(zip(rows, chosen))
    }


def pool_texts(base: list[str], size: int, planted: dict[int, tuple[int, str]]):
    """`size` distinct pool texts: `base` repeated, each with its row number, and the planted copies."""
    for row in range(size):
        yield planted[row][1] if row in planted else f"{base[row % len(base)]}\n(row {row})"


# ---- one measurement, in its own process ----


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


def _reset_peak() -> bool:
    """Start the peak resident memory (VmHWM) afresh (Linux 4.0+), so imports before the call do not count."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(data_path: str, implementation: str, size: int) -> dict:
    with open(data_path) as f:
        data = json.load(f)
    base, items = data["pool"], data["items"]
    planted = planted_rows(size, items)
    from hf_idsel.decontaminate import ngram_overlap

    texts = pool_texts(base, size, planted)
    if implementation == "before":
        texts = list(texts)  # it reads the pool twice
    rss_before = _status_kib("VmRSS")
    fresh_peak = _reset_peak()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if implementation == "before":
        overlap, best = legacy_ngram_overlap(texts, items)
    else:
        overlap, best = ngram_overlap(texts, items, total=size)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    rows = np.array(sorted(planted))
    found = overlap[rows] >= THRESHOLD
    return {
        "implementation": implementation,
        "pool_rows": size,
        "items": len(items),
        "wall_s": round(wall, 2),
        "cpu_s": round(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, 2),
        "rss_before_call_mib": round(rss_before / 1024, 1),
        "peak_rss_mib": round((_status_kib("VmHWM") if fresh_peak else after.ru_maxrss) / 1024, 1),
        "peak_rss_of_the_call_only": fresh_peak,
        "dropped": int((overlap >= THRESHOLD).sum()),
        "planted": len(rows),
        "planted_found": int(found.sum()),
        "planted_found_plain": int(found[0::2].sum()),
        "planted_found_unicode_noise": int(found[1::2].sum()),
        "dropped_not_planted": int((overlap >= THRESHOLD).sum() - found.sum()),
    }


def _commit() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": git("status", "--porcelain", "--untracked-files=no").splitlines()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--items", type=int, default=sum(ITEMS.values()), help="evaluation items (scaled from 10,000)")
    parser.add_argument("--old-max", type=int, default=1_000_000, help="largest pool the old implementation runs on")
    parser.add_argument("--out", default=None, help="results JSON (default: docs/decontamination_scale_results.json)")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2,000 and 5,000 rows, 500 items")
    parser.add_argument("--worker", nargs=3, metavar=("DATA", "IMPLEMENTATION", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], int(args.worker[2]))))
        return {}
    if args.quick:
        args.sizes, args.items = [2_000, 5_000], 500
    out = args.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "decontamination_scale_results.json")
    scale = args.items / sum(ITEMS.values())
    counts = {s: max(1, round(c * scale)) for s, c in ITEMS.items()}
    counts["mmlu"] += args.items - sum(counts.values())
    commit = _commit()
    pool, items = pool_and_held_out(counts)
    results = {
        **commit,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
        "quick": args.quick, "pool_base_rows": len(pool), "items_per_source": counts, "ngram": 8, "threshold": THRESHOLD,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "data.json")
        with open(data_path, "w") as f:
            json.dump({"pool": texts_of(pool["messages"]), "items": texts_of(items)}, f)
        for size in args.sizes:
            for implementation in ("before", "after"):
                if implementation == "before" and size > args.old_max:
                    continue
                done = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--worker", data_path, implementation, str(size)],
                    capture_output=True, text=True,
                )
                if done.returncode:
                    raise RuntimeError(f"{implementation} at {size} rows failed:\n{done.stderr[-3000:]}")
                run = json.loads(done.stdout.strip().splitlines()[-1])
                results["runs"].append(run)
                print(
                    f"[decontaminate] {implementation:6s} {size:>9,} rows x {run['items']:,} items: {run['wall_s']:8.1f} s "
                    f"wall, {run['cpu_s']:8.1f} s CPU, peak RSS {run['peak_rss_mib']:7.0f} MiB "
                    f"(before the call {run['rss_before_call_mib']:.0f}); planted copies found {run['planted_found']}/"
                    f"{run['planted']} (plain {run['planted_found_plain']}, Unicode noise "
                    f"{run['planted_found_unicode_noise']}); other rows dropped {run['dropped_not_planted']}",
                    flush=True,
                )
                with open(out, "w") as f:
                    json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
