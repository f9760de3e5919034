"""Run by test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU).

Every rank selects from the same pool; each writes the manifest it holds to OUT/rank_<i>.json.
"""

import os
import sys

import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))

from helpers import prompt_pool  # noqa: E402

import hf_idsel  # noqa: E402
from hf_idsel.distributed import world  # noqa: E402


def main(out: str, cache: str) -> None:
    subset, manifest = hf_idsel.diverse_select(prompt_pool(), 100, k=5, seed=3, cache_dir=cache, return_manifest=True)
    rank, size = world()
    assert subset["source_index"] == manifest.selected_indices
    manifest.save(os.path.join(out, f"rank_{rank}.json"))
    torch.distributed.destroy_process_group()  # gloo threads must not outlive the interpreter


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
