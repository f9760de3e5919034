"""Baselines that need no vectors compute none (issue 25.7): `random` and `balanced-random` on a text pool load no
encoder and run no k-means; the manifest says so (no encoder; the groups drawn from as its clusters), reports and
cards count the rows chosen per source, and `load_selection` still verifies the rows, from the file and after a
round trip through JSON."""


import datasets
import pytest

import hf_idsel
from hf_idsel import diverse_select
from hf_idsel.manifest import Manifest
from hf_idsel.report import format_report, markdown_table, plot_selection

MISSING_ENCODER = "no-such-owner/no-such-encoder"  # loading it would fail: a draw that succeeds loaded no encoder


def text_pool(per_source=(30, 12, 6)) -> datasets.Dataset:
    rows = [(name, f"Question {i} from {name}: what is {i} plus {len(name)}?") for name, n in zip("abc", per_source) for i in range(n)]
    return datasets.Dataset.from_dict({"text": [t for _, t in rows], "origin": [s for s, _ in rows]})


@pytest.mark.parametrize("method", ["random", "balanced-random"])
def test_vector_free_methods_load_no_encoder_and_run_no_kmeans(method, tmp_path):
    pool = text_pool()
    extra = {"source_column": "origin"} if method == "balanced-random" else {}
    subset, manifest = diverse_select(pool, 12, method=method, encoder=MISSING_ENCODER, seed=3, return_manifest=True, **extra)
    assert len(subset) == 12 and len(set(subset["source_index"])) == 12
    assert manifest.encoder is None and manifest.cluster_map is None
    # The clusters a manifest records are the groups drawn from, and each chosen row's id is its group.
    if method == "random":
        assert manifest.k == 1 and manifest.k_selection == {"mode": "pool"} and set(subset["cluster"]) == {0}
    else:
        assert manifest.k_selection == {"mode": "source", "column": "origin", "sources": ["a", "b", "c"]}
        assert manifest.cluster_sizes == [30, 12, 6]
        assert [manifest.k_selection["sources"][c] for c in subset["cluster"]] == subset["origin"]
        assert {name: subset["origin"].count(name) for name in "abc"} == {"a": 4, "b": 4, "c": 4}
    # Seeded: the same call draws the same rows.
    again = diverse_select(pool, 12, method=method, encoder=MISSING_ENCODER, seed=3, **extra)
    assert again["source_index"] == subset["source_index"]

    # The manifest, saved and read back, verifies and rebuilds the same rows; an edited pool is refused.
    path = manifest.save(str(tmp_path / "manifest.json"))
    loaded = Manifest.load(path)
    assert loaded.encoder is None
    rebuilt = hf_idsel.load_selection(path, pool)
    assert rebuilt["source_index"] == subset["source_index"] and rebuilt["cluster"] == subset["cluster"]
    edited = pool.map(lambda row, i: {"text": row["text"] + " (edited)" if i == 5 else row["text"]}, with_indices=True)
    with pytest.raises(hf_idsel.SelectionMismatchError):
        hf_idsel.load_selection(path, edited)


def test_reports_and_cards_count_balanced_random_rows_per_source(tmp_path):
    pool = text_pool()
    _, manifest = diverse_select(
        pool, 12, method="balanced-random", source_column="origin", encoder=MISSING_ENCODER, seed=0, return_manifest=True
    )
    report = format_report(manifest)
    assert "source" in report and "cluster" not in report.split("\n", 1)[1].lower().replace("clusters", "")
    for name, size in zip("abc", (30, 12, 6)):
        assert any(line.split()[:3] == [name, str(size), f"{100 * size / 48:.1f}%"] for line in report.splitlines()), report
    table = markdown_table(manifest)
    assert "| source |" in table and "| a |" in table and "| c |" in table
    assert plot_selection(manifest, str(tmp_path / "plot.png")) and (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")

