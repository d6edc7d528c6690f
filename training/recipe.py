"""Training recipes: YAML files validated into dataclasses before anything runs.

A recipe names its `task` (`pretraining`, the curriculum of `training/pretrain.py`, or a fine-tuning task of
`training/finetune.py`: `retrieval`, `qa`, `multiple_choice`), how the model starts (`model`), how videos and captions
are prepared (`processor`), optionally the synthetic set to generate (`synthetic`, or the name of a recipe whose set to
use), the stages (each inheriting `stage_defaults`; a fine-tuning recipe has one) and what is evaluated after every
stage (`evaluation`). Built-in recipes live in `training/recipes/` and are found by name.

Every mistake a recipe can hold (an unknown key, a value of the wrong type, an impossible value, clip lengths that
shrink from one stage to the next, a missing annotation file or media folder) raises [`RecipeError`], whose message
names the recipe and the field, e.g. `recipe 'synthetic', stages.0.batch_size: must be >= 2 (contrastive losses need
in-batch negatives), got 1`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import string
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modeling_svitt.answer_ranking import ANSWER_SCORINGS
from modeling_svitt.clip_ensemble import CLIP_AGGREGATIONS
from modeling_svitt.video_io import SAMPLING_STRATEGIES, is_sampling_strategy
from modeling_svitt.configuration_svitt import CONTRASTIVE_LOSSES, SViTTTextConfig
from training.model_rules import (
    built_model_problems,
    model_section_problems,
    processor_size_problem,
    stage_sparsity_problem,
    stand_in_vision_config,
    vision_config_from_recipe,
)

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
SYNTHETIC_PLACEHOLDER = "{synthetic}"
PACKAGE_PREFIX = "package:"


class RecipeError(ValueError):
    """A recipe field is unknown, missing, of the wrong type or impossible; the message names the field."""


# ----------------------------------------------------------------------------------------------------------------------
# The recipe's parts
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelSpec:
    """How the first stage's model starts.

    `init`: `"checkpoint"` (an SViTT folder or Hub id in `checkpoint`), `"pretrained"` (the video tower from the BEiT
    in `beit`, or a fresh one when `beit` is null; the text tower from the BERT in `bert`) or `"scratch"` (fresh
    towers from `vision` / `text`, words from `tokenizer`). `vision`, `text` and `config` are fields of
    `SViTTVisionConfig`, `SViTTTextConfig` and `SViTTConfig`. Paths may be written `package:<module>/<sub-path>`
    (a folder shipped inside an installed Python package).
    """

    init: str = "pretrained"
    checkpoint: str | None = None
    beit: str | None = None
    bert: str | None = None
    tokenizer: str | None = None
    vision: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    # A fresh video tower's relative-position bias starts at zero; non-zero values start it with motion detectors
    # instead (see `init_relative_bias_for_motion`).
    temporal_bias_init: float = 0.0
    spatial_bias_decay: float = 0.0


@dataclass
class ProcessorSpec:
    """Frame size, training crop (area fraction range), pixel normalisation, text length and (QA) answer length of
    the processor saved with every stage. A field left null takes the starting checkpoint's value when the model
    starts from a checkpoint that has a processor, else the release's (`RELEASE_PROCESSOR`)."""

    image_size: int | None = None
    crop_scale: list[float] | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    max_text_length: int | None = None
    max_answer_length: int | None = None


# The release's processor settings (224 px frames, crops of half the area or more, mean and std 0.5, 32-token
# captions, 5-token answers).
RELEASE_PROCESSOR = dict(
    image_size=224, crop_scale=[0.5, 1.0], image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], max_text_length=32,
    max_answer_length=5,
)


