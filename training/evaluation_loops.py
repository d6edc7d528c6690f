"""Evaluation of SViTT heads the way the release evaluates them, sharded over the processes of an accelerator.

* Retrieval: ITC over all pairs, then ITM re-ranking of each query's top `k` in both directions, several clips per
  video combined with `clip_aggregation` (`lse` / `mean` / `max`); R@1/5/10, median and mean rank both ways, and the
  temporal probe when the annotations carry reversed-order distractor captions (the synthetic set).
* Video QA: ranking of a closed answer list (`qa_scoring`); accuracy overall and per question type.
* EgoMCQ: inter- and intra-video accuracy of the multiple-choice head.

Every loop shards the videos (and the ITM pairs) over the processes and de-duplicates what it gathers by dataset
index, so one process and several give the same metrics. Metrics are flat dictionaries of floats; recalls and
accuracies are fractions in [0, 1], ranks start at 1.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import AutoConfig

from modeling_svitt import (
    SViTTConfig,
    SViTTForMultipleChoice,
    SViTTForVideoQuestionAnswering,
    SViTTForVideoTextRetrieval,
    SViTTProcessor,
)
from modeling_svitt.losses import all_gather_no_grad
from modeling_svitt.retrieval_ranking import SViTTTextGallery, SViTTVideoGallery, itm_pair_scores
from svitt_tools.compute_cost import video_tower_gmacs
from svitt_tools.metrics import egomcq_accuracy, first_occurrence_indices, qa_accuracy, retrieval_metrics
from training.data import (
    ANNOTATION_FORMATS,
    AnnotationError,
    EgoMCQDataset,
    MultipleChoiceCollator,
    RetrievalEvalDataset,
    VideoCollator,
    VideoQACollator,
    VideoQADataset,
    load_answer_list,
    make_dataloader,
)
from training.launch import plain_loading
from training.recipe import EvaluationSpec, RecipeError, resolve_path
from training.recipe_data import FieldName, open_dataset
from training.report import results_record

EVALUATION_HEADS = {
    "retrieval": SViTTForVideoTextRetrieval,
    "qa": SViTTForVideoQuestionAnswering,
    "multiple_choice": SViTTForMultipleChoice,
}


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------------------------

HEADS_WITH_ITM = ("SViTTForPreTraining", "SViTTForVideoTextRetrieval", "SViTTForMultipleChoice")


def load_checkpoint_config(name: str, option: str = "--model") -> SViTTConfig:
    """The config of an SViTT folder or Hub id, or a [`RecipeError`] naming `option` and why it cannot be read."""
    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise RecipeError(f"{option} {name}: {error}") from None
    if not isinstance(config, SViTTConfig):
        raise RecipeError(f"{option} {name}: a {config.model_type!r} checkpoint, not an SViTT one ('svitt')")
    return config


def checkpoint_problem(config: SViTTConfig, task: str, *, training: bool, use_itm: bool = False) -> str | None:
    """Why a checkpoint cannot serve `task` (`retrieval`, `qa`, `multiple_choice`) for training
    (`training=True`: the head may start untrained where the release starts it so) or evaluation, or `None`.
    `use_itm`: the task would train or rank with the ITM head."""
    architecture = (config.architectures or ["SViTTModel"])[0]
    fusion = config.text_config.num_fusion_layers > 0
    if task == "qa":
        if not fusion:
            return "it has no fusion layers, which video QA encodes questions with (and its answer decoder starts from)"
        if not training and architecture != "SViTTForVideoQuestionAnswering":
            return (
                f"it is a {architecture} checkpoint, without a trained answer decoder: fine-tune it first "
                "(training/finetune.py --task qa)"
            )
    if use_itm:
        if not fusion:
            return "it has no fusion layers, which ITM needs (rank by ITC alone: --no-itm / loss_weights.itm 0)"
        if not training and (architecture not in HEADS_WITH_ITM or config.loss_weight_itm == 0):
            why = "has no ITM head" if architecture not in HEADS_WITH_ITM else "was trained without the ITM loss"
            return f"it {why} ({architecture}, loss_weight_itm {config.loss_weight_itm:g}): rank by ITC with --no-itm"
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------


def build_evaluation_dataset(
    spec: EvaluationSpec, processor: SViTTProcessor, clip_length: int, synthetic_root=None,
    field_name: FieldName = lambda field: f"evaluation.{field}",
) -> Dataset:
    """The evaluation set of `spec`, `spec.num_clips` clips of `clip_length` frames per video (evaluation
    transforms), checked before any work (see `open_dataset`)."""
    common: dict[str, Any] = dict(
        num_frames=clip_length, media_root=resolve_path(spec.media_root, synthetic_root), max_bad_fraction=0.0
    )
    if spec.num_clips > 1:
        common["num_clips"] = spec.num_clips
    annotations = resolve_path(spec.annotations, synthetic_root)
    if spec.kind == "multiple_choice":
        if spec.num_clips != 1:
            raise RecipeError(f"{field_name('num_clips')}: EgoMCQ scores one clip per choice, got {spec.num_clips}")

        def build():
            return EgoMCQDataset(
                annotations, processor, path_template=spec.path_template, chunk_seconds=spec.chunk_seconds, **common
            )

    elif spec.kind == "qa":
        answer_list_file = resolve_path(spec.answer_list, synthetic_root)
        try:
            answer_list = load_answer_list(answer_list_file)
        except FileNotFoundError as error:
            raise RecipeError(f"{field_name('answer_list')}: {error}") from None
        except AnnotationError as error:
            expected = ANNOTATION_FORMATS["answer_list"]
            raise RecipeError(f"{field_name('answer_list')}: expected {expected}; {error}") from None

        def build():
            dataset = VideoQADataset(annotations, processor, answer_list=answer_list, **common)
            unanswered = [record["index"] for record in dataset.records if not record["answers"]]
            if unanswered:
                raise AnnotationError(f"Entry {unanswered[0]} of '{annotations}' has no answer to score against.")
            return dataset

    else:

        def build():
            return RetrievalEvalDataset(
                annotations, processor, is_paragraph_retrieval=spec.is_paragraph_retrieval,
                has_multi_vision_gt=spec.has_multi_vision_gt, **common,
            )

    return open_dataset(build, spec.kind, field_name)  # the kinds name their annotation formats


class DecodedOnce(Dataset):
    """A dataset whose items are decoded on their first read and served from memory afterwards (sweeps evaluate the
    same videos at every grid point). Attributes of the wrapped dataset (texts, answer list, ...) read through.

    Read it without DataLoader workers (they would fill copies of their own); `fill` decodes this process's share
    with workers first."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.items: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        if index not in self.items:
            self.items[index] = self.dataset[index]
        return self.items[index]

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def fill(self, accelerator: Accelerator, batch_size: int, num_workers: int) -> None:
        """Decode the items this process evaluates (the same shards as `sharded_loader`), `num_workers` at a time."""
        loader = sharded_loader(accelerator, self.dataset, batch_size, _IndexedItems(), num_workers)
        for items in _with_progress(accelerator, loader, f"Decoding {self.dataset.name}"):
            self.items.update(items)


