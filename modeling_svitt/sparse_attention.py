"""Edge sparsity: which key blocks each query block sees, and the backends that compute it.

The sequence is `c` global tokens followed by `n` patch tokens (in their current order). Patch tokens are
cut into `m = ceil(n / block_size)` contiguous blocks, the last one zero-padded. A `BlockSparseLayout`
lists for every query block the key blocks it attends to: its cyclic local window first, then random
blocks in ascending order. Every patch query also attends to the global tokens; global queries attend to
everything. The layout is the single source of truth: every backend consumes it, and the masked dense
backend is the oracle the block-gather backend is tested against.

Padded key slots: the release leaves them in the softmax as keys of exact zeros whose bias is the
patch->global entry ("phantom keys"); `mask_padded_keys=True` removes them.

The gather backend is one autograd function: it gathers the key/value blocks of every query block, computes
the scores, softmax and output block by block, and saves for backward only the (blocked) queries, keys and
values, the output and the softmax statistics. Backward gathers again and recomputes the probabilities, so no
tensor of the size of the score matrix, and no gathered copy of the keys, is kept between forward and backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .relative_position import with_global_positions

PositionBias = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Maps broadcastable (query positions, key positions) to the bias `(..., heads)`."""

PADDING_POSITION = -1  # padded slots are looked up as the first global token, as in the release


def softmax_in_float32(scores: torch.Tensor) -> torch.Tensor:
    """Softmax computed in at least fp32 (the release keeps fp32 softmax under autocast), in the input's dtype."""
    if scores.dtype in (torch.float16, torch.bfloat16):
        return torch.softmax(scores.float(), dim=-1).to(scores.dtype)
    return torch.softmax(scores, dim=-1)


# --------------------------------------------------------------------------------------------------
# Layout
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


# --------------------------------------------------------------------------------------------------
# Random draws of a forward pass
# --------------------------------------------------------------------------------------------------

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


def hashed_uniform(shape: Sequence[int], seed: int, stream: int, device: torch.device | str | None = None):
    """Uniform `[0, 1)` numbers that are a pure function of `(seed, stream, element index)`.

    The same on every device and traceable by `torch.compile` (no generator object): evaluation draws its random
    blocks from it, one stream per layer, so the pattern of a layer depends on the seed and the layer only.
    """
    key = _hash32(_hash32((seed & _MASK32) ^ 0x5BD1E995) ^ (stream & _MASK32))
    index = torch.arange(math.prod(shape), device=device, dtype=torch.int64)
    return (_hash32(index ^ key) >> 8).to(torch.float32).mul_(2.0**-24).view(*shape)


class RandomSource:
    """Where the random draws of one forward pass come from: a seed (hashed, deterministic evaluation), a
    `torch.Generator`, or the global RNG of the model's device. Draws are made on the model's device."""

    def __init__(self, device, generator: torch.Generator | None = None, seed: int | None = None) -> None:
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


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------


