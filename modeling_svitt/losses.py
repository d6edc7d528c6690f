"""Losses of SViTT and SViTT-Ego, and the sampling that feeds them.

Everything the task heads optimise lives here, so that every head (and every training script) uses one
implementation:

* video-text contrastive learning (ITC): multi-positive soft targets (SViTT) or EgoNCE
  (SViTT-Ego: action-aware positives, scene-aware negatives), optionally with negatives gathered from
  every process through a gradient-carrying all-gather;
* video-text matching (ITM): hard negatives drawn from the similarity distribution;
* masked language modelling (MLM): the release's 80/10/10 masking and its loss;
* the answer decoder's teacher-forced sequence likelihood (video QA);
* multiple choice cross-entropy (EgoMCQ).

Randomness (ITM negatives, MLM masks) is drawn on the input's device from an optional
`torch.Generator`, and every random quantity can be supplied explicitly instead, so a training step can
be replayed exactly.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .configuration_svitt import CONTRASTIVE_LOSSES, EGONCE_POSITIVE_RULES

IGNORE_INDEX = -100
"""Label value ignored by every token-level loss (the PyTorch / transformers convention)."""

# ---------------------------------------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------------------------------------


def _distributed_world(group=None) -> tuple[int, int]:
    """(world size, rank) of `group`, or (1, 0) when torch.distributed is not in use."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def _gather_sizes(tensor: torch.Tensor, group, world_size: int) -> list[int]:
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    return [int(s.item()) for s in sizes]


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] == rows:
        return tensor.contiguous()
    padding = tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))
    return torch.cat([tensor, padding], dim=0).contiguous()


def _all_gather_rows(
    tensor: torch.Tensor, group, world_size: int, sizes: list[int] | None = None
) -> tuple[torch.Tensor, list[int]]:
    """All-gather along dim 0 with uneven row counts (padded for the collective, trimmed after); returns the sizes.

    `sizes` (every process's row count, from `gather_row_counts`) saves the collective that reads them.
    """
    if sizes is None:
        sizes = _gather_sizes(tensor, group, world_size)
    max_rows = max(sizes)
    buffers = [tensor.new_empty((max_rows, *tensor.shape[1:])) for _ in range(world_size)]
    dist.all_gather(buffers, _pad_rows(tensor, max_rows), group=group)
    return torch.cat([buffer[:size] for buffer, size in zip(buffers, sizes)], dim=0), sizes


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward routes every process's gradient back to the tensor's owner.

    Each process computes its loss on its own rows against everybody's rows, so the gradient of the
    gathered tensor is summed over processes (all-reduce) and each process keeps the slice it owns.
    Together with DDP's gradient averaging this is the gradient of the mean of the per-process losses.
    Uneven batch sizes (the last batch of an epoch) are padded for the collective and trimmed afterwards.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group, sizes: list[int] | None) -> torch.Tensor:
        world_size, rank = _distributed_world(group)
        gathered, sizes = _all_gather_rows(tensor, group, world_size, sizes)
        ctx.group = group
        ctx.sizes = sizes
        ctx.rank = rank
        return gathered

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad = grad_output.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None, None


