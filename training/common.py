"""What the training scripts share: the accelerator (and the launches it refuses), models, processors, data loaders,
optimisers and schedules built from a recipe, atomic state saving, and the evaluation loops.

The evaluation loops shard the work over the processes of the accelerator and de-duplicate what they gather, so one
process and several give the same metrics. All metrics are flat dictionaries of floats; recalls and accuracies are
fractions in [0, 1].
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType
from accelerate.tracking import GeneralTracker
from accelerate.utils import InitProcessGroupKwargs
from torch.utils.data import DataLoader

from modeling_svitt import (
    SViTTConfig,
    SViTTForMultipleChoice,
    SViTTForPreTraining,
    SViTTForVideoTextRetrieval,
    SViTTProcessor,
    SViTTTokenizer,
    SViTTVideoProcessor,
)
from modeling_svitt.losses import all_gather_no_grad
from modeling_svitt.metrics import egomcq_accuracy, first_occurrence_indices, retrieval_metrics
from modeling_svitt.pretrained_init import svitt_from_beit_and_bert
from modeling_svitt.retrieval_ranking import SViTTTextGallery, SViTTVideoGallery, itm_pair_scores
from training.data import (
    EgoClipDataset,
    EgoMCQDataset,
    EpochShuffleSampler,
    MultipleChoiceCollator,
    RetrievalEvalDataset,
    VideoCaptionDataset,
    VideoCollator,
    VideoTextCollator,
    make_dataloader,
)
from training.data.synthetic import SyntheticConfig, generate_synthetic_dataset
from training.recipe import CONTRASTIVE_LOSSES, EvaluationSpec, OptimizerSpec, Recipe, RecipeError, StageSpec, resolve_path

# ----------------------------------------------------------------------------------------------------------------------
# Accelerator and launch checks
# ----------------------------------------------------------------------------------------------------------------------

CORRECT_LAUNCHES = (
    "Launch with one of:\n"
    "  accelerate launch --config_file training/configs/ddp.yaml SCRIPT ...         (DDP; CPU or GPUs)\n"
    "  accelerate launch --config_file training/configs/deepspeed_zero2.yaml SCRIPT ...\n"
    "  torchrun --nproc_per_node N SCRIPT ...                                          (DDP)\n"
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


class JSONLinesTracker(GeneralTracker):
    """An accelerate tracker that appends every logged dictionary, with its step, as one line of `metrics.jsonl`."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        pass

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")


def make_accelerator(
    output_dir: str | os.PathLike | None = None, log: bool = True, mixed_precision: str = "auto"
) -> Accelerator:
    """An `Accelerator` for the current launch: gloo for several CPU processes, trackers writing `metrics.jsonl` (and
    TensorBoard when it is installed), and `mixed_precision` ("no", "fp16", "bf16", or "auto": the launch's fp16 or
    bf16 when it asks for one, else bf16 on a GPU that supports it and fp32 on the CPU; `accelerate launch` says "no"
    when nobody chose, so "no" from the launch does not count as a choice).

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
        trackers: list[Any] = [JSONLinesTracker(Path(output_dir) / "metrics.jsonl")]
        try:
            import tensorboard  # noqa: F401

            trackers.append("tensorboard")
        except ImportError:
            pass
        kwargs.update(log_with=trackers, project_dir=str(output_dir))
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
        return generate_synthetic_dataset(config=config).root


def build_processor(recipe: Recipe) -> SViTTProcessor:
    """The processor saved with every stage: the recipe's frame size and normalisation, the model's tokenizer."""
    spec, model = recipe.processor, recipe.model
    if model.init == "checkpoint":
        tokenizer = SViTTTokenizer.from_pretrained(resolve_path(model.checkpoint))
    else:
        source = resolve_path(model.tokenizer or model.bert)
        vocab = Path(source) / "vocab.txt" if Path(source).is_dir() else None
        if vocab is not None and vocab.is_file():
            tokenizer = SViTTTokenizer(vocab=str(vocab))
        elif Path(source).is_file():
            tokenizer = SViTTTokenizer(vocab=source)
        else:
            tokenizer = SViTTTokenizer.from_pretrained(source)
    video_processor = SViTTVideoProcessor(
        size=spec.image_size, crop_scale=spec.crop_scale, image_mean=spec.image_mean, image_std=spec.image_std
    )
    return SViTTProcessor(video_processor, tokenizer, max_text_length=spec.max_text_length)


def build_initial_model(recipe: Recipe, model_class: type = SViTTForPreTraining):
    """The first stage's model as the recipe says: from a checkpoint, from BEiT + BERT weights, or from scratch."""
    spec = recipe.model
    overrides = dict(spec.config)
    if spec.init == "checkpoint":
        return model_class.from_pretrained(resolve_path(spec.checkpoint), **overrides)
    if spec.init == "pretrained":
        return svitt_from_beit_and_bert(
            resolve_path(spec.beit),
            resolve_path(spec.bert),
            vision_overrides=dict(spec.vision),
            text_overrides=dict(spec.text),
            model_class=model_class,
            **overrides,
        )
    vision = {"hidden_size": 768, **spec.vision}
    text = {"encoder_width": vision["hidden_size"], **spec.text}
    return model_class(SViTTConfig(vision_config=vision, text_config=text, **overrides))


