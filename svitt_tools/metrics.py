"""Evaluation metrics of SViTT / SViTT-Ego in plain torch (no network, no `evaluate` needed).

* Retrieval (text-to-video and video-to-text): R@K, median rank, mean rank, with any number of ground
  truths per query (several captions per video, or several videos per caption as in SSv2-label).
* Video QA: exact-match accuracy of the predicted answer.
* EgoMCQ: inter-video and intra-video accuracy, following the official EgoVLP / LaViLa scoring.

Every metric accepts optional sample `ids`. Results gathered across processes contain duplicates when a
distributed sampler pads uneven shards; rows with a repeated id are dropped (first occurrence kept), so
the numbers equal a single-process evaluation. The `evaluate` modules in the repository's `metrics/`
folder call these functions; they are the single implementation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from modeling_svitt.losses import all_gather_no_grad

TIE_BREAKS = ("pessimistic", "optimistic")

EGOMCQ_INTER_VIDEO = 1
"""EgoMCQ `types` value of the inter-video setting (candidates from different videos)."""
EGOMCQ_INTRA_VIDEO = 2
"""EgoMCQ `types` value of the intra-video setting (candidates from the same video)."""


# ---------------------------------------------------------------------------------------------------------------------
# Gathering and de-duplication
# ---------------------------------------------------------------------------------------------------------------------


def _as_long_tensor(ids: Any) -> torch.Tensor:
    return ids.long().reshape(-1) if isinstance(ids, torch.Tensor) else torch.as_tensor(list(ids), dtype=torch.long)


def first_occurrence_indices(ids: Any) -> torch.Tensor:
    """Positions of the first occurrence of every distinct id, ordered by id.

    Ordering by id (not by position) makes the result independent of how samples were sharded over
    processes, so a gathered evaluation reproduces the single-process one exactly.
    """
    ids = _as_long_tensor(ids)
    unique_ids, inverse = torch.unique(ids, sorted=True, return_inverse=True)
    positions = torch.arange(ids.numel(), device=ids.device)
    first = torch.full((unique_ids.numel(),), ids.numel(), dtype=torch.long, device=ids.device)
    return first.scatter_reduce(0, inverse, positions, reduce="amin")


def _check_ids(ids: Any, expected: int, name: str) -> None:
    """Sample ids must name every row: a shorter list would silently evaluate only part of the rows."""
    count = _as_long_tensor(ids).numel()
    if count != expected:
        raise ValueError(f"`{name}` has {count} entries, expected one per row ({expected}).")


def _select(values: Any, index: torch.Tensor) -> Any:
    if isinstance(values, torch.Tensor):
        return values[index.to(values.device)]
    return [values[i] for i in index.tolist()]


def gather_rows_across_processes(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """Concatenate `tensor` (rows along dim 0) from every process; batch sizes may differ.

    Outside torch.distributed this returns `tensor`. Unlike `Accelerator.gather_for_metrics` it keeps every row,
    including the repeats a padding sampler adds at the end of the data: pass the rows' dataset indices as the
    `ids` argument of the metrics to count each sample once.
    """
    return all_gather_no_grad(tensor, group)


# ---------------------------------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------------------------------


def retrieval_ranks(scores: torch.Tensor, positives: torch.Tensor, tie_break: str = "pessimistic") -> torch.Tensor:
    """0-based rank of the best-scored ground truth of every query.

    Args:
        scores: `(Q, C)` score of every (query, candidate) pair; higher is better.
        positives: `(Q, C)` bool ground truths; every query needs at least one.
        tie_break: a non-ground-truth candidate that ties with the best ground truth counts as ranked
            above it (`"pessimistic"`, the default: a constant score matrix gets the worst ranks instead of
            perfect ones) or below it (`"optimistic"`). Other ground truths never count against a query.

    Returns:
        `(Q,)` long; 0 means a ground truth is ranked first.
    """
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"`tie_break` must be one of {TIE_BREAKS}, got {tie_break!r}.")
    if scores.shape != positives.shape:
        raise ValueError(f"`scores` {tuple(scores.shape)} and `positives` {tuple(positives.shape)} differ.")
    positives = positives.to(device=scores.device, dtype=torch.bool)
    missing = ~positives.any(dim=1)
    if bool(missing.any()):
        raise ValueError(f"{int(missing.sum())} queries have no ground truth (first: {int(missing.nonzero()[0])}).")
    scores = scores.float()
    if bool(scores.isnan().any()):
        # NaN compares false with everything, so a NaN ground truth would otherwise be ranked first.
        raise ValueError("`scores` contains NaN.")
    best_positive = scores.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values
    beats = scores >= best_positive if tie_break == "pessimistic" else scores > best_positive
    return (beats & ~positives).sum(dim=1)


def _median(values: torch.Tensor) -> float:
    """Median with the usual convention (mean of the two middle values for an even count)."""
    ordered = values.double().sort().values
    n = ordered.numel()
    middle = n // 2
    if n % 2:
        return float(ordered[middle])
    return float((ordered[middle - 1] + ordered[middle]) / 2)


def rank_metrics(ranks: torch.Tensor, ks: Sequence[int] = (1, 5, 10), prefix: str = "") -> dict[str, float]:
    """R@K (percent), median rank and mean rank (1-based) from 0-based ranks, plus the mean of the R@K."""
    ranks = ranks.reshape(-1)
    if ranks.numel() == 0:
        raise ValueError("No queries to evaluate.")
    metrics = {f"{prefix}R@{k}": float((ranks < k).double().mean() * 100) for k in ks}
    metrics[f"{prefix}MedR"] = _median(ranks + 1)
    metrics[f"{prefix}MnR"] = float((ranks + 1).double().mean())
    metrics[f"{prefix}R_mean"] = sum(metrics[f"{prefix}R@{k}"] for k in ks) / len(ks)
    return metrics


def retrieval_metrics(
    scores_t2v: torch.Tensor,
    text_match_ids: Any | None = None,
    video_match_ids: Any | None = None,
    *,
    positives: torch.Tensor | None = None,
    scores_v2t: torch.Tensor | None = None,
    text_ids: Any | None = None,
    video_ids: Any | None = None,
    ks: Sequence[int] = (1, 5, 10),
    tie_break: str = "pessimistic",
) -> dict[str, float]:
    """Text-to-video and video-to-text retrieval metrics.

    Ground truth is given either by match ids (text t is relevant to video v iff
    `text_match_ids[t] == video_match_ids[v]`: several captions of one video, or one label shared by many
    videos), by an explicit `positives (Nt, Nv)` bool matrix, or, when neither is given, by the diagonal of a
    square matrix. For every query the rank of its best-scored ground truth counts.

    Args:
        scores_t2v: `(Nt, Nv)` scores of every text against every video.
        scores_v2t: `(Nv, Nt)` scores for the video-to-text direction when they differ from `scores_t2v.T`
            (ITM re-ranking re-scores each direction's own top-k).
        text_ids, video_ids: sample ids of the rows / columns, to drop duplicates left by gathering.
        ks: the K of R@K.
        tie_break: see `retrieval_ranks`.

    Returns:
        `t2v_R@K`, `t2v_MedR`, `t2v_MnR`, `t2v_R_mean` and the same for `v2t_`, plus `R_mean` (the mean of the
        two directions' R_mean, the release's model-selection number). Recalls are percentages.
    """
    if scores_t2v.dim() != 2:
        raise ValueError(f"`scores_t2v` must be 2-D (texts, videos), got shape {tuple(scores_t2v.shape)}.")
    num_texts, num_videos = scores_t2v.shape
    if scores_v2t is not None and tuple(scores_v2t.shape) != (num_videos, num_texts):
        raise ValueError(f"`scores_v2t` must have shape {(num_videos, num_texts)}, got {tuple(scores_v2t.shape)}.")

    if positives is None:
        if (text_match_ids is None) != (video_match_ids is None):
            raise ValueError("Give both `text_match_ids` and `video_match_ids`, or neither.")
        if text_match_ids is None:
            if num_texts != num_videos:
                raise ValueError("Without match ids or `positives` the score matrix must be square (diagonal GT).")
            positives = torch.eye(num_texts, dtype=torch.bool, device=scores_t2v.device)
        else:
            text_match_ids = _as_long_tensor(text_match_ids).to(scores_t2v.device)
            video_match_ids = _as_long_tensor(video_match_ids).to(scores_t2v.device)
            positives = text_match_ids[:, None] == video_match_ids[None, :]
    positives = positives.to(device=scores_t2v.device, dtype=torch.bool)

    if text_ids is not None:
        _check_ids(text_ids, num_texts, "text_ids")
        keep_rows = first_occurrence_indices(text_ids).to(scores_t2v.device)
        scores_t2v, positives = scores_t2v[keep_rows], positives[keep_rows]
        if scores_v2t is not None:
            scores_v2t = scores_v2t[:, keep_rows.to(scores_v2t.device)]
    if video_ids is not None:
        _check_ids(video_ids, num_videos, "video_ids")
        keep_columns = first_occurrence_indices(video_ids).to(scores_t2v.device)
        scores_t2v, positives = scores_t2v[:, keep_columns], positives[:, keep_columns]
        if scores_v2t is not None:
            scores_v2t = scores_v2t[keep_columns.to(scores_v2t.device)]
    if scores_v2t is None:
        scores_v2t = scores_t2v.T

    metrics = rank_metrics(retrieval_ranks(scores_t2v, positives, tie_break), ks, prefix="t2v_")
    metrics.update(rank_metrics(retrieval_ranks(scores_v2t, positives.T, tie_break), ks, prefix="v2t_"))
    metrics["R_mean"] = (metrics["t2v_R_mean"] + metrics["v2t_R_mean"]) / 2
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Video QA
# ---------------------------------------------------------------------------------------------------------------------


def _to_list(values: Any) -> list:
    if isinstance(values, torch.Tensor):
        return values.reshape(-1).tolist()
    return list(values)


def qa_accuracy(predictions: Any, references: Any, *, ids: Any | None = None) -> dict[str, float]:
    """Exact-match accuracy (percent) of predicted answers, as the release scores MSRVTT-QA / ANet-QA / AGQA.

    Args:
        predictions: answer strings or answer-list indices, one per question (a list or a tensor).
        references: the ground truth of every question, in the same form; an entry may also be a list or
            tuple of acceptable answers (any of them counts).
        ids: question ids, to drop duplicates left by gathering.
    """
    predictions, references = _to_list(predictions), _to_list(references)
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    if ids is not None:
        _check_ids(ids, len(predictions), "ids")
        keep = first_occurrence_indices(ids)
        predictions, references = _select(predictions, keep), _select(references, keep)
    if not predictions:
        raise ValueError("No questions to evaluate.")
    correct = 0
    for prediction, reference in zip(predictions, references):
        acceptable = reference if isinstance(reference, (list, tuple)) else [reference]
        correct += int(any(prediction == answer for answer in acceptable))
    return {"accuracy": 100.0 * correct / len(predictions)}


# ---------------------------------------------------------------------------------------------------------------------
# EgoMCQ
# ---------------------------------------------------------------------------------------------------------------------


def egomcq_accuracy(
    logits: torch.Tensor, labels: Any, types: Any, *, ids: Any | None = None
) -> dict[str, float]:
    """EgoMCQ accuracy (percent) per setting, following the official EgoVLP / LaViLa scoring.

    The prediction is the argmax over the candidates (the first maximum on ties, as `torch.argmax` in the
    official code). `types` uses the dataset's codes, mapped explicitly: 1 = inter-video, 2 = intra-video, as
    `egomcq.json` and EgoVLP's loader define them. EgoVLP's metric pairs the sorted unique types with the names
    `["Intra-video", "Inter-video"]` by position, so its "Intra-video" value is the inter-video accuracy (and a
    subset holding one type is named by position); the papers' tables (inter ~90%, intra ~57-66%) use the
    dataset's meaning, which this function follows.

    Args:
        logits: `(N, num_candidates)` scores.
        labels: `(N,)` index of the correct candidate.
        types: `(N,)` 1 (inter-video) or 2 (intra-video).
        ids: question ids, to drop duplicates left by gathering.

    Returns:
        `inter_video_accuracy` and/or `intra_video_accuracy` for the settings present, plus
        `num_inter_video` / `num_intra_video` (question counts).
    """
    labels, types = _as_long_tensor(labels), _as_long_tensor(types)
    if logits.dim() != 2 or logits.shape[0] != labels.numel() or labels.numel() != types.numel():
        raise ValueError(
            f"Expected logits (N, C), labels (N,), types (N,); got {tuple(logits.shape)}, "
            f"{tuple(labels.shape)}, {tuple(types.shape)}."
        )
    if bool(((labels < 0) | (labels >= logits.shape[1])).any()):
        raise ValueError(f"`labels` must index one of the {logits.shape[1]} candidates.")
    if ids is not None:
        _check_ids(ids, labels.numel(), "ids")
        keep = first_occurrence_indices(ids)
        logits, labels, types = logits[keep.to(logits.device)], labels[keep], types[keep]
    if bool(logits.isnan().any()):
        raise ValueError("`logits` contains NaN (`argmax` would pick it as the maximum).")
    unknown = set(types.unique().tolist()) - {EGOMCQ_INTER_VIDEO, EGOMCQ_INTRA_VIDEO}
    if unknown:
        raise ValueError(f"Unknown EgoMCQ types {sorted(unknown)}; expected 1 (inter-video) or 2 (intra-video).")
    correct = logits.argmax(dim=1).cpu() == labels
    metrics: dict[str, float] = {}
    for code, name in ((EGOMCQ_INTER_VIDEO, "inter_video"), (EGOMCQ_INTRA_VIDEO, "intra_video")):
        selected = types == code
        count = int(selected.sum())
        if count:
            metrics[f"{name}_accuracy"] = float(correct[selected].double().mean() * 100)
            metrics[f"num_{name}"] = count
    return metrics


__all__ = [
    "EGOMCQ_INTER_VIDEO",
    "EGOMCQ_INTRA_VIDEO",
    "egomcq_accuracy",
    "first_occurrence_indices",
    "gather_rows_across_processes",
    "qa_accuracy",
    "rank_metrics",
    "retrieval_metrics",
    "retrieval_ranks",
]
