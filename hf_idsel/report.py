"""Report: what a selection or an iterative run chose, as text, a markdown table and a plot.

Reads a [`Manifest`] (static selection) and, for iterative runs, the round records ([`RoundRecord`])
that `IterativeSelectionTrainer` writes to `output_dir/selection/round_<r>.json`.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from .describe import short_terms
from .errors import InvalidArgumentError
from .hub_layout import SELECTION_DIR, round_of_file
from .rounds import RoundRecord, read_round_file, round_records, weight_entropy
from .target import affinity_split

WEIGHT_CHANGE_MARGIN = 0.1  # a cluster is favoured (cut) when its final weight is 10% above (below) uniform


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
    elif manifest.encoder is None:
        lines.append(f"embeddings: none ({manifest.method} draws without vectors; no k-means)")
    else:
        lines.append(f"embeddings: column {encoder.get('embedding_column')!r} (dim {encoder.get('dim')})")
    lines += silhouette_curve(manifest.k_selection, manifest.k)
    if manifest.dedup:
        lines.append(f"de-duplication: removed {manifest.dedup['removed']} rows at cosine >= {manifest.dedup['threshold']}")
    if manifest.decontamination:
        lines.append(f"decontamination: {decontamination_summary(manifest.decontamination)}")
    if manifest.target:
        lines.append(f"target: {target_summary(manifest.target)}")
        lines += [f"  {row}" for row in target_split_rows(manifest)]
    descriptions = manifest.cluster_descriptions
    what, names = cluster_labels(manifest)
    lines.append("")
    lines.append(f"{what:>7} {'pool rows':>9} {'pool %':>7} {'chosen':>6} {'chosen %':>8}" + ("  terms" if descriptions else ""))
    picked = max(sum(chosen), 1)
    order = sorted(range(len(sizes)), key=lambda j: (-sizes[j], j))
    for j in order[:top]:
        lines.append(
            f"{names[j]:>7} {sizes[j]:>9} {100 * sizes[j] / total:>6.1f}% {chosen[j]:>6} {100 * chosen[j] / picked:>7.1f}%"
            + (f"  {short_terms(descriptions[j], 5)}" if descriptions else "")
        )
    if len(order) > top:
        rest_sizes = sum(sizes[j] for j in order[top:])
        rest_chosen = sum(chosen[j] for j in order[top:])
        lines.append(f"{'others':>7} {rest_sizes:>9} {100 * rest_sizes / total:>6.1f}% {rest_chosen:>6} {100 * rest_chosen / picked:>7.1f}%")
    if descriptions:
        lines.append("")
        lines.append("Most representative row of each cluster (nearest its centroid):")
        lines += [f"{j:>7}  {_first_example(descriptions[j])}" for j in order[:top]]
    return "\n".join(lines)


def cluster_labels(manifest) -> tuple[str, list[str]]:
    """What a manifest's clusters are and each one's label in a table: k-means clusters by id (`"cluster"`), or the
    groups a method that draws without vectors took them from: sources by name (`"source"`), the whole pool."""
    mode = manifest.k_selection.get("mode")
    if mode == "source":
        return "source", [str(name) for name in manifest.k_selection["sources"]]
    if mode == "pool":
        return "group", ["pool"]
    return "cluster", [str(j) for j in range(manifest.k)]


def silhouette_curve(k_selection: dict, k: int) -> list[str]:
    """The silhouette curve of a k="auto" selection as a small text table (no lines for a fixed k): each
    candidate's score, standard error and second-seed score, its local maxima, the best and the near-ties.

    Records written before k="auto" judged the whole pool have no standard errors or estimator settings; those
    written before the paper's rule have no rule, local maxima, seed check or near-ties.
    """
    if k_selection.get("mode") != "auto":
        return []
    scores, errors = k_selection["silhouette"], k_selection.get("standard_error", {})
    estimator = k_selection.get("estimator")
    check = k_selection.get("seed_check") or {}
    again = check.get("silhouette", {})
    searched = "whole pool's clustering" if "search_rows" not in (estimator or {}) else (
        f"clustered on a seeded sample of {estimator['search_rows']:,} rows")
    how = f" (cosine, {searched}, {estimator['sample_size']:,} rows scored)" if estimator else ""
    lines = [f"k chosen by silhouette{how}:"]
    rule, bounds = k_selection.get("rule"), k_selection.get("range")
    if rule:
        within = f" from {bounds['lower']} to {bounds['upper']}" if bounds else " (the candidates given)"
        budget = k_selection.get("budget")
        lines.append(
            f"rule {rule!r}: candidates{within}"
            + (f", budget {budget} rows" if budget is not None else "")
            + (" (the pool or budget is too small for the paper's floor of 64)" if bounds and bounds.get("fallback") else "")
        )
    peaks = {str(c) for c in k_selection.get("local_maxima", [])}
    tied = {str(c) for c in (k_selection.get("ties") or {}).get("tied", [])}
    lines.append(f"{'k':>6} {'silhouette':>10} {'std err':>8}" + (f" {'seed ' + str(check['seed']):>8}" if again else ""))
    for c, score in scores.items():
        error = f"{float(errors[c]):>8.4f}" if c in errors else f"{'':>8}"
        second = (f" {float(again[c]):>8.3f}" if c in again else f" {'':>8}") if again else ""
        best = str(k_selection.get("best")) == c
        marks = [m for m, on in (("local max", c in peaks), ("best", best and int(c) != k),
                                 ("near-tie", c in tied and not best), ("<- chosen", int(c) == k)) if on]
        lines.append(f"{c:>6} {float(score):>10.3f} {error}{second}" + (f"  {', '.join(marks)}" if marks else ""))
    if tied:
        others = sorted((c for c in tied if c != str(k_selection["best"])), key=int)
        lines.append(
            f"k-means seed-to-seed spread {check['spread']:.4f} (the top {len(again)} re-run with seed {check['seed']}); "
            f"near-ties of the best (k={k_selection['best']}) within {k_selection['ties']['z']:g} sd: "
            + (f"{', '.join(others)} -> the smallest, k={k}" if others else "none")
        )
    return lines


def decontamination_summary(record: dict) -> str:
    """One line: how many pool rows decontamination dropped, against which evaluation set, at which thresholds."""
    exclude = record.get("exclude") or {}
    tests = []
    if record.get("ngram_threshold") is not None:
        tests.append(f"sharing >= {record['ngram_threshold']:g} of an item's word {record['ngram']}-grams")
    if record.get("cosine_threshold") is not None:
        tests.append(f"embedding cosine >= {record['cosine_threshold']:g}")
    return (
        f"dropped {record['removed']} pool rows matching items of the evaluation set {evaluation_set_name(exclude)} "
        f"({exclude.get('num_rows')} rows) before clustering ({' or '.join(tests)})"
    )


def target_summary(record: dict) -> str:
    """One line: what the selection was aimed at and how the target was used."""
    tasks = record.get("tasks")
    how = f"target_method={record['method']!r}"
    if record["method"] == "kmq":
        how += f", cluster quotas ~ size x affinity ** {record['sharpness']:g}"
    else:
        how += ", RDS+ round-robin over the target examples" + (" and their tasks" if tasks else "")
    named = evaluation_set_name(record) if record.get("name") or record.get("source") else f"fingerprint {record.get('fingerprint')}"
    on_tasks = f" of {len(tasks)} tasks ({', '.join(f'{t}: {n}' for t, n in tasks.items())})" if tasks else ""
    return f"aimed at {record['num_rows']} examples{on_tasks} ({named}); {how}"


def target_split_rows(manifest) -> list[str]:
    """How the chosen rows split by affinity: the pool's clusters ranked by affinity to the target and cut into four
    bands of about equal pool rows ([`~target.affinity_split`]); uniform sampling would give each about 25%."""
    split = affinity_split(manifest.target["cluster_affinity"], manifest.cluster_sizes, manifest.selected_per_cluster)
    pool, chosen = max(sum(b["pool_rows"] for b in split), 1), max(sum(b["selected_rows"] for b in split), 1)
    rows = ["affinity band (clusters nearest the target first): pool rows -> chosen rows"]
    for band in split:
        low, high = band["affinity"]
        rows.append(
            f"band {band['band']} (affinity {low:.2f}-{high:.2f}, {band['clusters']} clusters): "
            f"{band['pool_rows']} ({100 * band['pool_rows'] / pool:.0f}%) -> {band['selected_rows']} "
            f"({100 * band['selected_rows'] / chosen:.0f}%)"
        )
    return rows


def target_markdown(manifest) -> str:
    """The dataset card's target section: what the selection was aimed at, and how the chosen rows split by affinity."""
    if not manifest.target:
        return ""
    split = affinity_split(manifest.target["cluster_affinity"], manifest.cluster_sizes, manifest.selected_per_cluster)
    pool, chosen = max(sum(b["pool_rows"] for b in split), 1), max(sum(b["selected_rows"] for b in split), 1)
    lines = [
        f"Selected for a target: {markdown_cell(target_summary(manifest.target))}. The pool's clusters, ranked by "
        "affinity to the target (mean cosine of the centroid to the target examples), cut into four bands of about "
        "equal pool rows; a target-blind draw would take about a quarter from each:", "",
        "| band | affinity | clusters | pool rows | chosen rows |", "|---:|---|---:|---:|---:|",
    ]
    for band in split:
        lines.append(
            f"| {band['band']} | {band['affinity'][0]:.2f}-{band['affinity'][1]:.2f} | {band['clusters']} | "
            f"{band['pool_rows']} ({100 * band['pool_rows'] / pool:.0f}%) | {band['selected_rows']} "
            f"({100 * band['selected_rows'] / chosen:.0f}%) |"
        )
    return "\n".join(lines)


