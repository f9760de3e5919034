"""Fidelity experiment, the statistics and the provenance of a run: per-arm summaries, paired differences
with a Student-t interval and an exact sign-flip p-value, the pre-registered contrasts with Holm's
correction and their minimal detectable effects, the default-scorer decision rule, the commit a run was
made with, and merging runs only when they come from the same code.

Part of bench/fidelity.py (docs/fidelity.md).
"""

from __future__ import annotations

import hashlib
import os
import subprocess

import numpy as np

from fidelity_pool import DOMAINS, PRIMARY_METRIC

# Familywise level of the pre-registered contrasts, and the power at which minimal detectable effects are quoted.
ALPHA = 0.05
POWER = 0.8
# Paths whose changes change what a run computes: a tree dirty there is not the recorded commit.
CODE_PATHS = ("hf_idsel", "bench", "pyproject.toml", "tests/helpers.py")
# Metrics compared arm against arm, seed by seed.
PAIRED_METRICS = tuple(f"loss_{d}" for d in DOMAINS) + (PRIMARY_METRIC, "loss_mean_all", "mmlu_acc", "junk_share", "coverage")


def t_interval(values, level: float = 0.95) -> dict:
    """Mean of `values` with its two-sided Student-t confidence interval (n - 1 degrees of freedom).

    Args:
        values (`list[float]`):
            One paired difference per seed.
        level (`float`, *optional*, defaults to `0.95`):
            Coverage of the interval.

    Returns:
        `dict`: `mean`, `std` (sample), `n`, `low`, `high` (`None` below two values).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if n == 0:
        raise ValueError("t_interval of no values")
    out = {"mean": float(x.mean()), "std": None, "n": n, "low": None, "high": None}
    if n >= 2:
        std = float(x.std(ddof=1))
        half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / np.sqrt(n)
        out.update(std=std, low=out["mean"] - half, high=out["mean"] + half)
    return out


def t_pvalue(values) -> float | None:
    """Two-sided p-value of the one-sample t-test of mean 0 (`None` below two values; 1 when all are 0)."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if len(x) < 2:
        return None
    if np.all(x == x[0]):
        return 1.0 if x[0] == 0 else 0.0
    return float(stats.ttest_1samp(x, 0.0).pvalue)


def sign_flip_p(values) -> float:
    """Exact two-sided sign-flip permutation p-value of mean 0 for paired differences.

    Under the null each difference is as likely to have either sign, so the mean's null distribution is
    that of all 2^n sign patterns (enumerated, not sampled: `scipy.stats.permutation_test` with one sample
    and `permutation_type="samples"`). The p-value counts the patterns whose mean is at least as far from 0
    as the observed one, in either direction. Its smallest value is 2 / 2^n (2/64 at 6 seeds).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("sign_flip_p of no values")
    if len(x) == 1:
        return 1.0  # both signs give the same |mean|
    if len(x) > 20:
        raise ValueError(f"{len(x)} values: 2^{len(x)} sign patterns are too many to enumerate")
    result = stats.permutation_test((x,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                    alternative="two-sided")
    return float(min(1.0, result.pvalue))


def holm(pvalues) -> list:
    """Holm's step-down adjusted p-values, in the order given (`None` entries are left out and stay `None`).

    Sorted ascending, the i-th smallest of m p-values is multiplied by m - i + 1 (i from 1), made
    non-decreasing along the order and capped at 1; a hypothesis is rejected at familywise level a when
    its adjusted p-value is at most a. (scipy has only Benjamini-Hochberg; statsmodels is not a dependency.)
    """
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    adjusted = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def minimal_detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The true mean paired difference that a two-sided paired t-test at level `alpha` detects with
    probability `power`, from the paired differences' standard deviation `sd` over `n` seeds:
    `(t(1 - alpha / 2, n - 1) + t(power, n - 1)) * sd / sqrt(n)` (the usual t approximation of the
    noncentral-t power; `None` below two seeds)."""
    from scipy import stats

    if n < 2 or sd is None:
        return None
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd / np.sqrt(n))


# --------------------------------------------------------------------------------------------
# Summaries and paired differences
# --------------------------------------------------------------------------------------------


