"""ITC negatives gathered across two real (gloo, CPU) processes: same losses and gradients as one process, for the
loss helpers and for the models that use them (`SViTTModel(return_loss=True)` and the heads)."""

import pytest
import torch
import torch.multiprocessing as mp

from helpers import gather_worker
from modeling_svitt import losses


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Both processes run every check once (starting processes is what takes the time)."""
    folder = tmp_path_factory.mktemp("gathered")
    mp.start_processes(
        gather_worker.run,
        args=(str(folder / "rendezvous"), str(folder)),
        nprocs=len(gather_worker.SIZES),
        start_method="spawn",
    )
    return folder


def test_gathered_itc_matches_single_process_losses_and_gradients(results):
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
        result = torch.load(results / f"rank{rank}.pt")
        rows = slice(start, start + size)
        assert result["offset"] == start and result["columns"] == len(match_ids)
        assert torch.equal(result["gathered_ids"], match_ids)
        torch.testing.assert_close(result["loss"], per_rank[rank].detach())
        torch.testing.assert_close(result["video_grad"], video.grad[rows])
        torch.testing.assert_close(result["text_grad"], text.grad[rows])
        start += size


def test_models_contrast_against_the_negatives_of_every_process(results):
    base, _ = gather_worker.build_models()
    pixels, ids, match_ids = gather_worker.model_inputs()
    with torch.no_grad():
        everything = base(pixels, ids)  # every process's embeddings, computed in one process
    positives = losses.positive_mask_from_ids(match_ids)
    start = 0
    for rank, size in enumerate(gather_worker.SIZES):
        rows = slice(start, start + size)
        logits_per_video = everything.video_embeds[rows] @ everything.text_embeds.T / base.temperature
        logits_per_text = everything.text_embeds[rows] @ everything.video_embeds.T / base.temperature
        expected = losses.multi_positive_contrastive_loss(
            logits_per_video, logits_per_text, positives[rows], positives[rows]
        )
        result = torch.load(results / f"model_rank{rank}.pt")
        assert result["logits_per_video"].shape == (size, len(match_ids))  # columns of both processes
        torch.testing.assert_close(result["loss"], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(result["head_loss_itc"], expected, atol=1e-5, rtol=1e-5)
        start += size