class _IndexedItems:
    """A collate function keeping the raw items by dataset index (unreadable ones are `None`)."""

    def __call__(self, samples):
        return {sample["index"]: sample for sample in samples if sample is not None}


# ----------------------------------------------------------------------------------------------------------------------
# Sharding and gathering
# ----------------------------------------------------------------------------------------------------------------------


def sharded_loader(accelerator: Accelerator, dataset, batch_size: int, collator, num_workers: int) -> DataLoader:
    """A loader over this process's share of `dataset` (the last batches padded by repeats, which the loops drop)."""
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


def _gather_evaluated(accelerator: Accelerator, dataset, indices: list, *columns: list) -> list[torch.Tensor]:
    """This process's per-batch dataset indices and rows concatenated, gathered from every process, each index kept
    once (in index order); every sample of `dataset` must be there."""
    if not indices:
        raise RuntimeError(f"Nothing of {dataset.name} could be evaluated in process {accelerator.process_index}.")
    gathered = _gathered_unique(accelerator, torch.cat(indices), *(torch.cat(column) for column in columns))
    if gathered[0].numel() != len(dataset):
        raise RuntimeError(
            f"Only {gathered[0].numel()} of the {len(dataset)} samples of {dataset.name} could be evaluated."
        )
    return gathered


def progress_bar(accelerator: Accelerator, total: int, description: str, unit: str = "batch") -> tqdm:
    """A progress bar shown by the main process only, and by none when `TQDM_DISABLE` is set (tqdm's own switch, read
    here at every bar rather than once at import)."""
    hidden = os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")
    return tqdm(total=total, desc=description, unit=unit, leave=False, dynamic_ncols=True,
                disable=hidden or not accelerator.is_main_process)


