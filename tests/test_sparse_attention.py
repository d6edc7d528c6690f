from unittest.mock import patch

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modeling_svitt import block_sparse_kernel
from modeling_svitt.relative_position import SViTTRelativePositionBias3D
from modeling_svitt.sparse_attention import block_sparse_attention, build_block_sparse_layout, local_block_window


def test_layout_of_the_release_default():
    generator = torch.Generator().manual_seed(0)
    layout = build_block_sparse_layout(784, 56, num_local_blocks=1, num_random_blocks=3, generator=generator)
    assert layout.key_blocks.shape == (14, 4) and layout.padding == 0
    assert torch.equal(layout.key_blocks[:, 0], torch.arange(14))  # own block first
    random = layout.random_blocks
    assert torch.equal(random, random.sort(dim=1).values)  # ascending, as the release sorts
    assert not (random == torch.arange(14)[:, None]).any()


@pytest.mark.parametrize("num_tokens, block_size, local, random", [(20, 8, 1, 5), (5, 8, 1, 3), (40, 8, 3, 4), (24, 8, 5, 2)])
def test_random_blocks_are_clamped_and_never_duplicate_a_key(num_tokens, block_size, local, random):
    layout = build_block_sparse_layout(num_tokens, block_size, local, random, generator=torch.Generator().manual_seed(1))
    blocks = layout.num_blocks
    assert layout.key_blocks.shape[1] == min(blocks, min(local, blocks) + random)
    for row in layout.key_blocks.tolist():
        assert len(set(row)) == len(row)


def test_wide_local_window_is_cyclic_and_symmetric():
    window = local_block_window(6, 3)
    assert window.tolist()[0] == [5, 0, 1] and window.tolist()[3] == [2, 3, 4] and window.tolist()[5] == [4, 5, 0]
    layout = build_block_sparse_layout(48, 8, num_local_blocks=3, num_random_blocks=0)
    mask = layout.block_mask()
    assert torch.equal(mask, mask.T)  # i sees j exactly when j sees i
    distance = (torch.arange(6)[:, None] - torch.arange(6)[None, :]).abs()
    assert torch.equal(mask, (distance <= 1) | (distance == 5))


def test_replay_checks_the_pattern():
    with pytest.raises(ValueError, match="shape"):
        build_block_sparse_layout(64, 8, 1, 2, random_blocks=torch.zeros(8, 3, dtype=torch.long))
    own = torch.arange(8)[:, None].expand(8, 2)
    with pytest.raises(ValueError, match="outside"):
        build_block_sparse_layout(64, 8, 1, 2, random_blocks=own)
    pattern = torch.tensor([[1, 2], [0, 2], [0, 1], [0, 1], [2, 3], [0, 7], [1, 5], [3, 4]])
    assert torch.equal(build_block_sparse_layout(64, 8, 1, 2, random_blocks=pattern).random_blocks, pattern)


