"""The training loop of one stage, shared by `pretrain.py` and `finetune.py`: the stage's model, loader, optimiser and
schedule prepared for the launch, then trained as the `accelerate` examples train (a progress bar, losses logged to
the trackers, the training state saved atomically and resumed from)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from tqdm.auto import tqdm

from modeling_svitt import ContrastiveCache, SViTTProcessor
from training.building import configure_stage, freeze_unused_parameters
from training.launch import check_prepared_model, prepare_for_deepspeed, share_cpu_cores
from training.optimization import build_optimizer, build_scheduler, step_seed
from training.data import EpochShuffleSampler
from training.data.streaming import StreamedVideoDataset, StreamLoader
from training.recipe import RecipeError, StageSpec
from training.recipe_data import make_stream_loader, make_train_dataloader
from training.run_folder import save_state_atomically


LOSS_PARTS = ("loss_itc", "loss_itm", "loss_mlm")
CONTRASTIVE_LABELS = ("match_ids", "verb_tags", "noun_tags", "video_ids")

logger = logging.getLogger(__name__)


@dataclass
class PreparedStage:
    """A stage ready to train: the prepared model, optimiser and loader, the sampler to set epochs on, the schedule,
    the number of steps, the parameters to give back their 0-dim shape when saving (`restore_scalar_shapes`), and
    the micro-batches (loader batches) of one optimiser step."""

    model: Any
    optimizer: Any
    dataloader: Any
    sampler: EpochShuffleSampler | StreamLoader
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    scalar_parameters: list[str]
    accumulation_steps: int = 1

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per epoch; the micro-batches left over at the end of an epoch are not used."""
        return len(self.dataloader) // self.accumulation_steps


def prepare_stage(
    accelerator: Accelerator, model, stage: StageSpec, dataset, processor: SViTTProcessor, seed: int,
    where: str, max_steps: int | None = None, contrastive: bool = True,
) -> PreparedStage:
    """Configure `model` for `stage` (clip length, sparsity, frozen parameters, and the losses when `contrastive`, see
    `configure_stage`), build its loader, optimiser and schedule, and `prepare` them (refusing a launch that would not
    synchronise). `where` names the stage in errors; `max_steps` caps the stage's length."""
    configure_stage(model, stage, contrastive)
    share_cpu_cores(accelerator, stage.data.num_workers)
    freeze_unused_parameters(model, stage.freeze)
    raw_optimizer = build_optimizer(model, stage.optimizer)
    scalar_parameters = prepare_for_deepspeed(accelerator, model)
    accumulation = stage.gradient_accumulation_steps
    accelerator.gradient_accumulation_steps = accumulation
    if isinstance(dataset, StreamedVideoDataset):
        # Already split among the processes: `prepare` passes the loader through.
        dataloader = sampler = make_stream_loader(accelerator, dataset, stage, processor)
    else:
        dataloader, sampler = make_train_dataloader(dataset, stage, processor, seed)
    configure_deepspeed_batch(accelerator, stage.batch_size, accumulation, where)
    model, optimizer, dataloader = accelerator.prepare(model, raw_optimizer, dataloader)
    check_prepared_model(accelerator, model)
    if len(dataloader) < accumulation:
        raise RecipeError(f"{where}.batch_size: batch_size x gradient_accumulation_steps x processes "
                          f"({stage.batch_size} x {accumulation} x {accelerator.num_processes}) is larger than the "
                          f"dataset ({len(dataset)} samples)")
    if hasattr(dataset, "bad_samples"):  # the bad-sample budget counts against this process's share of the data
        dataset.bad_samples.set_num_readers(accelerator.num_processes)
    steps_per_epoch = len(dataloader) // accumulation
    total_steps = stage.steps or max(1, round(stage.epochs * steps_per_epoch))
    if max_steps:
        total_steps = min(total_steps, max_steps)
    scheduler = build_scheduler(raw_optimizer, stage, total_steps)
    return PreparedStage(
        model, optimizer, dataloader, sampler, scheduler, total_steps, scalar_parameters, accumulation
    )


