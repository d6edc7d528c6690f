"""The `gather` backend of block-sparse attention: one autograd function for the patch queries' rows.

It gathers the key/value blocks of every query block, computes the scores (relative bias included), softmax and
output block by block, and saves for backward only the queries, keys and values, the output and the softmax
statistics. Backward gathers again and recomputes the probabilities, so no tensor of the size of the score matrix,
and no gathered copy of the keys, is kept between forward and backward. The global queries' rows are computed
outside (`sparse_attention._global_query_attention`, plain autograd) and only copied into place, so the [CLS]
probabilities returned as attentions stay in the graph. `sparse_attention._dense_masked_patch_attention` is the
reference this kernel is tested against.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F



# Scores of one chunk of query blocks: small enough to stay in cache and to be reused by the allocator (buffers of the
# whole score matrix, tens of MB at 16 frames, come fresh from the OS at every use, and faulting their pages in costs
# as much as the products that fill them), large enough that a chunk's operations are not dominated by their launch.
_CHUNK_BYTES = 1 << 22


class _Geometry:
    """Where every key slot of every query block comes from, and its relative-bias row (computed once per call)."""

    def __init__(self, codes, key_blocks, num_tokens, num_global, block_size, centre, patch_rows, padding_row):
        m, kv = key_blocks.shape
        device = key_blocks.device
        self.num_blocks, self.block_size, self.num_global, self.num_tokens = m, block_size, num_global, num_tokens
        self.key_blocks = key_blocks
        self.width = num_global + kv * block_size
        slot_token = (key_blocks[:, :, None] * block_size + torch.arange(block_size, device=device)).flatten(1)
        # rows of the [global | patches | zero padding] key sequence each query block gathers, (m, W)
        global_slots = torch.arange(num_global, device=device).expand(m, num_global)
        self.slots = torch.cat([global_slots, num_global + slot_token], dim=1)
        # bias row of a patch pair: code(q) - code(k) + centre; global keys and padded slots have fixed rows.
        # int64 throughout: index_add_ with int32 indices takes a path ten times slower on CPU.
        count = codes.shape[0]
        self.query_codes = F.pad(codes.long(), (0, m * block_size - num_tokens)).view(count, m, block_size)
        is_real = slot_token < num_tokens
        key_codes = self.query_codes[:, key_blocks].reshape(count, m, kv * block_size)
        global_rows = (patch_rows + num_global + torch.arange(num_global, device=device)).expand(count, m, num_global)
        self.key_term = torch.cat([global_rows, torch.where(is_real, centre - key_codes, padding_row)], dim=2)
        self.query_weight = torch.cat([is_real.new_zeros(m, num_global), is_real], dim=1).long()
        self._flat_slots = None  # (key, flat row index) of the chunk gathered last

    @classmethod
    def for_call(
        cls, codes, key_blocks, table, num_tokens, num_global, block_size, centre, patch_rows, mask_padded_keys, dtype
    ):
        """The geometry of one call and the `(H, rows)` table it indexes (forward and backward build the same)."""
        table_by_head = _table_by_head(table, mask_padded_keys, dtype)
        # padded slots: the extra -inf row when masked, else the patch->global row (the release's phantom keys)
        padding_row = table.shape[0] if mask_padded_keys else patch_rows + num_global
        geometry = cls(codes, key_blocks, num_tokens, num_global, block_size, centre, patch_rows, padding_row)
        return geometry, table_by_head

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
        """Rows of the query blocks `start:stop` of a `(B, H, G + n, d)` tensor, zero-padded, `(B*H*blocks, bs, d)`."""
        head_dim = tensor.shape[-1]
        first = self.num_global + start * self.block_size
        last = self.num_global + min(stop * self.block_size, self.num_tokens)
        rows = tensor[:, :, first:last]
        if last - first < (stop - start) * self.block_size:  # the last block is zero-padded
            rows = F.pad(rows, (0, 0, 0, (stop - start) * self.block_size - (last - first)))
        return rows.reshape(-1, self.block_size, head_dim)

    def gather(self, sequence, start, stop):
        """Key slots `(B*H*blocks, W, d)` of the query blocks `start:stop` from a padded `(B, H, G + m*bs, d)`.

        Rows are gathered from the sequence flattened to `(B*H*(G + m*bs), d)`: a gather along the first dimension
        of a matrix copies whole rows, several times faster on CPU than one along the third dimension of the 4-D
        tensor. The flat row index of a chunk is built once and serves keys and values alike.
        """
        batch, heads, length, head_dim = sequence.shape
        if self._flat_slots is None or self._flat_slots[0] != (start, batch * heads, length):
            sequence_start = torch.arange(0, batch * heads * length, length, device=sequence.device)
            index = (sequence_start[:, None, None] + self.slots[None, start:stop]).flatten()
            self._flat_slots = ((start, batch * heads, length), index)
        rows = sequence.view(-1, head_dim).index_select(0, self._flat_slots[1])
        return rows.view(-1, self.width, head_dim)

    def scatter(self, grad_sequence, grad_slots, start, stop):
        """Add the gradient of gathered slots `(B*H*blocks, W, d)` back into `(B, H, G + m*bs, d)`."""
        batch, heads, _, head_dim = grad_sequence.shape
        num_global, block_size = self.num_global, self.block_size
        grad_slots = grad_slots.view(batch, heads, stop - start, self.width, head_dim)
        grad_sequence[:, :, :num_global] += grad_slots[:, :, :, :num_global].sum(2)
        blocks = grad_sequence[:, :, num_global:].view(batch, heads, self.num_blocks, block_size, head_dim)
        for slot in range(self.key_blocks.shape[1]):  # one scatter per slot: no copy of the strided slices
            first = num_global + slot * block_size
            blocks.index_add_(2, self.key_blocks[start:stop, slot], grad_slots[:, :, :, first : first + block_size])

    def write_rows(self, target, rows, start, stop):
        """Write `(B*H*blocks, bs, d)` rows of the query blocks `start:stop` into a `(B, G + n, H, d)` tensor."""
        batch, _, heads, head_dim = target.shape
        first = self.num_global + start * self.block_size
        last = self.num_global + min(stop * self.block_size, self.num_tokens)
        rows = rows.view(batch, heads, -1, head_dim)[:, :, : last - first]
        target[:, first:last] = rows.transpose(1, 2)


def _padded_sequence(tensor, length):
    """`(B, H, L, d)` (any strides) -> contiguous `(B, H, length, d)` with zero rows after L."""
    batch, heads, current, head_dim = tensor.shape
    padded = tensor.new_empty(batch, heads, length, head_dim)
    padded[:, :, :current] = tensor
    padded[:, :, current:] = 0
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
        ctx, query, key, value, global_output, table, codes, key_blocks, num_global, block_size, centre, patch_rows,
        scaling, dropout, mask_padded_keys, needs_backward,
    ):
        batch, heads, length, head_dim = query.shape
        n, m = length - num_global, key_blocks.shape[0]
        dtype, device = query.dtype, query.device
        softmax_dtype = _softmax_dtype(dtype)
        with _without_autocast(device):
            keys = _padded_sequence(key, num_global + m * block_size)
            values = _padded_sequence(value, num_global + m * block_size)
            geometry, table_by_head = _Geometry.for_call(
                codes, key_blocks, table, n, num_global, block_size, centre, patch_rows, mask_padded_keys, dtype
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
                if needs_backward:
                    log_probs = torch.log_softmax(scores, dim=-1, dtype=softmax_dtype)
                    # the log-normaliser from the first slot (a global key, never masked): no second reduction
                    torch.sub(scores[..., 0], log_probs[..., 0], out=log_normaliser[:, :, start:stop])
                    weights = log_probs.exp_().to(dtype)
                else:  # inference: one pass over the scores, no normaliser to keep
                    weights = torch.softmax(scores, dim=-1, dtype=softmax_dtype).to(dtype)
                if keep is not None:
                    weights = _dropped(weights, keep[:, :, start:stop], dropout)
                rows = torch.bmm(weights.view(queries.shape[0], block_size, -1), geometry.gather(values, start, stop))
                geometry.write_rows(output, rows, start, stop)
            output[:, :num_global] = global_output.transpose(1, 2)
        # The unpadded keys and values are saved (the global rows' products keep them anyway) and padded again in
        # backward: a second copy of them would be kept otherwise.
        ctx.save_for_backward(query, key, value, output, log_normaliser, codes, key_blocks, table, keep)
        ctx.geometry = (num_global, block_size, centre, patch_rows, scaling, dropout, mask_padded_keys)
        return output.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, output, log_normaliser, codes, key_blocks, table, keep = ctx.saved_tensors
        num_global, block_size, centre, patch_rows, scaling, dropout, mask_padded_keys = ctx.geometry
        batch, heads, length, head_dim = query.shape
        n, m = length - num_global, key_blocks.shape[0]
        dtype, device = query.dtype, query.device
        softmax_dtype = _softmax_dtype(dtype)
        with _without_autocast(device):
            keys = _padded_sequence(key, num_global + m * block_size)
            values = _padded_sequence(value, num_global + m * block_size)
            geometry, table_by_head = _Geometry.for_call(
                codes, key_blocks, table, n, num_global, block_size, centre, patch_rows, mask_padded_keys, dtype
            )
            grad_output = grad_output.to(dtype)
            # row-wise <dO, O> = sum_j P_j dP_j, the correction of the softmax backward (patch rows)
            patch_output = output[:, num_global:].transpose(1, 2)
            correction = (grad_output[:, :, num_global:] * patch_output).sum(-1, dtype=softmax_dtype)
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
            grad_query[:, :num_global] = 0
            if grad_table is not None:
                grad_table = grad_table[:, : table.shape[0]].t().to(table.dtype)
            # gradients laid out (B, L, H, d) like the projections they flow back into
            grad_key = grad_keys[:, :, :length].transpose(1, 2).contiguous()
            grad_value = grad_values[:, :, :length].transpose(1, 2).contiguous()
        return (
            grad_query.transpose(1, 2),
            grad_key.transpose(1, 2),
            grad_value.transpose(1, 2),
            grad_output[:, :, :num_global],
            grad_table,
            None, None, None, None, None, None, None, None, None, None,
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
    output = first.new_empty(first.shape[0], first.shape[1], second.shape[2])
    return output.baddbmm_(first, second, beta=0, alpha=scaling)


def _scatter_bias_grad(grad_table, index, grad_scores):
    """Add the score gradients `(B, H, blocks, bs, W)` into the `(H, rows)` table gradient at the pairs' rows."""
    heads = grad_table.shape[0]
    if index.shape[0] == 1:
        summed = grad_scores.sum(0) if grad_scores.shape[0] > 1 else grad_scores[0]
        grad_table.index_add_(1, index.flatten(), summed.reshape(heads, -1))
    else:
        for sample in range(index.shape[0]):
            grad_table.index_add_(1, index[sample].flatten(), grad_scores[sample].reshape(heads, -1))


def gathered_patch_attention(
    query, key, value, global_output, layout, positions, position_bias, scaling, dropout, mask_padded_keys
):
    """The whole `(B, H, G + n, d)` output under `layout`: the patch queries' rows computed here, the global
    queries' rows `global_output (B, H, G, d)` copied into place (their gradient passes through)."""
    table = position_bias.relative_position_bias_table
    differentiable = torch.is_grad_enabled() and any(
        tensor.requires_grad for tensor in (query, key, value, global_output, table)
    )
    return _BlockSparseAttention.apply(
        query,
        key,
        value,
        global_output,
        table,
        position_bias.codes(positions),
        layout.key_blocks,
        query.shape[2] - layout.num_tokens,
        layout.block_size,
        position_bias.centre,
        position_bias.num_patch_rows,
        scaling,
        dropout,
        mask_padded_keys,
        differentiable,
    )


__all__ = ["gathered_patch_attention"]
