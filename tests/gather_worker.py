"""Worker for the two-process gloo test of the gradient-carrying all-gather."""

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

SIZES = (3, 2)  # uneven on purpose: the last batch of an epoch
MATCH_IDS = (0, 1, 2, 2, 3)  # row 2 (rank 0) and row 3 (rank 1) caption the same video
TEMPERATURE = 0.1


def load_losses():
    from modeling_svitt import losses

    return losses


def full_batch():
    generator = torch.Generator().manual_seed(0)
    total = sum(SIZES)
    video = F.normalize(torch.randn(total, 8, generator=generator), dim=-1)
    text = F.normalize(torch.randn(total, 8, generator=generator), dim=-1)
    return video, text, torch.tensor(MATCH_IDS)


def run(rank: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=len(SIZES))
    try:
        losses = load_losses()
        video, text, match_ids = full_batch()
        start = sum(SIZES[:rank])
        rows = slice(start, start + SIZES[rank])
        local_video = video[rows].clone().requires_grad_(True)
        local_text = text[rows].clone().requires_grad_(True)
        out = losses.itc_loss(local_video, local_text, TEMPERATURE, match_ids[rows], gather_across_processes=True)
        out.loss.backward()
        torch.save(
            {
                "loss": out.loss.detach(),
                "video_grad": local_video.grad,
                "text_grad": local_text.grad,
                "offset": out.local_offset,
                "columns": out.logits_per_video.shape[1],
                "gathered_ids": losses.all_gather_no_grad(match_ids[rows]),
            },
            Path(result_dir) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()
