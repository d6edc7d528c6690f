"""Edge sparsity: which key blocks each query block sees, and the backends that compute it.

The sequence is `c` global tokens followed by `n` patch tokens (in their current order). Patch tokens are
cut into `m = ceil(n / block_size)` contiguous blocks, the last one zero-padded. A `BlockSparseLayout`
lists for every query block the key blocks it attends to: its cyclic local window first, then random
blocks in ascending order. Every patch query also attends to the global tokens; global queries attend to
everything. The layout is the single source of truth: every backend consumes it, and the masked dense
backend is the oracle the block-gather backend is tested against.

Padded key slots: the release leaves them in the softmax as keys of exact zeros whose bias is the
patch->global entry ("phantom keys"); `mask_padded_keys=True` removes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PositionBias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Maps broadcastable (query positions, key positions) to the bias `(..., heads)`."""

PADDING_POSITION = -1  # padded slots are looked up as the first global token, as in the release


def softmax_in_float32(scores: torch.Tensor) -> torch.Tensor:
    """Softmax computed in at least fp32 (the release keeps fp32 softmax under autocast), in the input's dtype."""
    if scores.dtype in (torch.float16, torch.bfloat16):
        return torch.softmax(scores.float(), dim=-1).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


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


def local_block_window(num_blocks: int, num_local_blocks: int) -> torch.Tensor:
    """(num_blocks, w) cyclic window centred on each block; all blocks once when the window covers them."""
    if num_local_blocks >= num_blocks:
        base = torch.arange(num_blocks)
        return torch.stack([torch.roll(base, -i) for i in range(num_blocks)])
    half = num_local_blocks // 2
    offsets = torch.arange(-half, half + 1)
    return (torch.arange(num_blocks)[:, None] + offsets[None, :]) % num_blocks


