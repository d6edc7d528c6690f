"""Recipe fields checked against the model they configure, with the model's own rules.

Each function returns problems as `(field, message)` pairs, the field written as a recipe path (`model.vision`,
`stages.1.token_drop_layers`); `training/recipe.py` turns them into [`RecipeError`]s. What the recipe alone
determines is checked when it is loaded; what needs the built model (the parameter names, a checkpoint's or BEiT's
tower) right after the model is built, before the first step (`check_recipe_against_model`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING

from modeling_svitt.configuration_svitt import (
    SViTTConfig,
    SViTTTextConfig,
    SViTTVisionConfig,
    unknown_config_fields,
)

if TYPE_CHECKING:
    from training.recipe import Recipe, StageSpec

Problem = tuple[str, str]

# StageSpec field -> the video tower's config field it sets (see `configure_stage`)
STAGE_VISION_FIELDS = (
    "num_frames",
    "token_keep_rate",
    "token_drop_layers",
    "use_sparse_attention",
    "attention_block_size",
    "num_local_blocks",
    "num_random_blocks",
)
# The video tower a recipe builds without reading any weights: `{"hidden_size": 768, **model.vision}`.
SCRATCH_VISION_DEFAULTS = {"hidden_size": 768}


def model_section_problems(recipe: Recipe) -> list[Problem]:
    """`model.vision` / `model.text` / `model.config` keys that configure nothing: unknown fields (with the closest
    valid name), the towers given through `model.config`, and tower fields that a checkpoint start ignores."""
    model = recipe.model
    problems = []
    for section, config_class in (("vision", SViTTVisionConfig), ("text", SViTTTextConfig), ("config", SViTTConfig)):
        values = getattr(model, section)
        problems += [(f"model.{section}", message) for message in unknown_config_fields(config_class, values)]
    for tower in ("vision", "text"):
        if f"{tower}_config" in model.config:
            problems.append((f"model.config.{tower}_config", f"set the {tower} tower's fields under model.{tower}"))
        if model.init == "checkpoint" and getattr(model, tower):
            problems.append((
                f"model.{tower}",
                f"init: checkpoint keeps the checkpoint's {tower} tower, so these fields would configure nothing; "
                "set clip length and sparsity per stage, or start with init: pretrained / scratch",
            ))
    return problems


def vision_config_from_recipe(recipe: Recipe) -> tuple[SViTTVisionConfig | None, Problem | None]:
    """The video tower's config when the recipe alone determines it (a fresh tower: `init: scratch`, or `pretrained`
    with `beit: null`), else `None`; and the problem `SViTTVisionConfig` itself finds in `model.vision`."""
    model = recipe.model
    if model.init == "checkpoint" or (model.init == "pretrained" and model.beit):
        return None, None
    try:
        return SViTTVisionConfig(**{**SCRATCH_VISION_DEFAULTS, **model.vision}), None
    except (TypeError, ValueError) as error:
        return None, ("model.vision", str(error))


def stand_in_vision_config(stages: list[StageSpec]) -> SViTTVisionConfig:
    """A video tower to check stages on before the real one is known (a checkpoint's or BEiT's): the default tower,
    deep enough for every drop layer the stages name (the real depth is checked once the model is built)."""
    deepest = max((layer for stage in stages for layer in stage.token_drop_layers or []), default=0)
    return SViTTVisionConfig(num_hidden_layers=max(SViTTVisionConfig().num_hidden_layers, deepest + 1))


def stage_sparsity_problem(
    stages: list[StageSpec], vision_config: SViTTVisionConfig, text_config: SViTTTextConfig | None = None
) -> Problem | None:
    """Apply every stage's clip length and sparsity in order (null keeps the previous value, as `configure_stage`)
    to a copy of the towers' configs and run their own validation; the first stage field it refuses."""
    vision = copy.deepcopy(vision_config)
    text = copy.deepcopy(text_config)
    for index, stage in enumerate(stages):
        values = {key: getattr(stage, key) for key in STAGE_VISION_FIELDS if getattr(stage, key) is not None}
        try:
            for key, value in values.items():
                setattr(vision, key, value)
            vision.validate_architecture()
            if text is not None and stage.fusion_token_keep_rate is not None:
                values["fusion_token_keep_rate"] = text.fusion_token_keep_rate = stage.fusion_token_keep_rate
                text.validate_architecture()
        except (TypeError, ValueError) as error:
            field = next((key for key in values if f"`{key}`" in str(error)), None)
            return (f"stages.{index}.{field}" if field else f"stages.{index}", str(error))
    return None


def parameter_pattern_problems(stages: list[StageSpec], parameter_names: Iterable[str]) -> list[Problem]:
    """`freeze` prefixes and `optimizer.lr_multipliers` keys (matched anywhere in a name) that match no parameter."""
    names = list(parameter_names)
    problems = []
    for index, stage in enumerate(stages):
        unmatched = [prefix for prefix in stage.freeze if not any(name.startswith(prefix) for name in names)]
        if unmatched:
            problems.append((f"stages.{index}.freeze", _unmatched_message(unmatched, names, "starts")))
        unmatched = [key for key in stage.optimizer.lr_multipliers if not any(key in name for name in names)]
        if unmatched:
            problems.append((f"stages.{index}.optimizer.lr_multipliers", _unmatched_message(unmatched, names, "holds")))
    return problems


def _unmatched_message(patterns: list[str], names: list[str], how: str) -> str:
    examples = ", ".join(names[:3])
    return (
        f"no parameter name {how} {', '.join(repr(pattern) for pattern in patterns)}; the model's names look like "
        f"{examples}, ... (list them with `[name for name, _ in model.named_parameters()]`)"
    )


def processor_size_problem(frame_size: tuple[int, int], image_size: int, source: str) -> Problem | None:
    """The processor's frames must be the size the video tower takes (`source` says where that size comes from)."""
    if tuple(frame_size) == (image_size, image_size):
        return None
    return (
        "processor.image_size",
        f"the processor makes {frame_size[0]}x{frame_size[1]} frames but the model takes {image_size}x{image_size} "
        f"({source}); set processor.image_size: {image_size}",
    )


def built_model_problems(recipe: Recipe, model, frame_size: tuple[int, int] | None) -> list[Problem]:
    """What needs the built model: parameter patterns, every stage under the model's own configs, and the
    processor's frame size (`frame_size`, `None` to skip)."""
    config = model.config
    names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    problems = parameter_pattern_problems(recipe.stages, names)
    problem = stage_sparsity_problem(recipe.stages, config.vision_config, config.text_config)
    if problem:
        problems.append(problem)
    if frame_size is not None:
        problem = processor_size_problem(frame_size, config.vision_config.image_size, "the model's vision config")
        if problem:
            problems.append(problem)
    return problems


__all__ = [
    "built_model_problems",
    "model_section_problems",
    "parameter_pattern_problems",
    "processor_size_problem",
    "stage_sparsity_problem",
    "stand_in_vision_config",
    "vision_config_from_recipe",
]
