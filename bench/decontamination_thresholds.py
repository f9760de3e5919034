"""How the decontamination rules and thresholds were chosen: the measurement behind docs/method.md's Decontamination.

    .venv/bin/python bench/decontamination_thresholds.py [--out docs/decontamination_thresholds_results.json]
                                                         [--cache-dir DIR] [--no-cosine]

On the built-in pool less 100 GSM8K and 20 HumanEval rows (3,863 rows, as in tests/test_decontaminate.py) against 320
held-out evaluation items (100 GSM8K, 20 HumanEval, 200 MMLU; none in the pool), it records:
- `clean`: the n-gram share and cosine (max over items) of the pool's own rows, none of which copies an item;
- `copies`: the same for copies of every item: exact, reformatted (whitespace collapsed, case changed, punctuation
  dropped), with Unicode noise (zero-width characters, full-width forms, combining marks, all three), and reworded
  (2 words of the question replaced and the answer reformatted; 3 words replaced in both and reformatted), with how
  many each test catches, before (commit c95dcfb's n-gram test) and after;
- `cliff`: one item copied into k rows, k from 1 to half the pool, on a 200-row pool and on the whole pool: rows
  dropped before and after;
- `ngram_lengths`: the clean rows' largest share and the reworded copies' median share with 5-, 8- and 13-grams;
- `template_rules`: clean rows dropped and reworded copies caught under alternative template rules (a floor of items
  and a share of the distinct items), for evaluation sets of 320 items, 60, 10, and single MMLU items;
- `short_items`: for sequences of 1 to 8 words (windows and openings of held-out questions, held-out chitchat
  conversations that short), how many clean rows hold them, which sets `SHORT_ITEM_MIN_WORDS`.
Cosines use the packaged all-MiniLM-L6-v2 (vectors cached under `--cache-dir`). The JSON records the commit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import re
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="hf_idsel-bench-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(BENCH))
sys.path.insert(0, BENCH)

import numpy as np  # noqa: E402

from decontaminate import _commit, legacy_ngram_overlap, pool_and_held_out, texts_of, unicode_noise  # noqa: E402
from hf_idsel import decontaminate  # noqa: E402
from hf_idsel.decontaminate import max_cosine, ngram_overlap, words  # noqa: E402

ITEMS = {"gsm8k": 100, "humaneval": 20, "mmlu": 200}
NGRAM_THRESHOLD, COSINE_THRESHOLD = decontaminate.DEFAULT_NGRAM_THRESHOLD, decontaminate.DEFAULT_COSINE_THRESHOLD
TEMPLATE_RULES = [(floor, share) for floor in (1, 2, 3, 10) for share in (0.0, 0.01, 0.05)]


def reformat(text: str, rng) -> str:
    """The same words: whitespace collapsed, case changed, punctuation dropped (tests/test_decontaminate.py's)."""
    text = re.sub(r"[?.,;:!()\"']", "", " ".join(text.split()))
    return text.upper() if rng.random() < 0.5 else text.lower()


def reword(text: str, rng, changed: int) -> str:
    """`changed` words replaced by "something", then reformatted."""
    tokens = text.split()
    for i in rng.choice(len(tokens), size=min(changed, len(tokens)), replace=False):
        tokens[i] = "something"
    return reformat(" ".join(tokens), rng)


def copies_of(items: list[list[dict]], seed: int = 0) -> dict[str, list[list[dict]]]:
    rng = np.random.default_rng(seed)

    def pair(user, assistant):
        return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]

    def each(fq, fa=None):
        return [pair(fq(m[0]["content"]), (fa or fq)(m[1]["content"])) for m in items]

    return {
        "exact": each(lambda t: t),
        "reformatted": each(lambda t: reformat(t, rng)),
        "zero-width": each(lambda t: unicode_noise(t, rng, ("zero-width",))),
        "full-width": each(lambda t: unicode_noise(t, rng, ("full-width",))),
        "combining marks": each(lambda t: unicode_noise(t, rng, ("combining",))),
        "all three Unicode noises": each(lambda t: unicode_noise(t, rng)),
        "2 words of the question changed, answer reformatted": each(lambda t: reword(t, rng, 2), lambda t: reformat(t, rng)),
        "3 words changed in question and answer, reformatted": each(lambda t: reword(t, rng, 3)),
    }


def stats(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=float)
    return {
        "min": round(float(values.min()), 4), "p5": round(float(np.percentile(values, 5)), 4),
        "median": round(float(np.median(values)), 4), "p99": round(float(np.percentile(values, 99)), 4),
        "p99.9": round(float(np.percentile(values, 99.9)), 4), "max": round(float(values.max()), 4),
    }


@contextlib.contextmanager
def template_rule(floor: int, share: float):
    saved = decontaminate.TEMPLATE_MIN_ITEMS, decontaminate.TEMPLATE_ITEM_SHARE
    decontaminate.TEMPLATE_MIN_ITEMS, decontaminate.TEMPLATE_ITEM_SHARE = floor, share
    try:
        yield
    finally:
        decontaminate.TEMPLATE_MIN_ITEMS, decontaminate.TEMPLATE_ITEM_SHARE = saved