@dataclass
class DataSpec:
    """Training data of a stage: `format` `captions` (caption JSON; `match_by: caption` makes identical captions
    positives, as SSv2's labels; `paragraphs` joins the captions of an entry into one, as DiDeMo), `egoclip` (EgoClip
    metadata with verb and noun tags; `path_template` and `chunk_seconds` describe the video files, e.g.
    `{video_uid}/{chunk}.mp4` and 600 for Ego4D's chunked videos), `qa` (question-answer JSON) or `egomcq` (EgoMCQ
    items, for multiple-choice fine-tuning). `group_size` keeps that many consecutive annotation entries together in
    a batch (e.g. a clip and its reversed twin, hard negatives of each other).

    `shards` streams the stage's data from tar shards instead (`{key}.mp4` with `{key}.txt` / `{key}.json`, as
    `python -m training.data.shards` writes them, or `video2dataset`): a brace pattern (`shards/{00000..00127}.tar`),
    several separated by `::`, a folder of `.tar` files, or `fsspec` URLs; formats `captions` and `egoclip`. A streamed
    stage gives its length in `steps`; `shuffle_buffer` samples are shuffled on the fly (shard order and buffer drawn
    from the seed and the epoch); `group_size` must match the groups the shards were written with. With shards,
    `annotations` is only needed to write the synthetic set's shards (`shards: "{synthetic}/shards"`)."""

    format: str = "captions"
    annotations: str = ""
    shards: str | None = None
    shuffle_buffer: int = 1000
    media_root: str | None = None
    match_by: str = "video"
    paragraphs: bool = False
    frame_sampling: str = "rand"
    horizontal_flip: bool = True
    num_verbs: int = 118
    num_nouns: int = 582
    path_template: str = "{video_uid}.mp4"
    chunk_seconds: float | None = None
    group_size: int = 1
    num_workers: int = 2
    prefetch_factor: int = 2
    max_bad_fraction: float = 0.01


@dataclass
class OptimizerSpec:
    """AdamW. `weight_decay_rule`: `release` decays every parameter except 1-D ones and biases (so the temperature,
    the [CLS] token and the relative-position tables decay, as in the release); `fixed` also spares those.
    `lr_multipliers` scales the learning rate of the parameters whose name contains a key (the longest key wins)."""

    lr: float = 3e-5
    weight_decay: float = 0.02
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay_rule: str = "release"
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    max_grad_norm: float | None = None


@dataclass
class ScheduleSpec:
    """Linear warm-up from 0 over `warmup_fraction` of the stage's steps, then half a cosine to 0, the multiplier
    never below `min_lr_multiplier` (the release's schedule)."""

    warmup_fraction: float = 0.1
    min_lr_multiplier: float = 0.01


@dataclass
class LossWeights:
    itc: float = 1.0
    itm: float = 1.0
    mlm: float = 1.0


@dataclass
class StageSpec:
    """One curriculum stage: clip length, sparsity, data, length (`epochs` or `steps`), optimiser and losses.

    Sparsity fields left null keep the previous stage's (or the initial model's) value. `freeze` lists name prefixes
    of parameters this stage does not train (e.g. a pretrained text tower's embeddings). An optimiser step takes
    `gradient_accumulation_steps` batches of `batch_size` per process; ITC / EgoNCE contrast the whole accumulated
    batch (`training.loop.accumulate_gradients`), so it trains as one batch of `batch_size x
    gradient_accumulation_steps` would, except that ITM negatives and MLM stay within each batch of `batch_size`.
    """

    name: str | None = None
    num_frames: int = 4
    token_keep_rate: float = 0.7
    token_drop_layers: list[int] | None = None
    use_sparse_attention: bool | None = None
    attention_block_size: int | None = None
    num_local_blocks: int | None = None
    num_random_blocks: int | None = None
    fusion_token_keep_rate: float | None = None
    freeze: list[str] = field(default_factory=list)
    batch_size: int = 32
    gradient_accumulation_steps: int = 1
    epochs: float | None = None
    steps: int | None = None
    contrastive_loss: str = "infonce"
    loss_weights: LossWeights = field(default_factory=LossWeights)
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    data: DataSpec = field(default_factory=DataSpec)


@dataclass
class EvaluationSpec:
    """What is evaluated after every stage on the stage's saved model (and by `training/evaluate.py`).

    `kind`: `retrieval` (R@1/5/10, median and mean rank both ways: ITC over all pairs, then ITM re-ranking of each
    query's top `k`; plus the temporal probe when the annotations carry distractor captions; `is_paragraph_retrieval`
    for DiDeMo, `has_multi_vision_gt` for SSv2's captions of many videos), `qa` (accuracy of ranking the
    `answer_list` with `qa_scoring`, overall and per question type) or `multiple_choice` (EgoMCQ: inter- and
    intra-video accuracy; `path_template`, `chunk_seconds` as for [`DataSpec`]). `num_clips` clips of the model's clip
    length are read per video and their scores combined with `clip_aggregation`. `dataset_type`, `dataset_name` and
    `split` name the set in `results.json` and model cards (by default from the annotation file's name).
    """

    kind: str = "retrieval"
    annotations: str = ""
    media_root: str | None = None
    answer_list: str | None = None
    batch_size: int = 16
    num_clips: int = 1
    clip_aggregation: str = "lse"
    k: int = 128
    use_itm: bool = True
    qa_scoring: str = "release_ensemble"
    is_paragraph_retrieval: bool = False
    has_multi_vision_gt: bool = False
    path_template: str = "{video_uid}.mp4"
    chunk_seconds: float | None = None
    num_workers: int = 2
    dataset_type: str = ""
    dataset_name: str = ""
    split: str = "test"


