"""Node sparsity: keep the most informative video tokens, drop the rest.

Two places prune, with one mechanism: the video tower scores patch tokens by the [CLS] query's attention, and
the fusion layers can score video tokens by the text's cross-attention. Both keep `ceil(rate * n)` tokens,
re-sorted into their current order, always keep the global tokens, and report which tokens survived.
"""

from __future__ import annotations

import math

import torch


def num_tokens_to_keep(num_tokens: int, keep_rate: float) -> int:
    return min(num_tokens, max(1, math.ceil(keep_rate * num_tokens)))


def top_token_indices(scores: torch.Tensor, keep_rate: float) -> torch.Tensor:
    """`(B, n)` scores -> `(B, k)` indices of the best `ceil(rate * n)` tokens, in ascending order."""
    keep = num_tokens_to_keep(scores.shape[1], keep_rate)
    return scores.topk(keep, dim=1).indices.sort(dim=1).values


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Select `indices` (B, k) along dim 1 of `tokens` (B, n, ...).

    Indexing rather than `torch.gather`: its backward keeps only the indices, where `gather` would keep the whole
    unpruned `tokens` alive until backward.
    """
    rows = torch.arange(indices.shape[0], device=indices.device)[:, None]
    return tokens[rows, indices]


def keep_tokens(
    hidden_states: torch.Tensor, scores: torch.Tensor, keep_rate: float, num_global_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the `G = num_global_tokens` global tokens and the best-scoring others of `hidden_states (B, G + n, D)`.

    Returns the pruned sequence `(B, G + k, D)` and the kept indices `(B, k)` among the n non-global tokens.
    """
    kept = top_token_indices(scores, keep_rate)
    global_tokens, other_tokens = hidden_states[:, :num_global_tokens], hidden_states[:, num_global_tokens:]
    pruned = torch.cat([global_tokens, gather_tokens(other_tokens, kept)], dim=1)
    return pruned, kept


def video_token_scores(
    global_attention: torch.Tensor | None,
    strategy: str,
    num_tokens: int,
    num_global_tokens: int,
    random_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores of the patch tokens at a drop layer of the video tower.

    `cls_attn`: head-mean attention of the first global query `(B, H, G, G + n)` to each patch token.
    `random`: `random_scores` (B, n), drawn by the caller so that gradient checkpointing replays them.
    """
    if strategy == "cls_attn":
        if global_attention is None:
            raise ValueError("The 'cls_attn' token keep strategy needs the [CLS] attention of the drop layer.")
        return global_attention[:, :, 0, num_global_tokens:].mean(dim=1)
    if strategy == "random":
        if random_scores is None or random_scores.shape[1] != num_tokens:
            raise ValueError(f"The 'random' token keep strategy needs random scores for {num_tokens} tokens.")
        return random_scores
    raise ValueError(f"Unknown token keep strategy {strategy!r}.")


def text_guided_video_scores(
    cross_attention: torch.Tensor,
    text_attention_mask: torch.Tensor | None,
    strategy: str,
    num_global_tokens: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Scores of the non-global video tokens from the text->video cross-attention `(B, H, Lt, G + n)`, `G` global.

    `cls_attn`: the text [CLS] row; `avg_attn`: the mean over real (unpadded) text queries; `random`: uniform
    scores drawn on the attention's device from `generator` (a generator on that device; the global RNG if None).
    """
    probs = cross_attention.mean(dim=1)[..., num_global_tokens:]  # (B, Lt, n)
    if strategy == "cls_attn":
        return probs[:, 0]
    if strategy == "avg_attn":
        if text_attention_mask is None:
            return probs.mean(dim=1)
        weights = text_attention_mask.to(device=probs.device, dtype=probs.dtype)[..., None]
        return (probs * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    if strategy == "random":
        return torch.rand(probs[:, 0].shape, generator=generator, device=probs.device)
    raise ValueError(f"Unknown fusion token keep strategy {strategy!r}.")


__all__ = [
    "gather_tokens",
    "keep_tokens",
    "num_tokens_to_keep",
    "text_guided_video_scores",
    "top_token_indices",
    "video_token_scores",
]