def embed(rows: list[list[dict]], cache_dir: str) -> np.ndarray:
    import datasets

    from hf_idsel.embed import embed_dataset
    from hf_idsel.render import resolve_render_options

    dataset = datasets.Dataset.from_dict({"messages": rows})
    vectors, _ = embed_dataset(dataset, resolve_render_options(dataset.column_names), cache_dir=cache_dir)
    return np.asarray(vectors, dtype=np.float32)


def measure_copies(pool_texts, item_texts, copies, vectors) -> dict:
    out = {}
    for kind, rows in copies.items():
        texts = texts_of(rows)
        share, item = ngram_overlap(texts, item_texts)
        before, _ = legacy_ngram_overlap(pool_texts + texts, item_texts)  # in the pool, as the old rule counted it
        before = before[len(pool_texts):]
        record = {
            "copies": len(texts), "ngram_share": stats(share), "ngram_caught": int((share >= NGRAM_THRESHOLD).sum()),
            "ngram_caught_before": int((before >= NGRAM_THRESHOLD).sum()), "ngram_share_before": stats(before),
            "matched_its_own_item": int((item == np.arange(len(texts))).sum()),
        }
        if vectors is not None:
            cosine, _ = max_cosine(vectors["copies"][kind], vectors["items"])
            record.update(
                cosine=stats(cosine), cosine_caught=int((cosine >= COSINE_THRESHOLD).sum()),
                cosine_caught_at_0_95=int((cosine >= 0.95).sum()),
                either_caught=int(((share >= NGRAM_THRESHOLD) | (cosine >= COSINE_THRESHOLD)).sum()),
                either_caught_at_0_95=int(((share >= NGRAM_THRESHOLD) | (cosine >= 0.95)).sum()),
            )
        out[kind] = record
        print(f"[thresholds] {kind}: {record}", flush=True)
    return out