# `datasets` names a dataset read from local files after its builder ("json"): no name for a reader.
_BUILDER_NAMES = {"json", "csv", "parquet", "arrow", "text", "pandas", "sql", "generator", "webdataset"}


def evaluation_set_name(exclude: dict) -> str:
    """How a decontamination record's evaluation set is named to a reader: its file name or Hub id (with config and
    split) when recorded, else its dataset name, else its fingerprint; never a builder's name such as "json"."""
    source = exclude.get("source") or {}
    where = source.get("file") or source.get("path")
    if where:
        where = os.path.basename(os.path.normpath(where)) if os.path.isabs(where) else where
        details = [f"{key} {source[key]}" for key in ("config", "split") if source.get(key)]
        return ", ".join([where, *details])
    name = exclude.get("name")
    if name and name not in _BUILDER_NAMES:
        return name
    return f"{f'of a local {name} file' if name else 'not named'}, fingerprint {exclude.get('fingerprint')}"


def _first_example(description: dict | None) -> str:
    examples = (description or {}).get("examples") or []
    return examples[0] if examples else "(no rows)"


def weight_changes(rounds: list[RoundRecord], *, top: int = 3, margin: float = WEIGHT_CHANGE_MARGIN) -> tuple[list, list]:
    """The clusters an iterative run favoured and those it cut, as `(favoured, cut)` lists of cluster ids.

    Favoured: the (at most `top`) clusters whose weight after the last round is furthest above the uniform
    start `1/k`, by more than `margin` of it; cut: those furthest below it, by more than `margin`.
    """
    weights = np.asarray(round_records(rounds[-1:])[0].weights, dtype=float)
    ratio = weights * len(weights)
    favoured = [int(j) for j in np.argsort(-ratio, kind="stable") if ratio[j] > 1 + margin][:top]
    cut = [int(j) for j in np.argsort(ratio, kind="stable") if ratio[j] < 1 - margin][:top]
    return favoured, cut