def configure_stage(model, stage: StageSpec) -> None:
    """Set a stage's clip length (resampling the relative bias), sparsity and losses on the model and its config."""
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


def build_train_dataset(stage: StageSpec, processor: SViTTProcessor, seed: int, synthetic_root=None):
    """The stage's training dataset (training transforms, `num_frames` of the stage)."""
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
    annotations = resolve_path(data.annotations, synthetic_root)
    if data.format == "egoclip":
        return EgoClipDataset(
            annotations, processor, num_verbs=data.num_verbs, num_nouns=data.num_nouns,
            path_template=data.path_template, chunk_seconds=data.chunk_seconds, **common,
        )
    return VideoCaptionDataset(annotations, processor, **common)


def make_train_dataloader(dataset, stage: StageSpec, processor: SViTTProcessor, seed: int):
    """A loader over `dataset` whose order depends on `(seed, epoch)` only (call `sampler.set_epoch`); drops the last
    partial batch (contrastive losses need negatives). Returns `(dataloader, sampler)`."""
    sampler = EpochShuffleSampler(len(dataset), seed, stage.data.group_size)
    workers = stage.data.num_workers
    loader = make_dataloader(
        dataset,
        stage.batch_size,
        VideoTextCollator(processor),
        sampler=sampler,
        num_workers=workers,
        seed=seed,
        drop_last=True,
        persistent_workers=workers > 0,
        prefetch_factor=stage.data.prefetch_factor if workers > 0 else None,
    )
    return loader, sampler


def check_dataset(dataset, recipe: Recipe, where: str, needed: int = 1) -> None:
    """An empty dataset, or one whose first video is missing, is a recipe error (raised before training)."""
    if len(dataset) < needed:
        raise RecipeError(
            f"recipe '{recipe.name}', {where}.annotations: the dataset has {len(dataset)} samples, needs >= {needed}"
        )
    first = dataset.records[0]
    video = first.get("video") or (first.get("choices") or [{}])[0].get("video")
    if video and not os.path.exists(video):
        raise RecipeError(
            f"recipe '{recipe.name}', {where}.media_root: the first video '{video}' does not exist (wrong media root?)"
        )


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


# ----------------------------------------------------------------------------------------------------------------------
# Files written atomically
# ----------------------------------------------------------------------------------------------------------------------


