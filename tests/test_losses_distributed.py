"""ITC negatives gathered across two real (gloo, CPU) processes: same losses and gradients as one process."""

import torch
import torch.multiprocessing as mp

import gather_worker
from modeling_svitt import losses


def test_gathered_itc_matches_single_process_losses_and_gradients(tmp_path):
    mp.start_processes(
        gather_worker.run,
        args=(str(tmp_path / "rendezvous"), str(tmp_path)),
        nprocs=len(gather_worker.SIZES),
        start_method="spawn",
    )
    video, text, match_ids = gather_worker.full_batch()
    video.requires_grad_(True)
    text.requires_grad_(True)
    positives = losses.positive_mask_from_ids(match_ids)
    per_rank, start = [], 0
    for size in gather_worker.SIZES:
        rows = slice(start, start + size)
        logits_per_video = video[rows] @ text.T / gather_worker.TEMPERATURE
        logits_per_text = text[rows] @ video.T / gather_worker.TEMPERATURE
        per_rank.append(
            losses.multi_positive_contrastive_loss(logits_per_video, logits_per_text, positives[rows], positives[rows])
        )
        start += size
    # Each process backpropagates its own loss; the gathered gradients add up to d(sum of losses).
    torch.stack(per_rank).sum().backward()

    start = 0
    for rank, size in enumerate(gather_worker.SIZES):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        rows = slice(start, start + size)
        assert result["offset"] == start and result["columns"] == len(match_ids)
        assert torch.equal(result["gathered_ids"], match_ids)
        torch.testing.assert_close(result["loss"], per_rank[rank].detach())
        torch.testing.assert_close(result["video_grad"], video.grad[rows])
        torch.testing.assert_close(result["text_grad"], text.grad[rows])
        start += size
