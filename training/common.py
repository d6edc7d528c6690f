"""What the training scripts share: the accelerator (and the launches it refuses), their common options, models,
processors, data sets (checked before any work) and loaders, optimisers and schedules built from a recipe. The training
loop of a stage is in `loop.py`, the evaluation loops are in `evaluation.py`, the output folder (who owns it, files
written atomically, saved states) in `run_folder.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, broadcast_object_list, gather_object
from torch.utils.data import Dataset

from modeling_svitt import (
    SViTTConfig,
    SViTTForPreTraining,
    SViTTProcessor,
    SViTTTokenizer,
    SViTTVideoProcessor,
)
from modeling_svitt.pretrained_init import svitt_from_beit_and_bert
from training.data import (
    ANNOTATION_FORMATS,
    AnnotationError,
    EgoClipDataset,
    EgoMCQDataset,
    EpochShuffleSampler,
    MultipleChoiceCollator,
    VideoCaptionDataset,
    VideoQACollator,
    VideoQADataset,
    VideoTextCollator,
    make_dataloader,
)
from training.data.synthetic import SyntheticConfig, generate_synthetic_dataset
from training.recipe import (
    CONTRASTIVE_LOSSES,
    RELEASE_PROCESSOR,
    SYNTHETIC_PLACEHOLDER,
    OptimizerSpec,
    Recipe,
    RecipeError,
    StageSpec,
    check_data_paths,
    resolve_path,
)
from training.tracking import (
    TRACKER_LOGS,
    flatten_hyperparameters,
    resolve_report_to,
    tracker_loggers,
    tracker_names,
)
from training.run_folder import RunFolder, claim_output_folder, recipe_values, record_recipe

# ----------------------------------------------------------------------------------------------------------------------
# Accelerator and launch checks
# ----------------------------------------------------------------------------------------------------------------------

CORRECT_LAUNCHES = (
    "Launch with one of:\n"
    "  accelerate launch --config_file training/configs/ddp.yaml SCRIPT ...         (DDP; CPU or GPUs)\n"
    "  accelerate launch --config_file training/configs/deepspeed_zero2.yaml SCRIPT ...\n"
    "  torchrun --nproc_per_node N SCRIPT ...                                          (DDP)\n"
    "  accelerate launch --config_file training/configs/multi_node.yaml --machine_rank R \\\n"
    "      --main_process_ip HOST0 --main_process_port PORT SCRIPT ...       (on machine R = 0, 1, ... of several)\n"
    "  python SCRIPT ...                                                               (one process)"
)


class LaunchError(RuntimeError):
    """The processes were started in a way that would train unsynchronised copies of the model."""


def launch_problem(
    world_size: int,
    num_processes: int,
    distributed_type: str,
    deepspeed_requested: bool,
    model_wrapped: bool | None = None,
) -> str | None:
    """Why a launch would train silently wrong, or `None` when it is sound.

    Args:
        world_size: processes the launcher started (`WORLD_SIZE`).
        num_processes, distributed_type: what the accelerator believes (`accelerator.num_processes`,
            `accelerator.distributed_type.name`).
        deepspeed_requested: the launcher asked for DeepSpeed (`ACCELERATE_USE_DEEPSPEED=true`).
        model_wrapped: after `prepare`, whether the model is wrapped for synchronised training (`None`: not known yet).
    """
    if num_processes != world_size:
        return (
            f"{world_size} processes were started, but each believes it is 1 of {num_processes}: every process "
            "would train its own copy on all the data."
        )
    if deepspeed_requested and distributed_type != "DEEPSPEED":
        return (
            f"DeepSpeed was requested, but the processes run as {distributed_type} (ACCELERATE_USE_CPU or --cpu "
            "switches DeepSpeed off): drop --cpu / ACCELERATE_USE_CPU and use the DeepSpeed config."
        )
    if world_size > 1 and distributed_type == "NO":
        return f"{world_size} processes were started without a distributed backend: they would not synchronise."
    if world_size > 1 and model_wrapped is False:
        return "the data is split among processes, but the model is not wrapped for synchronised training."
    return None


def _check_launch(accelerator: Accelerator, model_wrapped: bool | None = None) -> None:
    problem = launch_problem(
        int(os.environ.get("WORLD_SIZE", "1")),
        accelerator.num_processes,
        accelerator.distributed_type.name,
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true",
        model_wrapped,
    )
    if problem:
        raise LaunchError(f"Refusing to train: {problem}\n{CORRECT_LAUNCHES}")


def make_accelerator(
    output_dir: str | os.PathLike | None = None,
    log: bool = True,
    mixed_precision: str = "auto",
    report_to: Sequence[str] = (),
) -> Accelerator:
    """An `Accelerator` for the current launch: gloo for several CPU processes, trackers writing `metrics.jsonl` and
    the trackers of `report_to` (names resolved by `tracking.resolve_report_to`; their files go to `logs/` in the
    output folder), and `mixed_precision` ("no", "fp16", "bf16", or "auto": the launch's fp16 or bf16 when it asks
    for one, else bf16 on a GPU that supports it and fp32 on the CPU; `accelerate launch` says "no" when nobody
    chose, so "no" from the launch does not count as a choice).

    Refuses ([`LaunchError`]) launches that would train unsynchronised copies: several processes that each believe
    they are alone, DeepSpeed requested but switched off by a CPU flag, processes without a distributed backend.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    kwargs: dict[str, Any] = {}
    if not torch.cuda.is_available() and world_size > 1:
        # Without an accelerator device, accelerate picks no backend and each process believes it is alone.
        if deepspeed:
            kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
        else:
            kwargs["cpu"] = True
    if mixed_precision == "auto":
        mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
        if mixed_precision not in ("fp16", "bf16"):
            bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            mixed_precision = "bf16" if bf16 else "no"
    kwargs["mixed_precision"] = mixed_precision
    if log and output_dir is not None:
        output_dir = Path(output_dir)
        kwargs["log_with"] = tracker_loggers(output_dir, report_to)
        logs = output_dir / TRACKER_LOGS
        kwargs["project_config"] = ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(logs))
    accelerator = Accelerator(**kwargs)
    _check_launch(accelerator)
    return accelerator


