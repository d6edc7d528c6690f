"""The random draws of a video-tower forward: random attention blocks (edge sparsity) and random token pruning
(node sparsity).

Both come from one `RandomSource` per forward: a `torch.Generator`, the global RNG of the model's device, or a seed.
With a seed the numbers come from a counter-based hash (`hashed_uniform`): a pure function of the seed, a stream (one
per layer and purpose) and the element index, so evaluation draws the same pattern on every device, independently of
the batch size, and `torch.compile` can trace it (no generator object).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor | int, factor: int):
    """`x * factor mod 2^32` for 32-bit `x` held in int64 (split in halves, so nothing overflows)."""
    low, high = x & 0xFFFF, x >> 16
    return (low * factor + (((high * factor) & 0xFFFF) << 16)) & _MASK32


def _hash32(x):
    """A 32-bit integer mixer (xorshift-multiply); works on Python ints and int64 tensors alike."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hashed_uniform(
    shape: Sequence[int], seed: int, stream: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Uniform `[0, 1)` float32 numbers that are a pure function of `(seed, stream, element index)`."""
    key = _hash32(_hash32((seed & _MASK32) ^ 0x5BD1E995) ^ (stream & _MASK32))
    index = torch.arange(math.prod(shape), device=device, dtype=torch.int64)
    return (_hash32(index ^ key) >> 8).to(torch.float32).mul_(2.0**-24).view(*shape)


class RandomSource:
    """Where the random draws of one forward pass come from: a seed (hashed, deterministic evaluation), a
    `torch.Generator`, or the global RNG of the model's device. Draws are made on the model's device."""

    def __init__(
        self, device: torch.device | str, generator: torch.Generator | None = None, seed: int | None = None
    ) -> None:
        self.device = device
        self.generator = generator
        self.seed = seed

    def uniform(self, shapes: Sequence[Sequence[int]], streams: Sequence[int]) -> list[torch.Tensor]:
        """One uniform tensor per shape, all from one draw; with a seed, tensor i is a function of `streams[i]` only."""
        if self.seed is not None:
            return [hashed_uniform(shape, self.seed, stream, self.device) for shape, stream in zip(shapes, streams)]
        sizes = [math.prod(shape) for shape in shapes]
        device = self.generator.device if self.generator is not None else self.device
        flat = torch.rand(sum(sizes), generator=self.generator, device=device).to(self.device)
        return [part.view(*shape) for part, shape in zip(flat.split(sizes), shapes)]


__all__ = ["RandomSource", "hashed_uniform"]
