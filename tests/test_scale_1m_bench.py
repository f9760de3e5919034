"""Smoke test of `bench/scale_1m.py` (issue 27's 1M rows from text on the CPU) at a tiny size: the same script, the
same stages, a pool of 1,500 rows against 50 evaluation items."""

import json
import os
import subprocess
import sys

import pytest

from hf_idsel import pool as builtin
from hf_idsel.sample import resolve_budget

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "scale_1m.py")


@pytest.mark.scripts  # builds the static encoder's weights on first use: minutes on a loaded machine
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not builtin.builtin_pool_available()[0], reason="the built-in pool's packages are missing")
def test_the_end_to_end_bench_times_every_stage_and_drops_every_planted_copy(tmp_path):
    """Every stage is measured (time, CPU, peak memory), the stages add up to no more than the whole, the pool's rows
    are distinct, every planted copy of an evaluation item is dropped and 10% of the rows left are selected."""
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, BENCH, "--rows", "1500", "--items", "50", "--out", str(out), "--work-dir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=1700,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["complete"] and result["rows"] == 1500 and result["items"] == 50 and len(result["commit"]) == 40
    stages = result["stages"]
    assert set(stages) == {"render", "embed", "decontaminate", "cluster", "sample", "other", "write"}
    for name, stage in stages.items():
        assert stage["wall_s"] >= 0 and stage["cpu_s"] >= 0 and stage["peak_rss_mib"] > 0, name
    for name in ("embed", "decontaminate", "cluster"):
        assert stages[name]["wall_s"] > 0 and stages[name]["cpu_s"] > 0, name
    assert sum(stage["wall_s"] for stage in stages.values()) <= result["total"]["wall_s"] * 1.01 + 0.05
    assert max(stage["peak_rss_mib"] for stage in stages.values()) <= result["peak_rss_lifetime_mib"] + 1
    assert result["build"]["planted_rows"] == result["planted_found"] == 50  # one copy of each item
    assert result["selected"] == resolve_budget(0.1, 1500 - result["removed"])
    assert result["k_selection"]["mode"] == "auto" and result["k"] in result["k_selection"]["candidates"]
    assert result["verdict"]["peak_rss_under_8_gib"]
