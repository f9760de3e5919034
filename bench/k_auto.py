"""k="auto" on pools with known structure: the k each rule picks, at which level of the pool, with the curve.

    .venv/bin/python bench/k_auto.py [--quick] [--out docs/k_auto_results.json] [--only nested builtin ...]

The default run studies four pools, each under the paper's rule (`k="auto"`: candidates 64 ... min(8192, n/16,
below budget/2), near-ties within the noise to the smallest k) at budgets of 5% and 10% of the pool (the paper
kept 10k of WizardLM's 196k rows, 5%), and under the search before it (`k="auto-global"`: 2 ... min(8192, n/16),
the highest silhouette):
- `flat`: 20,000 rows of 256 well-separated blobs (noise of norm 0.6), the case the earlier validation covered;
- `weak`: the same blobs with noise of norm 1.25, so the silhouette at k = 256 is about 0.17, as weakly separated
  as the paper's pools;
- `nested`: 20,000 rows of 8 groups of 32 sub-clusters (sub-cluster centres at norm 0.5 from their group's,
  rows at 0.3 from theirs): a pool with a top level and a finer one, like source > topic;
- `builtin`: `hf_idsel.load_builtin_pool()` (3,983 rows of gsm8k, HumanEval, chitchat, MMLU) embedded with the
  packaged MiniLM (cached under `--cache-dir`); its level is the source.
Synthetic pools have 64 dimensions (384 is MiniLM's), log-normal cluster sizes (sigma 0.5), seed 0. For each pick
it records the adjusted Rand index against every level, the silhouette curve (every candidate scored, with its
standard error), the curve's local maxima, the second seed's scores, the seed spread and the near-ties, and the
seconds it took. The results JSON records the commit it ran at. `--quick` shrinks the pools for a smoke test; its
numbers are not meaningful.

`--search-rows N` compares, on the synthetic pools at a budget of 5%, the paper's rule searching the whole pool
with the search on a seeded sample of N rows (at least 16 a cluster of the largest candidate) that `choose_k`
runs on pools above its `search_rows` (131,072): the k each picks, the ARI of the whole pool's clustering at it,
and the seconds of each, measured in the same run; `--blobs ROWS:K:SPREAD ...` runs it on blob pools of those sizes.

`measure` (used by `bench/run.py`, and by `--pools ROWS:K`) is the earlier check on flat blobs: `choose_k` on the
default grid against the picker hf_idsel used before (a 4,000-row sample) and one k-means at the chosen k.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (rows, true k): the paper's k sweep spans 64 ... 8192 and peaked at 2048 on WizardLM.
# 64 dimensions rather than the encoder's 384: k-means and the silhouette cost scale with d on both sides of the
# time ratio, and the default run must fit on a 2-core machine.
FULL = {"pools": [(50_000, 150), (100_000, 600), (200_000, 2048), (50_000, 12)], "dim": 64, "spread": 0.6}
QUICK = {"pools": [(3_000, 12), (6_000, 48)], "dim": 64, "spread": 0.6}
WITHIN = 1.25
# The default run: pools with known levels, each under both rules.
STUDY = {
    "flat": {"kind": "blobs", "rows": 20_000, "true_k": 256, "spread": 0.6},
    "weak": {"kind": "blobs", "rows": 20_000, "true_k": 256, "spread": 1.25},
    "nested": {"kind": "nested", "rows": 20_000, "groups": 8, "per_group": 32, "sub_spread": 0.5, "spread": 0.3},
    "builtin": {"kind": "builtin"},
}
QUICK_STUDY = {
    "flat": {"kind": "blobs", "rows": 3_000, "true_k": 24, "spread": 0.6},
    "nested": {"kind": "nested", "rows": 3_000, "groups": 4, "per_group": 8, "sub_spread": 0.5, "spread": 0.3},
    "builtin": {"kind": "builtin", "rows_per_source": {"gsm8k": 100, "humaneval": 100, "chitchat": 100, "mmlu": 100}},
}
BUDGET_FRACTIONS = (0.05, 0.10)
DIM = 64


def synthetic_pool(n: int, true_k: int, dim: int, spread: float, seed: int = 0):
    """`(embeddings, labels)`: `true_k` blobs of unequal sizes on the unit sphere."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(true_k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.lognormal(sigma=0.5, size=true_k)
    labels = rng.choice(true_k, size=n, p=weights / weights.sum())
    x = centres[labels] + rng.normal(scale=spread / math.sqrt(dim), size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def old_picker(x, seed: int = 0):
    """hf_idsel's k="auto" before: k-means and the silhouette of a 4,000-row sample, k up to 362."""
    import numpy as np
    from sklearn.metrics import silhouette_score

    from hf_idsel.cluster import kmeans

    rng = np.random.default_rng(seed)
    sample = x[np.sort(rng.choice(len(x), size=min(len(x), 4000), replace=False))]
    grid, value = [], 2.0
    while round(value) <= len(sample) // 10:
        if not grid or round(value) != grid[-1]:
            grid.append(int(round(value)))
        value *= math.sqrt(2)
    scores = {}
    for k in grid:
        labels = kmeans(sample, k, seed=seed, warn_empty=False).labels
        scores[k] = float(silhouette_score(sample, labels, metric="cosine", random_state=seed))
    return max(grid, key=lambda k: (scores[k], -k)), scores


def measure(n: int, true_k: int, dim: int, spread: float, seed: int = 0) -> dict:
    """The earlier flat-blob check: `choose_k` with its default rule and no budget, the picker before it, one k-means."""
    from sklearn.metrics import adjusted_rand_score

    from hf_idsel.cluster import choose_k, kmeans

    x, truth = synthetic_pool(n, true_k, dim, spread, seed)
    start = time.perf_counter()
    result = choose_k(x, seed=seed)
    auto_s = time.perf_counter() - start
    start = time.perf_counter()
    once = kmeans(x, result.k, seed=seed)
    kmeans_s = time.perf_counter() - start
    start = time.perf_counter()
    old_k, _ = old_picker(x, seed)
    old_s = time.perf_counter() - start
    ratio = result.k / true_k
    return {
        "rows": n, "dim": dim, "spread": spread, "true_k": true_k,
        "chosen_k": result.k, "ratio_to_true_k": ratio, "within_1_25": 1 / WITHIN <= ratio <= WITHIN,
        "ari_at_chosen_k": float(adjusted_rand_score(truth, result.clustering.labels)),
        "silhouette": {str(k): round(s, 5) for k, s in result.silhouette.items()},
        "standard_error_max": max(result.standard_error.values()),
        "candidates_tried": len(result.silhouette), "sample_size": result.sample_size,
        "k_auto_s": auto_s, "kmeans_at_chosen_k_s": kmeans_s, "time_ratio": auto_s / kmeans_s,
        "old_picker_k": old_k, "old_picker_s": old_s,
    }


def nested_pool(n: int, groups: int, per_group: int, dim: int, sub_spread: float, spread: float, seed: int = 0):
    """`(embeddings, group labels, sub-cluster labels)`: `groups` unit centres, each with `per_group` sub-cluster
    centres at noise of norm about `sub_spread` from it, rows at noise of norm about `spread` from theirs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    top = rng.normal(size=(groups, dim))
    top /= np.linalg.norm(top, axis=1, keepdims=True)
    subs = np.repeat(top, per_group, axis=0) + rng.normal(scale=sub_spread / math.sqrt(dim), size=(groups * per_group, dim))
    subs /= np.linalg.norm(subs, axis=1, keepdims=True)
    weights = rng.lognormal(sigma=0.5, size=groups * per_group)
    labels = rng.choice(groups * per_group, size=n, p=weights / weights.sum())
    x = subs[labels] + rng.normal(scale=spread / math.sqrt(dim), size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels // per_group, labels


def builtin_pool_vectors(encoder: str | None, cache_dir: str | None, rows_per_source=None):
    """`(embeddings, source labels, encoder id)` of the built-in pool, embedded once and then read from the cache."""
    import numpy as np

    import hf_idsel
    from hf_idsel.embed import DEFAULT_ENCODER, embed_dataset
    from hf_idsel.render import resolve_render_options

    pool = hf_idsel.load_builtin_pool(rows_per_source)
    vectors, identity = embed_dataset(
        pool, resolve_render_options(pool.column_names), encoder=encoder or DEFAULT_ENCODER, cache_dir=cache_dir
    )
    sources = sorted(set(pool["origin"]))
    labels = np.array([sources.index(s) for s in pool["origin"]])
    return np.asarray(vectors, dtype=np.float32), labels, getattr(identity, "id", str(encoder or DEFAULT_ENCODER))


def pool_and_levels(spec: dict, encoder: str | None, cache_dir: str | None, seed: int = 0):
    """`(embeddings, {level: labels}, description)` of one pool of the study."""
    if spec["kind"] == "blobs":
        x, truth = synthetic_pool(spec["rows"], spec["true_k"], DIM, spec["spread"], seed)
        return x, {"blobs": truth}, {"dim": DIM, **spec}
    if spec["kind"] == "nested":
        x, groups, subs = nested_pool(spec["rows"], spec["groups"], spec["per_group"], DIM, spec["sub_spread"], spec["spread"], seed)
        return x, {"group": groups, "sub-cluster": subs}, {"dim": DIM, **spec}
    x, sources, encoder_id = builtin_pool_vectors(encoder, cache_dir, spec.get("rows_per_source"))
    return x, {"source": sources}, {"dim": int(x.shape[1]), "rows": len(x), "encoder": encoder_id, **spec}


def pick(x, levels: dict, *, rule: str, budget=None, seed: int = 0, search_rows: int | None = None) -> dict:
    """One `choose_k` call: its manifest record, the seconds it took, and the ARI of its clustering at every level."""
    from sklearn.metrics import adjusted_rand_score

    from hf_idsel.cluster import SEARCH_ROWS, choose_k

    start = time.perf_counter()
    result = choose_k(x, budget=budget, rule=rule, seed=seed, search_rows=search_rows or SEARCH_ROWS)
    seconds = time.perf_counter() - start
    return {
        **result.record(),
        "seconds": round(seconds, 2),
        "ari": {name: round(float(adjusted_rand_score(labels, result.clustering.labels)), 4) for name, labels in levels.items()},
    }


def study(name: str, spec: dict, *, encoder=None, cache_dir=None, seed: int = 0) -> dict:
    """Both rules on one pool: the global search once, the paper's rule at each budget fraction."""
    import numpy as np

    from hf_idsel.cluster import choose_k, default_k_candidates, local_maxima, silhouette

    x, levels, described = pool_and_levels(spec, encoder, cache_dir, seed)
    n = len(x)
    out = {
        "pool": name, **described, "rows": n,
        "levels": {level: int(len(np.unique(labels))) for level, labels in levels.items()},
        # The silhouette of each level's own labels (every row scored when the pool has at most 20,000).
        "silhouette_of_levels": {level: round(silhouette(x, labels, seed=seed)[0], 5) for level, labels in levels.items()},
        "global": pick(x, levels, rule="global", seed=seed),
        "paper": [],
    }
    for fraction in BUDGET_FRACTIONS:
        budget = int(round(fraction * n))
        out["paper"].append({"budget_fraction": fraction, **pick(x, levels, rule="paper", budget=budget, seed=seed)})
    # One seed: a k scored by several calls got the same clustering and rows, so one curve holds them all. The grid
    # points no search tried are scored too, so the curve covers every point from 2 to min(8192, n/16).
    curve, errors = {}, {}
    for record in [out["global"], *out["paper"]]:
        for k, score in record["silhouette"].items():
            assert curve.setdefault(k, score) == score, (name, k)
            errors[k] = record["standard_error"][k]
    missing = [k for k in default_k_candidates(n, rule="global") if str(k) not in curve and k < n]
    if missing:
        rest = choose_k(x, missing, rule="global", seed=seed)
        curve.update({str(k): v for k, v in rest.silhouette.items()})
        errors.update({str(k): v for k, v in rest.standard_error.items()})
    order = sorted(curve, key=int)
    out["curve"] = {k: curve[k] for k in order}
    out["curve_standard_error"] = {k: errors[k] for k in order}
    out["curve_local_maxima"] = local_maxima({int(k): curve[k] for k in order})
    return out


def _describe(record: dict) -> str:
    ties = record.get("ties")
    tie = f", best {record['best']}, near-ties {ties['tied']}, seed spread {record['seed_check']['spread']:.4f}" if ties else ""
    return f"k={record['chosen']} (ARI {record['ari']}{tie}; local maxima {record['local_maxima']}; {record['seconds']:.0f} s)"


def _commit() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": git("status", "--porcelain", "--untracked-files=no").splitlines()}


def run_study(names, *, quick: bool, out: str | None, encoder=None, cache_dir=None) -> dict:
    specs = QUICK_STUDY if quick else STUDY
    results = {
        **_commit(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
        "quick": quick, "budget_fractions": list(BUDGET_FRACTIONS), "seed": 0, "pools": [],
    }
    for name in names or specs:
        r = study(name, specs[name], encoder=encoder, cache_dir=cache_dir)
        results["pools"].append(r)
        print(f"[k-auto] {name} ({r['rows']:,} rows, levels {r['levels']}): global {_describe(r['global'])}", flush=True)
        print(f"[k-auto]   curve {r['curve']}; local maxima {r['curve_local_maxima']}", flush=True)
        for p in r["paper"]:
            print(f"[k-auto]   paper, budget {p['budget']} rows: {_describe(p)}", flush=True)
        if out:
            with open(out, "w") as f:
                json.dump(results, f, indent=1)
    return results


def compare_search(names, search_rows: int, *, out: str | None, seed: int = 0, blobs=None) -> dict:
    """The paper's rule at a 5% budget on each synthetic pool, searching the whole pool and a seeded sample.
    `blobs`: `[(rows, true_k, spread)]` blob pools to use instead of the study's."""
    results = {
        **_commit(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": [round(v, 2) for v in os.getloadavg()]},
        "search_rows": search_rows, "budget_fraction": BUDGET_FRACTIONS[0], "seed": seed, "pools": [],
    }
    specs = {f"blobs-{rows}-{true_k}-{spread:g}": {"kind": "blobs", "rows": rows, "true_k": true_k, "spread": spread}
             for rows, true_k, spread in blobs} if blobs else {n: STUDY[n] for n in names or STUDY if STUDY[n]["kind"] != "builtin"}
    for name, spec in specs.items():
        x, levels, described = pool_and_levels(spec, None, None, seed)
        budget = int(round(BUDGET_FRACTIONS[0] * len(x)))
        whole = pick(x, levels, rule="paper", budget=budget, seed=seed, search_rows=len(x))
        sampled = pick(x, levels, rule="paper", budget=budget, seed=seed, search_rows=search_rows)
        r = {"pool": name, **described, "budget": budget, "whole": whole, "sampled": sampled,
             "same_k": whole["chosen"] == sampled["chosen"], "time_ratio": round(sampled["seconds"] / whole["seconds"], 3)}
        results["pools"].append(r)
        print(f"[k-auto] {name}: whole pool {_describe(whole)}; sample of {sampled['estimator'].get('search_rows', len(x)):,} "
              f"rows {_describe(sampled)}; time ratio {r['time_ratio']:.2f}", flush=True)
        if out:
            with open(out, "w") as f:
                json.dump(results, f, indent=1)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Small pools: a smoke test.")
    parser.add_argument("--out", help="Write the results as JSON here.")
    parser.add_argument("--only", nargs="+", choices=sorted(STUDY), help="Only these pools of the study.")
    parser.add_argument("--encoder", default=None, help="Encoder of the built-in pool (default: the packaged MiniLM; 'static' is faster).")
    parser.add_argument("--cache-dir", default=None, help="Where the built-in pool's vectors are cached.")
    parser.add_argument("--pools", nargs="+", metavar="ROWS:K", help="The earlier flat-blob check (`measure`) on these pools instead.")
    parser.add_argument("--search-rows", type=int, default=None,
                        help="Compare the whole-pool search with a search on a seeded sample of this many rows instead.")
    parser.add_argument("--blobs", nargs="+", metavar="ROWS:K:SPREAD",
                        help="With --search-rows: blob pools of these sizes (noise norm SPREAD) instead of the study's.")
    args = parser.parse_args(argv)
    if args.search_rows:
        blobs = [(int(r), int(k), float(sp)) for r, k, sp in (b.split(":") for b in args.blobs or [])]
        return compare_search(args.only, args.search_rows, out=args.out, blobs=blobs)
    if not args.pools:
        return run_study(args.only, quick=args.quick, out=args.out, encoder=args.encoder, cache_dir=args.cache_dir)
    cfg = QUICK if args.quick else FULL
    pools = [tuple(int(v) for v in p.split(":")) for p in args.pools]
    results = []
    for n, true_k in pools:
        r = measure(n, true_k, cfg["dim"], cfg["spread"])
        results.append(r)
        print(
            f"[k-auto] {n:,} rows, true k={true_k}: chose k={r['chosen_k']} (x{r['ratio_to_true_k']:.2f}, "
            f"ARI {r['ari_at_chosen_k']:.3f}) in {r['k_auto_s']:.1f} s = {r['time_ratio']:.1f}x one k-means at k "
            f"({r['kmeans_at_chosen_k_s']:.1f} s); old picker: k={r['old_picker_k']}",
            flush=True,
        )
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
