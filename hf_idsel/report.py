"""Report: what a selection or an iterative run chose, as text, a markdown table and a plot.

Reads a [`Manifest`] (static selection) and, for iterative runs, the per-round state files that
`IterativeSelectionTrainer` writes to `output_dir/selection/round_<r>.json`.
"""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

from .errors import InvalidArgumentError
from .rounds import weight_entropy

ROUND_FILE = re.compile(r"round_(\d+)\.json$")


def format_report(manifest, *, top: int = 20) -> str:
    """A short human-readable report of a selection: sizes, k, and rows chosen per cluster."""
    sizes = manifest.cluster_sizes
    chosen = manifest.selected_per_cluster
    total = sum(sizes)
    budget = manifest.budget
    lines = [
        f"hf_idsel selection: {len(manifest.selected_indices)} of {manifest.pool['num_rows']} rows, method={manifest.method}, "
        f"k={manifest.k}, seed={manifest.seed}",
    ]
    if budget.get("max_tokens"):
        lines.append(f"token budget: {budget['tokens']} of {budget['max_tokens']} tokens ({budget['tokenizer']})")
    encoder = manifest.encoder or {}
    if "id" in encoder:
        lines.append(f"encoder: {encoder['id']} @ {encoder['revision']} (dim {encoder['dim']})")
    else:
        lines.append(f"embeddings: column {encoder.get('embedding_column')!r} (dim {encoder.get('dim')})")
    if manifest.k_selection.get("mode") == "auto":
        scores = manifest.k_selection["silhouette"]
        lines.append("k chosen by silhouette: " + ", ".join(f"k={c}: {float(s):.3f}" for c, s in scores.items()))
    if manifest.dedup:
        lines.append(f"de-duplication: removed {manifest.dedup['removed']} rows at cosine >= {manifest.dedup['threshold']}")
    lines.append("")
    lines.append(f"{'cluster':>7} {'pool rows':>9} {'pool %':>7} {'chosen':>6} {'chosen %':>8}")
    picked = max(sum(chosen), 1)
    order = sorted(range(len(sizes)), key=lambda j: (-sizes[j], j))
    for j in order[:top]:
        lines.append(
            f"{j:>7} {sizes[j]:>9} {100 * sizes[j] / total:>6.1f}% {chosen[j]:>6} {100 * chosen[j] / picked:>7.1f}%"
        )
    if len(order) > top:
        rest_sizes = sum(sizes[j] for j in order[top:])
        rest_chosen = sum(chosen[j] for j in order[top:])
        lines.append(f"{'others':>7} {rest_sizes:>9} {100 * rest_sizes / total:>6.1f}% {rest_chosen:>6} {100 * rest_chosen / picked:>7.1f}%")
    return "\n".join(lines)


def read_rounds(folder: str) -> list[dict]:
    """The round files of an iterative run, in round order, from its `output_dir` or its `selection/` folder."""
    if os.path.isdir(os.path.join(folder, "selection")):
        folder = os.path.join(folder, "selection")
    paths = [p for p in glob.glob(os.path.join(folder, "round_*.json")) if ROUND_FILE.search(p)]
    rounds = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
            if not isinstance(record, dict) or not isinstance(record.get("round"), int):
                raise ValueError("no round number")
        except (ValueError, OSError) as err:  # json's and the decoder's errors are ValueErrors
            raise InvalidArgumentError(f"{path}: not a readable round file ({err}); a truncated or corrupt file?") from None
        rounds.append(record)
    rounds.sort(key=lambda r: r["round"])
    return rounds


