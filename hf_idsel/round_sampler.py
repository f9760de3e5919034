"""The rows of a round as torch's data pipeline sees them: a sampler over the current round's rows, and a
collator that carries each row's pool id into the batch (the loss scorer reads it)."""

from __future__ import annotations

import torch

from .errors import InvalidArgumentError

__all__ = ["ROW_ID", "RoundSampler", "RowIdCollator"]

ROW_ID = "hf_idsel_row"


class RoundSampler(torch.utils.data.Sampler):
    """Yields the rows of the current round (positions in the prepared dataset) in the order that
    `train_sampling_strategy` asks for, reseeded every epoch.

    Its length is the current round's row count, so the dataloader's length (batches per rank, as
    accelerate shards them) is the length of the epoch that runs; the trainer sizes each epoch and
    the learning-rate schedule from it.

    Args:
        seed (`int`):
            Seed of the order; the same seed and epoch give the same order on every rank.
        strategy (`str`, *optional*, defaults to `"random"`):
            `"random"` (a seeded shuffle), `"sequential"` (the order the rows were drawn in) or
            `"group_by_length"` (transformers' length-grouped shuffle, so batches pad less).
        lengths (`list[int]`, *optional*):
            Token length of every prepared row; needed by `"group_by_length"`.
        batch_size (`int`, *optional*, defaults to `1`):
            Rows per optimizer step, the size of the groups `"group_by_length"` makes.
    """

    def __init__(self, seed: int, strategy: str = "random", lengths=None, batch_size: int = 1):
        if strategy == "group_by_length" and lengths is None:
            raise InvalidArgumentError("train_sampling_strategy='group_by_length' needs the rows' token lengths.")
        self.length = 0
        self.seed = seed
        self.strategy = strategy
        self.lengths = lengths
        self.batch_size = batch_size
        self.positions: list[int] = []
        self.epoch = 0

    def set_rows(self, positions) -> None:
        self.positions = [int(p) for p in positions]
        self.length = len(self.positions)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if self.strategy == "sequential":
            return iter(list(self.positions))
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.strategy == "group_by_length":
            from transformers.trainer_pt_utils import get_length_grouped_indices

            lengths = [int(self.lengths[p]) for p in self.positions]
            order = get_length_grouped_indices(lengths, self.batch_size, generator=generator)
        else:
            order = torch.randperm(len(self.positions), generator=generator).tolist()
        return iter([self.positions[i] for i in order])


class RowIdCollator:
    """Carries each example's pool row id past the collator, as a tensor the loss can read."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples):
        rows = [example.pop(ROW_ID, -1) for example in examples]
        batch = self.collator(examples)
        batch[ROW_ID] = torch.tensor(rows, dtype=torch.long)
        return batch
