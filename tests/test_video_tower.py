"""The video tower's mechanics beyond its outputs: graph capture, gradients of the returned attentions, what is kept
for backward, random draws, and clips longer than the training clip."""

import pytest
import torch
from helpers.tiny_configs import tiny_vision_config

from modeling_svitt import SViTTVisionModel
from modeling_svitt.relative_position import (
    SViTTRelativePositionBias3D,
    global_token_positions,
    relative_position_index,
    with_global_positions,
)
from modeling_svitt.scaled_linear import layer_norm_linear, scaled_linear
from modeling_svitt.hash_random import hashed_uniform
from modeling_svitt.sparse_attention import block_sparse_attention, build_block_sparse_layout
from modeling_svitt.token_selection import keep_tokens


def video(batch=2, frames=2, seed=0):
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


class SavedBytes:
    """Bytes of floating-point tensors autograd keeps for backward (storage counted once)."""

    def __init__(self) -> None:
        self.storages = {}

    def pack(self, tensor):
        if tensor.is_floating_point():
            storage = tensor.untyped_storage()
            self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self):
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


@pytest.mark.parametrize(
    "overrides, mode",
    [({}, "eval"), ({}, "train"), ({"token_keep_strategy": "random"}, "train"), ({"use_sparse_attention": False}, "eval")],
)
def test_tower_compiles_to_one_graph(overrides, mode):
    """Random blocks and pruning scores are drawn once per forward on the device, without a generator object or a
    host round-trip, so dynamo captures the whole forward (and the autograd functions' backward)."""
    torch.manual_seed(0)
    tower = getattr(SViTTVisionModel(tiny_vision_config(**overrides)), mode)()
    compiled = torch.compile(tower, fullgraph=True, backend="eager")
    pixels = video()
    output = compiled(pixels)
    if mode == "eval":  # deterministic evaluation: the compiled graph draws the same patterns as eager
        torch.testing.assert_close(output.pooler_output, tower(pixels).pooler_output, atol=0, rtol=0)
    else:
        output.pooler_output.sum().backward()
        assert tower.encoder.layer[0].attention.attention.query.weight.grad is not None
    torch._dynamo.reset()


@pytest.mark.parametrize("overrides", [{}, {"token_keep_strategy": "random"}, {"use_sparse_attention": False}])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_forward_and_backward_never_leave_the_device(overrides, mode):
    """On the meta device any host round-trip (`.cpu()`, `.item()`, a draw from a CPU generator) would raise: the random
    blocks and pruning scores of every layer are drawn where the model lives."""
    tower = getattr(SViTTVisionModel(tiny_vision_config(**overrides)).to("meta"), mode)()
    output = tower(torch.empty(2, 2, 3, 32, 32, device="meta"))
    assert all(blocks.device.type == "meta" for blocks in output.random_blocks if blocks is not None)
    if mode == "train":
        output.pooler_output.sum().backward()


def test_dense_attentions_are_the_probabilities_the_output_is_made_of():
    torch.manual_seed(0)
    tower = SViTTVisionModel(tiny_vision_config(use_sparse_attention=False, token_keep_rate=1.0)).train()
    output = tower(video(), output_attentions=True)
    for attention in output.attentions:
        attention.retain_grad()
    output.pooler_output.sum().backward()
    # the [CLS] rows make the [CLS] output, which the next layers mix into the pooled vector
    for attention in output.attentions[:-1]:
        assert attention.grad is not None and attention.grad.abs().sum() > 0


def test_a_loss_on_sparse_attentions_reaches_the_projections_and_the_bias():
    torch.manual_seed(0)
    tower = SViTTVisionModel(tiny_vision_config(token_keep_rate=1.0)).train()
    attention = tower(video(), output_attentions=True).attentions[1]
    attention[:, :, 0, 1:].pow(2).sum().backward()  # e.g. an attention-distillation term
    layer = tower.encoder.layer[1].attention.attention
    assert layer.query.weight.grad.abs().sum() > 0 and layer.key.weight.grad.abs().sum() > 0
    assert layer.relative_position_bias.relative_position_bias_table.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["gather", "dense_masked"])