def test_same_generator_seed_gives_the_same_pattern():
    patterns = [
        build_block_sparse_layout(300, 10, 1, 3, generator=torch.Generator().manual_seed(7)).key_blocks for _ in range(2)
    ]
    assert torch.equal(*patterns)
    other = build_block_sparse_layout(300, 10, 1, 3, generator=torch.Generator().manual_seed(8)).key_blocks
    assert not torch.equal(patterns[0], other)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    num_tokens=st.integers(1, 40),
    block_size=st.integers(1, 9),
    local=st.sampled_from([1, 3, 5]),
    random=st.integers(0, 4),
    num_global=st.integers(1, 2),
    batch=st.integers(1, 2),
    mask_padded_keys=st.booleans(),
    one_block_per_chunk=st.booleans(),
    shared_positions=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_gather_backend_equals_dense_masked_reference(
    num_tokens, block_size, local, random, num_global, batch, mask_padded_keys, one_block_per_chunk, shared_positions, seed
):
    """Outputs, [CLS] probabilities and gradients agree for random layouts, padded last blocks, pruned positions,
    and query blocks processed one chunk at a time."""
    torch.manual_seed(seed)
    frames, side, heads, head_dim = 3, 4, 2, 8
    bias = SViTTRelativePositionBias3D(frames, side, heads, num_global)
    torch.nn.init.normal_(bias.relative_position_bias_table)
    layout = build_block_sparse_layout(num_tokens, block_size, local, random, generator=torch.Generator().manual_seed(seed))
    # pruned sequences: each sample keeps its own ascending subset of the 48 original positions
    positions = torch.stack([torch.randperm(frames * side * side)[:num_tokens].sort().values for _ in range(batch)])
    inputs = [torch.randn(batch, heads, num_global + num_tokens, head_dim, requires_grad=True) for _ in range(3)]
    if shared_positions:  # before pruning every sample has the same positions, passed once
        positions = positions[:1]
    results = {}
    chunk_bytes = 1 if one_block_per_chunk else block_sparse_kernel._CHUNK_BYTES
    for backend in ("gather", "dense_masked"):
        with patch.object(block_sparse_kernel, "_CHUNK_BYTES", chunk_bytes):
            output, global_probs = block_sparse_attention(
                *inputs, layout, positions, bias, num_global, head_dim**-0.5, mask_padded_keys, backend=backend
            )
            generator = torch.Generator().manual_seed(seed)
            loss = (output * torch.randn(output.shape, generator=generator)).sum()  # not randn_like: layouts differ
            loss = loss + (global_probs * torch.randn(global_probs.shape, generator=generator)).sum()
            grads = torch.autograd.grad(loss, [*inputs, bias.relative_position_bias_table])
        results[backend] = (output, global_probs, grads)
    (out_a, probs_a, grads_a), (out_b, probs_b, grads_b) = results["gather"], results["dense_masked"]
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs_a, probs_b, atol=1e-5, rtol=1e-5)
    for grad_a, grad_b in zip(grads_a, grads_b):
        torch.testing.assert_close(grad_a, grad_b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mask_padded_keys", [False, True])
def test_gather_backward_passes_gradcheck(mask_padded_keys):
    """The block-sparse function's backward (patch rows, padded last block, relative bias) against finite differences,
    with the global rows computed around it by autograd and a loss on the returned [CLS] probabilities."""
    torch.manual_seed(0)
    heads, head_dim, tokens, num_global = 2, 4, 10, 1
    bias = SViTTRelativePositionBias3D(2, 3, heads, num_global).double()
    torch.nn.init.normal_(bias.relative_position_bias_table)
    layout = build_block_sparse_layout(tokens, 4, 1, 1, generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[0, 1, 3, 4, 6, 7, 9, 12, 14, 17]])
    inputs = [torch.randn(1, heads, num_global + tokens, head_dim, dtype=torch.float64, requires_grad=True) for _ in range(3)]

    table = bias.relative_position_bias_table.detach().clone().requires_grad_()
    del bias.relative_position_bias_table  # a plain attribute from now on, so gradcheck can pass perturbed tables

    def attention(query, key, value, table):
        bias.relative_position_bias_table = table
        return block_sparse_attention(query, key, value, layout, positions, bias, num_global, 0.5, mask_padded_keys)

    assert torch.autograd.gradcheck(attention, (*inputs, table))


def test_padded_keys_are_phantoms_unless_masked():
    torch.manual_seed(0)
    bias = SViTTRelativePositionBias3D(2, 4, 2)
    torch.nn.init.normal_(bias.relative_position_bias_table)
    layout = build_block_sparse_layout(13, 8, 1, 0)  # 2 blocks, 3 padded slots in the last
    positions = torch.arange(13)[None]
    q, k, v = (torch.randn(1, 2, 14, 8) for _ in range(3))
    release, _ = block_sparse_attention(q, k, v, layout, positions, bias, 1, 8**-0.5, mask_padded_keys=False)
    fixed, _ = block_sparse_attention(q, k, v, layout, positions, bias, 1, 8**-0.5, mask_padded_keys=True)
    assert torch.allclose(release[:, :, :9], fixed[:, :, :9])  # [CLS] + first block never see padding
    assert not torch.allclose(release[:, :, 9:], fixed[:, :, 9:])
    # the fix equals plain attention of the last block over [CLS] + its 5 real tokens
    keys = torch.cat([k[:, :, :1], k[:, :, 9:]], dim=2)
    values = torch.cat([v[:, :, :1], v[:, :, 9:]], dim=2)
    key_positions = torch.cat([torch.tensor([-1]), torch.arange(8, 13)])
    scores = q[:, :, 9:] @ keys.transpose(-1, -2) * 8**-0.5 + bias(torch.arange(8, 13)[:, None], key_positions[None]).permute(2, 0, 1)
    torch.testing.assert_close(fixed[:, :, 9:], scores.softmax(-1) @ values)


@pytest.mark.parametrize("mask_padded_keys", [False, True])
def test_inference_softmax_equals_the_differentiable_path(mask_padded_keys):
    """Without gradients the kernel takes one softmax pass and keeps no normaliser; the output is the same."""
    torch.manual_seed(0)
    bias = SViTTRelativePositionBias3D(2, 4, 2)
    torch.nn.init.normal_(bias.relative_position_bias_table)
    layout = build_block_sparse_layout(29, 8, 1, 2, generator=torch.Generator().manual_seed(0))
    positions = torch.arange(29)[None]
    inputs = [torch.randn(1, 2, 30, 8, requires_grad=True) for _ in range(3)]
    differentiable, _ = block_sparse_attention(*inputs, layout, positions, bias, 1, 8**-0.5, mask_padded_keys)
    assert differentiable.requires_grad
    with torch.inference_mode():
        inference, _ = block_sparse_attention(*inputs, layout, positions, bias, 1, 8**-0.5, mask_padded_keys)
    torch.testing.assert_close(inference, differentiable.detach(), atol=1e-6, rtol=1e-6)