def read_rounds(folder: str) -> list[RoundRecord]:
    """The round records of an iterative run, in round order, from its `output_dir` or its `selection/` folder.

    Raises:
        [`InvalidArgumentError`]: a round file is not readable, not a round record, or records another round than
            its name says; the message names the file.
    """
    if os.path.isdir(os.path.join(folder, SELECTION_DIR)):
        folder = os.path.join(folder, SELECTION_DIR)
    paths = [p for p in glob.glob(os.path.join(folder, "*.json")) if round_of_file(p) is not None]
    rounds = []
    for path in paths:
        record = read_round_file(path)
        if record.round != round_of_file(path):
            raise InvalidArgumentError(f"{path} records round {record.round}, not the round its name says; a file renamed by hand?")
        rounds.append(record)
    rounds.sort(key=lambda r: r.round)
    return rounds


def format_rounds(rounds: list[RoundRecord], cluster_sizes=None, *, top: int = 20, descriptions: list[dict] | None = None) -> str:
    """Rows chosen per cluster in each round and the cluster weights after it, then the clusters the run
    favoured and cut; with `descriptions` (the manifest's `cluster_descriptions`), each cluster's terms.

    `rounds` are [`RoundRecord`]s ([`read_rounds`]); dicts (a `SelectionState`'s `rounds`) are read with
    [`RoundRecord.from_dict`].
    """
    if not rounds:
        raise InvalidArgumentError("No round files found (expected selection/round_<r>.json from IterativeSelectionTrainer).")
    rounds = round_records(rounds)
    k = len(rounds[0].weights)
    lines = [
        f"hf_idsel iterative run: {len(rounds)} round(s), k={k}, scorer={rounds[-1].scorer}, "
        f"{rounds[-1].cumulative_size} rows selected in all",
    ]
    for r in rounds:
        entropy = weight_entropy(r.weights)
        lines.append(
            f"round {r.round}: {len(r.selected)} rows drawn, "
            + (f"{r.scored_rows} scored, " if r.scored else "not scored, ")
            + f"weight entropy after it {entropy:.3f} (uniform {np.log(k):.3f})"
        )
        if r.eval:
            shown = ", ".join(f"{name} {value:.3f}" for name, value in r.eval["metrics"].items())
            lines.append(f"  eval after it: {shown} (held-out items: {', '.join(f'{t} {len(ids)}' for t, ids in r.eval['items'].items())})")
    lines.append("")
    header = f"{'cluster':>7}" + ("" if cluster_sizes is None else f" {'pool rows':>9}")
    header += "".join(f" {'r' + str(r.round) + ' rows':>8} {'w after':>7}" for r in rounds)
    lines.append(header + ("  terms" if descriptions else ""))
    total = np.sum([r.selected_per_cluster for r in rounds], axis=0)
    order = sorted(range(k), key=lambda j: (-int(total[j]), j))
    for j in order[:top]:
        line = f"{j:>7}" + ("" if cluster_sizes is None else f" {cluster_sizes[j]:>9}")
        line += "".join(f" {r.selected_per_cluster[j]:>8} {r.weights[j]:>7.3f}" for r in rounds)
        lines.append(line + (f"  {short_terms(descriptions[j])}" if descriptions else ""))
    if k > top:
        lines.append(f"... {k - top} more clusters")
    favoured, cut = weight_changes(rounds)
    last = rounds[-1]
    for what, clusters in (("favoured", favoured), ("cut", cut)):
        lines.append("")
        lines.append(f"{what} (weight after round {last.round} vs the uniform start {1 / k:.3f}):" + ("" if clusters else " none"))
        for j in clusters:
            described = f"  {short_terms(descriptions[j])}: {_first_example(descriptions[j])}" if descriptions else ""
            lines.append(f"{j:>7}  {1 / k:.3f} -> {last.weights[j]:.3f}{described}")
    return "\n".join(lines)