def test_sparse_attentions_are_in_the_graph_with_the_dense_paths_gradient(backend):
    """The [CLS] probabilities returned as `attentions` are the ones the output is made of, on the sparse path too:
    a gradient of the output reaches them (tools that weight attention by its gradient need it). With a local window
    over every block the sparse path is the dense one, so the gradients must agree."""
    torch.manual_seed(0)
    config = tiny_vision_config(
        num_local_blocks=5, token_keep_rate=1.0, attention_block_size=8, sparse_attention_backend=backend
    )
    sparse = SViTTVisionModel(config).eval()
    for layer in sparse.encoder.layer:
        torch.nn.init.normal_(layer.attention.attention.relative_position_bias.relative_position_bias_table)
    dense = SViTTVisionModel(tiny_vision_config(use_sparse_attention=False, token_keep_rate=1.0)).eval()
    dense.load_state_dict(sparse.state_dict())
    gradients = []
    for tower in (sparse, dense):
        output = tower(video(), output_attentions=True)
        for attention in output.attentions:
            attention.retain_grad()
        output.last_hidden_state[0, 0, 0].backward()
        gradients.append([attention.grad for attention in output.attentions])
    for layer, (sparse_grad, dense_grad) in enumerate(zip(*gradients)):
        assert sparse_grad is not None, f"layer {layer}: the attentions are outside the graph"
        torch.testing.assert_close(sparse_grad, dense_grad, atol=1e-6, rtol=1e-5)
    assert gradients[0][0][0].abs().sum() > 0  # the first sample's [CLS] rows make its [CLS] output


def test_one_convention_for_global_token_positions():
    assert global_token_positions(3).tolist() == [-1, -2, -3]
    positions = torch.tensor([[4, 9], [0, 5]])
    assert with_global_positions(positions, 2).tolist() == [[-1, -2, 4, 9], [-1, -2, 0, 5]]
    # global_i -> global_j and global -> patch rows follow the table layout: L + 2c + i*c + j, L + i
    index = relative_position_index(global_token_positions(2)[:, None], torch.tensor([-1, -2, 7])[None], 1, 2, 2)
    assert index.tolist() == [[9 + 4, 9 + 5, 9], [9 + 6, 9 + 7, 10]]


def test_sparse_attention_that_sees_everything_equals_the_dense_path():
    """Both paths address global tokens and patches the same way: with a local window over every block and no
    padding, block-sparse attention is dense attention."""
    torch.manual_seed(0)
    config = tiny_vision_config(num_local_blocks=5, token_keep_rate=1.0, attention_block_size=8)
    sparse = SViTTVisionModel(config).eval()
    for layer in sparse.encoder.layer:
        torch.nn.init.normal_(layer.attention.attention.relative_position_bias.relative_position_bias_table)
    dense = SViTTVisionModel(tiny_vision_config(use_sparse_attention=False, token_keep_rate=1.0)).eval()
    dense.load_state_dict(sparse.state_dict())
    with torch.no_grad():
        first, second = sparse(video(), output_attentions=True), dense(video(), output_attentions=True)
    torch.testing.assert_close(first.last_hidden_state, second.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first.attentions[1], second.attentions[1], atol=1e-5, rtol=1e-5)


def test_block_sparse_attention_keeps_no_score_sized_or_gathered_tensor_for_backward():
    torch.manual_seed(0)
    heads, head_dim, tokens = 2, 8, 96
    bias = SViTTRelativePositionBias3D(6, 4, heads)
    layout = build_block_sparse_layout(tokens, 8, 1, 3, generator=torch.Generator().manual_seed(0))
    query, key, value = (torch.randn(1, heads, 1 + tokens, head_dim, requires_grad=True) for _ in range(3))
    with SavedBytes() as saved:
        output, _ = block_sparse_attention(query, key, value, layout, torch.arange(tokens)[None], bias, 1, 0.3)
    # queries, keys and values, the output, one normaliser per row and the [CLS] probabilities; the scores would be
    # 33 keys per query, the gathered keys 4 blocks per query block
    one = query.numel() * 4
    assert saved.total <= 4 * one + (1 + tokens) * heads * 4 * 2 + bias.relative_position_bias_table.numel() * 4
    output.sum().backward()


