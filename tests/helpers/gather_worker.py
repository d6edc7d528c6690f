"""Workers for the two-process gloo tests of gathered contrastive negatives (the loss helpers and the models)."""

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
        check_loss_helpers(rank, result_dir)
        check_models(rank, result_dir)
    finally:
        dist.destroy_process_group()


def check_loss_helpers(rank: int, result_dir: str) -> None:
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


def model_inputs():
    """Clips, captions and match ids of the whole (all-process) batch for the model-level test."""
    generator = torch.Generator().manual_seed(1)
    total = sum(SIZES)
    pixels = torch.randn(total, 2, 3, 32, 32, generator=generator)
    ids = torch.randint(5, 100, (total, 6), generator=generator)
    ids[:, 0] = 2
    return pixels, ids, torch.tensor(MATCH_IDS)


def build_models():
    """The dual encoder and the pretraining head, identical on every process, gathering negatives."""
    from helpers.tiny_configs import tiny_config

    from modeling_svitt import SViTTForPreTraining, SViTTModel

    config = tiny_config(gather_negatives_across_processes=True)
    torch.manual_seed(0)
    base = SViTTModel(config).eval()
    head = SViTTForPreTraining(config).eval()
    head.svitt.load_state_dict(base.state_dict())
    return base, head


def check_models(rank: int, result_dir: str) -> None:
    base, head = build_models()
    pixels, ids, match_ids = model_inputs()
    start = sum(SIZES[:rank])
    rows = slice(start, start + SIZES[rank])
    with torch.no_grad():
        base_output = base(pixels[rows], ids[rows], match_ids=match_ids[rows], return_loss=True)
        head_output = head(pixel_values=pixels[rows], input_ids=ids[rows], match_ids=match_ids[rows])
    torch.save(
        {
            "loss": base_output.loss,
            "logits_per_video": base_output.logits_per_video,
            "head_loss_itc": head_output.loss_itc,
        },
        Path(result_dir) / f"model_rank{rank}.pt",
    )
