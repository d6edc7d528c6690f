"""Edge sparsity: which key blocks each query block sees, and the backends that compute it.

The sequence is the global tokens ([CLS]) followed by `n` patch tokens (in their current order). Patch tokens are
cut into `m = ceil(n / block_size)` contiguous blocks, the last one zero-padded. A `BlockSparseLayout` lists for
every query block the key blocks it attends to: its cyclic local window first, then random blocks in ascending
order. Every patch query also attends to the global tokens; global queries attend to everything.

This file reads in three steps:

1. the reference: the masked dense computation, the oracle every fast backend is tested against (backend
   `dense_masked`), and the global queries' rows, which every backend computes the same way;
2. the layout: the single source of truth of which blocks are seen, drawn or replayed per layer;
3. `block_sparse_attention`, which runs a layout with a backend: the reference, or the block-gather kernel
   (`block_sparse_kernel.py`, backend `gather`) that never forms a score-sized tensor.

Padded key slots: the release leaves them in the softmax as keys of exact zeros whose bias is the
patch->global entry ("phantom keys"); `mask_padded_keys=True` removes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .block_sparse_kernel import gathered_patch_attention
from .relative_position import SViTTRelativePositionBias3D, with_global_positions

PADDING_POSITION = -1  # padded slots are looked up as the first global token, as in the release


def softmax_in_float32(scores: torch.Tensor) -> torch.Tensor:
    """Softmax computed in at least fp32 (the release keeps fp32 softmax under autocast), in the input's dtype."""
    if scores.dtype in (torch.float16, torch.bfloat16):
        return torch.softmax(scores.float(), dim=-1).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


# --------------------------------------------------------------------------------------------------
# 1. Reference: the masked dense computation
# --------------------------------------------------------------------------------------------------


def _global_query_attention(query, key, value, position_bias, num_global, scaling, dropout):
    """Rows of the `G = num_global` global queries, which see every key: output `(B, H, G, d)` and probabilities
    `(B, H, G, G + n)`.

    They are computed with plain autograd operations, outside the block-sparse function, so that the probabilities
    returned as `attentions` are the tensor the output is made of: a gradient reaches them (attention rollout and
    gradient-weighted attention need it), and a loss on them reaches the projections and the bias table.
    """
    bias = _global_query_bias(position_bias, num_global, query.shape[2] - num_global)
    scores = torch.matmul(query[:, :, :num_global], key.transpose(-1, -2)) * scaling
    probs = softmax_in_float32(scores + bias.to(scores.dtype))
    return torch.matmul(F.dropout(probs, p=dropout, training=dropout > 0), value), probs


def _global_query_bias(position_bias, num_global, num_tokens):
    """Bias `(H, G, G + n)` of the global queries: rows global_i->global_j, then one row global_i->patch for every
    patch key. That row is looked up once and broadcast, so its gradient is a sum, not a scatter of `n` entries."""
    table = position_bias.relative_position_bias_table  # (rows, H)
    rows = torch.arange(num_global, device=table.device)
    patch_rows = position_bias.num_patch_rows
    to_global = table[patch_rows + 2 * num_global + rows[:, None] * num_global + rows[None, :]]  # (G, G, H)
    to_patch = table[patch_rows + rows][:, None, :].expand(num_global, num_tokens, table.shape[1])
    return torch.cat([to_global, to_patch], dim=1).permute(2, 0, 1)


def _dense_masked_patch_attention(
    query, key, value, layout, positions, position_bias, num_global, scaling, mask_padded_keys, dropout
) -> torch.Tensor:
    """Reference for the patch queries' rows `(B, H, n, d)`: their full score rows with the layout as a mask, plus one
    "phantom" column per query that stands for the padded slots of the last block (`pad` zero keys, each with score
    `bias[patch->global]`, folded into one key of score `bias + log(pad)` and value zero)."""
    batch = query.shape[0]
    n = layout.num_tokens
    positions = positions.expand(batch, -1)
    all_positions = with_global_positions(positions, num_global)

    scores = torch.matmul(query[:, :, num_global:], key.transpose(-1, -2)) * scaling  # (B, H, n, G + n)
    bias = position_bias(positions[:, :, None], all_positions[:, None, :])
    scores = scores + bias.permute(0, 3, 1, 2).to(scores.dtype)
    allowed = torch.ones(n, num_global + n, dtype=torch.bool, device=query.device)
    allowed[:, num_global:] = layout.token_mask().to(query.device)
    scores = scores.masked_fill(~allowed, float("-inf"))

    columns = [scores]
    if layout.padding and not mask_padded_keys:
        last_block = layout.num_blocks - 1
        sees_last_block = (layout.key_blocks == last_block).any(dim=1).to(query.device)
        block_of = torch.arange(n, device=query.device) // layout.block_size
        phantom_bias = position_bias(positions, torch.full_like(positions, PADDING_POSITION))  # (B, n, H)
        phantom = phantom_bias.permute(0, 2, 1).to(scores.dtype) + math.log(layout.padding)
        phantom = phantom.masked_fill(~sees_last_block[block_of], float("-inf"))
        columns.append(phantom[..., None])
    probs = softmax_in_float32(torch.cat(columns, dim=-1))
    return torch.matmul(F.dropout(probs, p=dropout, training=dropout > 0)[..., : num_global + n], value)