def measure_cliff(pool_texts, item_texts) -> dict:
    """One MMLU item copied into k rows of a 200-row pool and of the whole pool; the evaluation set is all items."""
    item = 120  # the first MMLU item
    out = {}
    for name, base in (("200-row pool", pool_texts[:: len(pool_texts) // 200][:200]), ("whole pool", pool_texts)):
        out[name] = []
        for k in sorted({1, 8, 9, 10, 50, len(base) // 2, 999 if len(base) > 2000 else 9}):
            rows = base[: len(base) - k] + [item_texts[item]] * k if k < len(base) else [item_texts[item]] * k
            after, _ = ngram_overlap(rows, item_texts)
            before, _ = legacy_ngram_overlap(rows, item_texts)
            copies = slice(len(rows) - k, len(rows))
            out[name].append({
                "pool_rows": len(rows), "copies": k, "copies_dropped_before": int((before[copies] >= NGRAM_THRESHOLD).sum()),
                "copies_dropped_after": int((after[copies] >= NGRAM_THRESHOLD).sum()),
            })
        print(f"[thresholds] cliff, {name}: {out[name]}", flush=True)
    return out


def measure_template_rules(pool_texts, items, item_texts, reworded) -> dict:
    """Clean rows dropped (and reworded copies caught, for the 320-item set) under each rule, per evaluation set."""
    mmlu = [i for i, m in enumerate(items) if m[0]["content"].startswith("The following is a multiple-choice")]
    rng = np.random.default_rng(0)
    sets = {
        "320 items": list(range(len(items))),
        "60 items (20 GSM8K, 10 HumanEval, 30 MMLU)": list(range(20)) + list(range(100, 110)) + mmlu[:30],
        "10 MMLU items (5 sets)": [sorted(rng.choice(mmlu, size=10, replace=False).tolist()) for _ in range(5)],
        "1 MMLU item (20 sets)": [[i] for i in mmlu[::10]],
    }
    out = []
    for floor, share in TEMPLATE_RULES:
        record = {"min_items": floor, "item_share": share}
        with template_rule(floor, share):
            for name, chosen in sets.items():
                groups = chosen if isinstance(chosen[0], list) else [chosen]
                dropped = [int((ngram_overlap(pool_texts, [item_texts[i] for i in g])[0] >= NGRAM_THRESHOLD).sum()) for g in groups]
                record[f"clean rows dropped, {name}"] = dropped if len(dropped) > 1 else dropped[0]
            for kind, texts in reworded.items():
                record[f"caught: {kind}"] = int((ngram_overlap(texts, item_texts)[0] >= NGRAM_THRESHOLD).sum())
        out.append(record)
        print(f"[thresholds] template rule {record}", flush=True)
    return out


def measure_ngram_lengths(pool_texts, item_texts, reworded) -> list[dict]:
    """For n-grams of 5, 8 and 13 words: the clean rows' largest share and the reworded copies' median share."""
    out = []
    for n in (5, 8, 13):
        clean, _ = ngram_overlap(pool_texts, item_texts, n)
        record = {"ngram": n, "clean_largest_share": round(float(clean.max()), 4), "clean_dropped": int((clean >= NGRAM_THRESHOLD).sum())}
        for kind, texts in reworded.items():
            share, _ = ngram_overlap(texts, item_texts, n)
            record[f"median share: {kind}"] = round(float(np.median(share)), 4)
            record[f"caught: {kind}"] = int((share >= NGRAM_THRESHOLD).sum())
        out.append(record)
        print(f"[thresholds] n-gram length {record}", flush=True)
    return out


def measure_short_items(pool_texts) -> dict:
    """Clean rows holding an L-word sequence: random windows and openings of held-out questions (the question text
    only: MMLU's stem and instruction lines left out), and held-out chitchat conversations of L words."""
    _, questions = pool_and_held_out({"gsm8k": 100, "humaneval": 0, "chitchat": 0, "mmlu": 200})
    _, chats = pool_and_held_out({"chitchat": 2817})
    rows = [f" {' '.join(words(t))} " for t in pool_texts]

    def holding(ws):
        needle = f" {' '.join(ws)} "
        return sum(needle in row for row in rows)

    question_words = []
    for m in questions:
        text = m[0]["content"]
        if text.startswith("The following is a multiple-choice"):
            text = text.split("\n\n", 1)[1].rsplit("\n\nAnswer with", 1)[0]
        question_words.append(words(text))
    chat_words = [words(t) for t in texts_of(chats)]
    rng = np.random.default_rng(0)
    out = []
    for length in range(1, 9):
        windows = []
        for ws in question_words:
            if len(ws) >= length:
                start = int(rng.integers(0, len(ws) - length + 1))
                windows.append(ws[start : start + length])
        record = {"words": length}
        for name, seqs in (
            ("question windows", windows),
            ("question openings", [ws[:length] for ws in question_words if len(ws) >= length]),
            ("chitchat conversations of this length", [ws for ws in chat_words if len(ws) == length]),
        ):
            held = np.array([holding(ws) for ws in seqs])
            record[name] = {
                "sequences": len(seqs), "held_by_a_clean_row": int((held > 0).sum()) if len(seqs) else 0,
                "mean_clean_rows_holding": round(float(held.mean()), 2) if len(seqs) else None,
            }
        out.append(record)
        print(f"[thresholds] short items {record}", flush=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(BENCH), "docs", "decontamination_thresholds_results.json"))
    parser.add_argument("--cache-dir", default=None, help="where MiniLM vectors are cached (default: a temporary folder)")
    parser.add_argument("--no-cosine", action="store_true", help="skip the encoder (n-gram numbers only)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    commit = _commit()
    pool, items = pool_and_held_out(ITEMS)
    pool_rows = list(pool["messages"])
    pool_texts, item_texts = texts_of(pool_rows), texts_of(items)
    copies = copies_of(items)
    vectors = None
    if not args.no_cosine:
        cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="hf_idsel-vectors-")
        vectors = {
            "pool": embed(pool_rows, cache_dir), "items": embed(items, cache_dir),
            "copies": {kind: embed(rows, cache_dir) for kind, rows in copies.items()},
        }
    results = {
        **commit,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pool_rows": len(pool_texts), "items": ITEMS, "ngram": decontaminate.DEFAULT_NGRAM,
        "ngram_threshold": NGRAM_THRESHOLD, "cosine_threshold": COSINE_THRESHOLD,
        "template_rule": {"min_items": decontaminate.TEMPLATE_MIN_ITEMS, "item_share": decontaminate.TEMPLATE_ITEM_SHARE},
        "short_item_min_words": decontaminate.SHORT_ITEM_MIN_WORDS,
    }
    share, _ = ngram_overlap(pool_texts, item_texts)
    before, _ = legacy_ngram_overlap(pool_texts, item_texts)
    results["clean"] = {
        "ngram_share": stats(share), "ngram_dropped": int((share >= NGRAM_THRESHOLD).sum()),
        "ngram_share_before": stats(before), "ngram_dropped_before": int((before >= NGRAM_THRESHOLD).sum()),
    }
    if vectors is not None:
        cosine, _ = max_cosine(vectors["pool"], vectors["items"])
        results["clean"].update(
            cosine=stats(cosine), **{f"cosine_dropped_at_{t}": int((cosine >= t).sum()) for t in (0.99, 0.95, 0.93, 0.9)}
        )
    print(f"[thresholds] clean: {results['clean']}", flush=True)
    results["copies"] = measure_copies(pool_texts, item_texts, copies, vectors)
    results["cliff"] = measure_cliff(pool_texts, item_texts)
    reworded = {kind: texts_of(rows) for kind, rows in copies.items() if "changed" in kind}
    results["ngram_lengths"] = measure_ngram_lengths(pool_texts, item_texts, reworded)
    results["template_rules"] = measure_template_rules(pool_texts, items, item_texts, reworded)
    results["short_items"] = measure_short_items(pool_texts)
    results["seconds"] = round(time.perf_counter() - start, 1)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