@dataclass
class Recipe:
    """A whole run. `task`: `pretraining` (`training/pretrain.py`) or the fine-tuning task of `training/finetune.py`
    (`retrieval`, `qa`, `multiple_choice`). `save_every_steps`: how often the training state is saved for resumption.
    `mixed_precision`: `auto` (bf16 on a GPU that supports it, fp32 on the CPU, or what the launch asks for), `no`,
    `fp16` or `bf16`."""

    name: str
    task: str = "pretraining"
    description: str = ""
    seed: int = 42
    synthetic: dict[str, Any] | None = None
    model: ModelSpec = field(default_factory=ModelSpec)
    processor: ProcessorSpec = field(default_factory=ProcessorSpec)
    stages: list[StageSpec] = field(default_factory=list)
    evaluation: list[EvaluationSpec] = field(default_factory=list)
    save_every_steps: int = 200
    log_every_steps: int = 10
    mixed_precision: str = "auto"
    source: str = ""


# ----------------------------------------------------------------------------------------------------------------------
# YAML -> dataclasses with type checks
# ----------------------------------------------------------------------------------------------------------------------


def _fail(recipe: str, where: str, message: str) -> RecipeError:
    return RecipeError(f"recipe '{recipe}', {where or 'top level'}: {message}")


def _describe_type(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(value: Any, hint, recipe: str, where: str):
    """`value` checked against the type hint `hint` (dataclass, list[...], dict[...], X | None, scalars)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _fail(recipe, where, "must not be null")
        options = [arg for arg in args if arg is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(value, option, recipe, where)
            except RecipeError as error:
                errors.append(error)
        raise errors[-1]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, recipe, where)
    if origin is list:
        if not isinstance(value, list):
            raise _fail(recipe, where, f"must be a list, got {value!r}")
        return [_convert(item, args[0], recipe, f"{where}.{i}") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(recipe, where, f"must be a mapping, got {value!r}")
        return {str(key): _convert(item, args[1], recipe, f"{where}.{key}") for key, item in value.items()}
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(recipe, where, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(recipe, where, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
            value = float(value)  # YAML 1.1 reads `2e-4` (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(recipe, where, f"must be a number, got {value!r}")
        if not math.isfinite(value):
            raise _fail(recipe, where, f"must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(recipe, where, f"must be a string, got {value!r}")
        return value
    raise _fail(recipe, where, f"has an unsupported type {_describe_type(hint)}")


def _build(cls, values: Any, recipe: str, where: str):
    if not isinstance(values, dict):
        raise _fail(recipe, where, f"must be a mapping of {cls.__name__} fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = sorted(set(values) - set(names))
    if unknown:
        prefix = f"{where}." if where else ""
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise _fail(recipe, f"{prefix}{unknown[0]}", f"unknown key; {hint}{cls.__name__} has {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in values:
            kwargs[name] = _convert(values[name], hints[name], recipe, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as error:  # a required field is missing
        raise _fail(recipe, where, str(error)) from None


def _deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _field_hint(keys: list[str]):
    """The type hint of the recipe field at a `--set` path (`None` when the path leaves the typed fields)."""
    hint: Any = Recipe
    for key in keys:
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(options) == 1:
            hint = options[0]
        if hint is Recipe and key == "stage_defaults":
            hint = StageSpec
        elif dataclasses.is_dataclass(hint):
            hint = typing.get_type_hints(hint).get(key)
        elif typing.get_origin(hint) in (list, dict):
            hint = typing.get_args(hint)[-1]
        else:
            return None
        if hint is None:
            return None
    return hint


def _takes_strings(hint) -> bool:
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return hint is str or (is_union and str in typing.get_args(hint))


def _override_value(keys: list[str], text: str, assignment: str) -> Any:
    """The value of `--set KEY=TEXT`: YAML, except that a string field takes the text as written when YAML reads
    something else (`{video_uid}/{chunk}.mp4` is not valid YAML, `{video_uid}.mp4` would be a mapping), and so does
    an untyped field (`model.vision.*`, `synthetic.*`) whose text is not valid YAML."""
    hint = _field_hint(keys)
    if not text.strip():
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        if hint is not None and hint is not Any and not _takes_strings(hint):
            reason = getattr(error, "problem", None) or error
            raise RecipeError(f"--set {assignment!r}: the value is not valid YAML ({reason})") from None
        return text.strip()
    if hint is not None and _takes_strings(hint) and value is not None and not isinstance(value, str):
        return text.strip()
    return value


def apply_override(raw: dict, assignment: str, recipe: str = "?") -> None:
    """Apply one `--set KEY=VALUE` to the raw recipe: a dotted path (`stages.1.token_keep_rate`, `*` for every list
    entry) and a YAML value (`0.5`, `true`, `[3, 6]`, `null`; a string field takes its text as written, braces
    included). Missing mappings on the path are created."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY=VALUE, e.g. stages.1.token_keep_rate=0.5")
    path, text = assignment.split("=", 1)
    keys = [key for key in path.strip().split(".") if key]
    if not keys:
        raise RecipeError(f"--set {assignment!r}: the key is empty")
    value = _override_value(keys, text, assignment)

    def assign(node, position: int, trail: str) -> None:
        key = keys[position]
        last = position == len(keys) - 1
        if isinstance(node, list):
            if key == "*":
                targets = range(len(node))
            elif re.fullmatch(r"-?\d+", key) and -len(node) <= int(key) < len(node):
                targets = [int(key)]
            else:
                raise _fail(recipe, f"{trail}{key}", f"--set: no entry {key} in a list of {len(node)}")
            for index in targets:
                if last:
                    node[index] = copy.deepcopy(value)
                else:
                    if node[index] is None:
                        node[index] = {}
                    assign(node[index], position + 1, f"{trail}{index}.")
            return
        if not isinstance(node, dict):
            raise _fail(recipe, trail.rstrip("."), f"--set {path}: not a mapping or a list")
        if last:
            node[key] = value
            return
        if node.get(key) is None:
            node[key] = {}
        assign(node[key], position + 1, f"{trail}{key}.")

    assign(raw, 0, "")


