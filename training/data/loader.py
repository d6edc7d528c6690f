"""A PyTorch `DataLoader` with reproducible order and augmentation, whatever the number of workers."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def seed_worker(worker_id: int) -> None:
    """`worker_init_fn` that seeds `random` and numpy from the worker's torch seed (which the loader derives)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    collate_fn: Callable | None = None,
    *,
    shuffle: bool = False,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    persistent_workers: bool = False,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """
    A `DataLoader` whose batches depend only on `seed` (and the dataset's own seed and epoch), not on `num_workers`.

    The shuffling order comes from a generator seeded with `seed` (or from `sampler`, e.g. an
    [`EpochShuffleSampler`], whose order depends only on its seed and epoch); the SViTT datasets seed each sample's randomness
    from its index, and `seed_worker` covers code that uses `random`/numpy in workers.
    """
    generator = torch.Generator().manual_seed(seed)
    extra = {}
    if num_workers > 0:
        extra["persistent_workers"] = persistent_workers
        if prefetch_factor is not None:
            extra["prefetch_factor"] = prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=generator,
        **extra,
    )


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation of `range(num_samples)` per epoch, drawn from `(seed, epoch)` alone.

    Unlike a sampler drawing from a running generator, the order of epoch `e` does not depend on what was iterated
    before, so a run resumed in the middle of epoch `e` (with `set_epoch(e)`) replays exactly the same order.
    With `group_size` g, the groups of g consecutive indices are shuffled and each stays together (with a batch size
    divisible by g, in one batch), e.g. a clip and its reversed twin as in-batch hard negatives.
    """

    def __init__(self, num_samples: int, seed: int = 0, group_size: int = 1):
        if group_size < 1 or num_samples % group_size:
            raise ValueError(f"{num_samples} samples cannot be split into groups of {group_size}.")
        self.num_samples, self.seed, self.group_size, self.epoch = num_samples, seed, group_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        groups = torch.randperm(self.num_samples // self.group_size, generator=generator)
        order = groups if self.group_size == 1 else groups[:, None] * self.group_size + torch.arange(self.group_size)
        # In pieces: a list of millions of Python ints would cost the main process ~35 bytes per sample.
        for piece in order.reshape(-1).split(1 << 16):
            yield from piece.tolist()

    def __len__(self) -> int:
        return self.num_samples
