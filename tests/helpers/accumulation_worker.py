"""Gradient accumulation with exact contrastive batches, and steps all processes agree on: the inputs and models shared
by `test_accumulation.py` and its two-process (gloo) worker."""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import torch

from helpers.tiny_configs import tiny_config

MICRO_BATCHES, MICRO_BATCH_SIZE = 4, 2
BATCH = MICRO_BATCHES * MICRO_BATCH_SIZE
# rows 3 and 4 (micro-batches 1 and 2) caption the same video: a positive pair across micro-batches
MATCH_IDS = (0, 1, 2, 3, 3, 4, 5, 6)
VIDEO_IDS = (0, 0, 1, 1, 2, 2, 3, 3)  # EgoNCE's scene-aware negatives, also across micro-batches
CONTRASTIVE_LOSSES = ("infonce", "egonce")


def contrastive_config(loss: str, gather: bool = False, **vision):
    """A tiny model trained by ITC (or EgoNCE) alone. Without random attention blocks and dropout its towers treat
    every clip alone, so one batch of 8 and four of 2 compute the same embeddings."""
    return tiny_config(
        vision={"num_random_blocks": 0, **vision},
        contrastive_loss=loss,
        loss_weight_itm=0.0,
        loss_weight_mlm=0.0,
        gather_negatives_across_processes=gather,
    )


def batch(rank: int = 0, loss: str = "infonce") -> dict[str, torch.Tensor]:
    """One process's batch of 8 (match ids unique across processes, as gathering needs)."""
    generator = torch.Generator().manual_seed(10 + rank)
    ids = torch.randint(5, 100, (BATCH, 6), generator=generator)
    ids[:, 0] = 2
    inputs = {
        "pixel_values": torch.randn(BATCH, 2, 3, 32, 32, generator=generator),
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "match_ids": torch.tensor(MATCH_IDS) + 100 * rank,
        "video_ids": torch.tensor(VIDEO_IDS) + 100 * rank,
    }
    if loss == "egonce":
        # EgoNCE's default rule (a verb and a noun in common) makes some pairs of different clips positives
        inputs["verb_tags"] = (torch.rand(BATCH, 3, generator=generator) > 0.5).float()
        inputs["noun_tags"] = (torch.rand(BATCH, 3, generator=generator) > 0.5).float()
    return inputs


def split(inputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{key: value[start : start + MICRO_BATCH_SIZE] for key, value in inputs.items()}
            for start in range(0, BATCH, MICRO_BATCH_SIZE)]


def gradients(model) -> dict[str, torch.Tensor]:
    return {name: param.grad.detach().clone() for name, param in model.named_parameters() if param.grad is not None}


def accumulated_and_whole(accelerator, model, inputs) -> dict[str, object]:
    """Loss and gradients of 4 accumulated micro-batches of 2 (`accumulate_gradients`), then of one batch of 8."""
    from training.loop import accumulate_gradients

    accelerator.gradient_accumulation_steps = MICRO_BATCHES
    losses = accumulate_gradients(accelerator, model, split(inputs), seeds=list(range(MICRO_BATCHES)))
    accumulated = gradients(model)
    model.zero_grad(set_to_none=True)
    accelerator.gradient_accumulation_steps = 1
    whole = accumulate_gradients(accelerator, model, [inputs], seeds=[0])
    result = {"accumulated_loss": losses["loss"], "whole_loss": whole["loss"], "accumulated": accumulated,
              "whole": gradients(model)}
    model.zero_grad(set_to_none=True)
    return result


def prepared_model(accelerator, config):
    from modeling_svitt import SViTTForPreTraining
    from training.building import freeze_unused_parameters

    torch.manual_seed(0)
    model = SViTTForPreTraining(config).train()
    freeze_unused_parameters(model)
    return accelerator.prepare(model)