def prepare_for_deepspeed(accelerator: Accelerator, model: torch.nn.Module) -> list[str]:
    """Before `prepare` under DeepSpeed; returns the names of the parameters to pass to `restore_scalar_shapes`.

    DeepSpeed 0.19 broadcasts and partitions parameters through byte views, which fail for 0-dim tensors (SViTT's
    temperature): they get shape `(1,)` for training (the model's arithmetic broadcasts the same). Under ZeRO-3 a
    parameter is gathered only when the module owning it runs, so parameters read by another module (the
    temperature, read by the heads; the relative-bias tables, indexed directly on the dense path) are registered
    with the module that reads them.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return []
    scalars = []
    for name, param in model.named_parameters():
        if param.dim() == 0:
            param.data = param.data.reshape(1)
            scalars.append(name)
    if accelerator.state.deepspeed_plugin.zero_stage == 3:
        from deepspeed.runtime.zero.partition_parameters import register_external_parameter

        register_external_parameter(model, model.svitt.temperature)
        for layer in model.svitt.vision_model.encoder.layer:
            attention = layer.attention.attention
            register_external_parameter(attention, attention.relative_position_bias.relative_position_bias_table)
    return scalars


def restore_scalar_shapes(state_dict: dict[str, torch.Tensor] | None, names: Sequence[str]):
    """Give the parameters `prepare_for_deepspeed` reshaped their 0-dim shape back, in a state dict to save (ZeRO-3
    gathers the state dict on the main process only; elsewhere it is `None`)."""
    for name in names if state_dict is not None else ():
        if name in state_dict:
            state_dict[name] = state_dict[name].reshape(())
    return state_dict


@contextlib.contextmanager
def plain_loading():
    """A context in which models are built whole: under DeepSpeed ZeRO-3, transformers otherwise partitions a model
    while `from_pretrained` builds it (the curriculum changes a model before `prepare`, and evaluation runs outside
    the engine)."""
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = reference() if reference is not None else None
    if config is None or not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def share_cpu_cores(accelerator: Accelerator, num_workers: int) -> None:
    """On CPU, give torch the cores that this process's data-loader workers do not use (unless `OMP_NUM_THREADS`
    says otherwise): more busy threads than cores slow every step several times over."""
    if accelerator.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // accelerator.num_processes - num_workers))


def check_prepared_model(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """After `prepare`: with several processes the model must be wrapped for synchronised training (DDP/DeepSpeed)."""
    if accelerator.num_processes == 1:
        return
    wrapped = type(model).__name__ in ("DistributedDataParallel", "DeepSpeedEngine", "FullyShardedDataParallel")
    _check_launch(accelerator, model_wrapped=wrapped)


# ----------------------------------------------------------------------------------------------------------------------
# Options the training scripts share
# ----------------------------------------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser, set_example: str) -> None:
    """`--output-dir`, `--max-steps`, `--set`, `--seed`, `--resume`, `--report-to` (check them with
    `check_run_arguments`)."""
    parser.add_argument("--output-dir", help="where everything is written (default: outputs/<recipe name>)")
    parser.add_argument("--max-steps", type=int, help="cap every stage at this many optimiser steps (smoke runs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a recipe field by its dotted path, e.g. --set {set_example}; repeatable")
    parser.add_argument("--seed", type=int, help="the run's seed (same as --set seed=N)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="continue from the state saved in the output folder (default: when there is one)")
    parser.add_argument("--report-to", nargs="+", default=["none"], metavar="TRACKER",
                        help="experiment trackers besides metrics.jsonl: all (every installed one), none (default), "
                             f"or some of {', '.join(tracker_names())}")


def check_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad run options before anything runs; `args.report_to` becomes the list of trackers to start."""
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    try:
        args.report_to = resolve_report_to(args.report_to)
    except ValueError as error:
        parser.error(str(error))