def markdown_table(manifest, rounds: list[RoundRecord] | None = None, *, top: int = 15) -> str:
    """A markdown table of the largest clusters: pool share, rows chosen and, for runs, weights per round."""
    rounds = round_records(rounds or [])
    sizes = np.asarray(manifest.cluster_sizes)
    chosen = np.asarray(manifest.selected_per_cluster)
    descriptions = manifest.cluster_descriptions
    what, names = cluster_labels(manifest)
    header = f"| {what} | pool rows | pool % | chosen | chosen % |"
    rule = "|---:|---:|---:|---:|---:|"
    if rounds:
        header += "".join(f" weight after round {r.round} |" for r in rounds)
        rule += "---:|" * len(rounds)
    if descriptions:
        header += " terms | nearest the centroid |"
        rule += "---|---|"
    lines = [header, rule]
    order = sorted(range(len(sizes)), key=lambda j: (-int(sizes[j]), j))
    picked = max(int(chosen.sum()), 1)
    for j in order[:top]:
        line = f"| {markdown_cell(names[j])} | {sizes[j]} | {100 * sizes[j] / sizes.sum():.1f} | {chosen[j]} | {100 * chosen[j] / picked:.1f} |"
        if rounds:
            line += "".join(f" {r.weights[j]:.3f} |" for r in rounds)
        if descriptions:
            line += f" {markdown_cell(short_terms(descriptions[j], 5))} | {markdown_cell(_first_example(descriptions[j]))} |"
        lines.append(line)
    if len(order) > top:
        lines.append(f"\n{len(order) - top} smaller clusters not shown; `manifest.json` has them all.")
    return "\n".join(lines)