# --------------------------------------------------------------------------------------------------
# 2. Layout
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockSparseLayout:
    """Key blocks of every query block for a sequence of `num_tokens` patch tokens."""

    num_tokens: int
    block_size: int
    key_blocks: torch.Tensor  # (num_blocks, keys_per_query_block) long
    num_local_blocks: int

    @property
    def num_blocks(self) -> int:
        return self.key_blocks.shape[0]

    @property
    def padding(self) -> int:
        return self.num_blocks * self.block_size - self.num_tokens

    @property
    def random_blocks(self) -> torch.Tensor:
        return self.key_blocks[:, self.num_local_blocks :]

    def block_mask(self) -> torch.Tensor:
        """(num_blocks, num_blocks) bool: query block i sees key block j."""
        mask = torch.zeros(self.num_blocks, self.num_blocks, dtype=torch.bool, device=self.key_blocks.device)
        return mask.scatter_(1, self.key_blocks, True)

    def token_mask(self) -> torch.Tensor:
        """(num_tokens, num_tokens) bool over patch tokens, expanded from the block mask."""
        block_of = torch.arange(self.num_tokens, device=self.key_blocks.device) // self.block_size
        return self.block_mask()[block_of[:, None], block_of[None, :]]


def num_blocks_for(num_tokens: int, block_size: int) -> int:
    return max(1, math.ceil(num_tokens / block_size))


