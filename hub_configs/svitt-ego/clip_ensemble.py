"""Several clips per video: cutting test videos into model-length clips and combining their scores.

Evaluation videos are sampled with more frames than the model's clip length (e.g. 12 test frames for a 4-frame
model); they are cut into K clips, each clip is encoded on its own, and per-clip scores are combined.
"""

import torch

from .video_io import CLIP_LAYOUTS, split_clips

CLIP_AGGREGATIONS = ("lse", "mean", "max")


def split_into_clips(
    pixel_values: torch.Tensor, num_frames: int, sampling: str = "consecutive"
) -> tuple[torch.Tensor, int]:
    """Cut `(B, K * T, C, H, W)` test videos into `B * K` clips of `T = num_frames` frames.

    `"consecutive"`: clip k is frames `k*T .. k*T + T - 1` (the release's default). `"strided"`: clip k is
    frames `k, k + K, k + 2K, ...` (the release's `eval_sparse_sampling`). Returns the clips, ordered video by
    video (`(B * K, T, C, H, W)`), and K.
    """
    if sampling not in CLIP_LAYOUTS:
        raise ValueError(f"`clip_sampling` must be one of {CLIP_LAYOUTS}, got {sampling!r}.")
    total = pixel_values.shape[1]
    if total % num_frames:
        raise ValueError(
            f"Videos of {total} frames cannot be cut into clips of {num_frames} frames (the model's clip length)."
        )
    num_clips = total // num_frames
    return split_clips(pixel_values, num_clips, sampling, dim=1).flatten(0, 1), num_clips


def aggregate_clips(scores: torch.Tensor, how: str = "lse", dim: int = -1) -> torch.Tensor:
    """Combine per-clip scores: `"lse"` (log-sum-exp, the release's default), `"mean"` or `"max"`."""
    if how == "lse":
        return torch.logsumexp(scores, dim=dim)
    if how == "mean":
        return scores.mean(dim=dim)
    if how == "max":
        return scores.max(dim=dim).values
    raise ValueError(f"`clip_aggregation` must be one of {CLIP_AGGREGATIONS}, got {how!r}.")


__all__ = ["CLIP_AGGREGATIONS", "aggregate_clips", "split_into_clips"]