def test_pruning_keeps_no_unpruned_tensor_for_backward():
    hidden = torch.randn(2, 33, 16, requires_grad=True)
    with SavedBytes() as saved:
        pruned, kept = keep_tokens(hidden * 2, torch.randn(2, 32), 0.5, 1)
    assert pruned.shape == (2, 17, 16) and saved.total == 0  # only the kept indices (integers) are saved
    pruned.sum().backward()
    assert hidden.grad[0, 1:].abs().sum(-1).gt(0).sum() == 16


@pytest.mark.parametrize("activation", [None, "gelu", "gelu_pytorch_tanh"])
def test_scaled_linear_has_the_gradients_of_the_plain_ops_and_keeps_only_its_input(activation):
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 5)
    scale = torch.nn.Parameter(torch.rand(5))
    hidden = torch.randn(3, 4, 6, requires_grad=True)
    activate = {None: lambda x: x, "gelu": torch.nn.functional.gelu}.get(
        activation, lambda x: torch.nn.functional.gelu(x, approximate="tanh")
    )
    parameters = [hidden, linear.weight, linear.bias, scale]
    reference = torch.autograd.grad((scale * linear(activate(hidden))).pow(2).sum(), parameters)
    with SavedBytes() as saved:
        fused = scaled_linear(linear, hidden, scale, activation)
    assert saved.total == hidden.numel() * 4 + sum(p.numel() * 4 for p in parameters[1:])
    for got, expected in zip(torch.autograd.grad(fused.pow(2).sum(), parameters), reference):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("key_bias", [False, True])
def test_layer_norm_linear_has_the_gradients_of_the_plain_ops_and_keeps_only_its_input(key_bias):
    """Query, key and value projections over one layer norm (BEiT's key has no bias): the same outputs and gradients
    as the separate modules, and backward keeps the un-normalised input, not the normalised one."""
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(6)
    torch.nn.init.normal_(norm.weight), torch.nn.init.normal_(norm.bias)
    linears = [torch.nn.Linear(6, 4), torch.nn.Linear(6, 4, bias=key_bias), torch.nn.Linear(6, 5)]
    hidden = torch.randn(2, 3, 6, requires_grad=True)
    parameters = [hidden, norm.weight, norm.bias] + [p for linear in linears for p in linear.parameters()]
    reference_output = torch.cat([linear(norm(hidden)) for linear in linears], dim=-1)
    weights = torch.randn(reference_output.shape)
    reference = torch.autograd.grad((reference_output * weights).sum(), parameters)
    with SavedBytes() as saved:
        fused = torch.cat(layer_norm_linear(hidden, norm, linears), dim=-1)
    rows = hidden.shape[0] * hidden.shape[1]
    kept_parameters = [norm.weight, norm.bias] + [linear.weight for linear in linears]  # the biases are not needed
    assert saved.total == (hidden.numel() + 2 * rows + sum(p.numel() for p in kept_parameters)) * 4  # + mean, 1/std
    torch.testing.assert_close(fused, reference_output)
    for got, expected in zip(torch.autograd.grad((fused * weights).sum(), parameters), reference):
        torch.testing.assert_close(got, expected)


class ShiftedLinear(torch.nn.Linear):
    """Stands for an adapter (LoRA) or a quantised layer: a Linear whose forward is not `F.linear(x, weight, bias)`."""

    def forward(self, hidden_states):
        return super().forward(hidden_states) + 1.0


