"""Video QA by ranking a closed answer list with the answer decoder, as the release evaluates it.

The first answer token's probability picks each question's top-k candidates; their full teacher-forced
likelihood then decides. Videos longer than the model's clip length are cut into clips whose scores are combined.
[`SViTTForVideoQuestionAnswering.rank_answers`] is `rank_answers` here.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.utils import ModelOutput

from .clip_ensemble import CLIP_AGGREGATIONS, aggregate_clips, split_into_clips
from .losses import answer_token_labels, sequence_negative_log_likelihood

if TYPE_CHECKING:
    from .modeling_video_qa import SViTTForVideoQuestionAnswering


@dataclass
class SViTTAnswerRankingOutput(ModelOutput):
    r"""
    Answer-list ranking of [`SViTTForVideoQuestionAnswering.rank_answers`].

    predictions (`(batch_size,)`): index (into the answer list) of the best answer.
    answer_indices (`(batch_size, k)`): the k candidates, best first.
    scores (`(batch_size, k)`): their ranking scores (clean mode: clip-aggregated log-likelihood; release mode:
        the release's aggregated score), best first.
    probabilities (`(batch_size, k)`): softmax of the scores over the k candidates (the release's output).
    """

    predictions: torch.LongTensor | None = None
    answer_indices: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    probabilities: torch.FloatTensor | None = None


def first_token_logits(
    model: "SViTTForVideoQuestionAnswering", question_states, question_mask, start_token_id
) -> torch.Tensor:
    shape = (question_states.shape[0], 1)
    start = torch.full(shape, start_token_id, dtype=torch.long, device=question_states.device)
    return model.decode_answers(start, torch.ones_like(start), question_states, question_mask)[:, 0].float()


def candidate_log_likelihood(
    model: "SViTTForVideoQuestionAnswering", question_states, question_mask, answer_ids, answer_mask, candidates
):
    """`(B, k)` sequence log-likelihood of each question's candidates (first answer token included once)."""
    batch, k = candidates.shape
    flat = candidates.reshape(-1)
    ids, mask = answer_ids[flat], answer_mask[flat]
    states = question_states.repeat_interleave(k, dim=0)
    masks = question_mask.repeat_interleave(k, dim=0)
    logits = model.decode_answers(ids, mask, states, masks)
    nll = sequence_negative_log_likelihood(logits, answer_token_labels(ids, mask))
    return -nll.reshape(batch, k)


@torch.no_grad()
def rank_answers(
    model: "SViTTForVideoQuestionAnswering",
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    answer_input_ids: torch.Tensor,
    answer_attention_mask: torch.Tensor | None = None,
    *,
    k: int = 128,
    clip_sampling: str = "consecutive",
    clip_aggregation: str = "lse",
    release_scoring: bool = False,
    seed: int | None = None,
) -> SViTTAnswerRankingOutput:
    """Pick each question's answer from a closed answer list.

    Args:
        pixel_values: `(batch_size, K * T, C, H, W)`; videos longer than the clip length `T` are cut into K clips
            (`clip_sampling`), each encoded with its own question pass, and the clips' scores combined with
            `clip_aggregation` ("lse", "mean", "max").
        answer_input_ids, answer_attention_mask: `(num_answers, answer_length)` answer list as `[CLS] answer [SEP]`.
        k: candidates kept by the first-token stage (clamped to the list size).
        release_scoring: reproduce the release's scoring quirks (see the class docstring).
        seed: draw the random attention blocks from a generator with this seed; by default the video tower's own
            rule applies (deterministic in eval mode, see `SViTTVisionConfig.deterministic_eval`).
    """
    if clip_aggregation not in CLIP_AGGREGATIONS:
        raise ValueError(f"`clip_aggregation` must be one of {CLIP_AGGREGATIONS}, got {clip_aggregation!r}.")
    if k < 1 or answer_input_ids.shape[0] == 0:
        raise ValueError(
            f"Ranking needs k >= 1 and a non-empty answer list (k={k}, {answer_input_ids.shape[0]} answers)."
        )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if answer_attention_mask is None:
        answer_attention_mask = torch.ones_like(answer_input_ids)
    device = model.device
    batch = input_ids.shape[0]
    num_frames = model.config.vision_config.num_frames
    clips, num_clips = split_into_clips(pixel_values.to(device), num_frames, clip_sampling)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    question_ids = input_ids.to(device).repeat_interleave(num_clips, dim=0)
    question_mask = attention_mask.to(device).repeat_interleave(num_clips, dim=0)
    states, mask, _ = model.encode_questions(clips, question_ids, question_mask, generator=generator)
    answer_ids, answer_mask = answer_input_ids.to(device), answer_attention_mask.to(device)
    start_token_id = int(answer_ids[0, 0])
    first_tokens = answer_ids[:, 1]
    k = min(k, answer_ids.shape[0])

    first_logits = first_token_logits(model, states, mask, start_token_id).reshape(batch, num_clips, -1)
    if release_scoring:
        # forward_ensemble: probabilities aggregated over clips, then a second softmax over the vocabulary.
        probs = aggregate_clips(first_logits.softmax(dim=-1), clip_aggregation, dim=1)
        first_scores = probs.softmax(dim=-1)[:, first_tokens]
        top_first, candidates = first_scores.topk(k, dim=1)
        first_term = top_first.log()
    else:
        log_probs = aggregate_clips(first_logits.log_softmax(dim=-1), clip_aggregation, dim=1)
        candidates = log_probs[:, first_tokens].topk(k, dim=1).indices

    per_clip = []
    for clip in range(num_clips):
        rows = torch.arange(batch, device=device) * num_clips + clip
        log_likelihood = candidate_log_likelihood(model, states[rows], mask[rows], answer_ids, answer_mask, candidates)
        per_clip.append(first_term + log_likelihood if release_scoring else log_likelihood)
    scores = aggregate_clips(torch.stack(per_clip, dim=-1), clip_aggregation, dim=-1)
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    answer_indices = torch.gather(candidates, 1, order)
    return SViTTAnswerRankingOutput(
        predictions=answer_indices[:, 0],
        answer_indices=answer_indices,
        scores=scores,
        probabilities=scores.softmax(dim=1),
    )


__all__ = ["SViTTAnswerRankingOutput", "candidate_log_likelihood", "first_token_logits", "rank_answers"]