_DEEPSPEED_BATCH_FIELDS_AS_GIVEN: dict[int, dict[str, Any]] = {}


def configure_deepspeed_batch(accelerator: Accelerator, batch_size: int, accumulation_steps: int, where: str) -> None:
    """Under DeepSpeed, give the config's batch fields this stage's values. accelerate fills the `"auto"` fields in
    place at the first `prepare`, so every later stage would inherit the first stage's batch size and accumulation:
    the fields as the config file gave them are remembered, and a field the file fixes to another value is refused."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = accelerator.state.deepspeed_plugin
    config = plugin.deepspeed_config
    wanted = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": accumulation_steps,
        "train_batch_size": batch_size * accumulation_steps * accelerator.num_processes,
    }
    given = _DEEPSPEED_BATCH_FIELDS_AS_GIVEN.setdefault(id(plugin), {key: config.get(key, "auto") for key in wanted})
    for key, value in wanted.items():
        if given[key] not in ("auto", value):
            raise RecipeError(
                f"{where}: the DeepSpeed config sets {key}={given[key]}, but this stage runs {value} (from the "
                "recipe's batch_size and gradient_accumulation_steps): set it to \"auto\" in the DeepSpeed config"
            )
        config[key] = value


@dataclass
class StageRun:
    """What a stage's training did: optimiser steps (counting the skipped ones), seconds spent in them, clips seen, the
    last loss (mean over processes; `None` when no step ran in this process's lifetime), and the steps every process
    skipped because some process could not read any sample of one of its micro-batches."""

    steps: int = 0
    train_seconds: float = 0.0
    clips: int = 0
    final_loss: float | None = None
    skipped_steps: int = 0


def takes_contrastive_cache(model: torch.nn.Module) -> bool:
    """Whether `model`'s forward contrasts in-batch negatives and takes a `ContrastiveCache` (the pretraining and
    retrieval heads): accumulating its gradients then needs the cached embeddings of the other micro-batches."""
    return "contrastive_cache" in inspect.signature(model.forward).parameters


def every_process_has_data(accelerator: Accelerator, micro_batches: list[dict | None]) -> bool:
    """Whether no process lost a whole micro-batch of this step to unreadable samples, decided by all processes
    together (one all-reduce): a step skipped by one process alone would pair different steps in the gradient
    synchronisation and the contrastive gathers."""
    missing = torch.tensor(float(any(batch is None for batch in micro_batches)), device=accelerator.device)
    return accelerator.reduce(missing, "sum").item() == 0


def accumulate_gradients(
    accelerator: Accelerator, model, micro_batches: list[dict], seeds: list[int]
) -> dict[str, torch.Tensor]:
    """Forward and backward the micro-batches of one optimiser step (`accelerator.gradient_accumulation_steps` of
    them), synchronising the gradients across processes after the last one only; returns the losses, averaged over the
    micro-batches. (`accelerator.accumulate` is not used: it counts micro-batches and ends an accumulation at the end
    of the loader, which here comes while the micro-batches of a step are read, before they are trained on.)

    A model with in-batch contrastive negatives (`takes_contrastive_cache`) contrasts against the whole accumulated
    batch: every micro-batch's embeddings are first computed without gradient and cached, then each micro-batch runs
    with gradient against the cache (`ContrastiveCache`). Micro-batch j's randomness comes from `seeds[j]` in both
    passes, so the second pass reproduces the cached embeddings and the gradient is exactly the accumulated batch's.
    ITM negatives and MLM masks stay within each micro-batch.
    """
    if len(micro_batches) != accelerator.gradient_accumulation_steps:
        raise ValueError(f"{len(micro_batches)} micro-batches given, but the accelerator accumulates "
                         f"{accelerator.gradient_accumulation_steps}: its loss scaling would be wrong.")
    cache = None
    if len(micro_batches) > 1 and takes_contrastive_cache(accelerator.unwrap_model(model)):
        cache = ContrastiveCache()
        with torch.no_grad():
            for batch, seed in zip(micro_batches, seeds):
                set_seed(seed)
                towers = model(**batch, return_loss=False)
                labels = {key: batch.get(key) for key in CONTRASTIVE_LABELS}
                cache.add(towers.video_embeds, towers.text_embeds, labels.pop("match_ids"), **labels)
                del towers
    totals: dict[str, torch.Tensor] = {}
    for index, (batch, seed) in enumerate(zip(micro_batches, seeds)):
        set_seed(seed)
        extra = {} if cache is None else {"contrastive_cache": cache, "micro_batch_index": index}
        last = index == len(micro_batches) - 1
        accelerator.sync_gradients = last  # also DeepSpeed's accumulation boundary
        with contextlib.nullcontext() if last else accelerator.no_sync(model):
            output = model(**batch, **extra)
            accelerator.backward(output.loss)
        for part in ("loss", *LOSS_PARTS):
            value = getattr(output, part, None)
            if value is not None:
                totals[part] = totals.get(part, 0.0) + value.detach() / len(micro_batches)
        del output  # its activations are not needed by the next micro-batch
    return totals


@dataclass
class StagePlan:
    """Where a stage sits in its run and what it writes: its `index` in the recipe and `name` (the saved states are
    `<name>-step-<N>` in `checkpoint_dir`), the progress bar's `description`, the run's `seed`, how often the state is
    saved and the losses logged, the gradient clipping norm, the run's `global_step` before the stage (losses are
    logged at `global_step + step`), and the state to resume from (saved by `train_stage` for this stage, from
    `latest_state`)."""

    index: int
    name: str
    description: str
    seed: int
    checkpoint_dir: Path
    save_every_steps: int
    log_every_steps: int
    max_grad_norm: float | None = None
    global_step: int = 0
    resume_from: tuple[Path, dict] | None = None


def train_stage(accelerator: Accelerator, prepared: PreparedStage, dataset, plan: StagePlan) -> StageRun:
    """Train a prepared stage for its `total_steps` optimiser steps, as `accelerate` examples do: a progress bar, the
    losses, learning rate and throughput logged every `plan.log_every_steps` steps, and the training state saved
    atomically every `plan.save_every_steps` steps and at the end (with its progress). `plan.resume_from` continues
    where it stopped: the data order and every step's randomness depend only on the seed, the epoch and the step, so a
    resumed stage ends as an uninterrupted one.

    Each step accumulates `prepared.accumulation_steps` micro-batches (`accumulate_gradients`). A step in which some
    process could not read any sample of a micro-batch is skipped by every process together: no update, but the step
    number, the schedule and the data position advance as for any step."""
    model, optimizer, scheduler = prepared.model, prepared.optimizer, prepared.scheduler
    dataloader, sampler, total_steps = prepared.dataloader, prepared.sampler, prepared.total_steps
    accumulation, steps_per_epoch = prepared.accumulation_steps, prepared.steps_per_epoch
    run = _resume(accelerator, prepared, plan)
    bar = tqdm(total=total_steps, initial=run.steps, desc=plan.description,
               disable=not accelerator.is_local_main_process, dynamic_ncols=True)
    model.train()
    losses: dict[str, torch.Tensor] = {}
    while run.steps < total_steps:
        epoch, position = divmod(run.steps, steps_per_epoch)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        if hasattr(dataloader, "set_epoch"):  # accelerate's loader sets the sampler's epoch from its own count
            dataloader.set_epoch(epoch)
        resumes_itself = isinstance(dataloader, StreamLoader)  # its state was restored by `load_state`
        skip = position and not resumes_itself
        batches = accelerator.skip_first_batches(dataloader, position * accumulation) if skip else dataloader
        tick = time.perf_counter()
        micro_batches: list[dict | None] = []  # fewer than `accumulation` left at the end of an epoch: not used
        for batch in batches:
            micro_batches.append(batch)
            if len(micro_batches) < accumulation:
                continue
            if every_process_has_data(accelerator, micro_batches):
                seeds = [step_seed(plan.seed, plan.index, run.steps * accumulation + micro, accelerator.process_index)
                         for micro in range(accumulation)]
                losses = accumulate_gradients(accelerator, model, micro_batches, seeds)
                if plan.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), plan.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
                run.clips += sum(batch["pixel_values"].shape[0] for batch in micro_batches) * accelerator.num_processes
            else:
                run.skipped_steps += 1
                logger.warning("Step %d of %s skipped by every process: a process could read no sample of one of its "
                               "micro-batches.", run.steps + 1, plan.name)
            micro_batches = []
            scheduler.step()
            run.steps += 1
            now = time.perf_counter()
            run.train_seconds += now - tick
            tick = now
            bar.update(1)
            if losses and (run.steps % plan.log_every_steps == 0 or run.steps == total_steps):
                _log_step(accelerator, bar, losses, scheduler, run, plan, epoch)
            if run.steps % plan.save_every_steps == 0 or run.steps == total_steps:
                _save_progress(accelerator, run, plan)
                tick = time.perf_counter()
            if run.steps >= total_steps:
                break
    bar.close()
    run.final_loss = accelerator.reduce(losses["loss"], "mean").item() if losses else None
    return run


def _resume(accelerator: Accelerator, prepared: PreparedStage, plan: StagePlan) -> StageRun:
    """The stage's progress so far: nothing, or the state `plan.resume_from` loaded and the schedule moved to it."""
    if plan.resume_from is None:
        return StageRun()
    folder, progress = plan.resume_from
    accelerator.load_state(str(folder))
    run = StageRun(progress["stage_step"], progress["train_seconds"], progress["clips"],
                   skipped_steps=progress.get("skipped_steps", 0))
    prepared.scheduler.last_epoch = run.steps - 1
    prepared.scheduler.step()  # the learning rate of step `run.steps`
    accelerator.print(f"Resuming {plan.name} at step {run.steps} from {folder}")
    return run


