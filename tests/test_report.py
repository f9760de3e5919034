import json
import os

import numpy as np
import pytest

from helpers import make_pool, make_trainer
from hf_idsel import diverse_select, load_selection
from hf_idsel.cli import main
from hf_idsel.errors import InvalidArgumentError
from hf_idsel.report import format_rounds, markdown_table, plot_selection, read_rounds


@pytest.fixture
def selected(blob_pool):
    return diverse_select(blob_pool, 50, k=6, embedding_column="embedding", seed=0, return_manifest=True)


def _png(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def test_markdown_table_lists_pool_and_chosen_rows_largest_first(selected):
    _, manifest = selected
    table = markdown_table(manifest, top=3).splitlines()
    assert table[0].startswith("| cluster | pool rows |")
    sizes = [int(line.split("|")[2]) for line in table[2:5]]
    assert sizes == sorted(manifest.cluster_sizes, reverse=True)[:3]
    assert "3 smaller clusters not shown" in table[-1]


def test_plot_selection_writes_a_png(selected, tmp_path):
    _, manifest = selected
    image = _png(plot_selection(manifest, str(tmp_path / "sub" / "plot.png")))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def _trained_run(tmp_path):
    trainer = make_trainer(tmp_path, budget=24, scorer="loss")
    trainer.train()
    return trainer


def test_trainer_stages_rows_manifests_and_cards_that_rebuild_each_round(tmp_path):
    from hf_idsel.hub_layout import PUSH_FILE, ROUND_COLUMN, STAGING_DIR, manifest_path, read_plan, round_config

    trainer = _trained_run(tmp_path)
    out = trainer.args.output_dir
    staged = os.path.join(out, STAGING_DIR)
    plan = read_plan(staged)
    assert plan["configs"] == ["round_1", "round_2", "round_3", "default"] and plan["done"] == []
    rounds = read_rounds(out)
    pool = make_pool()
    assert [r.to_dict() for r in rounds] == trainer.selection.rounds  # the round files read back as they were written
    for r in rounds:
        subset = load_selection(os.path.join(staged, manifest_path(round_config(r.round))), pool)
        assert subset["source_index"] == sorted(r.selected)
        assert subset["cluster"] == trainer.labels[sorted(r.selected)].tolist()
    everything = load_selection(os.path.join(staged, "manifest.json"), pool)
    assert len(everything) == 24 and sorted(everything["source_index"]) == sorted(trainer.selection.selected())
    import datasets

    staged_rows = datasets.Dataset.from_parquet(os.path.join(staged, "data", "default.parquet"))
    round_of = {row: r.round for r in rounds for row in r.selected}
    assert staged_rows[ROUND_COLUMN] == [round_of[i] for i in staged_rows["source_index"]]
    # A changed pool is refused, not silently re-indexed.
    with pytest.raises(Exception, match="differs|rows"):
        load_selection(os.path.join(staged, "manifest.json"), pool.select(range(1, len(pool))))
    _png(os.path.join(staged, "selection.png"))
    card = open(os.path.join(staged, "README.md")).read()
    assert "iterative-kmq" in card and "| rounds | 3 rounds of 8, 8, 8 rows |" in card and "selection.png" in card
    assert os.path.isfile(os.path.join(staged, PUSH_FILE))

    # The report subcommand reads the same output directory.
    assert main(["report", out, "--plot", str(tmp_path / "run.png")]) == 0
    _png(tmp_path / "run.png")


def test_format_rounds_and_report_errors(tmp_path, capsys):
    with pytest.raises(InvalidArgumentError, match="round"):
        format_rounds([])
    assert main(["report", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_report_of_a_selection_folder(selected, tmp_path, capsys):
    _, manifest = selected
    manifest.save(str(tmp_path / "manifest.json"))
    assert main(["report", str(tmp_path), "--top", "2"]) == 0
    printed = capsys.readouterr().out
    assert "50 of 250 rows" in printed and "others" in printed
    loaded = json.loads((tmp_path / "manifest.json").read_text())
    assert np.sum(loaded["selected_per_cluster"]) == 50


def test_k_auto_report_and_card_show_the_silhouette_curve_and_the_chosen_k(blob_pool):
    from hf_idsel.cards import card_facts, dataset_card
    from hf_idsel.report import format_report

    _, manifest = diverse_select(blob_pool, 30, k="auto", embedding_column="embedding", return_manifest=True)
    record = manifest.k_selection
    assert manifest.k == record["chosen"] == 6 and record["estimator"]["sample_size"] == len(blob_pool)
    lines = format_report(manifest).splitlines()
    at = lines.index("k chosen by silhouette (cosine, whole pool's clustering, 250 rows scored):")
    bounds = record["range"]
    assert lines[at + 1].startswith(f"rule 'paper': candidates from {bounds['lower']} to {bounds['upper']}")
    assert lines[at + 2].split() == ["k", "silhouette", "std", "err", "seed", "1"]
    table = lines[at + 3 : at + 3 + len(record["silhouette"])]
    assert [line.split()[0] for line in table] == [str(c) for c in record["candidates"]]
    chosen = [line for line in table if line.endswith("<- chosen")]
    again = record["seed_check"]["silhouette"]
    assert len(chosen) == 1 and chosen[0].split()[:4] == ["6", f"{record['silhouette']['6']:.3f}", "0.0000", f"{again['6']:.3f}"]
    assert "local max" in chosen[0] and record["local_maxima"] == [6] and record["ties"]["tied"] == [6]
    # Seed 1 leaves k = 8 in a poor local optimum while k = 4 and 6 barely move: the median spread ignores it.
    assert record["silhouette"]["8"] > 0.7 > 0.5 > again["8"] and max(abs(record["silhouette"][c] - again[c]) for c in "46") <= 0.003
    assert lines[at + 3 + len(table)].endswith("near-ties of the best (k=6) within 2 sd: none")
    card = str(dataset_card(manifest, card_facts("me/picked", None), configs=["default"]))
    assert f"| k (clusters) | 6, chosen by k=\"auto\" (rule 'paper', k from {bounds['lower']} to {bounds['upper']}): the cosine silhouette" in card
    assert f"6: {record['silhouette']['6']:.3f}" in card and "averaged over 250 rows" in card
    assert "local maxima at k = 6; near-ties of the best (k=6) within 2 sd of the noise" in card


def test_report_and_card_show_a_near_tie_broken_to_the_smaller_k_and_old_records(blob_pool):
    """A record whose best candidate lost to a smaller near-tie says so in the report and the card; records from
    before the paper's rule (no rule, no seed check) print as before."""
    from hf_idsel import Manifest
    from hf_idsel.cards import card_facts, dataset_card
    from hf_idsel.report import silhouette_curve

    _, manifest = diverse_select(blob_pool, 30, k=3, embedding_column="embedding", return_manifest=True)

    def card(k_selection):
        loaded = Manifest.from_dict(manifest.to_dict() | {"k_selection": k_selection})  # verified on load
        return str(dataset_card(loaded, card_facts("me/picked", None), configs=["default"]))

    record = {
        "mode": "auto", "rule": "paper", "candidates": [2, 3, 4], "silhouette": {"2": 0.1, "3": 0.4, "4": 0.41},
        "standard_error": {"2": 0.01, "3": 0.01, "4": 0.01}, "chosen": 3, "best": 4, "local_maxima": [4], "budget": 12,
        "range": {"lower": 2, "upper": 5, "fallback": True}, "grid": [2, 3, 4], "search": "coarse-to-fine",
        "estimator": {"metric": "cosine", "clustering": "whole pool", "sample_size": 12, "min_rows_per_cluster": 16},
        "seed_check": {"seed": 1, "silhouette": {"3": 0.39, "4": 0.42}, "spread": 0.01 / (2**0.5 * 0.6744897501960817)},
        "ties": {"z": 2.0, "tied": [3, 4], "rule": "smallest k"},
    }
    lines = silhouette_curve(record, 3)
    assert lines[1] == "rule 'paper': candidates from 2 to 5, budget 12 rows (the pool or budget is too small for the paper's floor of 64)"
    assert lines[3].split() == ["2", "0.100", "0.0100"]
    assert lines[4].endswith("0.390  near-tie, <- chosen") and lines[5].endswith("0.420  local max, best")
    assert lines[6].endswith("near-ties of the best (k=4) within 2 sd: 3 -> the smallest, k=3")
    assert "near-ties of the best (k=4) within 2 sd of the noise (k-means seed-to-seed spread 0.0105): 3, the smallest chosen" in card(record)
    # A pool above choose_k's search_rows was searched on a sample: the report and the card say so.
    sampled = record | {"estimator": record["estimator"] | {"clustering": "seeded sample", "search_rows": 131072}}
    assert silhouette_curve(sampled, 3)[0] == "k chosen by silhouette (cosine, clustered on a seeded sample of 131,072 rows, 12 rows scored):"
    assert ("the cosine silhouette of k-means on a seeded sample of 131,072 rows (the whole pool then clustered at the chosen k) "
            "(k: silhouette 2: 0.100, 3: 0.400, 4: 0.410)") in card(sampled)
    old = {"mode": "auto", "candidates": [2, 3, 4], "silhouette": {"2": 0.1, "3": 0.4, "4": 0.3}, "chosen": 3,
           "standard_error": {"2": 0.0, "3": 0.0, "4": 0.0}, "grid": [2, 3, 4], "search": "coarse-to-fine",
           "estimator": {"metric": "cosine", "clustering": "whole pool", "sample_size": 12, "min_rows_per_cluster": 16}}
    assert silhouette_curve(old, 3)[1:] == [f"{'k':>6} {'silhouette':>10} {'std err':>8}", f"{'2':>6} {0.1:>10.3f} {0.0:>8.4f}",
                                          f"{'3':>6} {0.4:>10.3f} {0.0:>8.4f}  <- chosen", f"{'4':>6} {0.3:>10.3f} {0.0:>8.4f}"]
    assert "| k (clusters) | 3, chosen by k=\"auto\": the best cosine silhouette of the whole pool's k-means clustering among 3" in card(old)


def test_cluster_map_places_clusters_by_centroid_and_colours_them_by_share_chosen(selected, tmp_path):
    import matplotlib.pyplot as plt

    from hf_idsel.pipeline import centroid_map
    from hf_idsel.report import plot_cluster_map

    _, manifest = selected
    assert len(manifest.cluster_map) == manifest.k and all(len(p) == 2 for p in manifest.cluster_map)
    # The six planted blobs are far apart: so are their places on the map, and the map is the same every time.
    points = np.asarray(manifest.cluster_map)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)[np.triu_indices(6, 1)]
    assert distances.min() > 0.05 * distances.max()
    centroids = np.random.default_rng(0).normal(size=(6, 16))
    assert centroid_map(centroids) == centroid_map(centroids.copy())
    assert centroid_map(centroids[:1]) == [[0.0, 0.0]] and len(centroid_map(centroids[:2])) == 2

    figures = []
    original = plt.subplots
    with pytest.MonkeyPatch.context() as patch:  # keep the figure to read what was drawn
        patch.setattr(plt, "subplots", lambda *a, **k: figures.append(original(*a, **k)) or figures[-1])
        patch.setattr(plt, "close", lambda fig: None)
        image = _png(plot_cluster_map(manifest, str(tmp_path / "map.png")))
    assert image.shape[0] > 100
    dots = figures[0][1].collections[0]
    order = np.argsort(-np.asarray(manifest.cluster_sizes), kind="stable")
    np.testing.assert_allclose(dots.get_offsets(), points[order])
    share = np.asarray(manifest.selected_per_cluster) / np.asarray(manifest.cluster_sizes)
    np.testing.assert_allclose(dots.get_array(), share[order])
    assert np.all(np.diff(dots.get_sizes()) <= 0)  # larger clusters, larger discs
    for fig, _ in figures:
        plt.close(fig)

    manifest.cluster_map = None  # a manifest written before maps
    with pytest.raises(InvalidArgumentError, match="no cluster map"):
        plot_cluster_map(manifest, str(tmp_path / "none.png"))


@pytest.fixture
def decontaminated(blob_pool):
    """A selection whose decontamination dropped 4 pool rows (exact copies of evaluation items, by cosine)."""
    exclude = blob_pool.select([0, 1, 95, 200]).select_columns(["text", "embedding"])
    return diverse_select(blob_pool, 50, k=6, embedding_column="embedding", seed=0, exclude=exclude, return_manifest=True)


def _red_crosses(ax):
    return [c for c in ax.collections if c.get_label() and "decontamination" in c.get_label()]


def test_cluster_map_marks_what_decontamination_dropped_per_cluster(decontaminated, tmp_path):
    import matplotlib.pyplot as plt

    from hf_idsel.manifest import Manifest
    from hf_idsel.report import cluster_map_figure, plot_cluster_map

    _, manifest = decontaminated
    assert manifest.decontamination["removed"] == 4
    # The clusters the dropped rows were nearest, as the selection records them: 2 rows near cluster 3, 1 near 0 and 5.
    record = manifest.to_dict()
    record["decontamination"]["nearest_clusters"] = [3, 3, 0, 5]
    manifest = Manifest.from_dict(record)
    fig = cluster_map_figure(manifest)
    ax = fig.axes[0]
    (crosses,) = _red_crosses(ax)
    points = np.asarray(manifest.cluster_map)
    np.testing.assert_allclose(crosses.get_offsets(), points[[0, 3, 5]])
    sizes = crosses.get_sizes()
    assert sizes[1] > sizes[0] == sizes[2]  # two rows near cluster 3: the larger cross
    counts = sorted(t.get_text() for t in ax.texts if t.get_text().startswith("-"))
    assert counts == ["-1", "-1", "-2"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["4 rows dropped by decontamination (against not named, fingerprint "
                      f"{manifest.decontamination['exclude']['fingerprint']}), by nearest cluster"]
    assert "4 rows dropped by decontamination" in ax.get_title()
    plt.close(fig)
    assert plot_cluster_map(manifest, str(tmp_path / "map.png")).endswith("map.png")

    # Recorded without the nearest clusters: the count and the evaluation set in the legend, and a note saying why
    # the crosses are not placed.
    record["decontamination"].pop("nearest_clusters")
    record["decontamination"]["exclude"]["source"] = {"path": str(tmp_path / "eval.jsonl"), "split": "train"}
    fig = cluster_map_figure(Manifest.from_dict(record))
    ax = fig.axes[0]
    (legend_only,) = _red_crosses(ax)
    assert len(legend_only.get_offsets()) == 0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "4 rows dropped by decontamination (against eval.jsonl, split train)"
    ]
    assert any("do not record their nearest clusters" in t.get_text() or "does not record" in t.get_text() for t in ax.texts)
    plt.close(fig)

    record["decontamination"]["nearest_clusters"] = [3, 3, 0, 6]  # k=6: no cluster 6
    with pytest.raises(InvalidArgumentError, match="nearest_clusters"):
        cluster_map_figure(Manifest.from_dict(record))


def test_report_map_of_a_decontaminated_selection_and_report_errors_are_one_line(decontaminated, tmp_path, capsys):
    _, manifest = decontaminated
    folder = tmp_path / "sel"
    folder.mkdir()
    manifest.save(str(folder / "manifest.json"))
    assert main(["report", str(folder), "--map", str(tmp_path / "map.png")]) == 0
    out = capsys.readouterr().out
    assert "decontamination: dropped 4 pool rows" in out and os.path.isfile(tmp_path / "map.png")

    def one_line_error(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("hf-idsel report: error:") and "\n" not in err and "Traceback" not in err
        return err

    # Inner fields missing from a hand-edited manifest: named, not a KeyError traceback.
    record = manifest.to_dict()
    del record["decontamination"]["ngram"]
    (folder / "manifest.json").write_text(json.dumps(record))
    assert "'ngram'" in one_line_error(["report", str(folder)])
    record = manifest.to_dict()
    record["k_selection"] = {"mode": "auto"}
    (folder / "manifest.json").write_text(json.dumps(record))
    assert "`k_selection.silhouette` is missing" in one_line_error(["report", str(folder)])
    manifest.save(str(folder / "manifest.json"))

    # Plots that cannot be written: refused before anything is printed.
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    target = read_only / "plot.png"
    if os.access(read_only, os.W_OK):  # root writes anywhere: sysfs refuses even root
        target = "/sys/hf_idsel_plot.png"
    try:
        for flag in ("--plot", "--map"):
            err = one_line_error(["report", str(folder), flag, str(target)])
            assert f"{flag} " in err and "not writable" in err
    finally:
        read_only.chmod(0o700)
    (tmp_path / "a-file").write_text("x")
    assert "is a file" in one_line_error(["report", str(folder), "--plot", str(tmp_path / "a-file" / "plot.png")])
    assert "is a folder" in one_line_error(["report", str(folder), "--map", str(tmp_path)])