def build_block_sparse_layout(
    num_tokens: int,
    block_size: int,
    num_local_blocks: int,
    num_random_blocks: int,
    generator: torch.Generator | None = None,
    random_blocks: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> BlockSparseLayout:
    """Draw (or replay) the random blocks of one layer.

    Random blocks are drawn as in the release: one uniform `(m, m)` matrix, local blocks excluded, the
    top `num_random_blocks` of each row, sorted. They are clamped to the blocks outside the local window, so
    no key is ever attended twice. `random_blocks` replays a recorded `(m, r)` pattern instead.
    """
    num_blocks = num_blocks_for(num_tokens, block_size)
    local = local_block_window(num_blocks, num_local_blocks)
    num_random = min(num_random_blocks, num_blocks - local.shape[1])
    if random_blocks is not None:
        random_blocks = random_blocks.to(device="cpu", dtype=torch.long)
        if random_blocks.shape != (num_blocks, num_random):
            raise ValueError(
                f"Replayed random blocks have shape {tuple(random_blocks.shape)}, but this layer has {num_blocks} "
                f"query blocks and room for {num_random} random blocks each."
            )
        if num_random and (
            random_blocks.min() < 0
            or random_blocks.max() >= num_blocks
            or (random_blocks[:, :, None] == local[:, None, :]).any()
        ):
            raise ValueError("Replayed random blocks must be block indices outside each query block's local window.")
    elif num_random > 0:
        scores = torch.rand((num_blocks, num_blocks), generator=generator)
        scores.scatter_(1, local, -1.0)
        random_blocks = scores.topk(num_random, dim=1).indices.sort(dim=1).values
    else:
        random_blocks = torch.empty(num_blocks, 0, dtype=torch.long)
    key_blocks = torch.cat([local, random_blocks], dim=1)
    return BlockSparseLayout(
        num_tokens=num_tokens,
        block_size=block_size,
        key_blocks=key_blocks.to(device) if device is not None else key_blocks,
        num_local_blocks=local.shape[1],
    )


def _global_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    global_positions: torch.Tensor,
    key_positions: torch.Tensor,
    position_bias: PositionBias,
    scaling: float,
    dropout: float,
    training: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global queries see every key: (B, H, c, d) output and (B, H, c, c+n) probabilities."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    bias = position_bias(global_positions[:, :, None], key_positions[:, None, :])  # (B, c, c+n, H)
    probs = softmax_in_float32(scores + bias.permute(0, 3, 1, 2).to(scores.dtype))
    output = torch.matmul(F.dropout(probs, p=dropout, training=training), value)
    return output, probs


def block_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: BlockSparseLayout,
    positions: torch.Tensor,
    position_bias: PositionBias,
    num_global_tokens: int,
    scaling: float,
    mask_padded_keys: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    backend: str = "gather",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention under `layout`.

    Args:
        query, key, value: `(B, H, c + n, d)`, global tokens first.
        positions: `(B, n)` original positions of the patch tokens (for the relative bias).
        position_bias: the layer's bias lookup (see `relative_position.py`).

    Returns:
        `(B, H, c + n, d)` output and the global queries' probabilities `(B, H, c, c + n)`.
    """
    if backend == "gather":
        attend = _gather_block_attention
    elif backend == "dense_masked":
        attend = _dense_masked_block_attention
    else:
        raise ValueError(f"Unknown sparse attention backend {backend!r}; use 'gather' or 'dense_masked'.")
    batch = query.shape[0]
    c = num_global_tokens
    if positions.shape != (batch, layout.num_tokens) or query.shape[2] != c + layout.num_tokens:
        raise ValueError(
            f"Layout for {layout.num_tokens} patch tokens does not fit a sequence of {query.shape[2]} tokens "
            f"({c} global) with positions of shape {tuple(positions.shape)}."
        )
    global_positions = -torch.arange(1, c + 1, device=positions.device).expand(batch, c)
    all_positions = torch.cat([global_positions, positions], dim=1)
    global_output, global_probs = _global_query_attention(
        query[:, :, :c], key, value, global_positions, all_positions, position_bias, scaling, dropout, training
    )
    patch_output = attend(
        query, key, value, layout, positions, position_bias, c, scaling, mask_padded_keys, dropout, training
    )
    return torch.cat([global_output, patch_output], dim=2), global_probs


def _gather_block_attention(
    query, key, value, layout, positions, position_bias, c, scaling, mask_padded_keys, dropout, training
) -> torch.Tensor:
    """Computes only the kept blocks: keys/values gathered once per layer into `(B, H, m, kv*bs, d)`."""
    batch, heads, _, head_dim = query.shape
    m, bs, n = layout.num_blocks, layout.block_size, layout.num_tokens
    kv = layout.key_blocks.shape[1]
    pad = layout.padding

    def blocks(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, c:], (0, 0, 0, pad)).reshape(batch, heads, m, bs, head_dim)

    query_blocks, key_blocks, value_blocks = blocks(query), blocks(key), blocks(value)
    key_index = layout.key_blocks.to(query.device)
    gathered_keys = key_blocks[:, :, key_index].reshape(batch, heads, m, kv * bs, head_dim)
    gathered_values = value_blocks[:, :, key_index].reshape(batch, heads, m, kv * bs, head_dim)
    global_keys, global_values = key[:, :, :c], value[:, :, :c]

    padded_positions = F.pad(positions, (0, pad), value=PADDING_POSITION).reshape(batch, m, bs)
    key_positions = padded_positions[:, key_index].reshape(batch, m, kv * bs)
    global_positions = -torch.arange(1, c + 1, device=positions.device)

    block_scores = torch.matmul(query_blocks, gathered_keys.transpose(-1, -2)) * scaling
    block_bias = position_bias(padded_positions[:, :, :, None], key_positions[:, :, None, :])  # (B, m, bs, kv*bs, H)
    block_scores = block_scores + block_bias.permute(0, 4, 1, 2, 3).to(block_scores.dtype)
    if mask_padded_keys and pad:
        is_padding = (key_positions == PADDING_POSITION)[:, None, :, None, :]
        block_scores = block_scores.masked_fill(is_padding, torch.finfo(block_scores.dtype).min)
    global_scores = torch.matmul(query_blocks, global_keys[:, :, None].transpose(-1, -2)) * scaling
    global_bias = position_bias(padded_positions[:, :, :, None], global_positions)  # (B, m, bs, c, H)
    global_scores = global_scores + global_bias.permute(0, 4, 1, 2, 3).to(global_scores.dtype)

    probs = softmax_in_float32(torch.cat([global_scores, block_scores], dim=-1))
    probs = F.dropout(probs, p=dropout, training=training)
    output = torch.matmul(probs[..., :c], global_values[:, :, None]) + torch.matmul(probs[..., c:], gathered_values)
    return output.reshape(batch, heads, m * bs, head_dim)[:, :, :n]


def _dense_masked_block_attention(
    query, key, value, layout, positions, position_bias, c, scaling, mask_padded_keys, dropout, training
) -> torch.Tensor:
    """Reference: the full score matrix with the layout as a mask, plus one "phantom" column per query
    that stands for the padded slots of the last block (`pad` zero keys, each with score `bias[patch->global]`,
    folded into one key of score `bias + log(pad)` and value zero)."""
    batch, heads, _, head_dim = query.shape
    n = layout.num_tokens
    patch_queries = query[:, :, c:]
    global_positions = -torch.arange(1, c + 1, device=positions.device).expand(batch, c)
    all_positions = torch.cat([global_positions, positions], dim=1)

    scores = torch.matmul(patch_queries, key.transpose(-1, -2)) * scaling  # (B, H, n, c+n)
    bias = position_bias(positions[:, :, None], all_positions[:, None, :])
    scores = scores + bias.permute(0, 3, 1, 2).to(scores.dtype)
    allowed = torch.cat(
        [torch.ones(n, c, dtype=torch.bool, device=query.device), layout.token_mask().to(query.device)], dim=1
    )
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
    probs = F.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs[..., : c + n], value)


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
    tensors = {f"layer{layer}_call{call}": blocks.contiguous() for layer, blocks in items if blocks is not None}
    save_file(tensors, str(path))


__all__ = [
    "BlockSparseLayout",
    "load_random_block_patterns",
    "save_random_block_patterns",
    "block_sparse_attention",
    "build_block_sparse_layout",
    "local_block_window",
    "softmax_in_float32",
]