def format_rounds(rounds: list[dict], cluster_sizes=None, *, top: int = 20) -> str:
    """Rows chosen per cluster in each round and the cluster weights after it."""
    if not rounds:
        raise InvalidArgumentError("No round files found (expected selection/round_<r>.json from IterativeSelectionTrainer).")
    k = len(rounds[0]["weights"])
    lines = [
        f"hf_idsel iterative run: {len(rounds)} round(s), k={k}, scorer={rounds[-1].get('scorer')}, "
        f"{rounds[-1]['cumulative_size']} rows selected in all",
    ]
    for r in rounds:
        entropy = weight_entropy(r["weights"])
        lines.append(
            f"round {r['round']}: {len(r['selected'])} rows drawn, "
            + (f"{r.get('scored_rows', 0)} scored, " if r.get("scored", True) else "not scored, ")
            + f"weight entropy after it {entropy:.3f} (uniform {np.log(k):.3f})"
        )
    lines.append("")
    header = f"{'cluster':>7}" + ("" if cluster_sizes is None else f" {'pool rows':>9}")
    header += "".join(f" {'r' + str(r['round']) + ' rows':>8} {'w after':>7}" for r in rounds)
    lines.append(header)
    total = np.sum([r["selected_per_cluster"] for r in rounds], axis=0)
    order = sorted(range(k), key=lambda j: (-int(total[j]), j))
    for j in order[:top]:
        line = f"{j:>7}" + ("" if cluster_sizes is None else f" {cluster_sizes[j]:>9}")
        line += "".join(f" {r['selected_per_cluster'][j]:>8} {r['weights'][j]:>7.3f}" for r in rounds)
        lines.append(line)
    if k > top:
        lines.append(f"... {k - top} more clusters")
    return "\n".join(lines)


def markdown_table(manifest, rounds: list[dict] | None = None, *, top: int = 15) -> str:
    """A markdown table of the largest clusters: pool share, rows chosen and, for runs, weights per round."""
    sizes = np.asarray(manifest.cluster_sizes)
    chosen = np.asarray(manifest.selected_per_cluster)
    header = "| cluster | pool rows | pool % | chosen | chosen % |"
    rule = "|---:|---:|---:|---:|---:|"
    if rounds:
        header += "".join(f" weight after round {r['round']} |" for r in rounds)
        rule += "---:|" * len(rounds)
    lines = [header, rule]
    order = sorted(range(len(sizes)), key=lambda j: (-int(sizes[j]), j))
    picked = max(int(chosen.sum()), 1)
    for j in order[:top]:
        line = f"| {j} | {sizes[j]} | {100 * sizes[j] / sizes.sum():.1f} | {chosen[j]} | {100 * chosen[j] / picked:.1f} |"
        if rounds:
            line += "".join(f" {r['weights'][j]:.3f} |" for r in rounds)
        lines.append(line)
    if len(order) > top:
        lines.append(f"\n{len(order) - top} smaller clusters not shown; `manifest.json` has them all.")
    return "\n".join(lines)


def plot_selection(manifest, path: str, rounds: list[dict] | None = None) -> str:
    """Save a PNG: pool share vs chosen share per cluster (largest first) and, for runs, weights per round."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sizes = np.asarray(manifest.cluster_sizes, dtype=float)
    chosen = np.asarray(manifest.selected_per_cluster, dtype=float)
    order = np.argsort(-sizes, kind="stable")
    x = np.arange(len(order))
    panels = 2 if rounds else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(6.0, min(16.0, 0.12 * len(order) + 4)), 3.2 * panels), squeeze=False)
    ax = axes[0, 0]
    width = 0.45 if len(order) <= 64 else 1.0
    if len(order) <= 64:
        ax.bar(x - width / 2, 100 * sizes[order] / sizes.sum(), width, label="pool")
        ax.bar(x + width / 2, 100 * chosen[order] / max(chosen.sum(), 1), width, label="selected")
    else:
        ax.plot(x, 100 * sizes[order] / sizes.sum(), label="pool")
        ax.plot(x, 100 * chosen[order] / max(chosen.sum(), 1), label="selected")
    _cluster_ticks(ax, order)
    ax.set_ylabel("% of rows")
    ax.set_title(f"{manifest.method}: {int(chosen.sum())} of {int(sizes.sum())} rows, k={manifest.k}")
    ax.legend()
    if rounds:
        ax = axes[1, 0]
        uniform = np.full(len(order), 1.0 / len(order))
        ax.plot(x, uniform[order], color="gray", linestyle=":", label="start (uniform)")
        for r in rounds:
            ax.plot(x, np.asarray(r["weights"])[order], marker="o" if len(order) <= 32 else None, label=f"after round {r['round']}")
        _cluster_ticks(ax, order)
        ax.set_ylabel("sampling weight")
        ax.set_title("cluster weights per round")
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cluster_ticks(ax, order) -> None:
    ax.set_xlabel("cluster (largest first)")
    if len(order) <= 32:
        ax.set_xticks(np.arange(len(order)), [str(int(j)) for j in order])