def sharded_pair_scorer(accelerator: Accelerator, description: str = "ITM re-ranking") -> Callable[..., torch.Tensor]:
    """An `itm_pair_scores` replacement that scores every `num_processes`-th pair on each process and gathers the
    scores back into the original order (every process must call it with the same pairs). Shows its progress
    (`progress_bar`): re-ranking a large gallery takes minutes."""

    def score(model, videos, texts, text_indices, video_indices, batch_size: int = 128, **kwargs) -> torch.Tensor:
        rank, world = accelerator.process_index, accelerator.num_processes
        positions = torch.arange(text_indices.numel())[rank::world]
        # the chunks are the batches `itm_pair_scores` would form, so the scores do not change
        chunk = max(1, batch_size // videos.tokens.shape[1])
        local = []
        with progress_bar(accelerator, positions.numel(), description, unit="pair") as bar:
            for start in range(0, positions.numel(), chunk):
                mine = positions[start : start + chunk]
                local.append(
                    itm_pair_scores(model, videos, texts, text_indices[mine], video_indices[mine],
                                    batch_size=batch_size, **kwargs).reshape(-1).float()
                )
                bar.update(mine.numel())
        local = torch.cat(local) if local else torch.empty(0)
        if world == 1:
            return local
        gathered_positions = _gather_rows(accelerator, positions)
        gathered_scores = _gather_rows(accelerator, local)
        scores = torch.empty(text_indices.numel())
        scores[gathered_positions] = gathered_scores
        return scores

    return score


def _with_progress(accelerator: Accelerator, loader: DataLoader, description: str):
    """The batches of `loader`, counted on a `progress_bar`."""
    with progress_bar(accelerator, len(loader), description) as bar:
        for batch in loader:
            yield batch
            bar.update(1)


def _clips_in_a_row(pixel_values: torch.Tensor) -> torch.Tensor:
    """`(batch, clips, frames, ...)` -> `(batch, clips * frames, ...)`: the heads cut them into clips again."""
    return pixel_values.flatten(1, 2) if pixel_values.dim() == 6 else pixel_values


# ----------------------------------------------------------------------------------------------------------------------
# The loops
# ----------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_retrieval(
    accelerator: Accelerator, model: SViTTForVideoTextRetrieval, dataset: RetrievalEvalDataset,
    processor: SViTTProcessor, spec: EvaluationSpec,
) -> dict[str, float]:
    """Text-video retrieval: ITC over all pairs, then ITM re-ranking of each query's top `spec.k` (both directions;
    none when `spec.use_itm` is false), clips combined with `spec.clip_aggregation`, the pair scoring shared among
    processes.

    Returns `t2v_r1`, `t2v_r5`, `t2v_r10`, `t2v_median_rank`, `t2v_mean_rank` and the `v2t_` counterparts (recalls as
    fractions), and, when the annotations carry distractor captions (the synthetic temporal probe),
    `temporal_probe_accuracy` (share of videos whose caption scores above its reversed-order distractor with the
    final scorer, ITM when `spec.use_itm`) and `temporal_probe_itc_accuracy` (the same with ITC alone).
    """
    model.eval()
    loader = sharded_loader(accelerator, dataset, spec.batch_size, VideoCollator(), spec.num_workers)
    embeds, tokens, masks, indices = [], [], [], []
    for batch in _with_progress(accelerator, loader, f"Encoding the videos of {dataset.name}"):
        if batch is None:
            continue
        gallery = model.encode_videos(_clips_in_a_row(batch["pixel_values"]), batch_size=spec.batch_size)
        embeds.append(gallery.embeds)
        tokens.append(gallery.tokens)
        masks.append(gallery.token_mask)
        indices.append(batch["index"])
    index, embeds, tokens, masks = _gather_evaluated(accelerator, dataset, indices, embeds, tokens, masks)
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
    ranking = model.rank(
        videos, captions, k=spec.k, use_itm=spec.use_itm, clip_aggregation=spec.clip_aggregation, pair_scorer=scorer
    )
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
            pairs = sharded_pair_scorer(accelerator, "Temporal probe")(
                model, videos, all_texts, torch.cat([true_texts, distractor_texts]), torch.cat([videos_probed] * 2),
                clip_aggregation=spec.clip_aggregation,
            )
            true_scores, false_scores = pairs[: len(probe)], pairs[len(probe) :]
            metrics["temporal_probe_accuracy"] = float((true_scores > false_scores).float().mean())
        else:
            metrics["temporal_probe_accuracy"] = metrics["temporal_probe_itc_accuracy"]
    return metrics


