"""Video QA by ranking a closed answer list with the answer decoder, as the release evaluates it.

The first answer token's probability picks each question's top-k candidates; their full teacher-forced
likelihood then decides. Videos longer than the model's clip length are cut into clips whose scores are combined,
or go through the video tower as one clip (`clip_aggregation="concat"`).

Three scorings (`scoring=`):

* `"likelihood"` (default): first-token log-probabilities (log-probabilities combined over clips) pick the
  candidates, ranked by their sequence log-likelihood (first token counted once), combined over clips.
* `"release_ensemble"`: the release's `forward_ensemble` / `rank_answer_ensemble`, its default evaluation path
  (`eval_frame_ensemble: lse | mean | max`), used for any number of clips, one included. Per clip the first-token
  *probabilities* are combined over clips, then go through a second softmax over the vocabulary (which nearly
  flattens them); a candidate's score per clip is `log p_first + sequence log-likelihood` (the first token counted
  twice), combined over clips.
* `"release_concat"`: the release's `rank_answer`, its path for `eval_frame_ensemble: concat` (all test frames in one
  clip): one softmax over the vocabulary, `log p_first + sequence log-likelihood`. It scores a single clip.

With one clip the two release scorings differ only in the second softmax, which is enough to change probabilities
and, with small margins, the answer. [`SViTTForVideoQuestionAnswering.rank_answers`] is `rank_answers` here.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers.utils import ModelOutput

from .clip_ensemble import CLIP_AGGREGATIONS, aggregate_clips, split_into_clips
from .losses import answer_token_labels, sequence_negative_log_likelihood

if TYPE_CHECKING:  # the QA head imports this module, so it names the head's base class, never the head
    from .modeling_common import SViTTPreTrainedModel
    from .modeling_svitt_vision import RandomBlocks

ANSWER_SCORINGS = ("likelihood", "release_ensemble", "release_concat")
ANSWER_CLIP_AGGREGATIONS = (*CLIP_AGGREGATIONS, "concat")


@dataclass
class SViTTAnswerRankingOutput(ModelOutput):
    r"""
    Answer-list ranking of [`SViTTForVideoQuestionAnswering.rank_answers`]; `k` is clamped to the answer list's size.

    predictions (`(batch_size,)`): index (into the answer list) of the best answer.
    answer_indices (`(batch_size, k)`): the k candidates, best first.
    scores (`(batch_size, k)`): their ranking scores, best first: the clip-combined sequence log-likelihood
        (`"likelihood"`), or the release's score `log p_first + sequence log-likelihood`, combined over clips.
    probabilities (`(batch_size, k)`): softmax of the scores over the k candidates (the release's output).
    """

    predictions: torch.LongTensor | None = None
    answer_indices: torch.LongTensor | None = None
    scores: torch.FloatTensor | None = None
    probabilities: torch.FloatTensor | None = None


def first_token_logits(
    model: "SViTTPreTrainedModel",
    question_states: torch.Tensor,
    question_mask: torch.Tensor,
    *,
    start_token_id: int,
) -> torch.Tensor:
    """`(B, vocab)` logits of the first answer position after the start token."""
    shape = (question_states.shape[0], 1)
    start = torch.full(shape, start_token_id, dtype=torch.long, device=question_states.device)
    return model.decode_answers(start, torch.ones_like(start), question_states, question_mask)[:, 0].float()


def candidate_log_likelihood(
    model: "SViTTPreTrainedModel",
    question_states: torch.Tensor,
    question_mask: torch.Tensor,
    *,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    candidates: torch.Tensor,
) -> torch.Tensor:
    """`(B, k)` sequence log-likelihood of each question's candidates (first answer token included once)."""
    batch, k = candidates.shape
    flat = candidates.reshape(-1)
    ids, mask = answer_ids[flat], answer_mask[flat]
    states = question_states.repeat_interleave(k, dim=0)
    masks = question_mask.repeat_interleave(k, dim=0)
    logits = model.decode_answers(ids, mask, states, masks)
    nll = sequence_negative_log_likelihood(logits, answer_token_labels(ids, mask))
    return -nll.reshape(batch, k)


def first_token_scores(
    first_logits: torch.Tensor, first_tokens: torch.Tensor, *, scoring: str, clip_aggregation: str
) -> torch.Tensor:
    """`(B, K, vocab)` per-clip logits of the first answer position -> `(B, num_answers)` score of every answer's
    first token: a log-probability (`"likelihood"`) or the release's probability."""
    if scoring == "likelihood":
        return aggregate_clips(first_logits.log_softmax(dim=-1), clip_aggregation, dim=1)[:, first_tokens]
    if scoring == "release_concat":  # rank_answer: one clip, one softmax
        return first_logits[:, 0].softmax(dim=-1)[:, first_tokens]
    # rank_answer_ensemble: probabilities combined over clips, then a second softmax over the vocabulary
    probabilities = aggregate_clips(first_logits.softmax(dim=-1), clip_aggregation, dim=1)
    return probabilities.softmax(dim=-1)[:, first_tokens]


def candidate_scores(
    first_scores: torch.Tensor, log_likelihood: torch.Tensor, *, scoring: str, clip_aggregation: str
) -> torch.Tensor:
    """Score of every candidate from its first-token score `(B, k)` and its per-clip sequence log-likelihood
    `(B, k, K)`; the release adds the log first-token probability (counting the first token twice)."""
    if scoring != "likelihood":
        log_likelihood = first_scores.log()[..., None] + log_likelihood
    return aggregate_clips(log_likelihood, clip_aggregation, dim=-1)


@torch.no_grad()
def rank_answers(
    model: "SViTTPreTrainedModel",
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    answer_input_ids: torch.Tensor,
    answer_attention_mask: torch.Tensor | None = None,
    *,
    k: int = 128,
    clip_sampling: str = "consecutive",
    clip_aggregation: str = "lse",
    scoring: str = "likelihood",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    random_blocks: "RandomBlocks | None" = None,
) -> SViTTAnswerRankingOutput:
    """Pick each question's answer from a closed answer list.

    Args:
        pixel_values: `(batch_size, K * T, C, H, W)`; videos longer than the clip length `T` are cut into K clips
            (`clip_sampling`: "consecutive" or "strided"), each encoded with its own question pass, and the clips'
            scores combined with `clip_aggregation` ("lse", "mean", "max"). `clip_aggregation="concat"` instead
            feeds all frames to the video tower as one clip, as the release's `eval_frame_ensemble: concat` does:
            the tower must then hold that many frames (`from_pretrained(..., num_frames=K * T)` resamples its
            relative-position bias as the release does between clip lengths).
        answer_input_ids, answer_attention_mask: `(num_answers, answer_length)` answer list as `[CLS] answer [SEP]`
            (e.g. `SViTTProcessor.encode_answers`): every answer starts with the same start token and has at least
            one token after it.
        k: candidates kept by the first-token stage. A `k` larger than the answer list is clamped to its size (the
            release needs at least `k_test = 128` answers; here a short list is ranked whole).
        scoring: "likelihood", "release_ensemble" (the release's default path) or "release_concat" (its
            `rank_answer`, one clip); see the module docstring. Use a release scoring to reproduce its numbers.
        seed, generator, random_blocks: where the video tower's random attention blocks come from: a generator
            seeded with `seed`, a given `generator`, or recorded patterns to replay (`random_blocks`, as the tower's
            `forward` takes them; all clips of the batch go through the tower in one call). By default the tower's
            own rule applies (deterministic in eval mode, see `SViTTVisionConfig.deterministic_eval`).
    """
    _check_ranking_options(
        scoring, clip_aggregation, k=k, num_answers=answer_input_ids.shape[0], seed=seed, generator=generator
    )
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if answer_attention_mask is None:
        answer_attention_mask = torch.ones_like(answer_input_ids)
    _check_answer_list(answer_input_ids, answer_attention_mask)
    device = model.device
    clips, num_clips, clip_aggregation = _clips_to_score(
        model, pixel_values.to(device), clip_sampling, clip_aggregation
    )
    if scoring == "release_concat" and num_clips > 1:
        raise ValueError(
            f"`scoring='release_concat'` is the release's single-clip `rank_answer`, but the videos hold {num_clips} "
            "clips: use `clip_aggregation='concat'` (one clip of all frames) or `scoring='release_ensemble'`."
        )
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
    question_ids = input_ids.to(device).repeat_interleave(num_clips, dim=0)
    question_mask = attention_mask.to(device).repeat_interleave(num_clips, dim=0)
    states, mask, _ = model.encode_questions(
        clips, question_ids, question_mask, random_blocks=random_blocks, generator=generator
    )
    scores, answer_indices = _rank_candidates(
        model,
        states.unflatten(0, (input_ids.shape[0], num_clips)),
        mask.unflatten(0, (input_ids.shape[0], num_clips)),
        answer_ids=answer_input_ids.to(device),
        answer_mask=answer_attention_mask.to(device),
        k=k,
        scoring=scoring,
        clip_aggregation=clip_aggregation,
    )
    return SViTTAnswerRankingOutput(
        predictions=answer_indices[:, 0],
        answer_indices=answer_indices,
        scores=scores,
        probabilities=scores.softmax(dim=1),
    )


def _rank_candidates(
    model: "SViTTPreTrainedModel",
    question_states: torch.Tensor,
    question_mask: torch.Tensor,
    *,
    answer_ids: torch.Tensor,
    answer_mask: torch.Tensor,
    k: int,
    scoring: str,
    clip_aggregation: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two stages on `(B, K, L, D)` question states of K clips: the first answer token keeps k candidates, their
    scores rank them. Returns the `(B, k)` scores and answer indices, best first."""
    batch, num_clips = question_states.shape[:2]
    states, mask = question_states.flatten(0, 1), question_mask.flatten(0, 1)
    start_token_id = int(answer_ids[0, 0])
    first_logits = first_token_logits(model, states, mask, start_token_id=start_token_id).reshape(batch, num_clips, -1)
    selection = first_token_scores(first_logits, answer_ids[:, 1], scoring=scoring, clip_aggregation=clip_aggregation)
    first_scores, candidates = selection.topk(min(k, answer_ids.shape[0]), dim=1)
    log_likelihood = torch.stack(
        [
            candidate_log_likelihood(
                model,
                question_states[:, clip],
                question_mask[:, clip],
                answer_ids=answer_ids,
                answer_mask=answer_mask,
                candidates=candidates,
            )
            for clip in range(num_clips)
        ],
        dim=-1,
    )
    scores = candidate_scores(first_scores, log_likelihood, scoring=scoring, clip_aggregation=clip_aggregation)
    scores, order = scores.sort(dim=1, descending=True, stable=True)
    return scores, torch.gather(candidates, 1, order)


def _check_ranking_options(
    scoring: str,
    clip_aggregation: str,
    *,
    k: int,
    num_answers: int,
    seed: int | None,
    generator: torch.Generator | None,
) -> None:
    if scoring not in ANSWER_SCORINGS:
        raise ValueError(f"`scoring` must be one of {ANSWER_SCORINGS}, got {scoring!r}.")
    if clip_aggregation not in ANSWER_CLIP_AGGREGATIONS:
        raise ValueError(f"`clip_aggregation` must be one of {ANSWER_CLIP_AGGREGATIONS}, got {clip_aggregation!r}.")
    if seed is not None and generator is not None:
        raise ValueError("Pass either `seed` or `generator`, not both.")
    if k < 1 or num_answers == 0:
        raise ValueError(f"Ranking needs k >= 1 and a non-empty answer list (k={k}, {num_answers} answers).")


def _clips_to_score(
    model: "SViTTPreTrainedModel", pixel_values: torch.Tensor, clip_sampling: str, clip_aggregation: str
) -> tuple[torch.Tensor, int, str]:
    """`(B * K, T, C, H, W)` clips of the tower's length `T`, `K`, and how to combine the clips' scores.

    `clip_aggregation="concat"` feeds all frames as one clip, so the tower must hold them all; the one clip's
    scores then combine by the identity ("mean").
    """
    num_frames = model.config.vision_config.num_frames
    if clip_aggregation == "concat":
        if pixel_values.shape[1] != num_frames:
            raise ValueError(
                f"`clip_aggregation='concat'` feeds all {pixel_values.shape[1]} frames to the video tower as one clip, "
                f"but the tower holds {num_frames} frames: load the model with `from_pretrained(..., num_frames="
                f"{pixel_values.shape[1]})` or call `model.svitt.vision_model.resize_num_frames("
                f"{pixel_values.shape[1]})`, or combine clips with 'lse', 'mean' or 'max'."
            )
        clip_aggregation = "mean"
    clips, num_clips = split_into_clips(pixel_values, num_frames, clip_sampling)
    return clips, num_clips, clip_aggregation


def _check_answer_list(answer_ids: torch.Tensor, answer_mask: torch.Tensor) -> None:
    """The ranking reads every answer's start token and first answer token: refuse lists that lack them."""
    if answer_ids.dim() != 2 or answer_ids.shape[1] < 2:
        raise ValueError(
            f"`answer_input_ids` must be (num_answers, answer_length >= 2): a start token then the answer, as "
            f"`[CLS] answer [SEP]`; got shape {tuple(answer_ids.shape)}."
        )
    if answer_mask.shape != answer_ids.shape:
        raise ValueError(
            f"`answer_attention_mask` {tuple(answer_mask.shape)} must match `answer_input_ids` "
            f"{tuple(answer_ids.shape)}."
        )
    empty = (answer_mask[:, :2] == 0).any(dim=1).nonzero().flatten()
    if len(empty):
        raise ValueError(
            f"Answers {empty.tolist()[:10]} have no token after the start token: an empty answer would score a "
            "log-likelihood of 0, the best possible. Encode answers as `[CLS] answer [SEP]`."
        )
    starts = answer_ids[:, 0]
    if (starts != starts[0]).any():
        raise ValueError(
            "Every answer must begin with the same start token (the decoder's BOS, `[CLS]`); got "
            f"{sorted(set(starts.tolist()))[:10]}."
        )


__all__ = [
    "ANSWER_SCORINGS",
    "SViTTAnswerRankingOutput",
    "candidate_log_likelihood",
    "candidate_scores",
    "first_token_logits",
    "first_token_scores",
    "rank_answers",
]
