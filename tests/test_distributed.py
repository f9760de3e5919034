import glob
import json
import os
import socket
import subprocess
import sys

import datasets
import numpy as np

import hf_idsel
from helpers import prompt_pool
from hf_idsel.distributed import shard_bounds

def test_shard_bounds_cover_every_chunk_once():
    for chunks in (1, 2, 3, 10):
        for size in (1, 2, 3, 4):
            covered = [c for r in range(size) for c in range(*shard_bounds(chunks, r, size))]
            assert covered == list(range(chunks))


def test_two_processes_select_exactly_what_one_process_selects(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    script = os.path.join(os.path.dirname(__file__), "ddp_select_run.py")
    path = [os.path.dirname(os.path.dirname(__file__)), os.environ.get("PYTHONPATH")]  # keep the caller's path
    # CPU ranks over gloo on any machine: two ranks on one visible GPU would collide under NCCL.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(filter(None, path))}
    result = subprocess.run(
        [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", port, script, str(out), str(cache),
        ],
        env=env, capture_output=True, text=True, timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"rank_{i}.json").read_text()) for i in range(2)]
    assert ranks[0]["selected_indices"] == ranks[1]["selected_indices"]
    assert len(ranks[0]["selected_indices"]) == 100
    # Each rank embedded its own share of whole chunks: rows 0-1024 on rank 0, 1024-1100 on rank 1.
    shards = sorted(os.path.basename(p) for p in glob.glob(str(cache / "embeddings-*-rows*.arrow")))
    assert [s.split("-rows")[1] for s in shards] == ["0-1024.arrow", "1024-1100.arrow"]

    # One process, fresh cache: the same vectors, clusters and rows.
    subset, manifest = hf_idsel.diverse_select(
        prompt_pool(), 100, k=5, seed=3, cache_dir=str(tmp_path / "single"), return_manifest=True
    )
    assert manifest.selected_digest == ranks[0]["selected_digest"]
    assert manifest.selected_clusters == ranks[0]["selected_clusters"]
    # Rank 0 described the clusters; every rank holds its descriptions, the same as one process makes.
    assert ranks[0]["cluster_descriptions"] == ranks[1]["cluster_descriptions"] == manifest.cluster_descriptions
    assert np.array_equal(manifest.cluster_sizes, ranks[0]["cluster_sizes"])
    # The 2-process run also left the whole matrix under the 1-process key, equal to the 1-process vectors.
    whole = [p for p in glob.glob(str(cache / "embeddings-*.arrow")) if "-rows" not in p]
    single = glob.glob(str(tmp_path / "single" / "embeddings-*.arrow"))
    assert len(whole) == 1 and [os.path.basename(p) for p in single] == [os.path.basename(whole[0])]
    vectors = [np.asarray(datasets.Dataset.from_file(p)["embedding"]) for p in (whole[0], single[0])]
    assert np.array_equal(vectors[0], vectors[1])