@torch.no_grad()
def evaluate_qa(
    accelerator: Accelerator, model: SViTTForVideoQuestionAnswering, dataset: VideoQADataset,
    processor: SViTTProcessor, spec: EvaluationSpec,
) -> dict[str, float]:
    """Video QA by ranking the dataset's answer list (`spec.qa_scoring`, top `spec.k` by the first answer token, clips
    combined with `spec.clip_aggregation`): `qa_accuracy` (exact match with any ground-truth answer) and
    `qa_accuracy_<type>` for every question type the annotations name."""
    model.eval()
    collator = VideoQACollator(processor, processor.max_text_length, processor.max_answer_length, return_index=True)
    answers = collator.encode_answers(dataset.answer_list)
    loader = sharded_loader(accelerator, dataset, spec.batch_size, collator, spec.num_workers)
    predictions, indices = [], []
    for batch in _with_progress(accelerator, loader, f"Answering the questions of {dataset.name}"):
        if batch is None:
            continue
        ranking = model.rank_answers(
            _clips_in_a_row(batch["pixel_values"]),
            batch["input_ids"],
            batch["attention_mask"],
            answers["answer_input_ids"],
            answers["answer_attention_mask"],
            k=spec.k,
            clip_aggregation=spec.clip_aggregation,
            scoring=spec.qa_scoring,
        )
        predictions.append(ranking.predictions.cpu())
        indices.append(batch["index"])
    index, predictions = _gather_evaluated(accelerator, dataset, indices, predictions)
    records = [dataset.records[i] for i in index.tolist()]
    predicted = [dataset.answer_list[p] for p in predictions.tolist()]
    references = [record["answers"] for record in records]
    metrics = {"qa_accuracy": qa_accuracy(predicted, references)["accuracy"] / 100}
    types = [None if record["question_type"] is None else str(record["question_type"]) for record in records]
    for kind in sorted(set(types) - {None}):
        chosen = [i for i, value in enumerate(types) if value == kind]
        accuracy = qa_accuracy([predicted[i] for i in chosen], [references[i] for i in chosen])["accuracy"]
        metrics[f"qa_accuracy_{kind}"] = accuracy / 100
    return metrics


@torch.no_grad()
def evaluate_multiple_choice(
    accelerator: Accelerator, model: SViTTForMultipleChoice, dataset: EgoMCQDataset, processor: SViTTProcessor,
    spec: EvaluationSpec,
) -> dict[str, float]:
    """EgoMCQ with the multiple-choice head: `egomcq_inter_accuracy`, `egomcq_intra_accuracy` (fractions)."""
    model.eval()
    collator = MultipleChoiceCollator(processor, return_index=True, return_types=True)
    loader = sharded_loader(accelerator, dataset, spec.batch_size, collator, spec.num_workers)
    logits, labels, types, indices = [], [], [], []
    for batch in _with_progress(accelerator, loader, f"Scoring the choices of {dataset.name}"):
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
    index, logits, labels, types = _gather_evaluated(accelerator, dataset, indices, logits, labels, types)
    raw = egomcq_accuracy(logits, labels, types)
    metrics = {}
    for setting in ("inter", "intra"):
        if f"{setting}_video_accuracy" in raw:
            metrics[f"egomcq_{setting}_accuracy"] = raw[f"{setting}_video_accuracy"] / 100
    return metrics


EVALUATION_LOOPS = {"retrieval": evaluate_retrieval, "qa": evaluate_qa, "multiple_choice": evaluate_multiple_choice}


def run_evaluation(accelerator: Accelerator, model, dataset, processor: SViTTProcessor, spec: EvaluationSpec) -> dict:
    """The loop of `spec.kind` on a loaded head (see `EVALUATION_HEADS`)."""
    return EVALUATION_LOOPS[spec.kind](accelerator, model, dataset, processor, spec)


def videos_per_sample(spec: EvaluationSpec) -> int:
    """Videos the video tower encodes per evaluated sample: 5 per EgoMCQ item (its choices), else 1."""
    return 5 if spec.kind == "multiple_choice" else 1