def builtin_recipes(task: str | None = None) -> list[str]:
    """Names of the recipes shipped in `training/recipes/` (those of one `task` when given)."""
    names = sorted(path.stem for path in RECIPE_DIR.glob("*.yaml"))
    if task is None:
        return names
    paths = {name: RECIPE_DIR / f"{name}.yaml" for name in names}
    tasks = {name: _inherited(_read_yaml(path), path).get("task", "pretraining") for name, path in paths.items()}
    return [name for name in names if tasks[name] == task]


def recipe_path(name_or_path: str | os.PathLike) -> Path:
    """The YAML file of a built-in recipe name, or the given path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise RecipeError(f"recipe file '{candidate}' does not exist")
        return candidate
    builtin = RECIPE_DIR / f"{name_or_path}.yaml"
    if not builtin.is_file():
        raise RecipeError(
            f"unknown recipe '{name_or_path}': built-in recipes are {', '.join(builtin_recipes())}, "
            "or give the path of a YAML file"
        )
    return builtin


def _read_yaml(path: Path) -> dict:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"recipe file '{path}' is not valid YAML: {error}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe file '{path}' must hold a mapping, got {type(raw).__name__}")
    return raw


def _inherited(raw: dict, path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """`inherit: <recipe>` starts from that recipe: mappings merge key by key, anything else (lists such as `stages`)
    is replaced."""
    base = raw.pop("inherit", None)
    if base is None:
        return raw
    base_path = recipe_path(base)
    if base_path.resolve() in seen or base_path.resolve() == path.resolve():
        raise RecipeError(f"recipe file '{path}' inherits from itself through '{base}'")
    parent = _inherited(_read_yaml(base_path), base_path, seen + (path.resolve(),))
    parent.pop("name", None)
    return _deep_merge(parent, raw)


def load_recipe(name_or_path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read, override (`--set` assignments) and validate a recipe. Raises [`RecipeError`] naming the bad field."""
    path = recipe_path(name_or_path)
    raw = _inherited(_read_yaml(path), path)
    raw.setdefault("name", path.stem)
    name = str(raw["name"])
    for assignment in overrides or []:
        apply_override(raw, assignment, name)
    if isinstance(raw.get("synthetic"), str):  # the synthetic set of another recipe (the same clips, the same split)
        source = recipe_path(raw["synthetic"])
        section = _inherited(_read_yaml(source), source).get("synthetic")
        if not isinstance(section, dict):
            raise _fail(name, "synthetic", f"recipe '{raw['synthetic']}' has no synthetic section")
        raw["synthetic"] = section
    defaults = raw.pop("stage_defaults", None) or {}
    if not isinstance(defaults, dict):
        raise _fail(name, "stage_defaults", "must be a mapping of stage fields")
    stages = raw.get("stages")
    if not isinstance(stages, list) or not stages:
        raise _fail(name, "stages", "must be a non-empty list of stages")
    raw["stages"] = [_deep_merge(defaults, stage or {}) if isinstance(stage, dict) or stage is None else stage
                     for stage in stages]
    recipe = _build(Recipe, raw, name, "")
    recipe.source = str(path)
    validate_recipe(recipe)
    return recipe


