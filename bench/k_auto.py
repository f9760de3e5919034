"""k="auto" on synthetic pools with a known number of clusters: the k it finds, and what it costs.

    .venv/bin/python bench/k_auto.py [--quick] [--out results.json]

Each pool is `true_k` unit-vector blobs (64 dimensions; 384 is the default encoder's) of unequal sizes
(log-normal weights, sigma 0.5), each row its blob's centre plus Gaussian noise of norm about `spread`.
For every pool it runs:
- `choose_k` (the whole pool's clustering per candidate, sampled silhouette) on the default grid, and
  reports the chosen k, its ratio to the true k (target: within a factor of 1.25) and the silhouette curve;
- the picker hf_idsel used before (k-means and sklearn's silhouette on a 4,000-row sample, candidates up to
  a tenth of it), for comparison;
- one `kmeans` at the chosen k, the baseline of the time ratio.
`--quick` shrinks the pools for a smoke test; its numbers are not meaningful.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (rows, true k): the paper's k sweep spans 64 ... 8192 and peaked at 2048 on WizardLM.
# 64 dimensions rather than the encoder's 384: k-means and the silhouette cost scale with d on both sides of the
# time ratio, and the default run must fit on a 2-core machine.
FULL = {"pools": [(50_000, 150), (100_000, 600), (200_000, 2048), (50_000, 12)], "dim": 64, "spread": 0.6}
QUICK = {"pools": [(3_000, 12), (6_000, 48)], "dim": 64, "spread": 0.6}
WITHIN = 1.25


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


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Small pools: a smoke test.")
    parser.add_argument("--out", help="Write the results as JSON here.")
    parser.add_argument("--pools", nargs="+", metavar="ROWS:K", help="Only these pools, e.g. 200000:2048.")
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    pools = [tuple(int(v) for v in p.split(":")) for p in args.pools] if args.pools else cfg["pools"]
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
