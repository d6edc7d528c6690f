"""A PyTorch `DataLoader` with reproducible order and augmentation, whatever the number of workers."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


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
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    persistent_workers: bool = False,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """
    A `DataLoader` whose batches depend only on `seed` (and the dataset's own seed and epoch), not on `num_workers`.

    The shuffling order comes from a generator seeded with `seed`; the SViTT datasets seed each sample's randomness
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
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=drop_last,
        pin_memory=pin_memory,
        worker_init_fn=seed_worker,
        generator=generator,
        **extra,
    )
