"""`scale * linear(activation(x))` that keeps only `x` for backward.

The video tower's output projections are followed by BEiT's layer scale, and the second feed-forward projection
is preceded by GELU. Written as separate autograd ops, backward would keep the unscaled projection output (for the
scale's gradient) and the activation output (for the weight's gradient) next to the pre-activation: two or five
extra activations of the tower's width per token and layer. Here the scale is folded into the weight, both
gradients are formed from the saved input, and the (cheap) activation is recomputed in backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# `config.hidden_act` values whose derivative is computed in backward; other activations run unfused
FUSED_ACTIVATIONS = {"gelu": "none", "gelu_pytorch_tanh": "tanh"}


class _ScaledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_states, weight, bias, scale, approximate):
        activated = hidden_states if approximate is None else F.gelu(hidden_states, approximate=approximate)
        ctx.save_for_backward(hidden_states, weight, bias, scale)
        ctx.approximate = approximate
        return F.linear(activated, weight * scale[:, None], None if bias is None else bias * scale)

    @staticmethod
    def backward(ctx, grad_output):
        hidden_states, weight, bias, scale = ctx.saved_tensors
        approximate = ctx.approximate
        dtype = grad_output.dtype  # under autocast the forward ran in a lower precision than the parameters
        hidden_states = hidden_states.to(dtype)
        activated = hidden_states if approximate is None else F.gelu(hidden_states, approximate=approximate)
        grad_rows = grad_output.reshape(-1, grad_output.shape[-1])
        grad_input = grad_weight = grad_bias = grad_scale = None
        if ctx.needs_input_grad[0]:
            grad_input = F.linear(grad_output, (weight * scale[:, None]).t().to(dtype))
            if approximate is not None:
                grad_input = torch.ops.aten.gelu_backward(grad_input, hidden_states, approximate=approximate)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            grad_scaled_weight = (grad_rows.t() @ activated.reshape(-1, activated.shape[-1])).to(weight.dtype)
            if ctx.needs_input_grad[1]:
                grad_weight = grad_scaled_weight * scale[:, None]
            if ctx.needs_input_grad[3]:
                grad_scale = (grad_scaled_weight * weight).sum(1)
        if bias is not None and (ctx.needs_input_grad[2] or ctx.needs_input_grad[3]):
            grad_scaled_bias = grad_rows.sum(0).to(bias.dtype)
            if ctx.needs_input_grad[2]:
                grad_bias = grad_scaled_bias * scale
            if ctx.needs_input_grad[3]:
                grad_scale = grad_scaled_bias * bias if grad_scale is None else grad_scale + grad_scaled_bias * bias
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
    if scale is None:
        scale = torch.ones(linear.out_features, dtype=linear.weight.dtype, device=linear.weight.device)
    approximate = None if activation is None else FUSED_ACTIVATIONS[activation]
    return _ScaledLinear.apply(hidden_states, linear.weight, linear.bias, scale, approximate)


__all__ = ["FUSED_ACTIVATIONS", "scaled_linear"]