def block_sparse_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    layout: BlockSparseLayout,
    positions: torch.Tensor,
    position_bias,
    num_global_tokens: int,
    scaling: float,
    mask_padded_keys: bool = False,
    dropout: float = 0.0,
    training: bool = False,
    backend: str = "gather",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention under `layout`.

    Args:
        query, key, value: `(B, H, c + n, d)`, global tokens first (any strides).
        positions: `(P, n)` original positions of the patch tokens (for the relative bias), `P` is 1 when every
            sample has the same positions (before pruning) or `B`.
        position_bias: the layer's [`SViTTRelativePositionBias3D`].

    Returns:
        `(B, H, c + n, d)` output and the global queries' probabilities `(B, H, c, c + n)`.
    """
    batch = query.shape[0]
    c = num_global_tokens
    if positions.shape[0] not in (1, batch) or positions.shape[1] != layout.num_tokens:
        raise ValueError(
            f"Layout for {layout.num_tokens} patch tokens does not fit positions of shape {tuple(positions.shape)} "
            f"(batch {batch})."
        )
    if query.shape[2] != c + layout.num_tokens:
        raise ValueError(
            f"Layout for {layout.num_tokens} patch tokens does not fit a sequence of {query.shape[2]} tokens "
            f"({c} global)."
        )
    dropout = dropout if training else 0.0
    if backend == "gather":
        return _BlockSparseAttention.apply(
            query,
            key,
            value,
            position_bias.relative_position_bias_table,
            position_bias.codes(positions),
            layout.key_blocks,
            c,
            layout.block_size,
            position_bias.centre,
            position_bias.num_patch_rows,
            scaling,
            dropout,
            mask_padded_keys,
        )
    if backend == "dense_masked":
        return _dense_masked_block_attention(
            query, key, value, layout, positions, position_bias, c, scaling, mask_padded_keys, dropout
        )
    raise ValueError(f"Unknown sparse attention backend {backend!r}; use 'gather' or 'dense_masked'.")


def _patch_bias_index(codes, key_blocks, num_tokens, c, block_size, centre, patch_rows, padding_row):
    """Table row of every (patch query, key slot) pair, `(P, m, block_size, c + kv * block_size)` int32.

    Key slots are the `c` global tokens, then the key blocks of the query block. A patch pair's row is a difference
    of per-position codes; global keys and padded slots have fixed rows (`padding_row`).
    """
    m, kv = key_blocks.shape
    count = codes.shape[0]
    block_codes = F.pad(codes.to(torch.int32), (0, m * block_size - num_tokens)).view(count, m, block_size)
    slot_token = (key_blocks[:, :, None] * block_size + torch.arange(block_size, device=codes.device)).flatten(1)
    is_real = slot_token < num_tokens  # (m, kv*bs)
    key_codes = block_codes[:, key_blocks].reshape(count, m, kv * block_size)
    key_term = torch.where(is_real, centre - key_codes, padding_row)
    global_term = (patch_rows + c + torch.arange(c, device=codes.device, dtype=torch.int32)).expand(count, m, c)
    key_term = torch.cat([global_term, key_term], dim=2)
    weight = torch.cat([is_real.new_zeros(m, c), is_real], dim=1).to(torch.int32)
    return torch.addcmul(key_term[:, :, None, :], block_codes[..., None], weight[:, None, :])


def _global_bias_index(num_tokens, c, patch_rows, device):
    """Table rows of the global queries `(c, c + n)`: global_i->global_j, then global_i->patch."""
    rows = torch.arange(c, device=device)
    to_global = patch_rows + 2 * c + rows[:, None] * c + rows[None, :]
    to_patch = (patch_rows + rows)[:, None].expand(c, num_tokens)
    return torch.cat([to_global, to_patch], dim=1)


def _slot_tokens(key_blocks, c, block_size):
    """`(m * W,)` rows of the `[global | patch blocks | padding]` key sequence each query block gathers."""
    m = key_blocks.shape[0]
    blocks = c + (key_blocks[:, :, None] * block_size + torch.arange(block_size, device=key_blocks.device)).flatten(1)
    glob = torch.arange(c, device=key_blocks.device).expand(m, c)
    return torch.cat([glob, blocks], dim=1).flatten()


def _dropout_mask(shape, dropout, device):
    return torch.rand(shape, device=device) >= dropout


class _BlockSparseAttention(torch.autograd.Function):
    """Block-sparse attention with the relative bias looked up inside (see the module docstring)."""

    @staticmethod
    def forward(ctx, query, key, value, table, codes, key_blocks, c, block_size, centre, patch_rows, scaling, dropout, mask_padded_keys):
        batch, heads, length, head_dim = query.shape
        n = length - c
        m, kv = key_blocks.shape
        width = c + kv * block_size
        dtype, device = query.dtype, query.device
        with torch.autocast(device.type, enabled=False):
            # queries / keys / values in block layout: (B, H, m*bs, d) patch queries; [global | patches | zeros]
            patch_queries = query.new_zeros(batch, heads, m * block_size, head_dim)
            patch_queries[:, :, :n] = query[:, :, c:]
            global_queries = query[:, :, :c].contiguous()
            keys = key.new_zeros(batch, heads, c + m * block_size, head_dim)
            keys[:, :, :length] = key
            values = value.new_zeros(batch, heads, c + m * block_size, head_dim)
            values[:, :, :length] = value
            table_by_head = _table_by_head(table, mask_padded_keys, dtype)
            padding_row = table.shape[0] if mask_padded_keys else patch_rows + c
            slots = _slot_tokens(key_blocks, c, block_size)
            index = _patch_bias_index(codes, key_blocks, n, c, block_size, centre, patch_rows, padding_row)

            gathered_keys = keys.index_select(2, slots).view(batch * heads * m, width, head_dim)
            scores = _block_scores(patch_queries, gathered_keys, table_by_head, index, scaling)
            del gathered_keys
            log_probs = torch.log_softmax(scores, dim=-1, dtype=_softmax_dtype(dtype))
            # log-normaliser of every row from its first slot (a global key, never masked): no second reduction
            log_normaliser = scores[..., 0].to(log_probs.dtype) - log_probs[..., 0]
            del scores
            probs = log_probs.exp_().to(dtype)
            del log_probs
            keep = _dropout_mask(probs.shape, dropout, device) if dropout > 0 else None
            weights = probs if keep is None else probs * keep / (1 - dropout)
            gathered_values = values.index_select(2, slots).view(batch * heads * m, width, head_dim)
            patch_output = torch.bmm(weights.view(batch * heads * m, block_size, width), gathered_values)
            del probs, weights, gathered_values

            global_index = _global_bias_index(n, c, patch_rows, device)
            global_scores = torch.matmul(global_queries, keys[:, :, :length].transpose(-1, -2)) * scaling
            global_scores = global_scores + table_by_head[:, global_index].to(dtype)
            global_probs = softmax_in_float32(global_scores)
            global_keep = _dropout_mask(global_probs.shape, dropout, device) if dropout > 0 else None
            global_weights = global_probs if global_keep is None else global_probs * global_keep / (1 - dropout)
            global_output = torch.matmul(global_weights, values[:, :, :length])

            output = query.new_empty(batch, length, heads, head_dim)
            output[:, :c] = global_output.transpose(1, 2)
            output[:, c:] = patch_output.view(batch, heads, m * block_size, head_dim)[:, :, :n].transpose(1, 2)
        ctx.save_for_backward(
            patch_queries, global_queries, keys, values, output, log_normaliser, global_probs, codes, key_blocks, table,
            keep, global_keep,
        )
        ctx.geometry = (c, block_size, centre, patch_rows, scaling, dropout, mask_padded_keys)
        return output.transpose(1, 2), global_probs

    @staticmethod
    def backward(ctx, grad_output, grad_global_probs):
        (
            patch_queries, global_queries, keys, values, output, log_normaliser, global_probs, codes, key_blocks, table,
            keep, global_keep,
        ) = ctx.saved_tensors
        c, block_size, centre, patch_rows, scaling, dropout, mask_padded_keys = ctx.geometry
        batch, heads, padded, head_dim = patch_queries.shape
        length = output.shape[1]
        n = length - c
        m, kv = key_blocks.shape
        width = c + kv * block_size
        dtype, device = patch_queries.dtype, patch_queries.device
        flat = batch * heads * m
        with torch.autocast(device.type, enabled=False):
            table_by_head = _table_by_head(table, mask_padded_keys, dtype)
            padding_row = table.shape[0] if mask_padded_keys else patch_rows + c
            slots = _slot_tokens(key_blocks, c, block_size)
            index = _patch_bias_index(codes, key_blocks, n, c, block_size, centre, patch_rows, padding_row)

            grad_output = grad_output.to(dtype)
            # rowwise <dO, O> = sum_j P_j dP_j, the softmax backward's correction
            correction = (grad_output * output.transpose(1, 2)).sum(-1, dtype=_softmax_dtype(dtype))  # (B, H, L)
            grad_patch = grad_output.new_zeros(batch, heads, padded, head_dim)
            grad_patch[:, :, :n] = grad_output[:, :, c:]
            patch_correction = F.pad(correction[:, :, c:], (0, padded - n)).view(batch, heads, m, block_size)

            gathered_keys = keys.index_select(2, slots).view(flat, width, head_dim)
            scores = _block_scores(patch_queries, gathered_keys, table_by_head, index, scaling)
            probs = scores.to(log_normaliser.dtype).sub_(log_normaliser[..., None]).exp_()
            del scores
            gathered_values = values.index_select(2, slots).view(flat, width, head_dim)
            grad_probs = torch.bmm(grad_patch.view(flat, block_size, head_dim), gathered_values.transpose(1, 2))
            weights = probs.to(dtype)
            if keep is not None:
                weights = weights * keep / (1 - dropout)
                grad_probs = grad_probs * keep / (1 - dropout)
            grad_gathered_values = torch.bmm(
                weights.view(flat, block_size, width).transpose(1, 2), grad_patch.view(flat, block_size, head_dim)
            )
            del weights, gathered_values
            grad_scores = probs.mul_(grad_probs.view(probs.shape).to(probs.dtype).sub_(patch_correction[..., None]))
            grad_scores = grad_scores.to(dtype)
            del grad_probs

            grad_table = None
            if ctx.needs_input_grad[3]:
                grad_table = torch.zeros_like(table_by_head, dtype=_softmax_dtype(dtype))
                _scatter_bias_grad(grad_table, index, grad_scores)
            grad_scores = grad_scores.view(flat, block_size, width)
            grad_patch_queries = torch.bmm(grad_scores, gathered_keys).mul_(scaling)
            del gathered_keys
            grad_gathered_keys = torch.bmm(
                grad_scores.transpose(1, 2), patch_queries.view(flat, block_size, head_dim)
            ).mul_(scaling)
            del grad_scores
            grad_keys = _scatter_blocks(grad_gathered_keys, key_blocks, batch, heads, c, block_size)
            grad_values = _scatter_blocks(grad_gathered_values, key_blocks, batch, heads, c, block_size)

            # global queries: dense rows, probabilities saved
            grad_global = grad_output[:, :, :c]
            global_weights = global_probs if global_keep is None else global_probs * global_keep / (1 - dropout)
            grad_values[:, :, :length] += torch.matmul(global_weights.transpose(-1, -2), grad_global)
            grad_global_weights = torch.matmul(grad_global, values[:, :, :length].transpose(-1, -2))
            if global_keep is not None:
                grad_global_weights = grad_global_weights * global_keep / (1 - dropout)
            if grad_global_probs is not None:
                grad_global_weights = grad_global_weights + grad_global_probs
            softmax_dtype = _softmax_dtype(dtype)
            global_probs_wide, grad_global_weights = global_probs.to(softmax_dtype), grad_global_weights.to(softmax_dtype)
            grad_global_scores = global_probs_wide * (
                grad_global_weights - (global_probs_wide * grad_global_weights).sum(-1, keepdim=True)
            )
            if grad_table is not None:
                global_index = _global_bias_index(n, c, patch_rows, device)
                grad_table.index_add_(1, global_index.flatten(), grad_global_scores.sum(0).flatten(1))
                grad_table = grad_table[:, : table.shape[0]].t().to(table.dtype)
            grad_global_scores = grad_global_scores.to(dtype)
            grad_global_queries = torch.matmul(grad_global_scores, keys[:, :, :length]) * scaling
            grad_keys[:, :, :length] += torch.matmul(grad_global_scores.transpose(-1, -2), global_queries) * scaling

            # gradients laid out (B, L, H, d) like the projections they flow back into
            grad_query = output.new_empty(batch, length, heads, head_dim)
            grad_query[:, :c] = grad_global_queries.transpose(1, 2)
            grad_query[:, c:] = grad_patch_queries.view(batch, heads, padded, head_dim)[:, :, :n].transpose(1, 2)
            grad_key = grad_keys[:, :, :length].transpose(1, 2).contiguous()
            grad_value = grad_values[:, :, :length].transpose(1, 2).contiguous()
        return (
            grad_query.transpose(1, 2),
            grad_key.transpose(1, 2),
            grad_value.transpose(1, 2),
            grad_table,
            None, None, None, None, None, None, None, None, None,
        )


def _softmax_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _table_by_head(table, mask_padded_keys, dtype):
    """`(H, rows)` table in the compute dtype; with masked padding one extra row of -inf for the padded slots."""
    by_head = table.t().to(dtype)
    if mask_padded_keys:
        by_head = torch.cat([by_head, by_head.new_full((by_head.shape[0], 1), float("-inf"))], dim=1)
    return by_head.contiguous()


def _block_scores(patch_queries, gathered_keys, table_by_head, index, scaling):
    """Scores `(B, H, m, bs, W)` of the patch queries against their gathered key slots `(B*H*m, W, d)`, bias included."""
    batch, heads, padded, head_dim = patch_queries.shape
    _, m, block_size, width = index.shape
    scores = patch_queries.new_empty(batch, heads, m, block_size, width)
    for sample in range(batch):  # the bias is gathered straight into the score buffer, then the products added
        torch.index_select(
            table_by_head, 1, index[sample if index.shape[0] > 1 else 0].flatten(), out=scores[sample].view(heads, -1)
        )
    scores.view(-1, block_size, width).baddbmm_(
        patch_queries.view(-1, block_size, head_dim), gathered_keys.transpose(1, 2), alpha=scaling
    )
    return scores


def _scatter_bias_grad(grad_table, index, grad_scores):
    """Add the score gradients `(B, H, m, bs, W)` into the `(H, rows)` table gradient at the pairs' rows."""
    heads = grad_table.shape[0]
    if index.shape[0] == 1:
        summed = grad_scores.sum(0, dtype=grad_table.dtype) if grad_scores.shape[0] > 1 else grad_scores[0]
        grad_table.index_add_(1, index.flatten(), summed.to(grad_table.dtype).view(heads, -1))
    else:
        for sample in range(index.shape[0]):
            grad_table.index_add_(1, index[sample].flatten(), grad_scores[sample].to(grad_table.dtype).view(heads, -1))


