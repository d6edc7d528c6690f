"""The data a recipe names, opened and checked before any work: the synthetic set (and its shards), each stage's
training set (annotation tables or a stream of shards) with its collator and loader. A mistake (a wrong format, too
few samples, a wrong media root) raises a [`RecipeError`] naming the recipe field or the script option."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from torch.utils.data import Dataset

from modeling_svitt import SViTTProcessor
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
from training.recipe import SYNTHETIC_PLACEHOLDER, Recipe, RecipeError, StageSpec, resolve_path


def check_data_paths(recipe: Recipe, synthetic_root: str | os.PathLike | None = None) -> None:
    """Every annotation file and media folder the recipe names exists (raises [`RecipeError`] naming the field)."""
    entries = [(f"stages.{i}.data", stage.data) for i, stage in enumerate(recipe.stages)]
    entries += [(f"evaluation.{i}", evaluation) for i, evaluation in enumerate(recipe.evaluation)]
    for where, spec in entries:
        for key, what in (("annotations", "annotation file"), ("answer_list", "answer list file")):
            if key == "annotations" and getattr(spec, "shards", None):
                continue  # a streamed stage reads its shards (checked when the stage's data is opened)
            path = resolve_path(getattr(spec, key, None) or None, synthetic_root)
            if path is not None and not os.path.isfile(path):
                raise RecipeError(f"recipe '{recipe.name}', {where}.{key}: {what} '{path}' does not exist")
        media_root = resolve_path(spec.media_root, synthetic_root)
        if media_root is not None and not os.path.isdir(media_root):
            raise RecipeError(f"recipe '{recipe.name}', {where}.media_root: media folder '{media_root}' does not exist")


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
