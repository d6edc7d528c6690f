"""Inference-time settings of a loaded model, and sweeps over them.

The paper's claim is that tokens and edges can be pruned hard at inference with a small loss. A sweep evaluates one
loaded model at every combination of the given values (a grid) on one decoded copy of the data, timing each point
and computing the video tower's analytic cost (`svitt_tools.compute_cost`).

Settings are the configuration fields the forward pass reads at run time (`INFERENCE_FIELDS`: edge sparsity, node
sparsity, text-guided selection, random-block seeding, the multiple-choice scoring), which the model changes itself
(`sparsity_overrides`), and the evaluation protocol's (`EVALUATION_FIELDS`). Fields that shape the weights (widths,
depths, the clip length) are refused: changing them on a loaded model would not change the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch
import yaml
from accelerate import Accelerator

from modeling_svitt import SViTTConfig, SViTTTextConfig, SViTTVisionConfig
from training.evaluation_loops import DecodedOnce, run_evaluation, video_gmacs_per_sample, videos_per_sample
from training.recipe import EvaluationSpec, RecipeError, validate_evaluation

# the model's settings (`SViTTPreTrainedModel.set_sparsity`), by the config that holds them
INFERENCE_FIELDS = {
    "vision_config": SViTTVisionConfig.runtime_fields,
    "text_config": SViTTTextConfig.runtime_fields,
    "config": SViTTConfig.runtime_fields,
}
EVALUATION_FIELDS = ("k", "use_itm", "clip_aggregation", "qa_scoring")
_SCOPE_ALIASES = {"vision": "vision_config", "text": "text_config", "model": "config", "evaluation": "evaluation"}


def known_settings() -> list[str]:
    return [name for names in INFERENCE_FIELDS.values() for name in names] + list(EVALUATION_FIELDS)


def resolve_setting(key: str) -> tuple[str, str]:
    """`(scope, field)` of a setting: `token_keep_rate`, `vision_config.token_keep_rate`, `text.fusion_token_...`,
    `k` ...; scope is `vision_config`, `text_config`, `config` or `evaluation`."""
    scope, _, name = key.rpartition(".")
    scopes = list(INFERENCE_FIELDS) + ["evaluation"]
    if scope:
        scope = _SCOPE_ALIASES.get(scope, scope)
        scopes = [scope] if scope in scopes else []
    for candidate in scopes:
        fields = EVALUATION_FIELDS if candidate == "evaluation" else INFERENCE_FIELDS[candidate]
        if name in fields:
            return candidate, name
    raise RecipeError(
        f"'{key}' is not an inference-time setting. Settings: {', '.join(known_settings())} (prefix vision_config. / "
        "text_config. if you like). Fields that shape the weights (widths, depths, num_frames) cannot change on a "
        "loaded model."
    )


def values_of(settings: dict[str, list[Any]], name: str) -> list[Any]:
    """The values `settings` (`{setting: [values]}`) give the field `name` (however its key is spelled)."""
    return [value for key, values in settings.items() if resolve_setting(key)[1] == name for value in values]


def split_values(text: str) -> list[str]:
    """`1.0,0.5` -> ["1.0", "0.5"]; commas inside brackets stay (`[1],[1,2]` -> ["[1]", "[1,2]"])."""
    values, depth, current = [], 0, ""
    for char in text:
        if char in "[(":
            depth += 1
        elif char in "])":
            depth -= 1
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    values.append(current)
    return [value.strip() for value in values]


def parse_settings(assignments: list[str], option: str, several: bool) -> dict[str, list[Any]]:
    """`KEY=V1,V2,...` (`several`) or `KEY=VALUE` assignments -> `{key: [values]}`; values are YAML (`0.5`, `true`,
    `[3, 6]`)."""
    settings: dict[str, list[Any]] = {}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals or not key.strip() or not text.strip():
            raise RecipeError(f"{option} {assignment!r}: expected KEY={'V1,V2,...' if several else 'VALUE'}")
        resolve_setting(key.strip())
        values = [yaml.safe_load(value) for value in (split_values(text) if several else [text])]
        if key.strip() in settings:
            raise RecipeError(f"{option} {key.strip()} is given twice")
        settings[key.strip()] = values
    return settings


@contextlib.contextmanager
def settings_applied(model, spec: EvaluationSpec, settings: dict[str, Any]) -> Iterator[EvaluationSpec]:
    """Set inference-time settings on the model (`sparsity_overrides`) for the duration of the block; yields the
    evaluation spec with its protocol settings applied. An impossible value raises [`RecipeError`] naming it."""
    model_settings, evaluation = {}, {}
    for key, value in settings.items():
        scope, name = resolve_setting(key)
        (evaluation if scope == "evaluation" else model_settings)[name] = value

    def check(condition, field, message):
        if not condition:
            raise RecipeError(f"{field}: {message}")

    with contextlib.ExitStack() as stack:
        try:
            spec = dataclasses.replace(spec, **evaluation)
            validate_evaluation(spec, check, "evaluation")
            stack.enter_context(model.sparsity_overrides(**model_settings))
        except RecipeError:
            raise
        except (ValueError, TypeError) as error:
            raise RecipeError(f"settings {settings}: {error}") from None
        yield spec


@torch.no_grad()
def _warm_up(model, dataset: DecodedOnce) -> None:
    """One forward of the video tower on a decoded clip, so that the first grid point is not timed cold."""
    item = next((item for item in dataset.items.values() if item is not None), None)
    if item is None:
        return
    clip = item["pixel_values"]
    while clip.dim() > 4:
        clip = clip[0]
    model.svitt.encode_video(clip[None].to(model.device, model.dtype))


def run_sweep(
    accelerator: Accelerator, model, dataset, processor, spec: EvaluationSpec, grid: dict[str, list[Any]],
    repeats: int = 1,
) -> list[dict[str, Any]]:
    """Evaluate `model` at every combination of `grid` (`{setting: [values]}`) on one decoded copy of `dataset`.

    Returns one row per point: its `settings`, `metrics`, `seconds_per_video` (wall time of the evaluation, the
    videos already decoded, divided by the videos the tower encoded; the median of `repeats` evaluations, which must
    agree on the metrics) and `video_tower_gmacs` (analytic, per video: the clips of one test video, or of one EgoMCQ
    choice)."""
    decoded = DecodedOnce(dataset)
    decoded.fill(accelerator, spec.batch_size, spec.num_workers)
    spec = dataclasses.replace(spec, num_workers=0)  # the decoded items live in this process
    _warm_up(model, decoded)
    rows = []
    keys = list(grid)
    num_videos = len(dataset) * videos_per_sample(spec)
    for values in itertools.product(*(grid[key] for key in keys)):
        settings = dict(zip(keys, values))
        times, results = [], []
        with settings_applied(model, spec, settings) as point_spec:
            for _ in range(repeats):
                accelerator.wait_for_everyone()
                start = time.perf_counter()
                results.append(run_evaluation(accelerator, model, decoded, processor, point_spec))
                accelerator.wait_for_everyone()
                times.append(time.perf_counter() - start)
            gmacs = video_gmacs_per_sample(model, point_spec) / videos_per_sample(point_spec)
        if any(metrics != results[0] for metrics in results):
            raise RuntimeError(f"The evaluations at {settings} disagree: {results}.")
        seconds = statistics.median(times)
        rows.append(
            {"settings": settings, "metrics": results[0], "seconds_per_video": seconds / num_videos,
             "video_tower_gmacs": gmacs}
        )
        accelerator.print(f"  {settings}: {seconds:.2f} s (median of {repeats})")
    return rows


__all__ = [
    "EVALUATION_FIELDS",
    "INFERENCE_FIELDS",
    "parse_settings",
    "resolve_setting",
    "run_sweep",
    "settings_applied",
    "split_values",
    "values_of",
]