def _scatter_blocks(grad_gathered, key_blocks, batch, heads, c, block_size):
    """Gradient of the gathered `[global | key blocks]` slots `(B*H*m, W, d)` -> `(B, H, c + m*bs, d)`."""
    m, kv = key_blocks.shape
    head_dim = grad_gathered.shape[-1]
    grad_gathered = grad_gathered.view(batch, heads, m, c + kv * block_size, head_dim)
    grad = grad_gathered.new_zeros(batch, heads, c + m * block_size, head_dim)
    grad[:, :, :c] = grad_gathered[:, :, :, :c].sum(2)
    grad[:, :, c:].view(batch, heads, m, block_size, head_dim).index_add_(
        2, key_blocks.flatten(), grad_gathered[:, :, :, c:].reshape(batch, heads, m * kv, block_size, head_dim)
    )
    return grad


def _dense_masked_block_attention(
    query, key, value, layout, positions, position_bias, c, scaling, mask_padded_keys, dropout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: the full score matrix with the layout as a mask, plus one "phantom" column per query
    that stands for the padded slots of the last block (`pad` zero keys, each with score `bias[patch->global]`,
    folded into one key of score `bias + log(pad)` and value zero)."""
    batch = query.shape[0]
    n = layout.num_tokens
    positions = positions.expand(batch, -1)
    all_positions = with_global_positions(positions, c)

    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (B, H, c+n, c+n)
    bias = position_bias(all_positions[:, :, None], all_positions[:, None, :])
    scores = scores + bias.permute(0, 3, 1, 2).to(scores.dtype)
    allowed = torch.ones(c + n, c + n, dtype=torch.bool, device=query.device)
    allowed[c:, c:] = layout.token_mask().to(query.device)
    scores = scores.masked_fill(~allowed, float("-inf"))

    columns = [scores]
    if layout.padding and not mask_padded_keys:
        last_block = layout.num_blocks - 1
        sees_last_block = (layout.key_blocks == last_block).any(dim=1).to(query.device)
        block_of = torch.arange(n, device=query.device) // layout.block_size
        phantom_bias = position_bias(all_positions, torch.full_like(all_positions, PADDING_POSITION))  # (B, c+n, H)
        phantom = phantom_bias.permute(0, 2, 1).to(scores.dtype) + math.log(layout.padding)
        row_sees_padding = torch.cat([torch.zeros(c, dtype=torch.bool, device=query.device), sees_last_block[block_of]])
        phantom = phantom.masked_fill(~row_sees_padding, float("-inf"))
        columns.append(phantom[..., None])
    probs = softmax_in_float32(torch.cat(columns, dim=-1))
    output = torch.matmul(F.dropout(probs, p=dropout)[..., : c + n], value)
    return output, probs[:, :, :c, : c + n]


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


__all__ = [
    "BlockSparseLayout",
    "RandomSource",
    "block_sparse_attention",
    "build_block_sparse_layout",
    "hashed_uniform",
    "load_random_block_patterns",
    "local_block_window",
    "save_random_block_patterns",
    "softmax_in_float32",
]
