"""Run by test_hidden_states.py under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU).

Every rank embeds its share of the pool with a tiny Llama's hidden states (whitened); each writes the
matrix it holds to OUT/rank_<i>.npy.
"""

import os
import sys

import numpy as np
import torch

torch.set_num_threads(1)
sys.path.insert(0, os.path.dirname(__file__))

from helpers import qa_pool  # noqa: E402

from hf_idsel.distributed import world  # noqa: E402
from hf_idsel.embed import embed_dataset  # noqa: E402
from hf_idsel.hidden_states import HiddenStateEncoder  # noqa: E402
from hf_idsel.render import resolve_render_options  # noqa: E402


def main(model: str, out: str, cache: str) -> None:
    pool = qa_pool(100)
    encoder = HiddenStateEncoder(model, projection="whiten", dim=16, seed=1)
    vectors, _ = embed_dataset(
        pool, resolve_render_options(pool.column_names), encoder=encoder, cache_dir=cache, map_batch_size=32, distributed=True
    )
    rank, _ = world()
    np.save(os.path.join(out, f"rank_{rank}.npy"), vectors)
    torch.distributed.destroy_process_group()  # gloo threads must not outlive the interpreter


if __name__ == "__main__":
    main(*sys.argv[1:4])
