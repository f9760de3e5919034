"""Fidelity experiment, the report: markdown tables and plots drawn from a results dict alone (so
`--render-only` redraws them from the JSON).

Part of bench/fidelity.py (docs/fidelity.md).
"""

from __future__ import annotations

import os

import numpy as np

from fidelity_arms import ARMS, REFERENCE_ARMS, Arm
from fidelity_pool import DOMAINS, JUNK_KINDS, PRIMARY_DOMAINS, PRIMARY_METRIC
from fidelity_stats import t_interval

# CPU seconds per wall second of a 2-thread run on the idle 2-core machine (the v1 run, 2026-12-02:
# 1.85-1.93 for training, 1.94-1.98 for evaluation); converts CPU time measured on a loaded machine
# into the wall time of an idle one.
IDLE_CPU_PER_WALL = 1.9


def _fmt(v, digits=3, sign=True) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _p(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown_table(results: dict) -> str:
    """Mean +- std over seeds per arm: per-domain held-out answer loss, the primary metric, MMLU accuracy,
    junk share, coverage."""
    summary = results["summary"]
    domains = [d for d in DOMAINS if any(f"loss_{d}" in s for s in summary.values())]
    head = (["arm"] + [f"loss {d}" + (" (letter)" if d == "mmlu" else "") for d in domains]
            + ["answer loss (primary)", "loss, all 4", "MMLU acc", "junk share", "coverage (vs random)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = results.get("base_model")
    if base:
        row = (["untrained"] + [f"{base['loss'][d]:.3f}" for d in domains]
               + [f"{base[PRIMARY_METRIC]:.3f}", f"{base['loss_mean_all']:.3f}", _fmt(base.get("mmlu_acc"), sign=False), "-", "-"])
        lines.append("| " + " | ".join(row) + " |")

    def cell(s, key, fmt="{:.3f}"):
        if key not in s:
            return "-"
        return (fmt + " ± " + fmt).format(s[key]["mean"], s[key]["std"])

    for arm, s in summary.items():
        cov = cell(s, "coverage", "{:.4f}")
        if "coverage_vs_random" in s:
            cov += f" ({s['coverage_vs_random']:.2f})"
        row = ([arm] + [cell(s, f"loss_{d}") for d in domains]
               + [cell(s, PRIMARY_METRIC), cell(s, "loss_mean_all"), cell(s, "mmlu_acc"), cell(s, "junk_share"), cov])
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def contrast_table(results: dict) -> str:
    """The pre-registered contrasts on the primary metric, with both p-values, Holm's adjustment and the MDE."""
    rows = results.get("contrasts") or []
    if not rows:
        return ""
    lines = [f"Pre-registered contrasts on `{PRIMARY_METRIC}` (held-out answer loss over {', '.join(PRIMARY_DOMAINS)}; "
             "mean paired difference over seeds, 95% t-interval, p-values raw and Holm-adjusted over the "
             f"{len(rows)} contrasts; MDE: the true difference detected with {rows[0]['mde_power']:.0%} power by a "
             f"two-sided paired t-test at {rows[0]['mde_alpha']:.4f}):", "",
             "| contrast | Δ [95% t-interval] | p (t) | p (t, Holm) | p (sign-flip) | p (sign-flip, Holm) | MDE | passes | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        if c["n"] == 0:
            lines.append(f"| {c['arm']} - {c['reference']} | not run | - | - | - | - | - | - | 0 |")
            continue
        lines.append(f"| {c['arm']} - {c['reference']} | {_fmt(c['mean'], 4)} [{_fmt(c['low'], 4)}, {_fmt(c['high'], 4)}] | "
                     f"{_p(c.get('p_t'))} | {_p(c.get('p_t_holm'))} | {_p(c.get('p_sign_flip'))} | {_p(c.get('p_sign_flip_holm'))} | "
                     f"{_fmt(c.get('mde'), 4, sign=False)} | {'yes' if c['passes'] else 'no'} | {c['n']} |")
    decision = results.get("scorer_decision")
    if decision:
        lines.append("")
        lines.append(f"Default scorer, by the pre-registered rule: {decision.get('reason', decision)}.")
    return "\n".join(lines)


def paired_table(results: dict, reference: str,
                 metrics=(PRIMARY_METRIC, "loss_gsm8k", "loss_humaneval", "loss_chitchat", "loss_mmlu", "mmlu_acc", "junk_share",
                          "coverage")) -> str:
    """Mean paired difference `arm - reference` over seeds with its 95% t-interval and sign-flip p; `*` marks
    an interval that excludes 0."""
    paired = results.get("paired", {}).get(reference)
    if not paired:
        return ""
    head = ["arm"] + [f"Δ {m.replace('_', ' ')}" for m in metrics] + ["seeds"]
    lines = [f"Paired differences against `{reference}` (mean over seeds [95% t-interval] (sign-flip p); * = the "
             "interval excludes 0; not corrected for multiplicity):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm, values in paired.items():
        cells = []
        for m in metrics:
            v = values.get(m)
            if v is None:
                cells.append("-")
            elif v["low"] is None:
                cells.append(f"{v['mean']:+.3f}")
            else:
                star = "*" if v["low"] > 0 or v["high"] < 0 else ""
                cells.append(f"{v['mean']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]{star} ({v['p_sign_flip']:.2f})")
        n = max(v["n"] for v in values.values())
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def selection_table(results: dict) -> str:
    """What each arm trained on, mean over seeds: rows per domain and per junk kind, reference quality."""
    runs = results["runs"]
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    head = ["arm"] + [f"{d} rows" for d in DOMAINS] + [f"{k} rows" for k in JUNK_KINDS] + ["mean quality"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pool = results["pool"]
    share = [pool["clean_rows_per_domain"][d] / pool["rows"] for d in DOMAINS]
    share += [pool["rows_per_kind"][k] / pool["rows"] for k in JUNK_KINDS]
    budget = results["config"]["budget"]
    lines.append("| pool share x budget | " + " | ".join(f"{s * budget:.1f}" for s in share) + " | - |")
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        cells = [f"{np.mean([r['selected_per_domain'][d] for r in mine]):.1f}" for d in DOMAINS]
        cells += [f"{np.mean([r['selected_per_kind'][k] for r in mine]):.1f}" for k in JUNK_KINDS]
        cells.append(f"{np.mean([r['mean_quality_selected'] for r in mine]):.2f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def k_table(results: dict) -> str:
    """The k that k="auto" chose for each seed, and its silhouette curve."""
    lines = ["| seed | k | candidates: silhouette |", "|---|---|---|"]
    for key, c in results["clustering"].items():
        sel = c.get("k_selection") or {}
        curve = ", ".join(f"{k}: {v:.3f}" for k, v in (sel.get("silhouette") or {}).items())
        lines.append(f"| {c['seed']} | {c['k']} | {curve or sel.get('mode', '-')} |")
    return "\n".join(lines)


def selection_only_table(results: dict) -> str:
    """The selection-only part: mean over its seeds per arm, and paired differences against random."""
    part = results.get("selection_only")
    if not part:
        return ""
    lines = [f"Selection only ({part['seeds']} seeds, no training; arms {', '.join(part['arms'])}; placebo scale "
             f"{part['placebo_scale']:.4f}): mean ± std over seeds, and Δ against random [95% t-interval]:", "",
             "| arm | junk share | Δ junk share | coverage | Δ coverage | " + " | ".join(f"{d} share" for d in DOMAINS) + " |",
             "|" + "---|" * (5 + len(DOMAINS))]
    for arm, s in part["summary"].items():
        d = part["paired_vs_random"].get(arm, {})

        def delta(metric):
            v = d.get(metric)
            return "-" if v is None else f"{v['mean']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]"

        shares = " | ".join(f"{s['domain_share'][dom]['mean']:.3f}" for dom in DOMAINS)
        lines.append(f"| {arm} | {s['junk_share']['mean']:.4f} ± {s['junk_share']['std']:.4f} | {delta('junk_share')} | "
                     f"{s['coverage']['mean']:.4f} ± {s['coverage']['std']:.4f} | {delta('coverage')} | {shares} |")
    per_seed = part.get("per_seed") or {}
    if "kmq" in per_seed:
        metrics = ("junk_share", "coverage", "mean_quality_selected")
        lines += ["", "Paired against `kmq`, seed by seed (Δ [95% t-interval]; * = the interval excludes 0):", "",
                  "| arm | " + " | ".join(f"Δ {m.replace('_', ' ')}" for m in metrics) + " |", "|" + "---|" * (1 + len(metrics))]
        for arm, values in per_seed.items():
            if arm in ("kmq", "random"):
                continue
            cells = []
            for m in metrics:
                v = t_interval([a[m] - b[m] for a, b in zip(values, per_seed["kmq"])])
                star = "*" if v["low"] is not None and (v["low"] > 0 or v["high"] < 0) else ""
                cells.append(f"{v['mean']:+.4f} [{v['low']:+.4f}, {v['high']:+.4f}]{star}")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        ks = part.get("k_per_seed") or []
        if ks:
            counts = {k: ks.count(k) for k in sorted(set(ks))}
            lines += ["", "k chosen by `k=\"auto\"` over the seeds: " + ", ".join(f"k = {k} in {n}" for k, n in counts.items()) + "."]
    return "\n".join(lines)


def time_table(results: dict) -> str:
    """Wall and CPU time per arm (train + evaluate, mean over seeds), and what the default arm set costs on
    the idle machine: CPU seconds / IDLE_CPU_PER_WALL (wall time measured on a loaded machine says little)."""
    runs, timings = results["runs"], results["timings"]
    seeds = len({r["seed"] for r in runs})
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    lines = ["| arm | train s | evaluate s | train CPU s | evaluate CPU s | idle-machine estimate s |", "|---|---|---|---|---|---|"]
    cpu = {}
    for a in arms:
        mine = [r for r in runs if r["arm"] == a]
        cpu[a] = float(np.mean([r["train_cpu_s"] + r["eval_cpu_s"] for r in mine]))
        lines.append(f"| {a} | {np.mean([r['train_s'] for r in mine]):.0f} | {np.mean([r['eval_s'] for r in mine]):.0f} | "
                     f"{np.mean([r['train_cpu_s'] for r in mine]):.0f} | {np.mean([r['eval_cpu_s'] for r in mine]):.0f} | "
                     f"{cpu[a] / IDLE_CPU_PER_WALL:.0f} |")
    setup_cpu = timings.get("setup_cpu_s", 0.0)
    sel_cpu = timings.get("selection_only_cpu_s", 0.0)
    lines.append(f"\nSetup: {timings.get('setup_s', 0):.0f} s wall, {setup_cpu:.0f} s CPU. Selection-only part: "
                 f"{timings.get('selection_only_s', 0):.0f} s wall, {sel_cpu:.0f} s CPU. This run: {len(arms)} arms x {seeds} "
                 f"seeds in {timings['total_wall_s'] / 60:.1f} min wall, {timings.get('total_cpu_s', 0) / 60:.1f} min CPU.")
    default = results.get("default_arms") or []
    if default and set(default) <= set(arms):
        per_seed = sum(cpu[a] for a in default)
        n = results["config"]["seeds"]
        total = (setup_cpu + n * per_seed) / IDLE_CPU_PER_WALL
        lines.append(f"The default arm set ({len(default)} arms) x {n} seeds on the idle machine: (setup {setup_cpu:.0f} + {n} x "
                     f"{per_seed:.0f}) CPU s / {IDLE_CPU_PER_WALL} = {total / 60:.1f} min, plus the selection-only part.")
    return "\n".join(lines)


def render_tables(results: dict) -> str:
    """Every table the run prints."""
    parts = [markdown_table(results), contrast_table(results)]
    parts += [t for t in (paired_table(results, ref) for ref in REFERENCE_ARMS) if t]
    parts += [selection_table(results), k_table(results), selection_only_table(results), time_table(results)]
    return "\n\n".join(p for p in parts if p)


def plot(results: dict, out_dir: str) -> list[str]:
    """Bar charts with std error bars: per-domain loss; junk share, coverage, MMLU accuracy; per-round junk."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    arms = list(summary)
    colors = plt.get_cmap("tab10")(np.arange(len(arms)) % 10)
    written = []

    keys = [f"loss_{d}" for d in DOMAINS if f"loss_{d}" in summary[arms[0]]] + [PRIMARY_METRIC]
    names = [k.replace("loss_", "") for k in keys]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        ax.bar(np.arange(len(keys)) + (i - (len(arms) - 1) / 2) * width, [summary[arm][k]["mean"] for k in keys], width,
               yerr=[summary[arm][k]["std"] for k in keys], capsize=2, label=arm, color=colors[i])
    base = results.get("base_model")
    if base:
        for j, k in enumerate(keys):
            value = base[PRIMARY_METRIC] if k == PRIMARY_METRIC else base["loss"][k[len("loss_"):]]
            ax.hlines(value, j - 0.45, j + 0.45, colors="k", linestyles="dashed", label="untrained" if j == 0 else None)
    ax.set_xticks(np.arange(len(keys)), names)
    ax.set_ylabel("held-out answer NLL (nats/scored token)")
    ax.set_title(f"Held-out answer loss (MMLU: the letter only; mean ± std over {results['config']['seeds']} seeds)")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    written.append(os.path.join(out_dir, "fidelity_loss.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    panels = [("junk_share", "share of planted junk selected"), ("coverage", "coverage: mean 1 - cos to nearest selected"),
              ("mmlu_acc", "MMLU accuracy (held out)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 4))
    for ax, (key, title) in zip(axes, panels):
        present = [a for a in arms if key in summary[a]]
        ax.bar(range(len(present)), [summary[a][key]["mean"] for a in present],
               yerr=[summary[a][key]["std"] for a in present], capsize=3, color=[colors[arms.index(a)] for a in present])
        ax.set_xticks(range(len(present)), present, rotation=35, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        if key == "junk_share":
            ax.axhline(results["pool"]["junk_fraction"], color="k", ls="--", lw=1, label="pool junk fraction")
            ax.legend(fontsize=8)
        if key == "mmlu_acc":
            ax.axhline(0.25, color="grey", ls=":", lw=1, label="chance")
            if base and "mmlu_acc" in base:
                ax.axhline(base["mmlu_acc"], color="k", ls="--", lw=1, label="untrained")
            ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(os.path.join(out_dir, "fidelity_selection.png"))
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    iterative = [r for r in results["runs"] if r.get("rounds")]
    if iterative:
        fig, ax = plt.subplots(figsize=(6, 4))
        for arm in [a for a in arms if ARMS.get(a, Arm("static")).kind == "iterative"]:
            mine = [r for r in iterative if r["arm"] == arm]
            shares = np.asarray([[rnd["junk_share"] for rnd in r["rounds"]] for r in mine])
            x = np.arange(1, shares.shape[1] + 1)
            ax.errorbar(x, shares.mean(0), yerr=shares.std(0, ddof=1) if len(mine) > 1 else None, marker="o", capsize=3,
                        label=arm, color=colors[arms.index(arm)])
        ax.axhline(results["pool"]["junk_fraction"], color="k", ls="--", lw=1, label="pool junk fraction")
        ax.set_xlabel("round")
        ax.set_xticks(x)
        ax.set_title("junk share of each round's draw", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(os.path.join(out_dir, "fidelity_rounds.png"))
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
