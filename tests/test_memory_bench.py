"""`bench/memory.py`: peak RSS per stage of the laptop recipe, in a fresh process."""

import json
import mmap
import os
import sys
import time

import psutil
import pytest
from helpers import make_tiny_llama, save_tiny_llama

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")
sys.path.insert(0, BENCH)

import memory  # noqa: E402

MIB = 2**20


class _Work:
    grew = 0  # how much the RSS rose while the block was held, as the operating system reports it

    def allocate(self, mib: int) -> int:
        # A fresh mapping, so the pages are new to the process (an allocator could reuse resident free memory),
        # touched so they are resident, and held long enough for the sampling thread where the kernel's mark is off.
        before = psutil.Process().memory_info().rss
        block = mmap.mmap(-1, mib * MIB)
        for offset in range(0, mib * MIB, mmap.PAGESIZE):
            block[offset] = 1
        _Work.grew = psutil.Process().memory_info().rss - before
        time.sleep(0.1)
        touched = sum(block[offset] for offset in range(0, mib * MIB, 1 << 20))
        block.close()
        return touched

    def outer(self, mib: int) -> int:
        return self.allocate(mib)


@pytest.mark.parametrize("kernel_mark", [True, False], ids=["high-water-mark", "sampling"])
def test_a_stage_peak_sees_its_own_allocation_and_not_its_nested_stages(kernel_mark, monkeypatch):
    if not kernel_mark:  # the fallback where the kernel's mark can't be reset or misses freed pages
        monkeypatch.setattr(memory._Probe, "_can_reset", lambda self: False)
    probe = memory._Probe()
    assert probe.exact == (kernel_mark and probe._can_reset())
    memory_before = probe.rss()
    probe.wrap(_Work, "allocate", "pool embedding")
    probe.wrap(_Work, "outer", "trainer set-up")
    try:
        _Work().outer(300)
    finally:
        for name in ("allocate", "outer"):  # unwrap: the class is shared with nothing else, but keep it clean
            setattr(_Work, name, getattr(_Work, name).__wrapped__)
    result = probe.result()["stages"]
    if _Work.grew < 290 * MIB:  # nothing to measure: the RSS this system reports did not show the touched pages
        pytest.skip(f"the RSS rose by {_Work.grew / MIB:.0f} MiB while 300 MiB of touched pages were held")
    assert result["pool embedding"]["calls"] == result["trainer set-up"]["calls"] == 1
    assert result["pool embedding"]["peak_rss"] >= memory_before + 290 * MIB
    # The 300 MiB were freed when the nested stage returned: the enclosing stage's own peak is below it.
    assert result["trainer set-up"]["peak_rss"] < result["pool embedding"]["peak_rss"] - 200 * MIB


@pytest.mark.scripts
def test_the_recipe_is_measured_stage_by_stage(tmp_path):
    """The laptop recipe on a tiny Llama: every stage probed, the results stored under their label with the run's facts."""
    model_dir = save_tiny_llama(*make_tiny_llama(), tmp_path / "tiny")
    out = tmp_path / "memory.json"
    memory.main(["--budget", "16", "--max_pool_rows", "96", "--out", str(out), "--label", "tiny",
                 "--", "--model_name_or_path", model_dir])
    memory.main(["--budget", "8", "--max_pool_rows", "96", "--out", str(out), "--label", "smaller",
                 "--", "--model_name_or_path", model_dir, "--k", "4"])
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"tiny", "smaller"}  # a second label is kept beside the first
    run = runs["tiny"]
    stages = run["stages"]
    for name in ("pool load", "model load", "pool embedding", "clustering", "training: forward", "training: LM head",
                 "training: backward", "round scoring"):
        assert stages[name]["calls"] >= 1 and stages[name]["peak_rss"] > 100 * MIB, name
    # 16 rows of the recipe's micro-batches of one row: 16 forward and backward passes, 2 rounds closed.
    assert stages["training: forward"]["calls"] == stages["training: backward"]["calls"] == 16
    assert stages["round scoring"]["calls"] == 2 and run["global_step"] == 2
    assert run["peak_rss"] == max(stage["peak_rss"] for stage in stages.values())
    assert len(run["round_lines"]) == 2 and run["round_lines"][1].startswith("round 2/2: drew 8 rows (16 of 16)")
    assert len(run["learning_rates"]) == 2 and run["learning_rates"][0] > 0
    assert run["commit"] and run["machine"]["cpu_count"] and run["config"].endswith("config_lora.yaml")