def write_json_atomically(path: str | os.PathLike, data: Any) -> None:
    """Write JSON to a temporary file and rename it into place (a kill never leaves half a file)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def save_state_atomically(accelerator: Accelerator, checkpoint_dir: Path, name: str, progress: dict) -> Path:
    """`accelerator.save_state` into a temporary folder that is renamed to `checkpoint_dir/name` when complete, with
    `progress.json` inside; older states are then removed. Every process must call it."""
    temporary = checkpoint_dir / f".tmp-{name}"
    final = checkpoint_dir / name
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomically(temporary / "progress.json", progress)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        for old in checkpoint_dir.iterdir():
            if old != final and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_state(checkpoint_dir: Path) -> tuple[Path, dict] | None:
    """The newest complete saved state (a renamed folder with `progress.json`) and its progress, or `None`."""
    if not checkpoint_dir.is_dir():
        return None
    states = []
    for folder in checkpoint_dir.iterdir():
        progress_file = folder / "progress.json"
        if not folder.name.startswith(".") and progress_file.is_file():
            progress = json.loads(progress_file.read_text(encoding="utf-8"))
            states.append(((progress["stage"], progress["stage_step"]), folder, progress))
    if not states:
        return None
    _, folder, progress = max(states, key=lambda item: item[0])
    return folder, progress


def save_pretrained_atomically(model, processor: SViTTProcessor, folder: Path, state_dict=None) -> None:
    """`save_pretrained` of the model and processor into a temporary folder renamed to `folder` (main process)."""
    temporary = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(temporary, state_dict=state_dict)
    processor.save_pretrained(temporary)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(temporary, folder)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------------------------


def build_evaluation_dataset(spec: EvaluationSpec, processor: SViTTProcessor, num_frames: int, synthetic_root=None):
    """The evaluation set of `spec` read at `num_frames` frames per clip (evaluation transforms)."""
    common = dict(
        num_frames=num_frames,
        media_root=resolve_path(spec.media_root, synthetic_root),
        max_bad_fraction=0.0,
    )
    annotations = resolve_path(spec.annotations, synthetic_root)
    if spec.kind == "egomcq":
        return EgoMCQDataset(
            annotations, processor, path_template=spec.path_template, chunk_seconds=spec.chunk_seconds, **common
        )
    clips = {"num_clips": spec.num_clips} if spec.num_clips > 1 else {}
    return RetrievalEvalDataset(annotations, processor, **common, **clips)


def _sharded_loader(accelerator: Accelerator, dataset, batch_size: int, collator, num_workers: int) -> DataLoader:
    loader = make_dataloader(dataset, batch_size, collator, num_workers=num_workers)
    return accelerator.prepare_data_loader(loader, device_placement=False)


def _gather_rows(accelerator: Accelerator, tensor: torch.Tensor) -> torch.Tensor:
    """Rows of every process, concatenated (the local rows when there is one process)."""
    if accelerator.num_processes == 1:
        return tensor
    return all_gather_no_grad(tensor.to(accelerator.device)).cpu()


def _gathered_unique(accelerator: Accelerator, index: torch.Tensor, *values: torch.Tensor) -> list[torch.Tensor]:
    """Gather per-sample rows and their dataset indices from every process, keep each index once, in index order."""
    index = _gather_rows(accelerator, index)
    keep = first_occurrence_indices(index)
    return [index[keep]] + [_gather_rows(accelerator, value)[keep] for value in values]


def sharded_pair_scorer(accelerator: Accelerator) -> Callable[..., torch.Tensor]:
    """An `itm_pair_scores` replacement that scores every `num_processes`-th pair on each process and gathers the
    scores back into the original order (every process must call it with the same pairs)."""

    def score(model, videos, texts, text_indices, video_indices, **kwargs) -> torch.Tensor:
        if accelerator.num_processes == 1:
            return itm_pair_scores(model, videos, texts, text_indices, video_indices, **kwargs)
        rank, world = accelerator.process_index, accelerator.num_processes
        positions = torch.arange(text_indices.numel())[rank::world]
        local = itm_pair_scores(model, videos, texts, text_indices[positions], video_indices[positions], **kwargs)
        gathered_positions = _gather_rows(accelerator, positions)
        gathered_scores = _gather_rows(accelerator, local.reshape(-1).float())
        scores = torch.empty(text_indices.numel())
        scores[gathered_positions] = gathered_scores
        return scores

    return score


@torch.no_grad()
def evaluate_retrieval(
    accelerator: Accelerator, model: SViTTForVideoTextRetrieval, dataset: RetrievalEvalDataset,
    processor: SViTTProcessor, spec: EvaluationSpec,
) -> dict[str, float]:
    """Zero-shot text-video retrieval: ITC over all pairs, then ITM re-ranking of each query's top `spec.k` (both
    directions), through the retrieval head's ranking with its pair scoring shared among processes.

    Returns `t2v_r1`, `t2v_r5`, `t2v_r10`, `t2v_median_rank`, `t2v_mean_rank` and the `v2t_` counterparts (recalls as
    fractions), and, when the annotations carry distractor captions (the synthetic temporal probe),
    `temporal_probe_accuracy` (share of videos whose caption scores above its reversed-order distractor with the
    final scorer, ITM when `spec.use_itm`) and `temporal_probe_itc_accuracy` (the same with ITC alone).
    """
    model.eval()
    loader = _sharded_loader(accelerator, dataset, spec.batch_size, VideoCollator(), spec.num_workers)
    embeds, tokens, masks, indices = [], [], [], []
    for batch in loader:
        if batch is None:
            continue
        pixel_values = batch["pixel_values"]
        if pixel_values.dim() == 6:  # (batch, clips, frames, ...): the clips one after the other
            pixel_values = pixel_values.flatten(1, 2)
        gallery = model.encode_videos(pixel_values, batch_size=spec.batch_size)
        embeds.append(gallery.embeds)
        tokens.append(gallery.tokens)
        masks.append(gallery.token_mask)
        indices.append(batch["index"])
    if not indices:
        raise RuntimeError(f"No video of {dataset.name} could be evaluated.")
    index, embeds, tokens, masks = _gathered_unique(
        accelerator, torch.cat(indices), torch.cat(embeds), torch.cat(tokens), torch.cat(masks)
    )
    if index.numel() != len(dataset):
        raise RuntimeError(f"Only {index.numel()} of the {len(dataset)} videos of {dataset.name} could be read.")
    videos = SViTTVideoGallery(embeds=embeds, tokens=tokens, token_mask=masks)

    probe = [i for i, distractor in enumerate(dataset.distractors) if distractor]
    texts = list(dataset.texts) + [dataset.distractors[i] for i in probe]
    encoded = processor.tokenizer(
        texts, padding="max_length", truncation=True, max_length=processor.max_text_length, return_tensors="pt"
    )
    all_texts = model.encode_texts(encoded["input_ids"], encoded["attention_mask"])
    num_texts = len(dataset.texts)
    captions = SViTTTextGallery(
        embeds=all_texts.embeds[:num_texts],
        hidden_states=all_texts.hidden_states[:num_texts],
        attention_mask=all_texts.attention_mask[:num_texts],
    )
    scorer = sharded_pair_scorer(accelerator)
    ranking = model.rank(videos, captions, k=spec.k, use_itm=spec.use_itm, pair_scorer=scorer)
    positives = torch.zeros(num_texts, len(dataset), dtype=torch.bool)
    for text, targets in enumerate(dataset.text_to_videos):
        positives[text, targets] = True
    raw = retrieval_metrics(ranking.scores_t2v, positives=positives, scores_v2t=ranking.scores_v2t)
    metrics = {}
    for direction in ("t2v", "v2t"):
        for k in (1, 5, 10):
            metrics[f"{direction}_r{k}"] = raw[f"{direction}_R@{k}"] / 100
        metrics[f"{direction}_median_rank"] = raw[f"{direction}_MedR"]
        metrics[f"{direction}_mean_rank"] = raw[f"{direction}_MnR"]

    if probe:
        videos_probed = torch.tensor(probe)
        true_texts = torch.tensor([dataset.video_to_texts[i][0] for i in probe])
        distractor_texts = num_texts + torch.arange(len(probe))
        itc = model.itc_scores(videos, all_texts)
        itc_true, itc_false = itc[true_texts, videos_probed], itc[distractor_texts, videos_probed]
        metrics["temporal_probe_itc_accuracy"] = float((itc_true > itc_false).float().mean())
        if spec.use_itm:
            pairs = scorer(
                model, videos, all_texts, torch.cat([true_texts, distractor_texts]), torch.cat([videos_probed] * 2)
            )
            true_scores, false_scores = pairs[: len(probe)], pairs[len(probe) :]
            metrics["temporal_probe_accuracy"] = float((true_scores > false_scores).float().mean())
        else:
            metrics["temporal_probe_accuracy"] = metrics["temporal_probe_itc_accuracy"]
    return metrics


@torch.no_grad()
def evaluate_egomcq(
    accelerator: Accelerator, model: SViTTForMultipleChoice, dataset: EgoMCQDataset, processor: SViTTProcessor,
    spec: EvaluationSpec,
) -> dict[str, float]:
    """Zero-shot EgoMCQ with the multiple-choice head: `egomcq_inter_accuracy`, `egomcq_intra_accuracy` (fractions)."""
    model.eval()
    collator = MultipleChoiceCollator(processor, return_index=True, return_types=True)
    loader = _sharded_loader(accelerator, dataset, spec.batch_size, collator, spec.num_workers)
    logits, labels, types, indices = [], [], [], []
    for batch in loader:
        if batch is None:
            continue
        output = model(
            pixel_values=batch["pixel_values"].to(model.device),
            input_ids=batch["input_ids"].to(model.device),
            attention_mask=batch["attention_mask"].to(model.device),
        )
        logits.append(output.logits.float().cpu())
        labels.append(batch["labels"])
        types.append(batch["question_types"])
        indices.append(batch["index"])
    index, logits, labels, types = _gathered_unique(
        accelerator, torch.cat(indices), torch.cat(logits), torch.cat(labels), torch.cat(types)
    )
    raw = egomcq_accuracy(logits, labels, types)
    metrics = {}
    for setting in ("inter", "intra"):
        if f"{setting}_video_accuracy" in raw:
            metrics[f"egomcq_{setting}_accuracy"] = raw[f"{setting}_video_accuracy"] / 100
    return metrics


EVALUATION_HEADS = {"retrieval": SViTTForVideoTextRetrieval, "egomcq": SViTTForMultipleChoice}
EVALUATION_LOOPS = {"retrieval": evaluate_retrieval, "egomcq": evaluate_egomcq}


def evaluate_checkpoint(
    accelerator: Accelerator,
    folder: str | os.PathLike,
    evaluations: Sequence[EvaluationSpec],
    synthetic_root=None,
) -> dict[str, Any]:
    """Run every evaluation of a recipe, zero-shot, on the `save_pretrained` folder `folder` (loaded into the head
    each evaluation needs, at the folder's clip length). Returns the flat metrics, plus `num_test_videos` (the size
    of the retrieval gallery) when a retrieval set was evaluated."""
    processor = SViTTProcessor.from_pretrained(folder)
    metrics: dict[str, Any] = {}
    for spec in evaluations:
        with plain_loading():
            model = EVALUATION_HEADS[spec.kind].from_pretrained(folder).to(accelerator.device)
        dataset = build_evaluation_dataset(spec, processor, model.config.vision_config.num_frames, synthetic_root)
        metrics.update(EVALUATION_LOOPS[spec.kind](accelerator, model, dataset, processor, spec))
        if spec.kind == "retrieval":
            metrics.setdefault("num_test_videos", len(dataset))
        del model
    return metrics