# ---------------------------------------------------------------------------------------------------------------------
# One process's bad batch: a dataset whose process 1 cannot read any sample of its second batch
# ---------------------------------------------------------------------------------------------------------------------


class ClipsWithOneBadBatch(torch.utils.data.Dataset):
    """Tiny clips and captions; in process `bad_rank`, the reads number `batch_size .. 2 * batch_size - 1` (its second
    batch, with the loader in the main process) fail as an unreadable video does (`None`)."""

    def __init__(self, size: int, batch_size: int, rank: int, bad_rank: int):
        self.size, self.batch_size, self.reads = size, batch_size, 0
        self.bad_reads = range(batch_size, 2 * batch_size) if rank == bad_rank else range(0)

    def __len__(self) -> int:
        return self.size

    def set_epoch(self, epoch: int) -> None:
        pass

    def __getitem__(self, index: int):
        read, self.reads = self.reads, self.reads + 1
        if read in self.bad_reads:
            return None
        generator = torch.Generator().manual_seed(index)
        ids = torch.randint(5, 100, (6,), generator=generator)
        ids[0] = 2
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator), "input_ids": ids,
                "attention_mask": torch.ones_like(ids), "match_ids": torch.tensor(index)}


def collate_readable(samples):
    readable = [sample for sample in samples if sample is not None]
    if not readable:
        return None
    return {key: torch.stack([sample[key] for sample in readable]) for key in readable[0]}


def train_with_one_bad_batch(accelerator, checkpoint_dir: Path, bad_rank: int = 1):
    """Three steps of a tiny pretraining stage in which process `bad_rank` cannot read its second batch."""
    from types import SimpleNamespace

    from modeling_svitt import SViTTForPreTraining
    from training.building import freeze_unused_parameters
    from training.data import EpochShuffleSampler
    from training.loop import PreparedStage, StagePlan, train_stage
    from training.optimization import build_scheduler

    batch_size, steps = 2, 3
    dataset = ClipsWithOneBadBatch(batch_size * steps * accelerator.num_processes, batch_size,
                                   accelerator.process_index, bad_rank)
    sampler = EpochShuffleSampler(len(dataset), seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size, sampler=sampler, collate_fn=collate_readable)
    torch.manual_seed(0)
    model = SViTTForPreTraining(tiny_config(loss_weight_mlm=0.0)).train()
    freeze_unused_parameters(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = SimpleNamespace(warmup_fraction=0.0, min_lr_multiplier=1.0)
    scheduler = build_scheduler(optimizer, SimpleNamespace(schedule=schedule), steps)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    prepared = PreparedStage(model, optimizer, loader, sampler, scheduler, steps, [])
    plan = StagePlan(index=0, name="bad", description="bad", seed=0, checkpoint_dir=checkpoint_dir,
                     save_every_steps=100, log_every_steps=1)
    run = train_stage(accelerator, prepared, dataset, plan)
    weights = sum(float(p.detach().double().sum()) for p in accelerator.unwrap_model(model).parameters())
    return {"steps": run.steps, "skipped_steps": run.skipped_steps, "weights": weights,
            "lr": scheduler.get_last_lr()[0]}


# ---------------------------------------------------------------------------------------------------------------------
# The two-process worker
# ---------------------------------------------------------------------------------------------------------------------


def run(rank: int, port: int, result_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from training.launch import make_accelerator

    results = {}
    try:
        accelerator = make_accelerator(log=False)
        for loss in CONTRASTIVE_LOSSES:
            model = prepared_model(accelerator, contrastive_config(loss, gather=True))
            results[loss] = accumulated_and_whole(accelerator, model, batch(rank, loss))
        accelerator.gradient_accumulation_steps = 1
        results["bad_batch"] = train_with_one_bad_batch(accelerator, Path(result_dir) / "checkpoints")
    except Exception:  # reported by the test, with the traceback
        results["crash"] = traceback.format_exc()
    torch.save(results, Path(result_dir) / f"rank{rank}.pt")
