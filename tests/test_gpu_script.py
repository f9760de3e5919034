"""bench/gpu.py, the prepared GPU measurement: it runs where only torch, numpy, transformers and
sentence-transformers exist (the bare GPU image has no faiss, datasets or trl), shown here on the CPU
at a tiny size with those three packages hidden from imports."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "gpu.py")

# Runs bench/gpu.py with faiss, datasets and trl made unimportable, as on the bare GPU image.
BARE_IMAGE = """
import runpy, sys
class Hidden:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"faiss", "datasets", "trl"}:
            raise ImportError(f"No module named {name!r} (hidden: the bare GPU image has no faiss, datasets or trl)")
sys.meta_path.insert(0, Hidden())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
assert not {"faiss", "datasets", "trl"} & set(sys.modules), "a hidden package was imported"
"""

pytestmark = pytest.mark.scripts


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("gpu_assets"))
    done = subprocess.run([sys.executable, SCRIPT, "prepare", "--assets", folder, "--texts", "300"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def test_prepare_writes_a_float16_encoder_small_enough_to_travel(assets):
    from safetensors import safe_open

    with safe_open(os.path.join(assets, "encoder", "model.safetensors"), "np") as f:
        dtypes = {str(f.get_tensor(name).dtype) for name in f.keys()}
    assert dtypes == {"float16"}
    size = sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(assets) for n in names)
    assert size < 60 * 2**20  # the device tool carries at most 64 MiB


def test_the_run_needs_no_faiss_datasets_or_trl(assets, tmp_path):
    out = str(tmp_path / "gpu.json")
    command = [sys.executable, "-c", BARE_IMAGE, SCRIPT, "run", "--assets", assets, "--rows", "100", "--k", "4",
               "--encoder-rows", "16", "--json", out]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out) as f:
        result = json.load(f)
    assert result["machine"]["faiss"] is None and result["machine"]["datasets"] is None and result["machine"]["trl"] is None
    assert result["encoder"]["rows"] == 16 and result["encoder"]["rows_per_s"] > 0 and result["encoder"]["dim"] == 384
    assert result["finished"] and set(result["kmeans"]) == {"torch"}  # faiss does not import: the torch k-means only
    assert result["kmeans"]["torch"]["implementation"].startswith("torch") and result["kmeans"]["torch"]["rows"] == 100
    select = result["select"]
    assert "in this script" in select["implementation"]
    assert select["selected"] == select["distinct"] == 10  # the exact budget, distinct rows