def local_block_window(
    num_blocks: int, num_local_blocks: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """(num_blocks, w) cyclic window centred on each block; all blocks once (own block first) when it covers them."""
    if num_local_blocks >= num_blocks:
        offsets = torch.arange(num_blocks, device=device)
    else:
        half = num_local_blocks // 2
        offsets = torch.arange(-half, half + 1, device=device)
    return (torch.arange(num_blocks, device=device)[:, None] + offsets[None, :]) % num_blocks


def num_random_blocks_for(num_blocks: int, num_local_blocks: int, num_random_blocks: int) -> int:
    """Random blocks that fit outside the local window (never a duplicate key)."""
    return max(0, min(num_random_blocks, num_blocks - min(num_local_blocks, num_blocks)))


def build_block_sparse_layout(
    num_tokens: int,
    block_size: int,
    num_local_blocks: int,
    num_random_blocks: int,
    generator: torch.Generator | None = None,
    random_blocks: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    uniform_scores: torch.Tensor | None = None,
) -> BlockSparseLayout:
    """Draw (or replay) the random blocks of one layer.

    Random blocks are drawn as in the release: one uniform `(m, m)` matrix (`uniform_scores`, or drawn from
    `generator` / the global RNG), local blocks excluded, the top `num_random_blocks` of each row, sorted. They are
    clamped to the blocks outside the local window, so no key is ever attended twice. `random_blocks` replays a
    recorded `(m, r)` pattern instead. Everything happens on `device`: no host round-trip.
    """
    num_blocks = num_blocks_for(num_tokens, block_size)
    if device is None:
        device = random_blocks.device if random_blocks is not None else "cpu"
    local = local_block_window(num_blocks, num_local_blocks, device)
    num_random = num_random_blocks_for(num_blocks, num_local_blocks, num_random_blocks)
    if random_blocks is not None:
        random_blocks = random_blocks.to(device=device, dtype=torch.long)
        if random_blocks.shape != (num_blocks, num_random):
            raise ValueError(
                f"Replayed random blocks have shape {tuple(random_blocks.shape)}, but this layer has {num_blocks} "
                f"query blocks and room for {num_random} random blocks each."
            )
        if num_random and bool(
            (random_blocks.min() < 0)
            | (random_blocks.max() >= num_blocks)
            | (random_blocks[:, :, None] == local[:, None, :]).any()
        ):
            raise ValueError("Replayed random blocks must be block indices outside each query block's local window.")
    elif num_random > 0:
        if uniform_scores is None:
            gen_device = generator.device if generator is not None else device
            uniform_scores = torch.rand((num_blocks, num_blocks), generator=generator, device=gen_device)
        scores = uniform_scores.to(device).scatter(1, local, -1.0)
        random_blocks = scores.topk(num_random, dim=1).indices.sort(dim=1).values
    else:
        random_blocks = torch.empty(num_blocks, 0, dtype=torch.long, device=device)
    return BlockSparseLayout(
        num_tokens=num_tokens,
        block_size=block_size,
        key_blocks=torch.cat([local, random_blocks], dim=1),
        num_local_blocks=local.shape[1],
    )


def load_random_block_patterns(path, call: int = 0) -> dict[int, torch.Tensor]:
    """Read recorded random blocks (`layer{L}_call{C}` tensors of a safetensors file) for forward call `call`.

    Returns `{layer: (num_blocks, num_random_blocks)}`, what the video tower takes as `random_blocks=`.
    """
    from safetensors.torch import load_file

    suffix = f"_call{call}"
    patterns = {
        int(name[len("layer") : -len(suffix)]): tensor
        for name, tensor in load_file(str(path)).items()
        if name.startswith("layer") and name.endswith(suffix)
    }
    if not patterns:
        raise ValueError(f"{path} holds no random-block patterns for call {call} (keys `layer{{L}}_call{call}`).")
    return patterns


def save_random_block_patterns(random_blocks, path, call: int = 0) -> None:
    """Write per-layer random blocks (e.g. `SViTTVisionModelOutput.random_blocks`) in the same format."""
    from safetensors.torch import save_file

    items = random_blocks.items() if isinstance(random_blocks, dict) else enumerate(random_blocks)
    tensors = {f"layer{layer}_call{call}": blocks.cpu().contiguous() for layer, blocks in items if blocks is not None}
    save_file(tensors, str(path))


# --------------------------------------------------------------------------------------------------
# 3. Running a layout
# --------------------------------------------------------------------------------------------------


def block_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: BlockSparseLayout,
    positions: torch.Tensor,
    position_bias: SViTTRelativePositionBias3D,
    num_global_tokens: int,
    scaling: float,
    mask_padded_keys: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    backend: str = "gather",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention under `layout`.

    Args:
        query, key, value: `(B, H, G + n, d)`, the `G = num_global_tokens` global tokens first (any strides).
        positions: `(P, n)` original positions of the patch tokens (for the relative bias), `P` is 1 when every
            sample has the same positions (before pruning) or `B`.
        position_bias: the layer's [`SViTTRelativePositionBias3D`].

    Returns:
        `(B, H, G + n, d)` output and the global queries' probabilities `(B, H, G, G + n)`, the tensor the global
        rows of the output are computed from (in the autograd graph).
    """
    batch = query.shape[0]
    num_global = num_global_tokens
    if positions.shape[0] not in (1, batch) or positions.shape[1] != layout.num_tokens:
        raise ValueError(
            f"Layout for {layout.num_tokens} patch tokens does not fit positions of shape {tuple(positions.shape)} "
            f"(batch {batch})."
        )
    if query.shape[2] != num_global + layout.num_tokens:
        raise ValueError(
            f"Layout for {layout.num_tokens} patch tokens does not fit a sequence of {query.shape[2]} tokens "
            f"({num_global} global)."
        )
    if backend not in ("gather", "dense_masked"):
        raise ValueError(f"Unknown sparse attention backend {backend!r}; use 'gather' or 'dense_masked'.")
    dropout = dropout if training else 0.0
    global_output, global_probs = _global_query_attention(
        query, key, value, position_bias, num_global, scaling, dropout
    )
    if backend == "gather":
        output = gathered_patch_attention(
            query, key, value, global_output, layout, positions, position_bias, scaling, dropout, mask_padded_keys
        )
    else:
        patch_output = _dense_masked_patch_attention(
            query, key, value, layout, positions, position_bias, num_global, scaling, mask_padded_keys, dropout
        )
        output = torch.cat([global_output, patch_output], dim=2)
    return output, global_probs


__all__ = [
    "BlockSparseLayout",
    "block_sparse_attention",
    "build_block_sparse_layout",
    "load_random_block_patterns",
    "local_block_window",
    "num_blocks_for",
    "num_random_blocks_for",
    "save_random_block_patterns",
    "softmax_in_float32",
]