def test_fused_projections_honour_adapters_and_hooks():
    """The fused functions read the weights directly only from stock modules without hooks; an adapter, a subclass or
    a hook on a projection (or on the layer norm) runs as the module it is."""
    torch.manual_seed(0)
    norm, hidden = torch.nn.LayerNorm(6), torch.randn(2, 3, 6)
    plain, shifted = torch.nn.Linear(6, 4), ShiftedLinear(6, 4)
    shifted.load_state_dict(plain.state_dict())
    expected = plain(norm(hidden))
    torch.testing.assert_close(layer_norm_linear(hidden, norm, [shifted])[0], expected + 1.0)
    scale = torch.rand(4)
    torch.testing.assert_close(scaled_linear(shifted, hidden, scale), scale * (plain(hidden) + 1.0))
    calls = []
    norm.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    torch.testing.assert_close(layer_norm_linear(hidden, norm, [plain])[0], expected)
    assert calls == [hidden.shape]
    bare_norm = torch.nn.LayerNorm(6, elementwise_affine=False)  # no weight to fuse: the modules run themselves
    torch.testing.assert_close(layer_norm_linear(hidden, bare_norm, [plain])[0], plain(bare_norm(hidden)))


def test_evaluation_patterns_come_from_the_seed_and_the_layer():
    torch.manual_seed(0)
    config = tiny_vision_config(num_hidden_layers=2, token_keep_rate=1.0, num_frames=4)
    tower = SViTTVisionModel(config).eval()
    with torch.no_grad():
        patterns = tower(video(frames=4)).random_blocks
        tower.config.random_block_seed = 1
        other = tower(video(frames=4)).random_blocks
    assert not torch.equal(patterns[0], patterns[1])  # layers differ
    assert not all(torch.equal(a, b) for a, b in zip(patterns, other))  # seeds differ
    # the evaluation draw is a pure function of (seed, layer, position), the same on any device
    first = hashed_uniform((4, 4), 0, 1)
    assert torch.equal(first, hashed_uniform((4, 4), 0, 1)) and not torch.equal(first, hashed_uniform((4, 4), 0, 2))
    assert 0.0 <= first.min() and first.max() < 1.0
    uniform = hashed_uniform((200, 200), 5, 0)
    assert abs(uniform.mean().item() - 0.5) < 0.01 and abs(uniform.var().item() - 1 / 12) < 0.005


def test_longer_clips_keep_linear_memory_under_sparsity():
    """What backward keeps grows with the clip length, not with its square: no index, bias or mask of the size of
    the attention matrix is saved (the dense path, for contrast, keeps its probabilities)."""
    saved = {}
    for sparse in (True, False):
        for frames in (4, 8, 16):
            torch.manual_seed(0)
            tower = SViTTVisionModel(
                tiny_vision_config(num_frames=frames, use_sparse_attention=sparse, token_keep_rate=0.5)
            ).train()
            with SavedBytes() as bytes_saved:
                tower(video(batch=1, frames=frames))
            saved[sparse, frames] = bytes_saved.total
    assert saved[True, 16] / saved[True, 8] < 2.2 and saved[True, 8] / saved[True, 4] < 2.2
    assert saved[False, 16] / saved[False, 8] > 2.5


def test_a_tower_moves_on_to_32_and_64_frame_clips():
    """The curriculum continues past the release's 4 -> 8 frames: the tables resample, the clip runs and trains."""
    torch.manual_seed(0)
    tower = SViTTVisionModel(tiny_vision_config(num_frames=4, token_keep_rate=0.5, token_drop_layers=[0, 1]))
    for frames in (32, 64):
        tower.resize_num_frames(frames)
        table = tower.encoder.layer[0].attention.attention.relative_position_bias.relative_position_bias_table
        assert table.shape[0] == (2 * frames - 1) * 49 + 3
        output = tower.train()(video(batch=1, frames=frames))
        assert output.kept_token_indices[-1].shape == (1, frames * 4)  # 16 patches per frame, halved twice
        output.pooler_output.sum().backward()
        assert table.grad is not None and torch.isfinite(table.grad).all()
        tower.zero_grad(set_to_none=True)