def all_gather_with_grad(tensor: torch.Tensor, group=None, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate `tensor` (rows along dim 0) from every process, keeping the gradient path to each owner.

    Returns `tensor` itself when torch.distributed is not initialised or the group has one process, so
    single-process code pays nothing. Batch sizes may differ between processes; pass `sizes`
    (`gather_row_counts`) when they are known, to skip reading them again.
    """
    world_size, _ = _distributed_world(group)
    if world_size == 1:
        return tensor
    return _AllGatherWithGrad.apply(tensor, group, sizes)


@torch.no_grad()
def all_gather_no_grad(tensor: torch.Tensor, group=None, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate `tensor` (rows along dim 0) from every process, without gradient (ids, tags, masks)."""
    world_size, _ = _distributed_world(group)
    if world_size == 1:
        return tensor
    return _all_gather_rows(tensor, group, world_size, sizes)[0]


def gather_row_counts(tensor: torch.Tensor, group=None) -> list[int]:
    """Every process's number of rows of `tensor` (one collective and one host read; `[len]` in one process)."""
    world_size, _ = _distributed_world(group)
    if world_size == 1:
        return [tensor.shape[0]]
    return _gather_sizes(tensor, group, world_size)


def local_row_offset(tensor: torch.Tensor, group=None) -> int:
    """Index of this process's first row inside the output of `all_gather_with_grad(tensor)`."""
    return sum(gather_row_counts(tensor, group)[: _distributed_world(group)[1]])


# ---------------------------------------------------------------------------------------------------------------------
# Video-text contrastive learning
# ---------------------------------------------------------------------------------------------------------------------


def positive_mask_from_ids(row_ids: torch.Tensor, column_ids: torch.Tensor | None = None) -> torch.Tensor:
    """`(R, C)` bool: row i and column j show the same video (equal match ids)."""
    column_ids = row_ids if column_ids is None else column_ids
    return row_ids.reshape(-1, 1) == column_ids.reshape(1, -1)


def similarity_logits(
    queries: torch.Tensor, keys: torch.Tensor, temperature: torch.Tensor | float
) -> torch.Tensor:
    """`queries @ keys^T / temperature`: the scaled cosine similarities every contrastive score of SViTT uses.

    Computed in float32 (also under autocast or with a bf16 model: the temperature is small, so low-precision
    logits would be coarse) on `queries`' device, to which `keys` and the temperature are moved (towers placed on
    different devices). `(..., n, E)` and `(..., m, E)` give `(..., n, m)`.
    """
    device = queries.device
    if torch.is_tensor(temperature):
        temperature = temperature.to(device=device, dtype=torch.float32)
    keys = keys.to(device=device, dtype=torch.float32)
    # autocast would run the product in half precision whatever the input dtype
    no_autocast = (
        torch.autocast(device.type, enabled=False) if torch.amp.is_autocast_available(device.type) else nullcontext()
    )
    with no_autocast:
        return queries.float() @ keys.transpose(-1, -2) / temperature


def _check_every_row_has_a_positive(positive_mask: torch.Tensor, loss_name: str) -> None:
    if bool((positive_mask.sum(dim=1) == 0).any()):
        raise ValueError(f"Every row of {loss_name} needs at least one positive (its own pair).")


def _soft_target_cross_entropy(logits: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    # unchecked: every caller guarantees a positive per row (no host synchronisation in the training step)
    num_positives = positive_mask.sum(dim=1, keepdim=True)
    targets = positive_mask.to(logits.dtype) / num_positives.to(logits.dtype)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def soft_target_cross_entropy(logits: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every row against the uniform distribution over that row's positives, averaged over rows.

    This is the release's multi-positive ITC target: `Y[i, j] = 1[j is a positive of i]`, each
    row normalised to sum 1. It reduces to ordinary InfoNCE when the only positive is the diagonal.
    """
    if logits.shape != positive_mask.shape:
        raise ValueError(f"`logits` {tuple(logits.shape)} and `positive_mask` {tuple(positive_mask.shape)} differ.")
    _check_every_row_has_a_positive(positive_mask, "a contrastive loss")
    return _soft_target_cross_entropy(logits, positive_mask)


def multi_positive_contrastive_loss(
    logits_per_video: torch.Tensor,
    logits_per_text: torch.Tensor,
    video_positive_mask: torch.Tensor,
    text_positive_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """SViTT's ITC loss: mean of the video->text and text->video soft-target cross-entropies.

    Args:
        logits_per_video: `(Bv, Nt)` scaled similarities of (local) videos to (possibly gathered) texts.
        logits_per_text: `(Bt, Nv)` scaled similarities of (local) texts to (possibly gathered) videos.
        video_positive_mask: `(Bv, Nt)` bool positives of each video row.
        text_positive_mask: `(Bt, Nv)` bool positives of each text row; defaults to `video_positive_mask.T`
            (valid when nothing was gathered, i.e. both matrices are the same batch).
    """
    if text_positive_mask is None:
        text_positive_mask = video_positive_mask.T
    loss_v2t = soft_target_cross_entropy(logits_per_video, video_positive_mask)
    loss_t2v = soft_target_cross_entropy(logits_per_text, text_positive_mask)
    return (loss_v2t + loss_t2v) / 2


def _shares_tag(row_tags: torch.Tensor, column_tags: torch.Tensor) -> torch.Tensor:
    """`(R, C)` bool: the multi-hot tag vectors of row i and column j have a class in common."""
    return (row_tags.float() @ column_tags.float().T) > 0


def egonce_positive_mask(
    row_match_ids: torch.Tensor,
    column_match_ids: torch.Tensor,
    *,
    row_verb_tags: torch.Tensor | None = None,
    column_verb_tags: torch.Tensor | None = None,
    row_noun_tags: torch.Tensor | None = None,
    column_noun_tags: torch.Tensor | None = None,
    rule: str = "verb_and_noun",
    row_video_ids: torch.Tensor | None = None,
    column_video_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positives of EgoNCE: own pairs, plus action-aware positives, minus scene-aware negatives.

    * Action-aware positives (EgoVLP): pairs whose narrations share the action. `rule` says what that
      means: `"verb_and_noun"` (at least one verb class and at least one noun class in common; EgoVLP's
      default), `"verb_or_noun"`, `"verb"` or `"noun"`. Tags are multi-hot `(B, num_verbs)` /
      `(B, num_nouns)` vectors.
    * Scene-aware negatives: when video ids are given, another clip of the *same* video is always a
      negative, even if its narration shares tags (neighbouring clips of one video share objects and
      often verbs; they are in the batch precisely to be told apart). Without video ids the mask is
      exactly EgoVLP's.
    * Pairs with equal match ids are always positives.
    """
    if rule not in EGONCE_POSITIVE_RULES:
        raise ValueError(f"`rule` must be one of {EGONCE_POSITIVE_RULES}, got {rule!r}.")
    positives = positive_mask_from_ids(row_match_ids, column_match_ids)
    needs_verbs = rule != "noun"
    needs_nouns = rule != "verb"
    if needs_verbs and (row_verb_tags is None or column_verb_tags is None):
        raise ValueError(f"EgoNCE with rule {rule!r} needs `verb_tags`.")
    if needs_nouns and (row_noun_tags is None or column_noun_tags is None):
        raise ValueError(f"EgoNCE with rule {rule!r} needs `noun_tags`.")
    if rule == "verb":
        action = _shares_tag(row_verb_tags, column_verb_tags)
    elif rule == "noun":
        action = _shares_tag(row_noun_tags, column_noun_tags)
    elif rule == "verb_and_noun":
        action = _shares_tag(row_verb_tags, column_verb_tags) & _shares_tag(row_noun_tags, column_noun_tags)
    else:
        action = _shares_tag(row_verb_tags, column_verb_tags) | _shares_tag(row_noun_tags, column_noun_tags)
    if (row_video_ids is None) != (column_video_ids is None):
        raise ValueError("Pass video ids for both rows and columns, or for neither.")
    if row_video_ids is not None:
        action &= ~positive_mask_from_ids(row_video_ids, column_video_ids)
    return positives | action


def scene_aware_negative_mask(
    row_video_ids: torch.Tensor, column_video_ids: torch.Tensor, positive_mask: torch.Tensor
) -> torch.Tensor:
    """`(R, C)` bool: the scene-aware (hard) negatives, i.e. the other clips of the same video in the batch.

    EgoVLP builds each batch so that every clip comes with a clip of the same video showing a different
    moment; those pairs stay in the softmax denominator as negatives (for logging / analysis).
    """
    same_video = positive_mask_from_ids(row_video_ids, column_video_ids)
    return same_video & ~positive_mask


def _log_positive_probability(logits: torch.Tensor, positive_mask: torch.Tensor) -> torch.Tensor:
    """`log sum_{j in P(i)} softmax(logits_i)_j` per row, computed with log-sum-exp for stability."""
    masked = logits.masked_fill(~positive_mask, float("-inf"))
    return torch.logsumexp(masked, dim=1) - torch.logsumexp(logits, dim=1)


def egonce_loss(
    logits_per_video: torch.Tensor,
    logits_per_text: torch.Tensor,
    video_positive_mask: torch.Tensor,
    text_positive_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """EgoNCE: `-log` of the softmax mass on the action-aware positives, averaged over rows and directions.

    EgoVLP sums the two directions; this averages them, like SViTT's ITC, so that switching
    `contrastive_loss` between "infonce" and "egonce" keeps the loss scale (and the loss weights) comparable.
    With only own pairs as positives it equals InfoNCE. The negatives are every other column of the row,
    which includes the scene-aware negatives when the batch holds several clips of one video.
    """
    if text_positive_mask is None:
        text_positive_mask = video_positive_mask.T
    _check_every_row_has_a_positive(video_positive_mask, "EgoNCE")
    _check_every_row_has_a_positive(text_positive_mask, "EgoNCE")
    return _egonce_loss(logits_per_video, logits_per_text, video_positive_mask, text_positive_mask)


def _egonce_loss(
    logits_per_video: torch.Tensor,
    logits_per_text: torch.Tensor,
    video_positive_mask: torch.Tensor,
    text_positive_mask: torch.Tensor,
) -> torch.Tensor:
    # unchecked: every caller guarantees a positive per row
    loss_v2t = -_log_positive_probability(logits_per_video, video_positive_mask).mean()
    loss_t2v = -_log_positive_probability(logits_per_text, text_positive_mask).mean()
    return (loss_v2t + loss_t2v) / 2


@dataclass
class ContrastiveLossOutput:
    """What `itc_loss` computed.

    Attributes:
        loss: the scalar loss.
        logits_per_video: `(B, N)` scaled similarities of the local videos to all (gathered) texts.
        logits_per_text: `(B, N)` scaled similarities of the local texts to all (gathered) videos.
        video_positive_mask / text_positive_mask: the positives each row was trained towards.
        local_offset: column of the first local sample inside the gathered axis (0 without gathering).
    """

    loss: torch.Tensor
    logits_per_video: torch.Tensor
    logits_per_text: torch.Tensor
    video_positive_mask: torch.Tensor
    text_positive_mask: torch.Tensor
    local_offset: int = 0


class _ContrastiveLabels(NamedTuple):
    """What decides the positives of a contrastive batch, one entry per row (see `itc_loss`)."""

    match_ids: torch.Tensor | None
    verb_tags: torch.Tensor | None
    noun_tags: torch.Tensor | None
    video_ids: torch.Tensor | None

    def to(self, device: torch.device) -> _ContrastiveLabels:
        return _ContrastiveLabels(*(None if label is None else label.to(device) for label in self))


_CONTRASTIVE_LABELS = _ContrastiveLabels._fields


@dataclass
class ContrastiveCache:
    """The contrastive inputs of every micro-batch of one accumulated batch, computed without gradient.

    Accumulating gradients over k micro-batches naively contrasts each micro-batch only against its own rows: k times
    fewer ITC / EgoNCE negatives than the batch the optimiser steps on. With a cache the contrastive loss covers the
    whole accumulated batch (the method of open_clip's `--accum-freq`):

    1. run every micro-batch without gradient and [`~ContrastiveCache.add`] its embeddings and labels;
    2. run every micro-batch again with gradient, passing `contrastive_cache=cache, micro_batch_index=j` to the model
       (or `cache`, `micro_batch_index` to [`itc_loss`]), and back-propagate each micro-batch's loss divided by k
       (what `accelerator.backward` does when accumulating k micro-batches).

    In step 2 the loss of micro-batch j is the loss of the accumulated batch in which j's rows are the fresh embeddings
    (with gradient) and every other row the cached ones; its gradients are scaled (`scale_loss`, `share_temperature`)
    so that the k backward passes add up to the gradient of the accumulated batch's loss. That is exact when step 2
    reproduces the cached embeddings: same weights and the same randomness (seed both passes of a micro-batch alike).
    Labels (`match_ids`, EgoNCE's tags and `video_ids`) are given by every micro-batch or by none; without `match_ids`
    every row of the accumulated batch is its own video.
    """

    video_embeds: list[torch.Tensor] = field(default_factory=list)
    text_embeds: list[torch.Tensor] = field(default_factory=list)
    labels: list[dict[str, torch.Tensor | None]] = field(default_factory=list)

    def add(
        self,
        video_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        match_ids: torch.Tensor | None = None,
        *,
        verb_tags: torch.Tensor | None = None,
        noun_tags: torch.Tensor | None = None,
        video_ids: torch.Tensor | None = None,
    ) -> None:
        """Append the next micro-batch: its `(B, E)` embeddings (stored detached) and its labels."""
        if video_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(f"`video_embeds` has {video_embeds.shape[0]} rows, `text_embeds` {text_embeds.shape[0]}.")
        labels = dict(match_ids=match_ids, verb_tags=verb_tags, noun_tags=noun_tags, video_ids=video_ids)
        if self.labels:
            self._check_same_labels(labels, len(self.labels))
        self.video_embeds.append(video_embeds.detach())
        self.text_embeds.append(text_embeds.detach())
        self.labels.append({key: None if value is None else value.detach() for key, value in labels.items()})

    def __len__(self) -> int:
        return len(self.video_embeds)

    def _check_same_labels(self, labels: dict[str, torch.Tensor | None], index: int) -> None:
        for key in _CONTRASTIVE_LABELS:
            if (labels[key] is None) != (self.labels[0][key] is None):
                given, missing = (index, 0) if labels[key] is not None else (0, index)
                raise ValueError(
                    f"Micro-batch {given} gives `{key}` and micro-batch {missing} does not: give it for every "
                    "micro-batch of the accumulated batch or for none."
                )

    def accumulated_batch(
        self, index: int, video_embeds: torch.Tensor, text_embeds: torch.Tensor, **labels: torch.Tensor | None
    ) -> tuple[slice, dict[str, torch.Tensor | None]]:
        """The accumulated batch with micro-batch `index` replaced by the given (fresh) tensors: the rows of that
        micro-batch, and `video_embeds`, `text_embeds` and the labels (`None` where no micro-batch gives one)."""
        if not 0 <= index < len(self):
            raise ValueError(f"`micro_batch_index` must be in [0, {len(self)}) (the cached micro-batches), got {index}")
        if video_embeds.shape[0] != self.video_embeds[index].shape[0]:
            raise ValueError(
                f"Micro-batch {index} has {video_embeds.shape[0]} rows; {self.video_embeds[index].shape[0]} were cached"
            )
        self._check_same_labels(labels, index)
        start = sum(cached.shape[0] for cached in self.video_embeds[:index])
        device = text_embeds.device

        def join(cached: list[torch.Tensor], fresh: torch.Tensor) -> torch.Tensor:
            parts = [tensor.to(device) for tensor in cached]
            parts[index] = fresh.to(device)
            return torch.cat(parts)

        batch = {
            "video_embeds": join(self.video_embeds, video_embeds),
            "text_embeds": join(self.text_embeds, text_embeds),
        }
        for key in _CONTRASTIVE_LABELS:
            fresh = labels[key]
            batch[key] = None if fresh is None else join([cached[key] for cached in self.labels], fresh)
        return slice(start, start + video_embeds.shape[0]), batch

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """`loss` with its gradient multiplied by the number of micro-batches: accumulation back-propagates the mean of
        the micro-batches' losses, whereas the accumulated batch's gradient is the sum of what each micro-batch's
        embeddings contribute (they are live in their own micro-batch's pass only)."""
        return _scale_gradient(loss, len(self))

    def share_temperature(self, temperature: torch.Tensor | float) -> torch.Tensor | float:
        """The temperature with its gradient divided by the number of micro-batches: unlike the embeddings it is live
        in every micro-batch's pass, each of which sees the whole accumulated batch's gradient."""
        if not torch.is_tensor(temperature):
            return temperature
        return _scale_gradient(temperature, 1 / len(self))


def _scale_gradient(tensor: torch.Tensor, factor: float) -> torch.Tensor:
    # the value stays exactly `tensor` (the added term is zero); only the gradient is multiplied by `factor`
    return tensor.detach() + (tensor - tensor.detach()) * factor


def itc_loss(
    video_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    temperature: torch.Tensor | float,
    match_ids: torch.Tensor | None = None,
    *,
    loss_type: str = "infonce",
    verb_tags: torch.Tensor | None = None,
    noun_tags: torch.Tensor | None = None,
    video_ids: torch.Tensor | None = None,
    egonce_rule: str = "verb_and_noun",
    gather_across_processes: bool = False,
    group=None,
    cache: ContrastiveCache | None = None,
    micro_batch_index: int | None = None,
) -> ContrastiveLossOutput:
    """ITC between L2-normalised video and text embeddings, the way the SViTT heads train it.

    Args:
        video_embeds, text_embeds: `(B, E)` normalised embeddings of paired videos and texts (row i = pair i).
        temperature: similarities are divided by it (the model's learnable, clamped temperature).
        match_ids: `(B,)` ids; equal ids mark the same video (several captions of one video are positives of
            each other). Defaults to `arange(B)` (only the own pair is positive). With gathering they must be
            unique across processes (e.g. dataset indices of the videos).
        loss_type: `"infonce"` (multi-positive soft targets, SViTT) or `"egonce"` (SViTT-Ego).
        verb_tags, noun_tags: `(B, num_verbs)` / `(B, num_nouns)` multi-hot tags, for EgoNCE.
        video_ids: `(B,)` source video of every clip, for EgoNCE's scene-aware negatives (optional).
        egonce_rule: which tag overlap makes an EgoNCE positive (see `egonce_positive_mask`).
        gather_across_processes: contrast the local rows against the embeddings of every process (the
            release does not; off by default). Gradients flow back to their owners.
        cache, micro_batch_index: gradient accumulation with the contrastive batch of the whole accumulated batch
            (see [`ContrastiveCache`]): the given tensors are micro-batch `micro_batch_index`, the other micro-batches
            come from `cache`. The loss is then the accumulated batch's, with the gradients scaled so that the mean over
            the micro-batches back-propagates the accumulated batch's gradient (`ContrastiveCache.scale_loss`,
            `share_temperature`); the logits and masks are the micro-batch's rows against every column, and
            `local_offset` points at the micro-batch's first column.
    """
    if (cache is None) != (micro_batch_index is None):
        raise ValueError("Pass `cache` and `micro_batch_index` together (or neither).")
    if loss_type not in CONTRASTIVE_LOSSES:
        raise ValueError(f"`loss_type` must be one of {CONTRASTIVE_LOSSES}, got {loss_type!r}.")
    labels = _ContrastiveLabels(match_ids, verb_tags, noun_tags, video_ids)
    rows = None
    if cache is not None:
        rows, accumulated = cache.accumulated_batch(micro_batch_index, video_embeds, text_embeds, **labels._asdict())
        video_embeds, text_embeds = accumulated["video_embeds"], accumulated["text_embeds"]
        labels = _ContrastiveLabels(*(accumulated[key] for key in _CONTRASTIVE_LABELS))
        temperature = cache.share_temperature(temperature)
    # everything is combined on the text side (where the fusion layers also run when the towers are split)
    device = text_embeds.device
    video_embeds = video_embeds.to(device)
    if labels.match_ids is None:
        if gather_across_processes and _distributed_world(group)[0] > 1:
            raise ValueError("`match_ids` unique across processes are required when gathering negatives.")
        labels = labels._replace(match_ids=torch.arange(video_embeds.shape[0], device=device))
    labels = labels.to(device)

    offset, all_video_embeds, all_text_embeds, all_labels = 0, video_embeds, text_embeds, labels
    if gather_across_processes:
        offset, all_video_embeds, all_text_embeds, all_labels = _gather_contrastive_batch(
            video_embeds, text_embeds, labels, group
        )
    logits_per_video = similarity_logits(video_embeds, all_text_embeds, temperature)
    logits_per_text = similarity_logits(text_embeds, all_video_embeds, temperature)
    loss, positives = _contrastive_loss(
        logits_per_video, logits_per_text, labels, all_labels, loss_type=loss_type, egonce_rule=egonce_rule
    )
    if rows is not None:
        loss = cache.scale_loss(loss)
        logits_per_video, logits_per_text, positives = logits_per_video[rows], logits_per_text[rows], positives[rows]
        offset += rows.start
    # Videos and texts are paired row by row, so both directions share one positive structure.
    return ContrastiveLossOutput(loss, logits_per_video, logits_per_text, positives, positives, offset)


def _contrastive_loss(
    logits_per_video: torch.Tensor,
    logits_per_text: torch.Tensor,
    labels: _ContrastiveLabels,
    all_labels: _ContrastiveLabels,
    *,
    loss_type: str,
    egonce_rule: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of the local rows against every column, and the positives `(B, N)` both directions share (videos
    and texts are paired row by row)."""
    # Own pairs are always positives, so no row lacks one: the unchecked losses need no host synchronisation.
    if loss_type == "infonce":
        positives = positive_mask_from_ids(labels.match_ids, all_labels.match_ids)
        loss_v2t = _soft_target_cross_entropy(logits_per_video, positives)
        return (loss_v2t + _soft_target_cross_entropy(logits_per_text, positives)) / 2, positives
    positives = egonce_positive_mask(
        labels.match_ids,
        all_labels.match_ids,
        row_verb_tags=labels.verb_tags,
        column_verb_tags=all_labels.verb_tags,
        row_noun_tags=labels.noun_tags,
        column_noun_tags=all_labels.noun_tags,
        rule=egonce_rule,
        row_video_ids=labels.video_ids,
        column_video_ids=all_labels.video_ids,
    )
    return _egonce_loss(logits_per_video, logits_per_text, positives, positives), positives


def _gather_contrastive_batch(
    video_embeds: torch.Tensor, text_embeds: torch.Tensor, labels: _ContrastiveLabels, group
) -> tuple[int, torch.Tensor, torch.Tensor, _ContrastiveLabels]:
    """The batch of every process: this process's first row, the embeddings (gradients flow back to their owners)
    and the labels."""
    # the row counts are read once (the only host synchronisation of the loss) and shared by every gather
    sizes = gather_row_counts(video_embeds, group)
    offset = sum(sizes[: _distributed_world(group)[1]])
    all_video_embeds = all_gather_with_grad(video_embeds, group, sizes)
    all_text_embeds = all_gather_with_grad(text_embeds, group, sizes)
    gathered = (None if label is None else all_gather_no_grad(label, group, sizes) for label in labels)
    return offset, all_video_embeds, all_text_embeds, _ContrastiveLabels(*gathered)


# ---------------------------------------------------------------------------------------------------------------------
# Video-text matching
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_itm_negatives(
    similarity: torch.Tensor,
    positive_mask: torch.Tensor,
    *,
    hard: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one negative column for every row of a similarity matrix (ITM hard negatives).

    With `hard=True` the negative of row i is drawn with probability `softmax(similarity[i])` restricted to
    the non-positive columns (the release draws from the full softmax with positives zeroed: the same
    distribution, but computed here without the underflow that makes `multinomial` fail at low
    temperature). With `hard=False` it is uniform over the non-positive columns.

    Positives are never drawn, including other captions of the same video (equal match ids). A row whose
    every column is positive (for instance a batch of one) has no negative: its entry is `-1`, and the
    caller leaves that pair out instead of crashing as the release does.

    Args:
        similarity: `(R, C)` scores; for "negative video of each text" pass the text-to-video similarities.
        positive_mask: `(R, C)` bool.
        generator: optional generator on `similarity`'s device, for reproducible draws.

    Returns:
        `(R,)` long column indices, `-1` where a row has no negative.
    """
    if similarity.shape != positive_mask.shape:
        raise ValueError(
            f"`similarity` {tuple(similarity.shape)} and `positive_mask` {tuple(positive_mask.shape)} differ."
        )
    has_negative = (~positive_mask).any(dim=1)
    if hard:
        masked = similarity.float().masked_fill(positive_mask, float("-inf"))
        # Rows without a negative would be all -inf (NaN softmax); give them a dummy uniform row instead.
        masked = masked.masked_fill(~has_negative[:, None], 0.0)
        weights = torch.softmax(masked, dim=1)
    else:
        weights = (~positive_mask).float().masked_fill(~has_negative[:, None], 1.0)
    if weights.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=similarity.device)
    drawn = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return drawn.masked_fill(~has_negative, -1)


def image_text_matching_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ITM cross-entropy over the (positive and negative) pairs; class 1 = match."""
    return F.cross_entropy(logits.float(), labels.to(logits.device))


# ---------------------------------------------------------------------------------------------------------------------
# Masked language modelling
# ---------------------------------------------------------------------------------------------------------------------


def mask_tokens_for_mlm(
    input_ids: torch.Tensor,
    *,
    vocab_size: int,
    mask_token_id: int,
    mlm_probability: float = 0.5,
    special_token_ids: Iterable[int] = (0, 101),
    attention_mask: torch.Tensor | None = None,
    mask_replace_probability: float = 0.8,
    random_replace_probability: float = 0.1,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt token ids for MLM the way the release does, on the input's device.

    Each position is selected with probability `mlm_probability`, except the ids in `special_token_ids`
    (the release never masks `[PAD]` and `[CLS]`; ALBEF-style text has no `[SEP]`) and, when given,
    positions where `attention_mask` is 0. Of the selected positions, `mask_replace_probability` become
    `[MASK]`, `random_replace_probability` become a uniformly random id in `[0, vocab_size)` (special ids
    included, as in the release) and the rest stay unchanged.

    Returns:
        `(masked_input_ids, labels)`: labels hold the original id at selected positions and -100 elsewhere.
    """
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"`mlm_probability` must be in [0, 1], got {mlm_probability}.")
    if mask_replace_probability + random_replace_probability > 1.0:
        raise ValueError("`mask_replace_probability + random_replace_probability` must not exceed 1.")
    device = input_ids.device
    selected = torch.rand(input_ids.shape, device=device, generator=generator) < mlm_probability
    special = torch.zeros_like(selected)
    for token_id in special_token_ids:
        special |= input_ids == token_id
    if attention_mask is not None:
        special |= attention_mask == 0
    selected &= ~special

    labels = input_ids.masked_fill(~selected, IGNORE_INDEX)
    # One uniform draw decides between [MASK], random id and unchanged, so the split is exact in expectation.
    choice = torch.rand(input_ids.shape, device=device, generator=generator)
    to_mask = selected & (choice < mask_replace_probability)
    to_random = selected & ~to_mask & (choice < mask_replace_probability + random_replace_probability)
    random_ids = torch.randint(vocab_size, input_ids.shape, device=device, generator=generator, dtype=input_ids.dtype)

    masked_input_ids = input_ids.masked_fill(to_mask, mask_token_id)
    masked_input_ids = torch.where(to_random, random_ids, masked_input_ids)
    return masked_input_ids, labels


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the positions with a label (mean over the batch's masked tokens).

    A batch without any masked token (possible with short texts) gives a zero loss that still belongs to
    the graph, rather than the NaN of an empty mean.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1).to(flat_logits.device)
    # sum / count rather than a mean with a data-dependent branch: no host synchronisation in the training step
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (flat_labels != IGNORE_INDEX).sum().clamp(min=1)


# ---------------------------------------------------------------------------------------------------------------------
# Answer decoder (video QA) and multiple choice
# ---------------------------------------------------------------------------------------------------------------------


def answer_token_labels(answer_input_ids: torch.Tensor, answer_attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Decoder targets: the answer ids with padding replaced by -100 (the BOS at position 0 is never a target)."""
    if answer_attention_mask is None:
        return answer_input_ids.clone()
    return answer_input_ids.masked_fill(answer_attention_mask == 0, IGNORE_INDEX)


def sequence_negative_log_likelihood(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forced NLL of every sequence: the sum over its labelled tokens.

    Position t of `logits (N, L, V)` predicts token t+1 of `labels (N, L)`; labels of -100 are skipped.
    Returns `(N,)`.
    """
    shifted_logits = logits[:, :-1].float()
    shifted_labels = labels[:, 1:]
    token_nll = F.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return token_nll.view(shifted_labels.shape).sum(dim=1)


def answer_decoder_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    answer_weights: torch.Tensor | None,
    num_questions: int,
) -> torch.Tensor:
    """The release's weighted answer loss: `sum_a weight_a * NLL_a / num_questions`.

    Every ground-truth answer of a question is decoded with teacher forcing; its NLL is the sum over its
    tokens (no label smoothing), weighted by the answer's share of the annotators' answers.
    """
    return weighted_answer_loss(sequence_negative_log_likelihood(logits, labels), answer_weights, num_questions)


def weighted_answer_loss(
    answer_nll: torch.Tensor, answer_weights: torch.Tensor | None, num_questions: int
) -> torch.Tensor:
    """`sum_a weight_a * answer_nll_a / num_questions`, from per-answer NLLs `(num_answers,)`."""
    if answer_weights is not None:
        answer_nll = answer_nll * answer_weights.to(device=answer_nll.device, dtype=answer_nll.dtype)
    return answer_nll.sum() / num_questions


def multiple_choice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the candidates of every question: `logits (B, N)`, `labels (B,)`."""
    return F.cross_entropy(logits.float(), labels)


__all__ = [
    "IGNORE_INDEX",
    "ContrastiveCache",
    "ContrastiveLossOutput",
    "all_gather_no_grad",
    "all_gather_with_grad",
    "answer_decoder_loss",
    "answer_token_labels",
    "egonce_loss",
    "egonce_positive_mask",
    "gather_row_counts",
    "image_text_matching_loss",
    "itc_loss",
    "local_row_offset",
    "mask_tokens_for_mlm",
    "masked_lm_loss",
    "multi_positive_contrastive_loss",
    "multiple_choice_loss",
    "positive_mask_from_ids",
    "sample_itm_negatives",
    "scene_aware_negative_mask",
    "sequence_negative_log_likelihood",
    "similarity_logits",
    "soft_target_cross_entropy",
    "weighted_answer_loss",
]
