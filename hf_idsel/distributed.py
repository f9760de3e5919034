"""Distributed: which process this is when launched with `accelerate launch` / `torchrun`, and how ranks agree.

Selection runs the expensive part (embedding) on every rank, each on its own shard, and the cheap
part (clustering, sampling) on rank 0, which then sends its result to the others.
"""

from __future__ import annotations

import os


def world() -> tuple[int, int]:
    """`(rank, world_size)`; `(0, 1)` unless several processes were launched together."""
    import torch
    import torch.distributed as dist

    if not dist.is_available():
        return 0, 1
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Launched by accelerate/torchrun but nothing set up the process group yet (gloo without CUDA).
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast(value):
    """`value` from rank 0, on every rank (any JSON-like object)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    payload = [value]
    dist.broadcast_object_list(payload, src=0)
    return payload[0]


def shard_bounds(num_chunks: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous range of chunks rank `rank` handles (whole chunks, so results match a 1-process run)."""
    return num_chunks * rank // world_size, num_chunks * (rank + 1) // world_size


def equal_share(items, rank: int, world_size: int):
    """Rank `rank`'s items (every `world_size`-th), padded with the first item to the same count on every rank.

    Equal shares keep a sharded model (ZeRO-3/FSDP) running the same number of forward passes on
    every rank; a padded item is a repeat, so its result is the same.
    """
    import numpy as np

    items = np.asarray(items)
    mine = items[rank::world_size]
    if world_size > 1 and len(items):
        mine = np.concatenate([mine, np.repeat(items[:1], -(-len(items) // world_size) - len(mine))])
    return mine
