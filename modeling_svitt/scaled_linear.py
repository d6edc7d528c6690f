"""Linear layers of the video tower that keep only their input for backward.

`scaled_linear`: `scale * linear(activation(x))`. The video tower's output projections are followed by BEiT's layer
scale, and the second feed-forward projection is preceded by GELU. Written as separate autograd ops, backward would
keep the unscaled projection output (for the scale's gradient) and the activation output (for the weight's gradient)
next to the pre-activation: two or five extra activations of the tower's width per token and layer. Here the
gradients of the weight and the scale are formed from the saved input, and the (cheap) activation is recomputed in
backward.

`layer_norm_linear`: `linear(layer_norm(x))` for one or several linear layers that read the same normalised input
(the query, key and value projections; the first feed-forward projection). Backward keeps the layer norm's input
(the residual stream, which the layer norm keeps anyway) and its statistics, and recomputes the normalised input
instead of keeping it: one activation of the tower's width less per token and layer norm. The layers' input
gradients are summed in one buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers.activations import ACT2FN

# `config.hidden_act` values whose derivative is computed in backward; other activations run unfused
FUSED_ACTIVATIONS = {"gelu": "none", "gelu_pytorch_tanh": "tanh"}


class _ScaledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_states, weight, bias, scale, approximate):
        activated = hidden_states if approximate is None else F.gelu(hidden_states, approximate=approximate)
        ctx.save_for_backward(hidden_states, weight, bias, scale)
        ctx.approximate = approximate
        output = F.linear(activated, weight, bias)
        return output if scale is None else output.mul_(scale.to(output.dtype))

    @staticmethod
    def backward(ctx, grad_output):
        hidden_states, weight, bias, scale = ctx.saved_tensors
        approximate, needs = ctx.approximate, ctx.needs_input_grad
        dtype = grad_output.dtype  # under autocast the forward ran in a lower precision than the parameters
        hidden_states = hidden_states.to(dtype)
        activated = hidden_states if approximate is None else F.gelu(hidden_states, approximate=approximate)
        activated_rows = activated.reshape(-1, activated.shape[-1])
        grad_rows = grad_output.reshape(-1, grad_output.shape[-1])
        # the scale multiplies the gradient (tokens x width), not the weight (width x 4 width for the second
        # feed-forward projection): fewer passes over memory at batch 1
        scaled_grad_rows = grad_rows if scale is None else grad_rows * scale.to(dtype)
        grad_input = grad_weight = grad_bias = grad_scale = None
        if needs[0]:
            grad_input = (scaled_grad_rows @ weight.to(dtype)).view(*grad_output.shape[:-1], weight.shape[1])
            if approximate is not None:
                grad_input = torch.ops.aten.gelu_backward(grad_input, hidden_states, approximate=approximate)
        if needs[3]:
            # d/d scale_j = sum_n grad_nj * unscaled_output_nj = <(grad^T act)_j, W_j> + bias_j * sum_n grad_nj
            grad_unscaled_weight = (grad_rows.t() @ activated_rows).to(weight.dtype)
            if needs[1]:
                grad_weight = grad_unscaled_weight * scale[:, None]
            grad_scale = grad_unscaled_weight.mul_(weight).sum(1)
        elif needs[1]:
            grad_weight = (scaled_grad_rows.t() @ activated_rows).to(weight.dtype)
        if bias is not None and (needs[2] or needs[3]):
            grad_unscaled_bias = grad_rows.sum(0).to(bias.dtype)
            if needs[2]:
                grad_bias = grad_unscaled_bias if scale is None else grad_unscaled_bias * scale
            if needs[3]:
                grad_scale = grad_scale + grad_unscaled_bias * bias
        return grad_input, grad_weight, grad_bias, grad_scale, None


def scaled_linear(
    linear: torch.nn.Linear,
    hidden_states: torch.Tensor,
    scale: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """`scale * linear(act(hidden_states))`, `act` one of `FUSED_ACTIVATIONS` (or none); without a scale and an
    activation it is the plain linear layer."""
    if scale is None and activation is None:
        return linear(hidden_states)
    if not _is_plain(linear):  # an adapter (e.g. LoRA), a quantised layer or a hook: the module runs itself
        output = linear(hidden_states if activation is None else ACT2FN[activation](hidden_states))
        return output if scale is None else output * scale
    approximate = None if activation is None else FUSED_ACTIVATIONS[activation]
    return _ScaledLinear.apply(hidden_states, linear.weight, linear.bias, scale, approximate)


class _LayerNormLinear(torch.autograd.Function):
    """`linear_i(layer_norm(x))` for every i; inputs `x, norm weight, norm bias, eps, count, *weights, *biases`."""

    @staticmethod
    def forward(ctx, hidden_states, norm_weight, norm_bias, eps, count, *weights_and_biases):
        weights, biases = weights_and_biases[:count], weights_and_biases[count:]
        normed, mean, rstd = torch.native_layer_norm(hidden_states, norm_weight.shape, norm_weight, norm_bias, eps)
        ctx.save_for_backward(hidden_states, mean, rstd, norm_weight, norm_bias, *weights)
        ctx.eps, ctx.count = eps, count
        return tuple(F.linear(normed, weight, bias) for weight, bias in zip(weights, biases))

    @staticmethod
    def backward(ctx, *grad_outputs):
        hidden_states, mean, rstd, norm_weight, norm_bias, *weights = ctx.saved_tensors
        count = ctx.count
        needs_weight, needs_bias = ctx.needs_input_grad[5 : 5 + count], ctx.needs_input_grad[5 + count :]
        normed_rows = None
        if any(needs_weight):
            normed = torch.native_layer_norm(hidden_states, norm_weight.shape, norm_weight, norm_bias, ctx.eps)[0]
            normed_rows = normed.reshape(-1, normed.shape[-1])
        grad_weights, grad_biases, grad_normed = [None] * count, [None] * count, None
        for index, (grad_output, weight) in enumerate(zip(grad_outputs, weights)):
            dtype = grad_output.dtype  # under autocast the products ran in a lower precision than the layer norm
            grad_rows = grad_output.reshape(-1, grad_output.shape[-1])
            if needs_weight[index]:
                grad_weights[index] = (grad_rows.t() @ normed_rows.to(dtype)).to(weight.dtype)
            if needs_bias[index]:
                grad_biases[index] = grad_rows.sum(0).to(weight.dtype)
            if any(ctx.needs_input_grad[:3]):  # the layers' input gradients summed in one buffer
                weight = weight.to(dtype)
                grad_normed = grad_rows @ weight if grad_normed is None else grad_normed.addmm_(grad_rows, weight)
        grad_input = grad_norm_weight = grad_norm_bias = None
        if grad_normed is not None:
            grad_normed = grad_normed.view(hidden_states.shape).to(hidden_states.dtype)
            grad_input, grad_norm_weight, grad_norm_bias = torch.ops.aten.native_layer_norm_backward(
                grad_normed, hidden_states, norm_weight.shape, mean, rstd, norm_weight, norm_bias,
                list(ctx.needs_input_grad[:3]),
            )
        return grad_input, grad_norm_weight, grad_norm_bias, None, None, *grad_weights, *grad_biases


def layer_norm_linear(
    hidden_states: torch.Tensor, layer_norm: torch.nn.LayerNorm, linears: Sequence[torch.nn.Linear]
) -> tuple[torch.Tensor, ...]:
    """`tuple(linear(layer_norm(hidden_states)) for linear in linears)`, keeping only `hidden_states` (and the layer
    norm's statistics) for backward (see the module docstring)."""
    if not all(_is_plain(module) for module in (layer_norm, *linears)):
        # an adapter (e.g. LoRA on the query), a quantised layer or a hook: every module runs itself
        normed = layer_norm(hidden_states)
        return tuple(linear(normed) for linear in linears)
    weights = [linear.weight for linear in linears]
    biases = [linear.bias for linear in linears]
    return _LayerNormLinear.apply(
        hidden_states, layer_norm.weight, layer_norm.bias, layer_norm.eps, len(linears), *weights, *biases
    )


def _is_plain(module: torch.nn.Module) -> bool:
    """A stock `nn.Linear` / affine `nn.LayerNorm` without hooks, whose weights these functions may use directly."""
    plain_types = (torch.nn.Linear, torch.nn.LayerNorm)
    hooks = (module._forward_hooks, module._forward_pre_hooks, module._backward_hooks, module._backward_pre_hooks)
    return type(module) in plain_types and module.weight is not None and not any(hooks)


__all__ = ["FUSED_ACTIVATIONS", "layer_norm_linear", "scaled_linear"]