# ----------------------------------------------------------------------------------------------------------------------
# Values that are well-typed but impossible
# ----------------------------------------------------------------------------------------------------------------------

INITS = ("checkpoint", "pretrained", "scratch")
WEIGHT_DECAY_RULES = ("release", "fixed")
# The tasks `finetune.py --task` trains and `evaluate.py --task` evaluates (evaluation `kind`, results' `task`)
EVALUATION_TASKS = ("retrieval", "qa", "multiple_choice")
# Each task's recipe on the synthetic set: `finetune.py`'s default, and what `evaluate.py --dataset synthetic` reads.
SYNTHETIC_TASK_RECIPES = {"retrieval": "ret-synthetic", "qa": "qa-synthetic", "multiple_choice": "mc-synthetic"}
# recipe task -> (training data formats, evaluation tasks) it accepts
TASKS = {
    "pretraining": (("captions", "egoclip"), ("retrieval", "multiple_choice")),
    "retrieval": (("captions",), ("retrieval",)),
    "qa": (("qa",), ("qa",)),
    "multiple_choice": (("egomcq",), ("multiple_choice",)),
}
# Spellings that earlier versions accepted -> the name to use now (a stage's `contrastive_loss` is the config's).
RENAMED_VALUES = {"contrastive_loss": {"itc": "infonce"}, "kind": {"egomcq": "multiple_choice"}}

Check = Callable[[bool, str, str], None]  # check(condition, field, message) raises naming the field


def _check_one_of(check: Check, value: str, choices, field: str, context: str = "") -> None:
    """`value` must be one of `choices`; a spelling of earlier versions is named with its replacement."""
    renamed = RENAMED_VALUES.get(field.rsplit(".", 1)[-1], {}).get(value)
    hint = f" ({value!r} is now spelled {renamed!r})" if renamed else ""
    check(value in choices, field, f"must be one of {tuple(choices)}{context}, got {value!r}{hint}")


def validate_recipe(recipe: Recipe) -> None:
    """Check values that the types allow but the run cannot use, part by part (raises [`RecipeError`] naming the
    field); the stages' clip lengths and sparsity under the video tower's own rules (`validate_model_rules`)."""

    def check(condition: bool, where: str, message: str) -> None:
        if not condition:
            raise _fail(recipe.name, where, message)

    _check_one_of(check, recipe.task, TASKS, "task")
    data_formats, evaluation_tasks = TASKS[recipe.task]
    if recipe.task != "pretraining":
        check(len(recipe.stages) == 1, "stages",
              f"a {recipe.task} recipe fine-tunes in one stage, got {len(recipe.stages)}")
        check(len(recipe.evaluation) == 1, "evaluation",
              f"a {recipe.task} recipe evaluates one set, got {len(recipe.evaluation)}")
    check(recipe.save_every_steps > 0, "save_every_steps", f"must be positive, got {recipe.save_every_steps}")
    check(recipe.log_every_steps > 0, "log_every_steps", f"must be positive, got {recipe.log_every_steps}")
    check(0 <= recipe.seed < 2**32, "seed", f"must be in [0, 2**32 - 1] (NumPy takes 32-bit seeds), got {recipe.seed}")
    _check_one_of(check, recipe.mixed_precision, ("auto", "no", "fp16", "bf16"), "mixed_precision")
    validate_model_spec(recipe.model, recipe.task, check)
    validate_processor_spec(recipe.processor, check)
    previous_frames = 0
    for index, stage in enumerate(recipe.stages):
        check(stage.num_frames >= previous_frames, f"stages.{index}.num_frames",
              f"clip lengths must not shrink from one stage to the next ({previous_frames} -> {stage.num_frames})")
        previous_frames = stage.num_frames
        validate_stage(stage, recipe.task, check, f"stages.{index}")
    for index, evaluation in enumerate(recipe.evaluation):
        where = f"evaluation.{index}"
        _check_one_of(check, evaluation.kind, evaluation_tasks, f"{where}.kind", f" for a {recipe.task} recipe")
        validate_evaluation(evaluation, check, where)
    validate_model_rules(recipe)