def video_gmacs_per_sample(model, spec: EvaluationSpec) -> float:
    """Analytic GMACs of the video tower for one evaluated sample: its clips (and choices) at the current settings."""
    return video_tower_gmacs(model.config.vision_config) * spec.num_clips * videos_per_sample(spec)


def evaluation_results(
    accelerator: Accelerator, model, dataset, processor: SViTTProcessor, spec: EvaluationSpec, *, model_name: str,
    synthetic_root=None,
) -> dict[str, Any]:
    """Evaluate a loaded head on a built dataset; `results.json`'s record of it (see `report.results_record`)."""
    metrics = run_evaluation(accelerator, model, dataset, processor, spec)
    files = [resolve_path(path, synthetic_root) for path in (spec.annotations, spec.answer_list) if path]
    return results_record(
        spec=spec, model=model_name, config=model.config, metrics=metrics, num_samples=len(dataset),
        synthetic=synthetic_root is not None, files=files, media_root=resolve_path(spec.media_root, synthetic_root),
        video_tower_gmacs=video_gmacs_per_sample(model, spec),
    )


def evaluate_checkpoint(
    accelerator: Accelerator,
    folder: str | os.PathLike,
    evaluations: Sequence[EvaluationSpec],
    synthetic_root=None,
) -> dict[str, Any]:
    """Run every evaluation of a recipe on the `save_pretrained` folder `folder` (loaded into the head each evaluation
    needs, at the folder's clip length). Returns the flat metrics, plus `num_test_videos` (the size of the retrieval
    gallery) when a retrieval set was evaluated."""
    processor = SViTTProcessor.from_pretrained(folder)
    metrics: dict[str, Any] = {}
    for index, spec in enumerate(evaluations):
        with plain_loading():
            model = EVALUATION_HEADS[spec.kind].from_pretrained(folder).to(accelerator.device)
        clip_length = model.config.vision_config.num_frames
        dataset = build_evaluation_dataset(
            spec, processor, clip_length, synthetic_root, lambda field, i=index: f"evaluation.{i}.{field}"
        )
        metrics.update(run_evaluation(accelerator, model, dataset, processor, spec))
        if spec.kind == "retrieval":
            metrics.setdefault("num_test_videos", len(dataset))
        del model
    return metrics


def write_token_selection_picture(
    folder: str | os.PathLike, spec: EvaluationSpec, synthetic_root, path: str | os.PathLike, title: str = ""
) -> None:
    """Picture what the model in `folder` keeps of the first clip of the evaluation set `spec` after every drop layer
    (and, when the model selects video tokens in its fusion layers, for the clip's caption): `path` (PNG)."""
    from svitt_tools.visualize import load_saved_model, token_selection_picture

    processor = SViTTProcessor.from_pretrained(folder)
    with plain_loading():
        model = load_saved_model(folder)
    clip_length = model.config.vision_config.num_frames
    one_clip = dataclasses.replace(spec, num_clips=1)
    dataset = build_evaluation_dataset(one_clip, processor, clip_length, synthetic_root)
    item = dataset[0]
    if item is None:
        return
    pixel_values = item["pixel_values"]
    while pixel_values.dim() > 4:  # the first clip (of the first choice)
        pixel_values = pixel_values[0]
    caption = item.get("question") or item.get("text")
    if caption is None and spec.kind == "retrieval":
        caption = dataset.texts[dataset.video_to_texts[0][0]]
    selects = model.config.text_config.fusion_token_keep_rate < 1.0
    vision = model.config.vision_config
    title = f"{title}: " if title else ""
    title += f"{clip_length} frames, keep {vision.token_keep_rate:g} after layers {vision.token_drop_layers}"
    if caption is not None:
        title += f'; "{caption}"'
    token_selection_picture(model, processor, pixel_values, path, caption if selects else None, title=title)


__all__ = [
    "EVALUATION_HEADS",
    "EVALUATION_LOOPS",
    "DecodedOnce",
    "build_evaluation_dataset",
    "checkpoint_problem",
    "evaluate_checkpoint",
    "evaluate_multiple_choice",
    "evaluate_qa",
    "evaluate_retrieval",
    "evaluation_results",
    "load_checkpoint_config",
    "progress_bar",
    "run_evaluation",
    "sharded_loader",
    "sharded_pair_scorer",
    "video_gmacs_per_sample",
    "videos_per_sample",
    "write_token_selection_picture",
]
