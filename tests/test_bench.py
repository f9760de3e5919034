"""Smoke test of the benchmark entry point (`bench/run.py --quick`) and of the pieces its numbers rest on."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")
sys.path.insert(0, BENCH)

import run as bench_run  # noqa: E402
import scale  # noqa: E402

EXPECTED_RATIOS = {
    "select_vs_raw_encode", "cached_rerun", "kmeans_speedup", "kmeans_speedup_faiss_early_stop", "kmeans_objective",
    "trainer_overhead (tiny)", "scoring_cost (tiny)",
}


def _ratio_table(markdown: str) -> dict[str, list[str]]:
    """Rows of the '## Ratios against baselines' table: name -> cells."""
    section = markdown.split("## Ratios against baselines", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| measurement")]
    table = {}
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        table[cells[0]] = cells
    return table


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("perf")
    done = subprocess.run(
        [sys.executable, os.path.join(BENCH, "run.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out / "performance.md") as f:
        markdown = f.read()
    with open(out / "performance_results.json") as f:
        results = json.load(f)
    return out, markdown, results


@pytest.mark.scripts
def test_quick_run_writes_ratio_table(quick_run):
    _, markdown, results = quick_run
    table = _ratio_table(markdown)
    assert set(table) == EXPECTED_RATIOS
    by_name = {row["label"]: row for row in results["ratios"]}
    for name, cells in table.items():
        ratio = float(cells[3])
        assert math.isfinite(ratio) and ratio > 0, (name, cells)
        # The table shows the JSON's number (3 significant digits) and whether its target is met.
        assert ratio == pytest.approx(by_name[name]["ratio"], rel=5e-3)
        assert cells[5] == ("yes" if by_name[name]["meets_target"] else "no")
    # A cached re-run must skip the encoder: far below the first run even at smoke-test sizes.
    assert by_name["cached_rerun"]["ratio"] < 0.5
    assert "--quick" in markdown and "the numbers mean nothing" in markdown


@pytest.mark.scripts
def test_quick_run_json_structure(quick_run):
    out, markdown, results = quick_run
    assert {"machine", "config", "ratios", "select", "trainer", "scale", "gpu", "wall_seconds"} <= set(results)
    machine = results["machine"]
    assert machine["cpu_count"] == os.cpu_count()
    assert machine["torch"] and machine["faiss"]
    assert f"{machine['cpu_count']} CPUs" in markdown and machine["faiss"] in markdown

    e2e = results["select"]["end_to_end"]
    assert e2e["raw_encode_s"] > 0 and e2e["diverse_select_s"] > 0
    assert results["ratios"][0]["ratio"] == pytest.approx(e2e["diverse_select_s"] / e2e["raw_encode_s"])
    km = results["select"]["kmeans"]
    assert km["research_iterations"] == 300 * 5 and 0 < km["ours_iterations"] <= 20
    tiny = results["trainer"]["tiny"]
    assert tiny["steps"] == tiny["plain_steps"] > 0  # same number of optimizer steps on both sides

    s = results["scale"]
    sizes = bench_run.QUICK["scale"]["sizes"]
    assert [p["rows"] for p in s["points"]] == sizes
    rate = s["encoder"]["rows_per_s"]
    assert rate > 0 and s["encoder"]["rows"] > 0
    for point in s["points"]:
        assert point["budget"] == point["rows"] // 10
        assert point["stages"]["kmeans_s"] > 0 and point["stages"]["kmq_s"] > 0
        d = point["diverse_select"]
        assert d["cpu_seconds"] > 0 and point["stages"]["cpu_seconds"] > 0
        assert d["seconds"] > 0 and d["tracemalloc_peak_bytes"] > 0 and d["rss_peak_bytes"] >= d["rss_start_bytes"] > 0
        assert point["ru_maxrss_bytes"] >= d["rss_start_bytes"] * 0.9
        assert point["extrapolated_embed_s"] == pytest.approx(point["rows"] / rate)
    assert "EXTRAPOLATED" in markdown

    png = out / "performance_scale.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    import torch

    if not torch.cuda.is_available():
        assert results["gpu"]["available"] is False
        assert "no GPU in this run" in markdown
        assert not any(row["name"].startswith("gpu_") for row in results["ratios"])


def test_peak_rss_sees_an_allocation_inside_the_block():
    size = 200 * 2**20
    with scale.PeakRSS() as idle:
        pass
    with scale.PeakRSS() as busy:
        block = np.ones(size, dtype=np.uint8)  # touched pages: really resident
        block.sum()
        del block
    assert busy.increment >= 0.75 * size
    assert idle.increment < 0.25 * size


def test_measure_phase_reports_tracemalloc_peak_of_numpy_arrays():
    m = scale.measure_phase(lambda: np.zeros(10 * 2**20, dtype=np.uint8).sum())
    assert m["tracemalloc_peak_bytes"] >= 10 * 2**20
    assert m["seconds"] > 0 and m["seconds_under_tracemalloc"] > 0


def test_ratio_rows_judge_their_targets():
    assert bench_run.ratio_row("kmeans_speedup", 1.0, 30.0, "", "", ratio=30.0)["meets_target"] is True
    assert bench_run.ratio_row("kmeans_speedup", 1.0, 5.0, "", "", ratio=5.0)["meets_target"] is False
    assert bench_run.ratio_row("select_vs_raw_encode", 12.0, 10.0, "", "")["ratio"] == pytest.approx(1.2)
    assert bench_run.ratio_row("select_vs_raw_encode", 12.0, 10.0, "", "")["meets_target"] is False
    nan = bench_run.ratio_row("trainer_overhead", float("nan"), 1.0, "", "")
    assert nan["meets_target"] is False and bench_run._fmt_ratio(nan["ratio"]) == "n/a"


def test_research_kmeans_baseline_runs_every_iteration():
    import bench_select

    from hf_idsel.cluster import kmeans

    x = bench_select.synthetic_embeddings(2000, 32, 8, seed=0)
    with bench_select.faiss_kmeans_runs(full_iterations=True) as full:
        kmeans(x, 8, niter=40, init="random")
    with bench_select.faiss_kmeans_runs() as early:
        kmeans(x, 8, niter=40, init="random")
    assert [r["iterations"] for r in full] == [40]
    # faiss's default early stopping ends well-separated blobs long before the cap.
    assert early[0]["iterations"] < 40
    import faiss

    assert faiss.Kmeans.__name__ == "Kmeans"  # the recording wrapper is removed after the block


@pytest.mark.scripts
def test_render_only_rewrites_the_same_report_from_json(quick_run):
    out, markdown, _ = quick_run
    (out / "performance.md").write_text("stale")
    bench_run.main(["--render-only", "--out", str(out)])
    assert (out / "performance.md").read_text() == markdown
    assert "{km[" not in markdown and "{t[" not in markdown  # no unformatted template left in the text


@pytest.mark.scripts  # a bench/k_auto.py measurement (74 s on a loaded machine): run with `pytest -m scripts`
def test_k_auto_bench_measures_the_chosen_k_and_its_time_ratio():
    """bench/k_auto.py's measurement on a small pool with 48 planted clusters: the chosen k, its ratio to the
    true k, the curve, and the time against one k-means at that k, each read from the same run."""
    import k_auto

    r = k_auto.measure(6_000, 48, 32, 0.6)
    assert r["within_1_25"] and 48 / 1.25 <= r["chosen_k"] <= 48 * 1.25 and r["ari_at_chosen_k"] > 0.9
    assert r["chosen_k"] == int(max(r["silhouette"], key=r["silhouette"].get))
    assert r["time_ratio"] == pytest.approx(r["k_auto_s"] / r["kmeans_at_chosen_k_s"]) and r["time_ratio"] > 1
    assert r["sample_size"] == 6_000 and r["standard_error_max"] == 0.0
    assert 2 <= r["old_picker_k"] <= 362


def test_performance_md_keeps_its_hand_written_part_when_regenerated(tmp_path):
    """Sections measured by other scripts live below the marker: a new `bench/run.py` run keeps them, once."""
    path = tmp_path / "performance.md"
    bench_run.write_markdown(str(tmp_path), "# Performance\n\nfirst run\n")
    assert path.read_text() == "# Performance\n\nfirst run\n"  # no marker yet: the generated part only
    path.write_text(path.read_text() + f"\n{bench_run.KEPT_MARKER}\n\n## k=\"auto\"\n\nmeasured by hand\n")
    bench_run.write_markdown(str(tmp_path), "# Performance\n\nsecond run\n")
    text = path.read_text()
    assert text.startswith("# Performance\n\nsecond run\n") and "first run" not in text
    assert text.count(bench_run.KEPT_MARKER) == 1 and text.endswith("## k=\"auto\"\n\nmeasured by hand\n")
