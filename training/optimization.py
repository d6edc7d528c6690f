"""The optimiser and learning-rate schedule of a stage, and the seed of each training step."""

from __future__ import annotations

import math

import torch

from training.recipe import OptimizerSpec, StageSpec


def _decays(name: str, param: torch.nn.Parameter, rule: str) -> bool:
    if param.ndim == 1 or name.endswith(".bias"):
        return False
    if rule == "release":  # the release also decays the temperature, the [CLS] token and relative-bias tables
        return True
    return param.ndim > 1 and not name.endswith(("cls_token", "relative_position_bias_table"))


def build_optimizer(model: torch.nn.Module, spec: OptimizerSpec) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, grouped by weight decay (`spec.weight_decay_rule`) and learning rate
    (`spec.lr_multipliers`: the longest key found in a parameter's name wins)."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    keys = sorted(spec.lr_multipliers, key=len, reverse=True)
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        multiplier = next((spec.lr_multipliers[key] for key in keys if key in name), 1.0)
        decay = spec.weight_decay if _decays(name, param, spec.weight_decay_rule) else 0.0
        groups.setdefault((spec.lr * multiplier, decay), []).append(param)
    param_groups = [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]
    return torch.optim.AdamW(param_groups, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps)


def learning_rate_multiplier(step: int, total_steps: int, warmup_fraction: float, floor: float) -> float:
    """Linear warm-up from 0, then half a cosine to 0, never below `floor` (the release's per-step schedule)."""
    warmup = int(warmup_fraction * total_steps)
    if step < warmup:
        value = step / warmup
    else:
        progress = (step - warmup) / max(1, total_steps - warmup)
        value = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(floor, value)


def build_scheduler(optimizer, stage: StageSpec, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The stage's schedule as a `LambdaLR` stepped once per optimiser step (not prepared: accelerate would step it
    once per process)."""
    schedule = stage.schedule
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: learning_rate_multiplier(step, total_steps, schedule.warmup_fraction, schedule.min_lr_multiplier),
    )


def step_seed(seed: int, stage: int, step: int, process: int) -> int:
    """Seed of one training step: its randomness (random attention blocks, ITM negatives, masks, dropout) depends
    on nothing else, so a resumed run draws exactly what the uninterrupted run drew."""
    return (((seed * 1_000_003 + stage) * 1_000_033 + step) * 257 + process) % (2**31 - 1)