def _save_progress(accelerator: Accelerator, run: StageRun, plan: StagePlan) -> None:
    """Save the training state with the progress a resumed run starts from."""
    progress = {"stage": plan.index, "stage_step": run.steps, "train_seconds": run.train_seconds, "clips": run.clips,
                "global_step": plan.global_step + run.steps, "skipped_steps": run.skipped_steps}
    save_state_atomically(accelerator, plan.checkpoint_dir, f"{plan.name}-step-{run.steps:07d}", progress)


def _log_step(accelerator: Accelerator, bar, losses: dict[str, torch.Tensor], scheduler, run: StageRun,
              plan: StagePlan, epoch: int) -> None:
    """Log the last step's losses (means over processes), learning rate and throughput, and show them on the bar."""
    values = {part: accelerator.reduce(value, "mean").item() for part, value in losses.items()}
    values.update(lr=scheduler.get_last_lr()[0], clips_per_second=run.clips / max(run.train_seconds, 1e-9),
                  stage=plan.index, stage_step=run.steps, epoch=epoch, skipped_steps=run.skipped_steps)
    accelerator.log(values, step=plan.global_step + run.steps)
    bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}", clips_s=f"{values['clips_per_second']:.1f}")


__all__ = [
    "LOSS_PARTS",
    "PreparedStage",
    "StagePlan",
    "StageRun",
    "accumulate_gradients",
    "configure_deepspeed_batch",
    "every_process_has_data",
    "prepare_stage",
    "takes_contrastive_cache",
    "train_stage",
]
