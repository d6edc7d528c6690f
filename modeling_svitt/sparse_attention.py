"""Edge sparsity: which key blocks each query block sees, and the backends that compute it.

The sequence is `c` global tokens followed by `n` patch tokens (in their current order). Patch tokens are
cut into `m = ceil(n / block_size)` contiguous blocks, the last one zero-padded. A `BlockSparseLayout`
lists for every query block the key blocks it attends to: its cyclic local window first, then random
blocks in ascending order. Every patch query also attends to the global tokens; global queries attend to
everything. The layout is the single source of truth: every backend consumes it, and the masked dense
backend is the oracle the block-gather backend is tested against.

Padded key slots: the release leaves them in the softmax as keys of exact zeros whose bias is the
patch->global entry ("phantom keys"); `mask_padded_keys=True` removes them.

The gather backend is one autograd function for the patch queries: it gathers the key/value blocks of every query
block, computes the scores, softmax and output block by block, and saves for backward only the queries, keys and
values, the output and the softmax statistics. The global queries' rows (dense, `c` of them) are computed around it
with plain autograd operations, so the [CLS] probabilities returned as attentions are in the graph. Backward gathers
again and recomputes the probabilities, so no tensor of the size of the score matrix, and no gathered copy of the
keys, is kept between forward and backward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .relative_position import SViTTRelativePositionBias3D, with_global_positions

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
        query, key, value: `(B, H, c + n, d)`, global tokens first (any strides).
        positions: `(P, n)` original positions of the patch tokens (for the relative bias), `P` is 1 when every
            sample has the same positions (before pruning) or `B`.
        position_bias: the layer's [`SViTTRelativePositionBias3D`].

    Returns:
        `(B, H, c + n, d)` output and the global queries' probabilities `(B, H, c, c + n)`, the tensor the global
        rows of the output are computed from (in the autograd graph).
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
    if backend not in ("gather", "dense_masked"):
        raise ValueError(f"Unknown sparse attention backend {backend!r}; use 'gather' or 'dense_masked'.")
    dropout = dropout if training else 0.0
    global_output, global_probs = _global_query_attention(query, key, value, position_bias, c, scaling, dropout)
    if backend == "gather":
        output = _BlockSparseAttention.apply(
            query,
            key,
            value,
            global_output,
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
    else:
        patch_output = _dense_masked_patch_attention(
            query, key, value, layout, positions, position_bias, c, scaling, mask_padded_keys, dropout
        )
        output = torch.cat([global_output, patch_output], dim=2)
    return output, global_probs


def _global_query_attention(query, key, value, position_bias, c, scaling, dropout):
    """
    Rows of the `c` global queries, which see every key: output `(B, H, c, d)` and probabilities `(B, H, c, c + n)`.

    They are computed with plain autograd operations, outside the block-sparse function, so that the probabilities
    returned as `attentions` are the tensor the output is made of: a gradient reaches them (attention rollout and
    gradient-weighted attention need it), and a loss on them reaches the projections and the bias table.
    """
    n = query.shape[2] - c
    index = _global_bias_index(n, c, position_bias.num_patch_rows, query.device)
    bias = position_bias.relative_position_bias_table.t()[:, index]  # (H, c, c + n)
    scores = torch.matmul(query[:, :, :c], key.transpose(-1, -2)) * scaling
    probs = softmax_in_float32(scores + bias.to(scores.dtype))
    return torch.matmul(F.dropout(probs, p=dropout, training=dropout > 0), value), probs


# Scores of one chunk of query blocks: small enough to stay in cache and to be reused by the allocator (buffers of the
# whole score matrix, tens of MB at 16 frames, come fresh from the OS at every use, and faulting their pages in costs
# as much as the products that fill them), large enough that a chunk's operations are not dominated by their launch.
_CHUNK_BYTES = 1 << 22


class _Geometry:
    """Where every key slot of every query block comes from, and its relative-bias row (computed once per call)."""

    def __init__(self, codes, key_blocks, num_tokens, c, block_size, centre, patch_rows, padding_row):
        m, kv = key_blocks.shape
        device = key_blocks.device
        self.num_blocks, self.block_size, self.c, self.num_tokens = m, block_size, c, num_tokens
        self.key_blocks = key_blocks
        self.width = c + kv * block_size
        slot_token = (key_blocks[:, :, None] * block_size + torch.arange(block_size, device=device)).flatten(1)
        # rows of the [global | patches | zero padding] key sequence each query block gathers, (m, W)
        self.slots = torch.cat([torch.arange(c, device=device).expand(m, c), c + slot_token], dim=1)
        # bias row of a patch pair: code(q) - code(k) + centre; global keys and padded slots have fixed rows.
        # int64 throughout: index_add_ with int32 indices takes a path ten times slower on CPU.
        count = codes.shape[0]
        self.query_codes = F.pad(codes.long(), (0, m * block_size - num_tokens)).view(count, m, block_size)
        is_real = slot_token < num_tokens
        key_codes = self.query_codes[:, key_blocks].reshape(count, m, kv * block_size)
        global_rows = (patch_rows + c + torch.arange(c, device=device)).expand(count, m, c)
        self.key_term = torch.cat([global_rows, torch.where(is_real, centre - key_codes, padding_row)], dim=2)
        self.query_weight = torch.cat([is_real.new_zeros(m, c), is_real], dim=1).long()

    @classmethod
    def for_call(cls, codes, key_blocks, table, num_tokens, c, block_size, centre, patch_rows, mask_padded_keys, dtype):
        """The geometry of one call and the `(H, rows)` table it indexes (forward and backward build the same)."""
        table_by_head = _table_by_head(table, mask_padded_keys, dtype)
        # padded slots: the extra -inf row when masked, else the patch->global row (the release's phantom keys)
        padding_row = table.shape[0] if mask_padded_keys else patch_rows + c
        return cls(codes, key_blocks, num_tokens, c, block_size, centre, patch_rows, padding_row), table_by_head

    def chunks(self, batch, heads):
        per_block = batch * heads * self.block_size * self.width * 4
        size = max(1, _CHUNK_BYTES // per_block)
        return [(start, min(start + size, self.num_blocks)) for start in range(0, self.num_blocks, size)]

    def bias_index(self, start, stop):
        """Bias rows `(P, blocks, bs, W)` of the query blocks `start:stop`."""
        return torch.addcmul(
            self.key_term[:, start:stop, None, :],
            self.query_codes[:, start:stop, :, None],
            self.query_weight[start:stop, None, :],
        )

    def query_rows(self, tensor, start, stop):
        """Rows of the query blocks `start:stop` of a `(B, H, c + n, d)` tensor, zero-padded, `(B*H*blocks, bs, d)`."""
        head_dim = tensor.shape[-1]
        first, last = self.c + start * self.block_size, self.c + min(stop * self.block_size, self.num_tokens)
        rows = tensor[:, :, first:last]
        if last - first < (stop - start) * self.block_size:  # the last block is zero-padded
            rows = F.pad(rows, (0, 0, 0, (stop - start) * self.block_size - (last - first)))
        return rows.reshape(-1, self.block_size, head_dim)

    def gather(self, sequence, start, stop):
        """Key slots `(B*H*blocks, W, d)` of the query blocks `start:stop` from a padded `(B, H, c + m*bs, d)`."""
        batch, heads, _, head_dim = sequence.shape
        return sequence.index_select(2, self.slots[start:stop].flatten()).view(-1, self.width, head_dim)

    def scatter(self, grad_sequence, grad_slots, start, stop):
        """Add the gradient of gathered slots `(B*H*blocks, W, d)` back into `(B, H, c + m*bs, d)`."""
        batch, heads, _, head_dim = grad_sequence.shape
        c, block_size = self.c, self.block_size
        grad_slots = grad_slots.view(batch, heads, stop - start, self.width, head_dim)
        grad_sequence[:, :, :c] += grad_slots[:, :, :, :c].sum(2)
        blocks = grad_sequence[:, :, c:].view(batch, heads, self.num_blocks, block_size, head_dim)
        for slot in range(self.key_blocks.shape[1]):  # one scatter per slot: no copy of the strided slices
            first = c + slot * block_size
            blocks.index_add_(2, self.key_blocks[start:stop, slot], grad_slots[:, :, :, first : first + block_size])

    def write_rows(self, target, rows, start, stop):
        """Write `(B*H*blocks, bs, d)` rows of the query blocks `start:stop` into a `(B, c + n, H, d)` tensor."""
        batch, _, heads, head_dim = target.shape
        first, last = self.c + start * self.block_size, self.c + min(stop * self.block_size, self.num_tokens)
        rows = rows.view(batch, heads, -1, head_dim)[:, :, : last - first]
        target[:, first:last] = rows.transpose(1, 2)


def _global_bias_index(num_tokens, c, patch_rows, device):
    """Table rows of the global queries `(c, c + n)`: global_i->global_j, then global_i->patch."""
    rows = torch.arange(c, device=device)
    to_global = patch_rows + 2 * c + rows[:, None] * c + rows[None, :]
    to_patch = (patch_rows + rows)[:, None].expand(c, num_tokens)
    return torch.cat([to_global, to_patch], dim=1)


def _padded_sequence(tensor, length):
    """`(B, H, L, d)` (any strides) -> contiguous `(B, H, length, d)` with zero rows after L."""
    batch, heads, current, head_dim = tensor.shape
    padded = tensor.new_zeros(batch, heads, length, head_dim)
    padded[:, :, :current] = tensor
    return padded


def _dropout_mask(shape, dropout, device):
    return torch.rand(shape, device=device) >= dropout


def _dropped(tensor, keep, dropout):
    """`tensor` with the dropout mask `keep` applied (inverted dropout); unchanged without a mask."""
    return tensor if keep is None else tensor * keep / (1 - dropout)


class _BlockSparseAttention(torch.autograd.Function):
    """Block-sparse attention with the relative bias looked up inside (see the module docstring).

    Query blocks are processed in chunks; forward saves the queries, keys and values (padded again in backward), the
    output and the log-normaliser of every softmax row, and backward recomputes scores and probabilities chunk by chunk.
    The global queries' output rows come in as `global_output` (computed outside) and are only copied into place.
    """

    @staticmethod
    def forward(
        ctx, query, key, value, global_output, table, codes, key_blocks, c, block_size, centre, patch_rows, scaling,
        dropout, mask_padded_keys,
    ):
        batch, heads, length, head_dim = query.shape
        n, m = length - c, key_blocks.shape[0]
        dtype, device = query.dtype, query.device
        softmax_dtype = _softmax_dtype(dtype)
        with _without_autocast(device):
            keys = _padded_sequence(key, c + m * block_size)
            values = _padded_sequence(value, c + m * block_size)
            geometry, table_by_head = _Geometry.for_call(
                codes, key_blocks, table, n, c, block_size, centre, patch_rows, mask_padded_keys, dtype
            )
            output = query.new_empty(batch, length, heads, head_dim)
            log_normaliser = query.new_empty(batch, heads, m, block_size, dtype=softmax_dtype)
            keep = None
            if dropout > 0:
                keep = _dropout_mask((batch, heads, m, block_size, geometry.width), dropout, device)
            for start, stop in geometry.chunks(batch, heads):
                queries = geometry.query_rows(query, start, stop)
                index = geometry.bias_index(start, stop)
                scores = _chunk_scores(queries, geometry.gather(keys, start, stop), table_by_head, index, scaling)
                log_probs = torch.log_softmax(scores, dim=-1, dtype=softmax_dtype)
                # the log-normaliser from the first slot (a global key, never masked): no second reduction
                torch.sub(scores[..., 0], log_probs[..., 0], out=log_normaliser[:, :, start:stop])
                weights = log_probs.exp_().to(dtype)
                if keep is not None:
                    weights = _dropped(weights, keep[:, :, start:stop], dropout)
                rows = torch.bmm(weights.view(queries.shape[0], block_size, -1), geometry.gather(values, start, stop))
                geometry.write_rows(output, rows, start, stop)
            output[:, :c] = global_output.transpose(1, 2)
        # The unpadded keys and values are saved (the global rows' products keep them anyway) and padded again in
        # backward: a second copy of them would be kept otherwise.
        ctx.save_for_backward(query, key, value, output, log_normaliser, codes, key_blocks, table, keep)
        ctx.geometry = (c, block_size, centre, patch_rows, scaling, dropout, mask_padded_keys)
        return output.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, output, log_normaliser, codes, key_blocks, table, keep = ctx.saved_tensors
        c, block_size, centre, patch_rows, scaling, dropout, mask_padded_keys = ctx.geometry
        batch, heads, length, head_dim = query.shape
        n, m = length - c, key_blocks.shape[0]
        dtype, device = query.dtype, query.device
        softmax_dtype = _softmax_dtype(dtype)
        with _without_autocast(device):
            keys = _padded_sequence(key, c + m * block_size)
            values = _padded_sequence(value, c + m * block_size)
            geometry, table_by_head = _Geometry.for_call(
                codes, key_blocks, table, n, c, block_size, centre, patch_rows, mask_padded_keys, dtype
            )
            grad_output = grad_output.to(dtype)
            # row-wise <dO, O> = sum_j P_j dP_j, the correction of the softmax backward (patch rows)
            correction = (grad_output[:, :, c:] * output[:, c:].transpose(1, 2)).sum(-1, dtype=softmax_dtype)
            patch_correction = F.pad(correction, (0, m * block_size - n)).view(batch, heads, m, block_size)
            grad_query = output.new_empty(batch, length, heads, head_dim)
            grad_keys, grad_values = torch.zeros_like(keys), torch.zeros_like(values)
            grad_table = None
            if ctx.needs_input_grad[3]:
                grad_table = torch.zeros_like(table_by_head, dtype=softmax_dtype)

            for start, stop in geometry.chunks(batch, heads):
                queries = geometry.query_rows(query, start, stop)
                grad_rows = geometry.query_rows(grad_output, start, stop)
                index = geometry.bias_index(start, stop)
                gathered_keys = geometry.gather(keys, start, stop)
                scores = _chunk_scores(queries, gathered_keys, table_by_head, index, scaling)
                probs = scores.to(softmax_dtype).sub_(log_normaliser[:, :, start:stop, :, None]).exp_()
                flat_probs = probs.view(queries.shape[0], block_size, -1)
                grad_probs = torch.bmm(grad_rows, geometry.gather(values, start, stop).transpose(1, 2))
                weights = flat_probs.to(dtype)
                if keep is not None:
                    chunk_keep = keep[:, :, start:stop].reshape(flat_probs.shape)
                    weights = _dropped(weights, chunk_keep, dropout)
                    grad_probs = _dropped(grad_probs, chunk_keep, dropout)
                geometry.scatter(grad_values, torch.bmm(weights.transpose(1, 2), grad_rows), start, stop)
                del weights
                grad_scores = probs.mul_(
                    grad_probs.view(probs.shape).to(softmax_dtype).sub_(patch_correction[:, :, start:stop, :, None])
                )
                del grad_probs
                if grad_table is not None:
                    _scatter_bias_grad(grad_table, index, grad_scores)
                grad_scores = grad_scores.to(dtype).view(queries.shape[0], block_size, -1)
                geometry.write_rows(grad_query, _scaled_bmm(grad_scores, gathered_keys, scaling), start, stop)
                geometry.scatter(grad_keys, _scaled_bmm(grad_scores.transpose(1, 2), queries, scaling), start, stop)

            # the global queries' rows were computed outside (with autograd): their gradient only passes through
            grad_query[:, :c] = 0
            if grad_table is not None:
                grad_table = grad_table[:, : table.shape[0]].t().to(table.dtype)
            # gradients laid out (B, L, H, d) like the projections they flow back into
            grad_key = grad_keys[:, :, :length].transpose(1, 2).contiguous()
            grad_value = grad_values[:, :, :length].transpose(1, 2).contiguous()
        return (
            grad_query.transpose(1, 2),
            grad_key.transpose(1, 2),
            grad_value.transpose(1, 2),
            grad_output[:, :, :c],
            grad_table,
            None, None, None, None, None, None, None, None, None,
        )


def _without_autocast(device):
    """The function picks its own precisions (fp32 softmax); devices without autocast (meta) need no guard."""
    return torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) else nullcontext()


def _softmax_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _table_by_head(table, mask_padded_keys, dtype):
    """`(H, rows)` table in the compute dtype; with masked padding one extra row of -inf for the padded slots."""
    by_head = table.t().to(dtype)
    if mask_padded_keys:
        by_head = torch.cat([by_head, by_head.new_full((by_head.shape[0], 1), float("-inf"))], dim=1)
    return by_head.contiguous()


def _chunk_scores(queries, gathered_keys, table_by_head, index, scaling):
    """Scores `(B, H, blocks, bs, W)` of a chunk's queries `(B*H*blocks, bs, d)` against their gathered key slots
    `(B*H*blocks, W, d)`, relative bias (rows `index`, `(P, blocks, bs, W)`) included."""
    heads = table_by_head.shape[0]
    _, blocks, block_size, width = index.shape
    scores = queries.new_empty(queries.shape[0] // (heads * blocks), heads, blocks, block_size, width)
    for sample in range(scores.shape[0]):  # the bias is gathered straight into the score buffer, then products added
        torch.index_select(
            table_by_head, 1, index[sample if index.shape[0] > 1 else 0].flatten(), out=scores[sample].view(heads, -1)
        )
    scores.view(-1, block_size, width).baddbmm_(queries, gathered_keys.transpose(1, 2), alpha=scaling)
    return scores


def _scaled_bmm(first, second, scaling):
    """`scaling * first @ second`, the scale applied by the product itself."""
    return first.new_empty(first.shape[0], first.shape[1], second.shape[2]).baddbmm_(first, second, beta=0, alpha=scaling)


def _scatter_bias_grad(grad_table, index, grad_scores):
    """Add the score gradients `(B, H, blocks, bs, W)` into the `(H, rows)` table gradient at the pairs' rows."""
    heads = grad_table.shape[0]
    if index.shape[0] == 1:
        summed = grad_scores.sum(0) if grad_scores.shape[0] > 1 else grad_scores[0]
        grad_table.index_add_(1, index.flatten(), summed.reshape(heads, -1))
    else:
        for sample in range(index.shape[0]):
            grad_table.index_add_(1, index[sample].flatten(), grad_scores[sample].reshape(heads, -1))


def _dense_masked_patch_attention(
    query, key, value, layout, positions, position_bias, c, scaling, mask_padded_keys, dropout
) -> torch.Tensor:
    """Reference for the patch queries' rows `(B, H, n, d)`: their full score rows with the layout as a mask, plus one
    "phantom" column per query that stands for the padded slots of the last block (`pad` zero keys, each with score
    `bias[patch->global]`, folded into one key of score `bias + log(pad)` and value zero)."""
    batch = query.shape[0]
    n = layout.num_tokens
    positions = positions.expand(batch, -1)
    all_positions = with_global_positions(positions, c)

    scores = torch.matmul(query[:, :, c:], key.transpose(-1, -2)) * scaling  # (B, H, n, c+n)
    bias = position_bias(positions[:, :, None], all_positions[:, None, :])
    scores = scores + bias.permute(0, 3, 1, 2).to(scores.dtype)
    allowed = torch.ones(n, c + n, dtype=torch.bool, device=query.device)
    allowed[:, c:] = layout.token_mask().to(query.device)
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
    return torch.matmul(F.dropout(probs, p=dropout, training=dropout > 0)[..., : c + n], value)


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