def validate_model_spec(model: ModelSpec, task: str, check: Check) -> None:
    """How the model starts: a known `init` with what it needs, and the motion bias only on a fresh video tower."""
    _check_one_of(check, model.init, INITS, "model.init")
    if model.init == "checkpoint" and task == "pretraining":  # fine-tuning takes it from --model
        check(bool(model.checkpoint), "model.checkpoint", "is required with init: checkpoint (a folder or Hub id)")
    if model.init == "pretrained":
        check(bool(model.bert), "model.bert", "is required with init: pretrained (a BERT folder or Hub id)")
    if model.init == "scratch":
        check(bool(model.tokenizer), "model.tokenizer", "is required with init: scratch (a vocabulary file or folder)")
    for key in ("temporal_bias_init", "spatial_bias_decay"):
        value = getattr(model, key)
        check(value >= 0, f"model.{key}", f"must be >= 0, got {value}")
        check(value == 0 or (model.init != "checkpoint" and not model.beit), f"model.{key}",
              "starts a fresh video tower's relative-position bias: it needs init: scratch, or pretrained with beit: "
              "null (it would overwrite the trained bias of a checkpoint or of BEiT)")


def validate_processor_spec(processor: ProcessorSpec, check: Check) -> None:
    """Frame size, text lengths, normalisation and crop of the processor."""
    for key, minimum in (("image_size", 1), ("max_text_length", 2), ("max_answer_length", 2)):
        value = getattr(processor, key)
        check(value is None or value >= minimum, f"processor.{key}", f"must be >= {minimum}, got {value}")
    for key in ("image_mean", "image_std"):
        values = getattr(processor, key)
        check(values is None or len(values) == 3, f"processor.{key}", f"needs 3 values (RGB), got {values}")
    check(all(std > 0 for std in processor.image_std or [1]), "processor.image_std", "must be positive")
    scale = processor.crop_scale
    check(scale is None or (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1), "processor.crop_scale",
          f"must be two fractions 0 < low <= high <= 1, got {scale}")


def validate_stage(stage: StageSpec, task: str, check: Check, where: str) -> None:
    """One stage of a `task` recipe: batch, length, losses, optimiser, schedule and data. Its clip length and
    sparsity follow the video tower's own rules (`validate_model_rules`); the drop layers are 0-based here."""
    if task in ("pretraining", "retrieval"):
        check(stage.batch_size >= 2, f"{where}.batch_size",
              f"must be >= 2 (contrastive losses need in-batch negatives), got {stage.batch_size}")
    check(stage.batch_size >= 1, f"{where}.batch_size", f"must be positive, got {stage.batch_size}")
    check(isinstance(stage.gradient_accumulation_steps, int) and stage.gradient_accumulation_steps >= 1,
          f"{where}.gradient_accumulation_steps",
          f"must be a positive integer, got {stage.gradient_accumulation_steps!r}")
    check((stage.epochs is None) != (stage.steps is None), f"{where}.epochs", "give exactly one of epochs and steps")
    if stage.epochs is not None:
        check(stage.epochs > 0, f"{where}.epochs", f"must be positive, got {stage.epochs:g}")
    if stage.steps is not None:
        check(stage.steps > 0, f"{where}.steps", f"must be positive, got {stage.steps}")
    layers = stage.token_drop_layers or []
    check(all(layer >= 0 for layer in layers), f"{where}.token_drop_layers",
          f"must list layer indices >= 0 (0-based layers of the video tower), got {layers}")
    _check_one_of(check, stage.contrastive_loss, CONTRASTIVE_LOSSES, f"{where}.contrastive_loss")
    if stage.contrastive_loss == "egonce":
        check(stage.data.format == "egoclip", f"{where}.contrastive_loss",
              "egonce needs verb and noun tags: use data.format: egoclip")
    weights = stage.loss_weights
    for key in ("itc", "itm", "mlm"):
        value = getattr(weights, key)
        check(value >= 0, f"{where}.loss_weights.{key}", f"must be >= 0, got {value:g}")
    check(weights.itc + weights.itm + weights.mlm > 0, f"{where}.loss_weights", "at least one weight must be > 0")
    validate_optimizer_spec(stage.optimizer, check, f"{where}.optimizer")
    schedule = stage.schedule
    check(0 <= schedule.warmup_fraction < 1, f"{where}.schedule.warmup_fraction", "must be in [0, 1)")
    check(0 <= schedule.min_lr_multiplier <= 1, f"{where}.schedule.min_lr_multiplier", "must be in [0, 1]")
    validate_data_spec(stage, TASKS[task][0], check, f"{where}.data", task)