def metric_values(run: dict) -> dict:
    values = {f"loss_{d}": v for d, v in run["loss"].items()}
    for key in (PRIMARY_METRIC, "loss_mean_all", "mmlu_acc", "junk_share", "coverage", "mean_quality_selected", "steps",
                "train_s", "eval_s", "train_cpu_s", "eval_cpu_s"):
        if key in run:
            values[key] = run[key]
    return values


def summarize(runs: list[dict]) -> dict:
    """Mean, sample std and n over seeds of every metric, per arm (arms in run order)."""
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    summary = {}
    for arm in arms:
        mine = [metric_values(r) for r in runs if r["arm"] == arm]
        keys = list(dict.fromkeys(k for m in mine for k in m))
        summary[arm] = {}
        for key in keys:
            vals = np.asarray([m[key] for m in mine if key in m], dtype=np.float64)
            summary[arm][key] = {"mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                                 "n": int(len(vals))}
    random_cov = summary.get("random", {}).get("coverage", {}).get("mean")
    if random_cov:
        for arm in arms:
            summary[arm]["coverage_vs_random"] = summary[arm]["coverage"]["mean"] / random_cov
    return summary


def paired(values_by_seed: dict, reference_by_seed: dict) -> dict | None:
    """`value - reference` on the seeds both have: per-seed differences, their t-interval, t and sign-flip p-values."""
    seeds = sorted(s for s in values_by_seed if s in reference_by_seed)
    if not seeds:
        return None
    diffs = [values_by_seed[s] - reference_by_seed[s] for s in seeds]
    return {"seeds": seeds, "per_seed": diffs, **t_interval(diffs), "p_t": t_pvalue(diffs), "p_sign_flip": sign_flip_p(diffs)}


def paired_differences(runs: list[dict], reference: str, metrics=PAIRED_METRICS) -> dict:
    """`arm - reference` per seed, for every arm and metric (only seeds where both ran count)."""
    by_key = {(r["arm"], r["seed"]): metric_values(r) for r in runs}
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        if arm == reference:
            continue
        found = {}
        for metric in metrics:
            mine = {s: v[metric] for (a, s), v in by_key.items() if a == arm and metric in v}
            ref = {s: v[metric] for (a, s), v in by_key.items() if a == reference and metric in v}
            result = paired(mine, ref)
            if result is not None:
                found[metric] = result
        if found:
            out[arm] = found
    return out


def contrasts(runs: list[dict], pairs, metric: str = PRIMARY_METRIC, alpha: float = ALPHA, power: float = POWER) -> list[dict]:
    """The pre-registered contrasts `arm - reference` on `metric`, with Holm's correction across them.

    Each entry: the per-seed differences, mean, 95% t-interval, the t-test and sign-flip p-values, both
    Holm-adjusted over the contrasts present, `passes` (Holm-adjusted t p-value <= `alpha`), and the
    minimal detectable effect at this n: at `alpha / m` (Holm's first, strictest step; m contrasts) and
    `power`, from the paired standard deviation.
    """
    by_key = {(r["arm"], r["seed"]): metric_values(r).get(metric) for r in runs}
    out = []
    for arm, reference in pairs:
        mine = {s: v for (a, s), v in by_key.items() if a == arm and v is not None}
        ref = {s: v for (a, s), v in by_key.items() if a == reference and v is not None}
        result = paired(mine, ref)
        out.append({"arm": arm, "reference": reference, "metric": metric, **(result or {"n": 0})})
    m = len(pairs)
    for key in ("p_t", "p_sign_flip"):
        for entry, adjusted in zip(out, holm([e.get(key) for e in out])):
            entry[f"{key}_holm"] = adjusted
    for entry in out:
        entry["passes"] = entry.get("p_t_holm") is not None and entry["p_t_holm"] <= alpha
        entry["mde"] = minimal_detectable_effect(entry.get("std"), entry["n"], alpha / m, power) if entry["n"] >= 2 else None
        entry["mde_alpha"], entry["mde_power"] = alpha / m, power
    return out


def scorer_decision(contrast_results: list[dict], default_scorer: str, cheapest: str = "loss") -> dict:
    """The pre-registered rule for the default scorer (docs/fidelity.md, "Pre-registration"):

    the default stays `default_scorer` only if `iter-default` beats `iter-placebo` on the primary metric
    after Holm (adjusted t p-value <= ALPHA and a lower mean loss). Otherwise no scorer is shown to beat
    random cluster scores at this scale, and the default becomes the cheapest scorer, `cheapest`.
    """
    c = next((e for e in contrast_results if (e["arm"], e["reference"]) == ("iter-default", "iter-placebo")), None)
    if c is None or c["n"] < 2:
        return {"decided": False, "reason": "the iter-default vs iter-placebo contrast has fewer than 2 seeds"}
    beats = bool(c["passes"] and c["mean"] < 0)
    keep = default_scorer if beats else cheapest
    reason = (f"iter-default ({default_scorer}) beats the placebo after Holm: {c['mean']:+.4f}, Holm p {c['p_t_holm']:.4f}"
              if beats else
              f"iter-default ({default_scorer}) does not beat the placebo after Holm ({c['mean']:+.4f}, Holm p "
              f"{c['p_t_holm']:.4f}; minimal detectable effect {c['mde']:.4f}): no scorer is shown to beat random cluster "
              f"scores at this scale, so the default is the cheapest scorer, {cheapest!r}")
    return {"decided": True, "default_scorer": keep, "changed": keep != default_scorer, "was": default_scorer,
            "reason": reason}


# --------------------------------------------------------------------------------------------
# Provenance: the commit a run was made with, and merging runs of the same code only
# --------------------------------------------------------------------------------------------


def repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(args: list[str], cwd: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def provenance(root: str | None = None) -> dict:
    """The code a run is made with: `git rev-parse HEAD`, and whether the tree differs from it in
    `CODE_PATHS` (modified or untracked files), with those paths and a digest of the difference."""
    root = root or repo_root()
    try:
        commit = _git(["rev-parse", "HEAD"], root).strip()
        status = _git(["status", "--porcelain", "--untracked-files=all", "--", *CODE_PATHS], root)
        diff = _git(["diff", "HEAD", "--", *CODE_PATHS], root)
    except (OSError, subprocess.CalledProcessError) as error:
        return {"commit": None, "dirty": None, "error": f"not a git checkout: {error}"}
    paths = [line[3:] for line in status.splitlines() if line.strip()]
    digest = hashlib.sha256(diff.encode())
    for path in sorted(p for p, line in zip(paths, status.splitlines()) if line.startswith("??")):
        with open(os.path.join(root, path), "rb") as f:
            digest.update(path.encode() + b"\0" + f.read())
    return {"commit": commit, "dirty": bool(paths), "dirty_paths": paths, "diff_sha256": digest.hexdigest() if paths else None}


def check_mergeable(base: dict, extra: dict) -> None:
    """Refuse to merge runs unless both results come from one clean commit, one pool and one config
    (seeds and arms aside): a run is never merged with runs from other code."""
    a, b = base.get("code") or {}, extra.get("code") or {}
    if not a.get("commit") or not b.get("commit"):
        raise ValueError("cannot merge: a results file records no commit (made before commits were recorded, or outside git)")
    if a["commit"] != b["commit"]:
        raise ValueError(f"cannot merge runs of different commits ({a['commit'][:12]} and {b['commit'][:12]}): "
                         "re-run every arm at one commit")
    if a.get("dirty") or b.get("dirty"):
        raise ValueError("cannot merge: a run was made from a tree with uncommitted changes, so its code is not its commit")
    ignore = {"arms", "seeds", "selection_seeds", "threads"}
    ca = {k: v for k, v in base["config"].items() if k not in ignore}
    cb = {k: v for k, v in extra["config"].items() if k not in ignore}
    if ca != cb:
        raise ValueError(f"cannot merge runs of different configurations: {sorted(k for k in ca if ca[k] != cb.get(k))}")
    if base["pool"].get("digest") != extra["pool"].get("digest"):
        raise ValueError("cannot merge runs on different pools")
    both = {(r["arm"], r["seed"]) for r in base["runs"]} & {(r["arm"], r["seed"]) for r in extra["runs"]}
    if both:
        raise ValueError(f"cannot merge: both results hold runs {sorted(both)[:5]}")
