"""The training loop of one stage, shared by `pretrain.py` and `finetune.py`: the stage's model, loader, optimiser and
schedule prepared for the launch, then trained as the `accelerate` examples train (a progress bar, losses logged to
the trackers, the training state saved atomically and resumed from)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from modeling_svitt import SViTTProcessor
from training.common import (
    build_optimizer,
    build_scheduler,
    check_prepared_model,
    configure_stage,
    freeze_unused_parameters,
    make_stream_loader,
    make_train_dataloader,
    prepare_for_deepspeed,
    share_cpu_cores,
    step_seed,
)
from training.data import EpochShuffleSampler
from training.data.streaming import StreamedVideoDataset, StreamLoader
from training.recipe import RecipeError, StageSpec
from training.run_folder import save_state_atomically


LOSS_PARTS = ("loss_itc", "loss_itm", "loss_mlm")


@dataclass
class PreparedStage:
    """A stage ready to train: the prepared model, optimiser and loader, the sampler to set epochs on, the schedule,
    the number of steps, and the parameters to give back their 0-dim shape when saving (`restore_scalar_shapes`)."""

    model: Any
    optimizer: Any
    dataloader: Any
    sampler: EpochShuffleSampler | StreamLoader
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    scalar_parameters: list[str]


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
    if isinstance(dataset, StreamedVideoDataset):
        # Already split among the processes: `prepare` passes the loader through (DeepSpeed reads its batch size).
        dataloader = sampler = make_stream_loader(accelerator, dataset, stage, processor)
    else:
        dataloader, sampler = make_train_dataloader(dataset, stage, processor, seed)
    model, optimizer, dataloader = accelerator.prepare(model, raw_optimizer, dataloader)
    check_prepared_model(accelerator, model)
    if len(dataloader) == 0:
        raise RecipeError(f"{where}.batch_size: larger than the dataset")
    total_steps = stage.steps or max(1, round(stage.epochs * len(dataloader)))
    if max_steps:
        total_steps = min(total_steps, max_steps)
    scheduler = build_scheduler(raw_optimizer, stage, total_steps)
    return PreparedStage(model, optimizer, dataloader, sampler, scheduler, total_steps, scalar_parameters)


@dataclass
class StageRun:
    """What a stage's training did: optimiser steps, seconds spent in them, clips seen, the last loss (mean over
    processes; `None` when no step ran in this process's lifetime)."""

    steps: int = 0
    train_seconds: float = 0.0
    clips: int = 0
    final_loss: float | None = None


def train_stage(
    accelerator: Accelerator,
    prepared: PreparedStage,
    dataset,
    *,
    seed: int,
    stage_index: int,
    name: str,
    description: str,
    checkpoint_dir: Path,
    save_every_steps: int,
    log_every_steps: int,
    max_grad_norm: float | None = None,
    global_step: int = 0,
    resume_from: tuple[Path, dict] | None = None,
) -> StageRun:
    """Train a prepared stage for its `total_steps` optimiser steps, as `accelerate` examples do: a progress bar, the
    losses, learning rate and throughput logged every `log_every_steps` steps (at `global_step + step`), and the
    training state saved atomically every `save_every_steps` steps and at the end (`<name>-step-<N>` in
    `checkpoint_dir`, with its progress). `resume_from` (a state saved by this function for this stage, from
    `latest_state`) continues where it stopped: the data order and every step's randomness depend only on the seed,
    the epoch and the step, so a resumed stage ends as an uninterrupted one."""
    model, optimizer, scheduler = prepared.model, prepared.optimizer, prepared.scheduler
    dataloader, sampler, total_steps = prepared.dataloader, prepared.sampler, prepared.total_steps
    run = StageRun()
    if resume_from is not None:
        folder, progress = resume_from
        accelerator.load_state(str(folder))
        run = StageRun(progress["stage_step"], progress["train_seconds"], progress["clips"])
        scheduler.last_epoch = run.steps - 1
        scheduler.step()  # the learning rate of step `run.steps`
        accelerator.print(f"Resuming {name} at step {run.steps} from {folder}")
    steps_per_epoch = len(dataloader)
    bar = tqdm(total=total_steps, initial=run.steps, desc=description, disable=not accelerator.is_local_main_process,
               dynamic_ncols=True)
    model.train()
    loss = None
    while run.steps < total_steps:
        epoch, position = divmod(run.steps, steps_per_epoch)
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        resumes_itself = isinstance(dataloader, StreamLoader)  # its state was restored by `load_state`
        skip = position and not resumes_itself
        batches = accelerator.skip_first_batches(dataloader, position) if skip else dataloader
        tick = time.perf_counter()
        for batch in batches:
            if batch is None:  # nothing in it could be read
                continue
            set_seed(step_seed(seed, stage_index, run.steps, accelerator.process_index))
            output = model(**batch)
            accelerator.backward(output.loss)
            if max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            run.steps += 1
            run.clips += batch["pixel_values"].shape[0] * accelerator.num_processes
            now = time.perf_counter()
            run.train_seconds += now - tick
            tick = now
            loss = output.loss.detach()
            bar.update(1)
            if run.steps % log_every_steps == 0 or run.steps == total_steps:
                values = {"loss": accelerator.reduce(loss, "mean").item()}
                for part in LOSS_PARTS:
                    if getattr(output, part, None) is not None:
                        values[part] = accelerator.reduce(getattr(output, part).detach(), "mean").item()
                values.update(lr=scheduler.get_last_lr()[0], clips_per_second=run.clips / run.train_seconds,
                              stage=stage_index, stage_step=run.steps, epoch=epoch)
                accelerator.log(values, step=global_step + run.steps)
                bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}",
                                clips_s=f"{values['clips_per_second']:.1f}")
            if run.steps % save_every_steps == 0 or run.steps == total_steps:
                progress = {"stage": stage_index, "stage_step": run.steps, "train_seconds": run.train_seconds,
                            "clips": run.clips, "global_step": global_step + run.steps}
                save_state_atomically(accelerator, checkpoint_dir, f"{name}-step-{run.steps:07d}", progress)
                tick = time.perf_counter()
            if run.steps >= total_steps:
                break
    bar.close()
    run.final_loss = accelerator.reduce(loss, "mean").item() if loss is not None else None
    return run


__all__ = ["LOSS_PARTS", "PreparedStage", "StageRun", "prepare_stage", "train_stage"]