def validate_optimizer_spec(optimizer: OptimizerSpec, check: Check, where: str) -> None:
    """AdamW's hyper-parameters, the weight-decay rule and the learning-rate multipliers."""
    check(optimizer.lr > 0, f"{where}.lr", f"must be positive, got {optimizer.lr:g}")
    check(optimizer.weight_decay >= 0, f"{where}.weight_decay", "must be >= 0")
    check(len(optimizer.betas) == 2 and all(0 <= b < 1 for b in optimizer.betas), f"{where}.betas",
          f"must be two numbers in [0, 1), got {optimizer.betas}")
    check(optimizer.eps > 0, f"{where}.eps", "must be positive")
    _check_one_of(check, optimizer.weight_decay_rule, WEIGHT_DECAY_RULES, f"{where}.weight_decay_rule")
    for prefix, factor in optimizer.lr_multipliers.items():
        check(factor > 0, f"{where}.lr_multipliers.{prefix}", f"must be positive, got {factor:g}")
    check(optimizer.max_grad_norm is None or optimizer.max_grad_norm > 0, f"{where}.max_grad_norm",
          "must be positive or null")


def validate_data_spec(stage: StageSpec, data_formats: tuple[str, ...], check: Check, where: str, task: str) -> None:
    """A stage's training data (`stage.data`, named `where`): a format the task reads, where it comes from, how it is
    loaded, and what would otherwise fail inside a data-loader worker (frame sampling, video file layout)."""
    data = stage.data
    _check_one_of(check, data.format, data_formats, f"{where}.format", f" for a {task} recipe")
    check(data.match_by in ("video", "caption"), f"{where}.match_by",
          f"must be video or caption, got {data.match_by!r}")
    check(bool(data.annotations) or bool(data.shards), f"{where}.annotations",
          "is required (the annotation file), unless data.shards names the stage's shards")
    if data.shards:
        check(data.format in ("captions", "egoclip"), f"{where}.shards",
              f"streams captions or egoclip data, not {data.format!r}")
        check(stage.steps is not None, f"{where.rsplit('.', 1)[0]}.steps",
              "a stage streamed from shards has no length of its own: give it in steps, not epochs")
        check(data.shuffle_buffer >= 0, f"{where}.shuffle_buffer", "must be >= 0")
    check(data.num_workers >= 0, f"{where}.num_workers", "must be >= 0")
    check(data.group_size >= 1 and stage.batch_size % data.group_size == 0, f"{where}.group_size",
          f"must divide the batch size ({stage.batch_size}), got {data.group_size}")
    check(data.prefetch_factor >= 1, f"{where}.prefetch_factor", "must be >= 1")
    check(0 <= data.max_bad_fraction <= 1, f"{where}.max_bad_fraction", "must be in [0, 1]")
    check(is_sampling_strategy(data.frame_sampling), f"{where}.frame_sampling",
          f"must be one of {SAMPLING_STRATEGIES} (fps<X> with X > 0, e.g. fps2), got {data.frame_sampling!r}")
    if data.format in ("egoclip", "egomcq"):
        _validate_ego_layout(data.path_template, data.chunk_seconds, where, check)


def _validate_ego_layout(path_template: str, chunk_seconds: float | None, where: str, check) -> None:
    """`path_template` may use `{video_uid}` and `{chunk}`; `{chunk}` needs `chunk_seconds` (> 0)."""
    check(chunk_seconds is None or chunk_seconds > 0, f"{where}.chunk_seconds",
          f"must be positive (the length of one video file, 600 for Ego4D's chunks) or null, got {chunk_seconds}")
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(path_template) if name is not None}
    except ValueError as error:
        fields = {f"<{error}>"}
    unknown = sorted(fields - {"video_uid", "chunk"})
    check(not unknown, f"{where}.path_template",
          f"may use {{video_uid}} and {{chunk}} only, got {unknown} in {path_template!r}")
    check("chunk" not in fields or chunk_seconds, f"{where}.chunk_seconds",
          f"path_template {path_template!r} names chunk files: set chunk_seconds (600 for Ego4D's chunks)")