# ----------------------------------------------------------------------------------------------------------------------
# Models, processors, data
# ----------------------------------------------------------------------------------------------------------------------


def prepare_synthetic_data(recipe: Recipe, accelerator: Accelerator) -> Path | None:
    """Generate the recipe's synthetic set if it has a `synthetic` section (main process first); its folder."""
    if recipe.synthetic is None:
        return None
    try:
        config = SyntheticConfig(**recipe.synthetic)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"recipe '{recipe.name}', synthetic: {error}") from None
    with accelerator.main_process_first():
        root = generate_synthetic_dataset(config=config).root
        if accelerator.is_main_process:
            write_synthetic_shards(recipe, root)
    return root


def write_synthetic_shards(recipe: Recipe, synthetic_root: Path) -> None:
    """The shards of the synthetic set that stages name (`data.shards: "{synthetic}/<folder>"`), written once from
    the stage's annotations (groups of `data.group_size` entries per sample), eight shards or more."""
    from training.data.shards import read_records, write_shards

    for stage in recipe.stages:
        data = stage.data
        if not data.shards or not data.shards.startswith(SYNTHETIC_PLACEHOLDER + "/"):
            continue
        folder = Path(resolve_path(data.shards, synthetic_root))
        if folder.is_dir():
            continue
        records = read_records(data.format, resolve_path(data.annotations, synthetic_root), None)
        groups = len(records) // data.group_size
        temporary = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        write_shards(records, temporary, max(1, groups // 8), data.group_size, seed=0)
        os.replace(temporary, folder)


def build_processor(recipe: Recipe) -> SViTTProcessor:
    """The processor saved with every stage: the model's tokenizer, and the recipe's frame size, crop, normalisation
    and text lengths; a field the recipe leaves null comes from the starting checkpoint's processor (when it has one)
    or is the release's."""
    spec, model = recipe.processor, recipe.model
    base = dict(RELEASE_PROCESSOR)
    if model.init == "checkpoint":
        checkpoint = resolve_path(model.checkpoint)
        try:
            saved = SViTTProcessor.from_pretrained(checkpoint)
        except (OSError, ValueError, TypeError):  # weights and tokenizer without a processor (e.g. converted)
            tokenizer = SViTTTokenizer.from_pretrained(checkpoint)
        else:
            tokenizer, video = saved.tokenizer, saved.video_processor
            base.update(
                image_size=video.size["height"], crop_scale=video.crop_scale, image_mean=video.image_mean,
                image_std=video.image_std, max_text_length=saved.max_text_length,
                max_answer_length=saved.max_answer_length,
            )
    else:
        source = resolve_path(model.tokenizer or model.bert)
        vocab = Path(source) / "vocab.txt" if Path(source).is_dir() else None
        if vocab is not None and vocab.is_file():
            tokenizer = SViTTTokenizer(vocab=str(vocab))
        elif Path(source).is_file():
            tokenizer = SViTTTokenizer(vocab=source)
        else:
            tokenizer = SViTTTokenizer.from_pretrained(source)
    values = {**base, **{key: value for key, value in dataclasses.asdict(spec).items() if value is not None}}
    video_processor = SViTTVideoProcessor(
        size=values["image_size"], crop_scale=values["crop_scale"], image_mean=values["image_mean"],
        image_std=values["image_std"],
    )
    return SViTTProcessor(
        video_processor, tokenizer, max_text_length=values["max_text_length"],
        max_answer_length=values["max_answer_length"],
    )


def build_initial_model(recipe: Recipe, model_class: type = SViTTForPreTraining):
    """The first stage's model as the recipe says: from a checkpoint, from BEiT + BERT weights, or from scratch."""
    spec = recipe.model
    overrides = dict(spec.config)
    if spec.init == "checkpoint":
        return model_class.from_pretrained(resolve_path(spec.checkpoint), **overrides)
    if spec.init == "pretrained":
        model = svitt_from_beit_and_bert(
            resolve_path(spec.beit),
            resolve_path(spec.bert),
            vision_overrides=dict(spec.vision),
            text_overrides=dict(spec.text),
            model_class=model_class,
            **overrides,
        )
    else:
        vision = {"hidden_size": 768, **spec.vision}
        text = {"encoder_width": vision["hidden_size"], **spec.text}
        model = model_class(SViTTConfig(vision_config=vision, text_config=text, **overrides))
    if spec.temporal_bias_init or spec.spatial_bias_decay:
        init_relative_bias_for_motion(model.svitt.vision_model, spec.temporal_bias_init, spec.spatial_bias_decay)
    return model


# Preferred frame offset (query frame - key frame) of head h, by h modulo 4: the previous frame, the next frame, the
# same frame, none.
_MOTION_HEAD_OFFSETS = (1, -1, 0, None)


@torch.no_grad()
def init_relative_bias_for_motion(vision_model: torch.nn.Module, temporal: float, spatial_decay: float) -> None:
    """Start a fresh video tower able to see motion.

    Without position embeddings its only position signal is the relative-position bias, which starts at zero: every
    head then mixes all frames alike, a clip and its time reversal encode almost the same, and contrastive training
    stays at that symmetric point for hundreds of steps (the captions of a clip and of its reversal barely differ
    either, so neither tower pulls the other away from it). Here every head prefers nearby patches (`-spatial_decay`
    per patch of distance) and, by head index, the same place in the previous frame, the next frame or the same frame
    (`+temporal`, see `_MOTION_HEAD_OFFSETS`): comparing a patch with its neighbour in time is what reveals a
    direction of motion. The global-token entries stay at zero."""
    config = vision_model.config
    frames, side = config.num_frames, config.patches_per_side
    offsets_t = torch.arange(1 - frames, frames)[:, None, None]
    offsets_h = torch.arange(1 - side, side)[None, :, None]
    offsets_w = torch.arange(1 - side, side)[None, None, :]
    spatial = -spatial_decay * (offsets_h.abs() + offsets_w.abs()).float().expand(2 * frames - 1, -1, -1)
    for layer in vision_model.encoder.layer:
        table = layer.attention.attention.relative_position_bias.relative_position_bias_table
        heads = []
        for head in range(table.shape[1]):
            preferred = _MOTION_HEAD_OFFSETS[head % len(_MOTION_HEAD_OFFSETS)]
            temporal_bias = 0.0 if preferred is None else temporal * (offsets_t == preferred).float()
            heads.append((spatial + temporal_bias).reshape(-1))
        local = torch.stack(heads, dim=1)
        table[: local.shape[0]] = local.to(table.dtype)


def configure_stage(model, stage: StageSpec, contrastive: bool = True) -> None:
    """Set a stage's clip length (resampling the relative bias), sparsity and, for heads trained with contrastive and
    matching losses (`contrastive`), its losses, on the model and its config. Heads with losses of their own (QA,
    multiple choice) keep the checkpoint's, which say how it was trained (e.g. EgoNCE, or without ITM)."""
    config = model.config
    vision = model.svitt.vision_model
    if vision.config.num_frames != stage.num_frames:
        vision.resize_num_frames(stage.num_frames)
    sparsity = {
        "token_keep_rate": stage.token_keep_rate,
        "token_drop_layers": stage.token_drop_layers,
        "use_sparse_attention": stage.use_sparse_attention,
        "attention_block_size": stage.attention_block_size,
        "num_local_blocks": stage.num_local_blocks,
        "num_random_blocks": stage.num_random_blocks,
    }
    for key, value in sparsity.items():
        if value is not None:
            setattr(vision.config, key, value)
    vision.config.validate_architecture()
    if stage.fusion_token_keep_rate is not None:
        config.text_config.fusion_token_keep_rate = stage.fusion_token_keep_rate
        config.text_config.validate_architecture()
    # The heads read these from the composite config; the towers hold the same sub-config objects.
    config.vision_config = vision.config
    if not contrastive:
        return
    config.contrastive_loss = CONTRASTIVE_LOSSES[stage.contrastive_loss]
    config.loss_weight_itc = stage.loss_weights.itc
    config.loss_weight_itm = stage.loss_weights.itm
    config.loss_weight_mlm = stage.loss_weights.mlm


def freeze_unused_parameters(model: torch.nn.Module, also: Sequence[str] = ()) -> list[str]:
    """Freeze the parameters the model's training forward does not use (`parameters_unused_in_training`), so DDP
    needs no search for unused parameters, and those whose names start with a prefix in `also` (a stage's `freeze`).
    A parameter shared with a used one (tied weights) stays trainable. Returns the names of the frozen parameters."""
    prefixes = tuple(model.parameters_unused_in_training()) + tuple(also)
    if not prefixes:
        return []
    named = list(model.named_parameters(remove_duplicate=False))
    used = {id(param) for name, param in named if not name.startswith(prefixes)}
    frozen = []
    for name, param in named:
        if name.startswith(prefixes) and id(param) not in used and param.requires_grad:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def missing_media_problem(dataset, max_missing_fraction: float = 0.0, sample: int | None = None) -> str | None:
    """Why the videos of `dataset` cannot serve it (none exists, or more are missing than allowed), or `None`.

    `sample` checks the videos of that many records spread over the set instead of all of them (training sets of
    millions: only those records are read from the table)."""
    records = dataset.records
    positions = range(len(records))
    if sample is not None and len(records) > sample:
        positions = range(0, len(records), len(records) // sample)
    videos = []
    for position in positions:
        record = records[position]
        videos += [record["video"]] if "video" in record else [choice["video"] for choice in record["choices"]]
    videos = list(dict.fromkeys(videos))
    missing = [video for video in videos if not os.path.exists(video)]
    if not missing:
        return None
    if len(missing) == len(videos):
        return (
            f"none of the {len(videos)} videos of the annotations exists (the first would be '{videos[0]}'): "
            "wrong media root?"
        )
    if len(missing) > max_missing_fraction * len(videos):
        return f"{len(missing)} of the {len(videos)} videos of the annotations do not exist (the first: '{missing[0]}')"
    return None


FieldName = Callable[[str], str]  # a field (`annotations`, `media_root`, ...) -> how errors name it


def open_dataset(
    build: Callable[[], Dataset],
    data_format: str,
    field_name: FieldName,
    *,
    needed: int = 1,
    max_missing_fraction: float = 0.0,
    sample: int | None = None,
) -> Dataset:
    """Build a dataset and check it before any work: annotations in the expected format (else a [`RecipeError`]
    naming the `annotations` field and the format), at least `needed` samples, and its videos where they should be
    (else naming the `media_root` field). `field_name` names the fields (a recipe's, or a script's options)."""
    try:
        dataset = build()
    except FileNotFoundError as error:
        raise RecipeError(f"{field_name('annotations')}: {error}") from None
    except AnnotationError as error:
        raise RecipeError(f"{field_name('annotations')}: expected {ANNOTATION_FORMATS[data_format]}; {error}") from None
    if len(dataset) < needed:
        raise RecipeError(f"{field_name('annotations')}: the dataset has {len(dataset)} samples, needs >= {needed}")
    problem = missing_media_problem(dataset, max_missing_fraction, sample)
    if problem:
        raise RecipeError(f"{field_name('media_root')}: {problem}")
    return dataset


def recipe_field_name(recipe_name: str, where: str) -> FieldName:
    """Names fields as recipe errors do: `recipe 'name', evaluation.0.annotations`."""
    return lambda field: f"recipe '{recipe_name}', {where}.{field}"


def check_one_run(accelerator: Accelerator, output_dir: Path, settings: dict[str, Any]) -> None:
    """Every process, on every machine, must write into the same output folder and run the same `settings` (the
    recipe as it runs and the script's options): each machine runs its own command, and a folder that another
    machine does not see, or another seed or recipe there, trains and saves silently wrong. Raises a [`LaunchError`]
    on every process naming the first process that differs from the main process."""
    if accelerator.num_processes == 1:
        return
    marker = [f".shared-folder-check-{uuid.uuid4().hex}" if accelerator.is_main_process else None]
    broadcast_object_list(marker)
    marker_file = output_dir / marker[0]
    if accelerator.is_main_process:
        marker_file.write_text(socket.gethostname(), encoding="utf-8")
    accelerator.wait_for_everyone()
    view = {"host": socket.gethostname(), "output_dir": str(output_dir), "sees_main_folder": marker_file.is_file(),
            "settings": flatten_hyperparameters(settings)}
    views = gather_object([view])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker_file.unlink()
    main = views[0]
    for rank, other in enumerate(views):
        where = f"process {rank} (on {other['host']}, --output-dir {other['output_dir']})"
        if not other["sees_main_folder"]:
            raise LaunchError(
                f"Refusing to train: {where} does not see the output folder that process 0 writes ({main['output_dir']}"
                f" on {main['host']}). Put the output folder on a file system every machine mounts (NFS, Lustre, ...) "
                "and pass that path as --output-dir on every machine: the main process alone writes the run folder, "
                "and every process writes its part of each saved training state there."
            )
        differing = {key for key, _ in set(main["settings"].items()) ^ set(other["settings"].items())}
        if differing:
            key = min(differing, key=lambda name: (not name.startswith("recipe."), name))  # the recipe's first
            values = (main["settings"].get(key, "(not set)"), other["settings"].get(key, "(not set)"))
            raise LaunchError(
                f"Refusing to train: {where} runs other settings than process 0: {key} is {values[1]!r} there and "
                f"{values[0]!r} on process 0. Launch the same command on every machine (only the machine rank differs)."
            )


def start_run(
    recipe: Recipe,
    output_dir: Path,
    fingerprint: dict,
    owned: Sequence[str],
    resume: bool | None,
    report_to: Sequence[str] = (),
    options: dict[str, Any] | None = None,
) -> tuple[Accelerator, RunFolder, Path | None, SViTTProcessor | None]:
    """What every training run starts with: the accelerator (with `metrics.jsonl` and the trackers of `report_to`),
    the output folder claimed for the run with its `fingerprint` (`run_folder.claim_output_folder`: `owned` names
    what the script writes, `resume` is `--resume` / `--no-resume`), every process checked to run the same recipe and
    `options` into the same folder (`check_one_run`), the recipe as it ran (`recipe.yaml`), the synthetic set when the
    recipe has one (its folder), every file and folder the recipe names checked, and the processor. Returns
    `(accelerator, run_folder, synthetic_root, processor)`; a run already finished returns right after the claim
    (`run_folder.finished`, no processor)."""
    accelerator = make_accelerator(output_dir, mixed_precision=recipe.mixed_precision, report_to=report_to)
    # the main process alone creates and writes the folder, for every machine
    run_folder = claim_output_folder(accelerator, output_dir, fingerprint, resume, owned)
    if run_folder.finished:
        return accelerator, run_folder, None, None
    # the same folder may be mounted at other paths on other machines: `check_one_run` compares what they see
    options = {key: value for key, value in (options or {}).items() if key != "output_dir"}
    check_one_run(accelerator, output_dir, {"recipe": recipe_values(recipe), "options": options})
    if accelerator.is_main_process:
        record_recipe(output_dir, recipe)
    synthetic_root = prepare_synthetic_data(recipe, accelerator)
    check_data_paths(recipe, synthetic_root)
    return accelerator, run_folder, synthetic_root, build_processor(recipe)


def start_trackers(accelerator: Accelerator, project: str, recipe: Recipe, **extra: Any) -> None:
    """Start the accelerator's trackers (`project`: the script, e.g. "pretrain"), with the recipe as it runs, flattened
    to dotted keys (`stages.1.optimizer.lr`), and `extra` values as the run's hyper-parameters; runs are named after
    the output folder."""
    hyperparameters = flatten_hyperparameters({**recipe_values(recipe), **extra})
    run_name = Path(accelerator.project_dir or project).name
    init_kwargs = {"wandb": {"name": run_name}, "mlflow": {"run_name": run_name}, "trackio": {"name": run_name}}
    accelerator.init_trackers(project, config=hyperparameters, init_kwargs=init_kwargs)


def open_train_dataset(
    recipe: Recipe, index: int, processor: SViTTProcessor, synthetic_root, num_processes: int, process_index: int = 0
):
    """Stage `index`'s training set, checked before any work (`open_dataset`): a batch per process at least, and no
    more missing videos than `data.max_bad_fraction` (checked on up to 2000 of them). A stage with `data.shards` gets
    this process's stream of them, checked by reading its first sample."""
    stage = recipe.stages[index]
    if stage.data.shards:
        return open_streamed_dataset(recipe, index, processor, synthetic_root, num_processes, process_index)
    return open_dataset(
        lambda: build_train_dataset(stage, processor, recipe.seed, synthetic_root),
        stage.data.format,
        recipe_field_name(recipe.name, f"stages.{index}.data"),
        needed=stage.batch_size * num_processes,
        max_missing_fraction=stage.data.max_bad_fraction,
        sample=2000,
    )


def open_streamed_dataset(
    recipe: Recipe, index: int, processor: SViTTProcessor, synthetic_root, num_processes: int, process_index: int
):
    """Stage `index`'s stream of shards for process `process_index`, its layout checked on its first sample (a
    caption, EgoClip's tags, as many clips per sample as `data.group_size`); errors name `data.shards`."""
    from training.data.streaming import ShardSpecError, StreamedVideoDataset

    stage = recipe.stages[index]
    data = stage.data
    field = recipe_field_name(recipe.name, f"stages.{index}.data")("shards")
    # The item builder: the format's dataset without records, with the stage's transforms and options.
    builder = build_train_dataset(stage, processor, recipe.seed, synthetic_root, annotations=[])
    try:
        dataset = StreamedVideoDataset(
            resolve_path(data.shards, synthetic_root), builder, data.format, seed=recipe.seed,
            shuffle_buffer=data.shuffle_buffer, rank=process_index, world_size=num_processes,
            max_bad_fraction=data.max_bad_fraction,
        )
        clips = dataset.first_records()
    except (ShardSpecError, OSError, ValueError) as error:
        raise RecipeError(f"{field}: {error}") from None
    if len(clips) != data.group_size:
        raise RecipeError(f"{field}: the shards hold {len(clips)} clip(s) per sample but data.group_size is "
                          f"{data.group_size}: write them with --group-size {data.group_size}")
    return dataset


def build_train_dataset(
    stage: StageSpec, processor: SViTTProcessor, seed: int, synthetic_root=None, annotations: Any = None
):
    """The stage's training dataset (training transforms, `num_frames` of the stage) in its `data.format`, over
    its annotation file or the given `annotations` rows."""
    data = stage.data
    common = dict(
        train=True,
        num_frames=stage.num_frames,
        frame_sampling=data.frame_sampling,
        seed=seed,
        horizontal_flip=data.horizontal_flip,
        max_bad_fraction=data.max_bad_fraction,
        media_root=resolve_path(data.media_root, synthetic_root),
    )
    if annotations is None:
        annotations = resolve_path(data.annotations, synthetic_root)
    if data.format == "egoclip":
        return EgoClipDataset(
            annotations, processor, num_verbs=data.num_verbs, num_nouns=data.num_nouns,
            path_template=data.path_template, chunk_seconds=data.chunk_seconds, **common,
        )
    if data.format == "qa":
        return VideoQADataset(annotations, processor, **common)
    if data.format == "egomcq":
        return EgoMCQDataset(
            annotations, processor, path_template=data.path_template, chunk_seconds=data.chunk_seconds, **common
        )
    return VideoCaptionDataset(annotations, processor, match_by=data.match_by, paragraphs=data.paragraphs, **common)


def train_collator(data_format: str, processor: SViTTProcessor):
    """The collator of a training data format: the batch the head of that task takes."""
    if data_format == "qa":
        return VideoQACollator(processor, processor.max_text_length, processor.max_answer_length)
    if data_format == "egomcq":
        return MultipleChoiceCollator(processor)
    return VideoTextCollator(processor)


def make_stream_loader(accelerator: Accelerator, dataset, stage: StageSpec, processor: SViTTProcessor):
    """The loader of a streamed stage: this process's batches (the dataset is already split among processes, so it is
    not `prepare`d), resumable mid-epoch: it is registered for checkpointing instead of any earlier stage's loader."""
    from training.data.streaming import StreamLoader

    workers = stage.data.num_workers
    loader = StreamLoader(
        dataset, stage.batch_size, train_collator(stage.data.format, processor), num_workers=workers,
        prefetch_factor=stage.data.prefetch_factor if workers > 0 else None, device=accelerator.device,
        total_steps=stage.steps * stage.gradient_accumulation_steps,  # micro-batches: each step takes that many
    )
    # `save_state` / `load_state` number the registered objects: only the current stage's loader may be among them.
    accelerator._custom_objects[:] = [obj for obj in accelerator._custom_objects if not isinstance(obj, StreamLoader)]
    accelerator.register_for_checkpointing(loader)
    return loader


def make_train_dataloader(dataset, stage: StageSpec, processor: SViTTProcessor, seed: int):
    """A loader over `dataset` whose order depends on `(seed, epoch)` only (call `sampler.set_epoch`); drops the last
    partial batch (contrastive losses need negatives). Returns `(dataloader, sampler)`."""
    sampler = EpochShuffleSampler(len(dataset), seed, stage.data.group_size)
    workers = stage.data.num_workers
    loader = make_dataloader(
        dataset,
        stage.batch_size,
        train_collator(stage.data.format, processor),
        sampler=sampler,
        num_workers=workers,
        seed=seed,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=stage.data.prefetch_factor if workers > 0 else None,
    )
    return loader, sampler


# ----------------------------------------------------------------------------------------------------------------------
# Optimisation
# ----------------------------------------------------------------------------------------------------------------------


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
