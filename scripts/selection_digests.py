"""Print the selections of a fixed set of calls as JSON, to prove a refactor keeps behaviour.

    .venv/bin/python scripts/selection_digests.py > before.json
    ... change the code ...
    .venv/bin/python scripts/selection_digests.py > after.json && diff before.json after.json

Static calls run every method on 400 rows of the built-in pool with precomputed MiniLM vectors
(embedded once, then cached), plus the encoder path itself and a token budget; the iterative call
is a short run of IterativeSelectionTrainer on the tiny test model. Offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import datasets  # noqa: E402
import numpy as np  # noqa: E402

import hf_idsel  # noqa: E402

datasets.disable_progress_bars()
ROWS_PER_SOURCE = {"gsm8k": 100, "humaneval": 100, "chitchat": 100, "mmlu": 100}


def digest(values) -> str:
    return hashlib.sha256(json.dumps(values).encode()).hexdigest()[:16]


def summary(manifest) -> dict:
    return {
        "selected_digest": manifest.selected_digest,
        "clusters": digest(manifest.selected_clusters),
        "k": manifest.k,
        "rows": len(manifest.selected_indices),
        "budget": {key: manifest.budget.get(key) for key in ("rows", "tokens")},
    }


def static_calls(cache_dir: str) -> dict:
    pool = hf_idsel.load_builtin_pool(ROWS_PER_SOURCE)
    out = {}
    subset, manifest = pool.diverse_select(budget=40, k=8, return_manifest=True, cache_dir=cache_dir)
    out["encoder kmq"] = summary(manifest)
    from hf_idsel.embed import embed_dataset
    from hf_idsel.render import resolve_render_options

    vectors, _ = embed_dataset(pool, resolve_render_options(pool.column_names), cache_dir=cache_dir)
    rng = np.random.default_rng(0)
    pool = pool.add_column("embedding", vectors.tolist()).add_column("quality", rng.normal(size=len(pool)).tolist())
    pool = pool.add_column("positive_quality", np.abs(pool["quality"]).tolist())
    common = dict(embedding_column="embedding", return_manifest=True, cache_dir=cache_dir)
    calls = {
        "random": dict(method="random", budget=50, k=8),
        "kmeans-random": dict(method="kmeans-random", budget=50, k=8, seed=3),
        "kmeans-closest": dict(method="kmeans-closest", budget=50, k=8),
        "kmq quality": dict(method="kmq", budget=0.2, k=8, quality_column="quality", temperature=0.5),
        "kmq linear equal": dict(
            method="kmq", budget=60, k=12, quality_column="positive_quality", quality_weighting="linear", quota="equal"
        ),
        "kmq auto": dict(method="kmq", budget=50, k="auto", seed=1),
        "kmq dedup": dict(method="kmq", budget=50, k=8, dedup_threshold=0.9),
        "kcenter": dict(method="kcenter", budget=30, k=8),
        "deita": dict(method="deita", budget=30, k=8, quality_column="quality", deita_threshold=0.8),
        "qdit": dict(method="qdit", budget=30, k=8, quality_column="quality", qdit_alpha=0.3),
    }
    for name, arguments in calls.items():
        try:
            out[name] = summary(pool.diverse_select(**arguments, **common)[1])
        except Exception as err:  # an error is behaviour too
            out[name] = f"{type(err).__name__}: {err}"
    # Paths a refactor of the pipeline moves: decontamination, balanced random, streams, the dry run, a replay.
    exclude = datasets.Dataset.from_list([pool[i] for i in (3, 150, 260)]).remove_columns(["embedding"])
    more = {
        "kmq exclude": dict(method="kmq", budget=50, k=8, exclude=exclude, exclude_cosine_threshold=None),
        "balanced-random": dict(method="balanced-random", budget=50, k=8, source_column="origin"),
    }
    for name, arguments in more.items():
        try:
            out[name] = summary(pool.diverse_select(**arguments, **common)[1])
        except Exception as err:
            out[name] = f"{type(err).__name__}: {err}"
    stream = pool.to_iterable_dataset(num_shards=2)
    try:
        out["stream kmq"] = summary(hf_idsel.diverse_select(stream, 50, k=8, seed=2, **common)[1])
    except Exception as err:
        out["stream kmq"] = f"{type(err).__name__}: {err}"
    plan = pool.diverse_select(budget=50, k=8, embedding_column="embedding", dry_run=True, cache_dir=cache_dir)
    out["dry run"] = {key: value for key, value in plan.to_dict().items() if "seconds" not in key}
    subset, manifest = pool.diverse_select(method="kmq", budget=40, k=8, quality_column="quality", **common)
    again = hf_idsel.load_selection(manifest, pool, recompute=True)
    out["replay"] = digest(list(again["source_index"])) if list(again["source_index"]) == list(subset["source_index"]) else "differs"
    from helpers import make_tiny_tokenizer

    tokenizer = make_tiny_tokenizer()
    text_pool = datasets.Dataset.from_dict({"text": [f"row {i} " * (1 + i % 7) for i in range(len(pool))]})
    text_pool = text_pool.add_column("embedding", pool["embedding"])
    for method in ("kmq", "random", "kmeans-closest"):
        manifest = text_pool.diverse_select(max_tokens=600, tokenizer=tokenizer, method=method, k=8, **common)[1]
        out[f"tokens {method}"] = summary(manifest)
    return out


def iterative_call(tmp: str) -> dict:
    import torch

    from helpers import make_tiny_llama
    from hf_idsel import IterativeSelectionConfig, IterativeSelectionTrainer

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for c, (question, answer) in enumerate(
        [("What colour is {w}?", "It is blue."), ("What is {i} plus {i}?", "It is {j}."), ("Say hi to {w}.", "Hi {w}!")]
    ):
        centre = rng.normal(size=8)
        for i in range(20):
            w = ["sky", "sea", "coal", "snow", "plum"][i % 5]
            vector = centre + 0.1 * rng.normal(size=8)
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": question.format(w=w, i=i)},
                        {"role": "assistant", "content": answer.format(w=w, j=2 * i)},
                    ],
                    "embedding": (vector / np.linalg.norm(vector)).tolist(),
                }
            )
    pool = datasets.Dataset.from_list(rows)
    pool = pool.add_column("quality", rng.normal(size=len(pool)).tolist())
    exclude = [rows[i]["messages"][0]["content"] + " " + rows[i]["messages"][1]["content"] for i in (0, 21, 45)]
    out = {}
    for mode in ("continue", "restart", "exclude quality"):
        model, tokenizer = make_tiny_llama()
        extra = dict(quality_column="quality") if mode == "exclude quality" else {}
        args = IterativeSelectionConfig(
            output_dir=os.path.join(tmp, mode), budget=24, rounds=3, k="3", embedding_column="embedding",
            per_device_train_batch_size=4, learning_rate=5e-3, max_length=64, report_to="none", use_cpu=True,
            save_strategy="no", seed=0, disable_tqdm=True, round_mode=mode if mode != "exclude quality" else "continue",
            scorer="loss", **extra,
        )
        kwargs = dict(exclude_dataset=exclude, exclude_cosine_threshold=None) if mode == "exclude quality" else {}
        trainer = IterativeSelectionTrainer(model, args=args, train_dataset=pool, processing_class=tokenizer, **kwargs)
        trainer.train()
        manifest = trainer.selection_manifest("default")
        out[mode] = {
            **summary(manifest),
            "rounds": [
                {"selected": digest(r["selected"]), "weights": [round(w, 6) for w in r["weights"]]}
                for r in trainer.selection.rounds
            ],
        }
    return out


def main() -> None:
    import contextlib

    # The trainer logs to stdout: keep stdout for the JSON alone.
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(sys.stderr):
        cache_dir = os.environ.get("HF_IDSEL_DIGEST_CACHE", os.path.join(tmp, "cache"))
        result = {"static": static_calls(cache_dir), "iterative": iterative_call(tmp)}
    print(json.dumps(result, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