def markdown_cell(text: str) -> str:
    """`text` as the literal content of a markdown table cell: markdown and HTML characters escaped."""
    return re.sub(r"([\\`*_\[\]<>|#~])", r"\\\1", text)


def plot_selection(manifest, path: str, rounds: list[RoundRecord] | None = None) -> str:
    """Save a PNG: pool share vs chosen share per cluster (largest first) and, for runs, weights per round.

    Up to 32 clusters are labelled by id and, when the manifest describes them, their top two terms.
    """
    rounds = round_records(rounds or [])
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    sizes = np.asarray(manifest.cluster_sizes, dtype=float)
    chosen = np.asarray(manifest.selected_per_cluster, dtype=float)
    order = np.argsort(-sizes, kind="stable")
    x = np.arange(len(order))
    panels = 2 if rounds else 1
    labels = _cluster_labels(order, manifest.cluster_descriptions)
    described = labels is not None and bool(manifest.cluster_descriptions)  # longer labels, turned
    figure_width = max(6.0, min(16.0, (0.45 if described else 0.12) * len(order) + 4))
    fig, axes = plt.subplots(panels, 1, figsize=(figure_width, (4.4 if described else 3.2) * panels), squeeze=False)
    ax = axes[0, 0]
    width = 0.45 if len(order) <= 64 else 1.0
    if len(order) <= 64:
        ax.bar(x - width / 2, 100 * sizes[order] / sizes.sum(), width, label="pool")
        ax.bar(x + width / 2, 100 * chosen[order] / max(chosen.sum(), 1), width, label="selected")
    else:
        ax.plot(x, 100 * sizes[order] / sizes.sum(), label="pool")
        ax.plot(x, 100 * chosen[order] / max(chosen.sum(), 1), label="selected")
    _cluster_ticks(ax, labels, turned=described)
    ax.set_ylabel("% of rows")
    ax.set_title(f"{manifest.method}: {int(chosen.sum())} of {int(sizes.sum())} rows, k={manifest.k}")
    ax.legend()
    if rounds:
        ax = axes[1, 0]
        uniform = np.full(len(order), 1.0 / len(order))
        ax.plot(x, uniform[order], color="gray", linestyle=":", label="start (uniform)")
        for r in rounds:
            ax.plot(x, np.asarray(r.weights)[order], marker="o" if len(order) <= 32 else None, label=f"after round {r.round}")
        _cluster_ticks(ax, labels, turned=described)
        ax.set_ylabel("sampling weight")
        ax.set_title("cluster weights per round")
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cluster_map(manifest, path: str, *, labelled: int = 24) -> str:
    """Save a PNG map of the pool ([`cluster_map_figure`]) to `path`.

    Raises:
        [`InvalidArgumentError`]: the manifest records no map (written before hf_idsel drew one).
    """
    import matplotlib.pyplot as plt

    fig = cluster_map_figure(manifest, labelled=labelled)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def cluster_map_figure(manifest, *, labelled: int = 24):
    """A matplotlib figure mapping the pool: one disc per cluster at its centroid's place ([`pipeline.centroid_map`]), its area
    proportional to the cluster's rows, its colour the share of them chosen.

    Clusters the selection barely drew from (pale discs) stand out; the `labelled` largest clusters and the
    `labelled // 3` with the lowest chosen share are labelled with their id and top terms, so that a cluster of
    junk (greetings, boilerplate, broken rows) can be named at a glance. When decontamination dropped rows, red
    crosses mark the clusters they were nearest (`decontamination.nearest_clusters`), sized and labelled by their
    count; a record without the clusters names the count in the legend and a note.

    Raises:
        [`InvalidArgumentError`]: the manifest records no map (written before hf_idsel drew one).
    """
    if not manifest.cluster_map:
        raise InvalidArgumentError(
            f"{manifest.origin} records no cluster map (`cluster_map`): it was written before hf_idsel placed "
            "clusters on a map. Make the selection again to draw one; `plot_selection` still draws the bar chart."
        )
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    points = np.asarray(manifest.cluster_map, dtype=float)
    sizes = np.asarray(manifest.cluster_sizes, dtype=float)
    chosen = np.asarray(manifest.selected_per_cluster, dtype=float)
    share = np.divide(chosen, sizes, out=np.zeros_like(chosen), where=sizes > 0)
    fig, ax = plt.subplots(figsize=(8.0, 6.5))
    area = 1500.0 * sizes / max(sizes.max(), 1.0) + 12.0
    order = np.argsort(-sizes, kind="stable")  # large discs first, so small ones stay visible on top
    dots = ax.scatter(
        points[order, 0], points[order, 1], s=area[order], c=share[order], cmap="viridis", vmin=0.0,
        vmax=max(float(share.max()), 1e-9), alpha=0.8, edgecolors="black", linewidths=0.5,
    )
    fig.colorbar(dots, ax=ax, label="share of the cluster's rows chosen")
    descriptions = manifest.cluster_descriptions
    shown = list(dict.fromkeys([*order[:labelled].tolist(), *np.argsort(share, kind="stable")[: labelled // 3].tolist()]))
    for j in shown:
        terms = short_terms(descriptions[j], 2) if descriptions else ""
        ax.annotate(f"{j}: {terms}" if terms else str(j), points[j], fontsize=7, ha="center", va="center")
    dropped = _draw_decontamination(ax, manifest.decontamination, points)
    ax.set_xlabel("first principal component of the centroids")
    ax.set_ylabel("second principal component")
    ax.set_title(
        f"{manifest.method}: {int(chosen.sum())} of {int(sizes.sum())} rows, k={manifest.k} "
        f"(disc area = rows, colour = share chosen){f'; {dropped} rows dropped by decontamination' if dropped else ''}",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def dropped_per_cluster(record: dict | None, k: int) -> np.ndarray | None:
    """Rows decontamination dropped, counted per cluster by the cluster each was nearest (`nearest_clusters`); `None`
    when the record has no drops or does not say which clusters they were nearest.

    Raises:
        [`InvalidArgumentError`]: `nearest_clusters` is not one cluster id in `[0, k)` per dropped row.
    """
    if not record or not record.get("removed"):
        return None
    nearest = record.get("nearest_clusters")
    if nearest is None:
        return None
    if (
        not isinstance(nearest, list) or len(nearest) != len(record["removed_indices"])
        or not all(isinstance(j, int) and not isinstance(j, bool) and 0 <= j < k for j in nearest)
    ):
        raise InvalidArgumentError(
            f"`decontamination.nearest_clusters` must hold one cluster id in [0, {k}) per dropped row; use the manifest "
            "as hf_idsel wrote it."
        )
    return np.bincount(np.asarray(nearest, dtype=np.int64), minlength=k)


def _draw_decontamination(ax, record: dict | None, points: np.ndarray) -> int:
    """Red crosses on the clusters decontamination took rows from (sized and labelled by the count), and a legend
    naming the evaluation set; returns the rows dropped."""
    if not record or not record.get("removed"):
        return 0
    removed = int(record["removed"])
    against = evaluation_set_name(record.get("exclude") or {})
    counts = dropped_per_cluster(record, len(points))
    if counts is not None:
        hit = np.flatnonzero(counts)
        ax.scatter(
            points[hit, 0], points[hit, 1], s=40.0 + 160.0 * counts[hit] / counts.max(), marker="x", color="red",
            linewidths=1.5, zorder=3, label=f"{removed} rows dropped by decontamination (against {against}), by nearest cluster",
        )
        for j in hit:
            ax.annotate(f"-{int(counts[j])}", points[j], xytext=(6, -10), textcoords="offset points", fontsize=7, color="red")
    else:
        ax.scatter([], [], marker="x", color="red", label=f"{removed} rows dropped by decontamination (against {against})")
        ax.text(
            0.01, 0.01, f"{removed} rows dropped before clustering; the manifest does not record their nearest clusters",
            transform=ax.transAxes, fontsize=7, color="red", va="bottom",
        )
    ax.legend(loc="upper right", fontsize=7)
    return removed


def _cluster_labels(order, descriptions) -> list[str] | None:
    """Tick labels for at most 32 clusters: the id, and its top two terms when described."""
    if len(order) > 32:
        return None
    if not descriptions:
        return [str(int(j)) for j in order]
    labels = []
    for j in order:
        terms = short_terms(descriptions[j], 2)
        labels.append(f"{int(j)}: {terms}" if terms else str(int(j)))
    return labels


def _cluster_ticks(ax, labels, *, turned: bool) -> None:
    ax.set_xlabel("cluster (largest first)")
    if labels is not None:
        ax.set_xticks(np.arange(len(labels)), labels, rotation=35 if turned else 0, ha="right" if turned else "center")