def validate_model_rules(recipe: Recipe) -> None:
    """`model.*` keys that configure nothing, and every stage's clip length and sparsity under the towers' own
    validation: on the video tower the recipe alone determines (a fresh one, whose frame size the processor must
    make), else on a stand-in tower as deep as the stages need (the real one is checked once it is built)."""
    problems = model_section_problems(recipe)
    vision_config, problem = vision_config_from_recipe(recipe) if not problems else (None, None)
    problems += [problem] if problem else []
    if not problems:
        tower = vision_config or stand_in_vision_config(recipe.stages)
        problem = stage_sparsity_problem(recipe.stages, tower, SViTTTextConfig())
        problems += [problem] if problem else []
    if vision_config is not None:
        size = recipe.processor.image_size
        problem = size and processor_size_problem((size, size), vision_config.image_size, "model.vision.image_size")
        problems += [problem] if problem else []
    _raise_problems(recipe.name, problems)


def check_recipe_against_model(recipe: Recipe, model, processor=None) -> None:
    """Checks that need the built model, to run right after it is built and before the first step: `freeze`
    prefixes and `lr_multipliers` keys that match no parameter (listed), every stage's clip length and sparsity under
    the model's own config validation (a checkpoint's or BEiT's tower has its own depth), and the processor's frame
    size against the model's. Raises [`RecipeError`] naming each field."""
    frame_size = None
    if processor is not None:
        size = processor.video_processor.size
        frame_size = (size["height"], size["width"])
    _raise_problems(recipe.name, built_model_problems(recipe, model, frame_size))


def _raise_problems(name: str, problems: list[tuple[str, str]]) -> None:
    if problems:
        raise RecipeError("\n".join(str(_fail(name, where, message)) for where, message in problems))


def validate_evaluation(evaluation: EvaluationSpec, check: Check, where: str) -> None:
    """The checks of one evaluation entry; `check(condition, field, message)` raises naming the field."""
    _check_one_of(check, evaluation.kind, EVALUATION_TASKS, f"{where}.kind")
    check(bool(evaluation.annotations), f"{where}.annotations", "is required")
    if evaluation.kind == "qa":
        check(bool(evaluation.answer_list), f"{where}.answer_list", "is required for qa (a JSON list of answers)")
    _check_one_of(check, evaluation.clip_aggregation, CLIP_AGGREGATIONS, f"{where}.clip_aggregation")
    _check_one_of(check, evaluation.qa_scoring, ANSWER_SCORINGS, f"{where}.qa_scoring")
    if evaluation.kind == "qa" and evaluation.qa_scoring == "release_concat":
        check(evaluation.num_clips == 1, f"{where}.num_clips", "release_concat scores one clip: set num_clips: 1")
    check(evaluation.batch_size > 0, f"{where}.batch_size", "must be positive")
    check(evaluation.num_clips > 0, f"{where}.num_clips", "must be positive")
    check(evaluation.k >= 0, f"{where}.k", "must be >= 0")
    if evaluation.kind == "multiple_choice":
        _validate_ego_layout(evaluation.path_template, evaluation.chunk_seconds, where, check)
    check(evaluation.num_workers >= 0, f"{where}.num_workers", "must be >= 0")


def resolve_path(value: str | None, synthetic_root: str | os.PathLike | None = None) -> str | None:
    """A recipe path with `{synthetic}` replaced by the generated set's folder, `~` expanded, and
    `package:<module>/<sub-path>` pointing inside an installed Python package."""
    if value is None:
        return None
    if value.startswith(PACKAGE_PREFIX):
        import importlib

        module, _, rest = value[len(PACKAGE_PREFIX) :].partition("/")
        package = importlib.import_module(module)
        return str(Path(package.__file__).resolve().parent / rest)
    if SYNTHETIC_PLACEHOLDER in value:
        if synthetic_root is None:
            raise RecipeError(f"'{value}' refers to {SYNTHETIC_PLACEHOLDER}, but the recipe has no `synthetic` section")
        value = value.replace(SYNTHETIC_PLACEHOLDER, str(synthetic_root))
    return os.path.expanduser(value)


__all__ = [
    "CONTRASTIVE_LOSSES",
    "DataSpec",
    "EVALUATION_TASKS",
    "EvaluationSpec",
    "LossWeights",
    "RELEASE_PROCESSOR",
    "TASKS",
    "ModelSpec",
    "OptimizerSpec",
    "ProcessorSpec",
    "Recipe",
    "RecipeError",
    "SYNTHETIC_TASK_RECIPES",
    "ScheduleSpec",
    "StageSpec",
    "apply_override",
    "builtin_recipes",
    "check_recipe_against_model",
    "load_recipe",
    "recipe_path",
    "resolve_path",
    "validate_evaluation",
    "validate_model_rules",
    "validate_recipe",
]
