"""Task heads of SViTT / SViTT-Ego: pretraining, video-text retrieval, video QA, multiple choice (EgoMCQ).

Every head holds the dual encoder as `self.svitt` ([`SViTTModel`]) and adds its task modules under the
names the checkpoint converter writes (`INTERFACE.md`): `itm_head`, `mlm_head.predictions.*`,
`text_decoder`, `decoder_head.predictions.*`. Because the names are shared, a checkpoint of one head loads
into another wherever the weights overlap (pretraining -> retrieval / multiple choice directly; pretraining
-> video QA initialises the answer decoder from the fusion layers and the MLM head, as the release does).

All losses come from `losses.py`; the heads only decide what to feed them.
"""

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_svitt import MULTIPLE_CHOICE_SCORINGS, SViTTConfig, SViTTTextConfig
from .losses import (
    ContrastiveLossOutput,
    answer_decoder_loss,
    answer_token_labels,
    image_text_matching_loss,
    itc_loss,
    mask_tokens_for_mlm,
    masked_lm_loss,
    multiple_choice_loss,
    sample_itm_negatives,
    sequence_negative_log_likelihood,
)
from .modeling_svitt import (
    RandomBlocks,
    SViTTModel,
    SViTTPreTrainedModel,
    SViTTTextModel,
    SViTTTextModelOutput,
    SViTTVisionModelOutput,
)
from .video_io import CLIP_LAYOUTS, split_clips

logger = logging.getLogger(__name__)

CLIP_AGGREGATIONS = ("lse", "mean", "max")
ITM_SCORES = ("positive_logit", "match_log_prob")


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


class _NestedOutput(ModelOutput):
    """`to_tuple` that also flattens nested outputs (as CLIP / XCLIP outputs do)."""

    def to_tuple(self) -> tuple:
        return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in super().to_tuple())


@dataclass
class SViTTForPreTrainingOutput(_NestedOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*):
        `loss_weight_itc * loss_itc + loss_weight_itm * loss_itm + loss_weight_mlm * loss_mlm`.
    loss_itc, loss_itm, loss_mlm (`torch.FloatTensor`, *optional*):
        The three objectives (a part whose weight is 0 is not computed and stays `None`).
    logits_per_video (`(batch_size, num_texts)`), logits_per_text (`(batch_size, num_videos)`):
        Scaled similarities used by ITC (the columns cover every process when negatives are gathered).
    itm_logits (`(num_pairs, 2)`):
        Matching logits of the positive pairs, then (text i, negative video) pairs, then (negative text, video i)
        pairs. Rows without a negative (e.g. a batch of one) are left out.
    itm_labels (`(num_pairs,)`): 1 for the positive pairs, 0 for the negatives.
    negative_video_indices, negative_text_indices (`(batch_size,)`):
        The in-batch negative video of every text and negative text of every video (-1: none).
    mlm_logits (`(batch_size, sequence_length, vocab_size)`), mlm_labels (`(batch_size, sequence_length)`):
        MLM predictions on the masked text and its labels (-100 where nothing was masked).
    video_embeds, text_embeds (`(batch_size, embed_dim)`): L2-normalised ITC embeddings.
    vision_model_output, text_model_output: the towers' outputs.
    itm_fusion_output, mlm_fusion_output ([`SViTTTextModelOutput`]): the fusion layers' outputs for ITM and MLM.
    """

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    loss_mlm: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    itm_labels: torch.LongTensor | None = None
    negative_video_indices: torch.LongTensor | None = None
    negative_text_indices: torch.LongTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    mlm_labels: torch.LongTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    vision_model_output: SViTTVisionModelOutput | None = None
    text_model_output: SViTTTextModelOutput | None = None
    itm_fusion_output: SViTTTextModelOutput | None = None
    mlm_fusion_output: SViTTTextModelOutput | None = None


@dataclass
class SViTTForVideoTextRetrievalOutput(_NestedOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): `loss_weight_itc * loss_itc + loss_weight_itm * loss_itm`.
    loss_itc, loss_itm (`torch.FloatTensor`, *optional*): the two objectives.
    logits_per_video (`(num_videos, num_texts)`), logits_per_text (`(num_texts, num_videos)`):
        Cosine similarities divided by the temperature (what zero-shot pipelines read).
    itm_logits, itm_labels, negative_video_indices, negative_text_indices: as in [`SViTTForPreTrainingOutput`].
    video_embeds, text_embeds, vision_model_output, text_model_output, itm_fusion_output: as in
        [`SViTTForPreTrainingOutput`].
    """

    loss: torch.FloatTensor | None = None
    loss_itc: torch.FloatTensor | None = None
    loss_itm: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    itm_logits: torch.FloatTensor | None = None
    itm_labels: torch.LongTensor | None = None
    negative_video_indices: torch.LongTensor | None = None
    negative_text_indices: torch.LongTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    vision_model_output: SViTTVisionModelOutput | None = None
    text_model_output: SViTTTextModelOutput | None = None
    itm_fusion_output: SViTTTextModelOutput | None = None


@dataclass
class SViTTVideoGallery(ModelOutput):
    r"""
    Pre-computed video features for ranking (see [`SViTTForVideoTextRetrieval.encode_videos`]).

    embeds (`(num_videos, num_clips, embed_dim)`): L2-normalised ITC embedding of every clip.
    tokens (`(num_videos, num_clips, num_tokens, hidden_size)`): fusion tokens of every clip.
    token_mask (`(num_videos, num_clips, num_tokens)`): video token mask (all ones).
    """

    embeds: torch.FloatTensor | None = None
    tokens: torch.FloatTensor | None = None
    token_mask: torch.LongTensor | None = None


@dataclass
class SViTTTextGallery(ModelOutput):
    r"""
    Pre-computed text features for ranking (see [`SViTTForVideoTextRetrieval.encode_texts`]).

    embeds (`(num_texts, embed_dim)`): L2-normalised ITC embeddings.
    hidden_states (`(num_texts, sequence_length, hidden_size)`): text-layer outputs (fusion-layer input).
    attention_mask (`(num_texts, sequence_length)`): padding mask.
    """

    embeds: torch.FloatTensor | None = None
    hidden_states: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None


@dataclass
class SViTTRetrievalOutput(ModelOutput):
    r"""
    Result of ranking a text gallery against a video gallery (spec §6.1).

    scores_t2v (`(num_texts, num_videos)`): final text-to-video scores (ITM re-ranked where candidates).
    scores_v2t (`(num_videos, num_texts)`): final video-to-text scores (each direction re-ranks its own top-k).
    itc_scores_t2v (`(num_texts, num_videos)`): cosine similarities averaged over clips (the first stage).
    candidates_t2v (`(num_texts, num_videos)` bool), candidates_v2t (`(num_videos, num_texts)` bool):
        The pairs that were re-scored by ITM.
    """

    scores_t2v: torch.FloatTensor | None = None
    scores_v2t: torch.FloatTensor | None = None
    itc_scores_t2v: torch.FloatTensor | None = None
    candidates_t2v: torch.BoolTensor | None = None
    candidates_v2t: torch.BoolTensor | None = None


@dataclass
class SViTTForVideoQuestionAnsweringOutput(_NestedOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): weighted teacher-forced answer loss (spec §6.2).
    logits (`(num_answers, answer_length, vocab_size)`, *optional*): answer-decoder logits.
    question_hidden_states (`(batch_size, question_length, hidden_size)`): the multimodal question encoding.
    vision_model_output: the video tower's output.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    question_hidden_states: torch.FloatTensor | None = None
    vision_model_output: SViTTVisionModelOutput | None = None


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


@dataclass
class SViTTMultipleChoiceOutput(_NestedOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*, returned when `labels` is given): cross-entropy over the candidates.
    logits (`(batch_size, num_choices)`): score of every candidate clip for its question's text.
    video_embeds (`(batch_size, num_choices, embed_dim)`), text_embeds (`(batch_size, embed_dim)`): ITC embeddings.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------------
# Small modules and helpers
# --------------------------------------------------------------------------------------------------


class SViTTPredictionHeadTransform(nn.Module):
    def __init__(self, config: SViTTTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(hidden_states)))


class SViTTLMPredictionHead(nn.Module):
    """BERT's MLM prediction head; `decoder.weight` is tied to the word embeddings, `decoder.bias` to `bias`."""

    def __init__(self, config: SViTTTextConfig) -> None:
        super().__init__()
        self.transform = SViTTPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden_states))


class SViTTOnlyMLMHead(nn.Module):
    def __init__(self, config: SViTTTextConfig) -> None:
        super().__init__()
        self.predictions = SViTTLMPredictionHead(config)

    def forward(self, sequence_output: torch.Tensor) -> torch.Tensor:
        return self.predictions(sequence_output)


def split_into_clips(
    pixel_values: torch.Tensor, num_frames: int, sampling: str = "consecutive"
) -> tuple[torch.Tensor, int]:
    """Cut `(B, K * T, C, H, W)` test videos into `B * K` clips of `T = num_frames` frames (spec §6.1).

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


@contextlib.contextmanager
def text_guided_selection(
    model: "SViTTModel",
    keep_rate: float | None = None,
    drop_layers: Iterable[int] | None = None,
    strategy: str | None = None,
) -> Iterator[None]:
    """Temporarily switch on (or change) text-guided video token selection in the fusion layers.

    The paper's S_M prunes video tokens inside the fusion layers by the text's cross-attention; it has no
    parameters, so a model trained without it can use it at inference. `keep_rate` is the fraction kept,
    `drop_layers` the fusion layers (counted from the first) after whose cross-attention tokens are selected,
    `strategy` one of "cls_attn", "avg_attn", "random". `None` leaves a setting unchanged.
    """
    config = model.config.text_config
    previous = (config.fusion_token_keep_rate, list(config.fusion_token_drop_layers), config.fusion_token_keep_strategy)
    try:
        if keep_rate is not None:
            config.fusion_token_keep_rate = float(keep_rate)
        if drop_layers is not None:
            config.fusion_token_drop_layers = [int(layer) for layer in drop_layers]
        if strategy is not None:
            config.fusion_token_keep_strategy = strategy
        config.validate_architecture()  # the same checks as at construction
        yield
    finally:
        config.fusion_token_keep_rate, config.fusion_token_drop_layers, config.fusion_token_keep_strategy = previous


def _iterate_video_batches(videos, batch_size: int) -> Iterator[torch.Tensor]:
    """Yield `pixel_values` batches from a tensor (cut into `batch_size` chunks) or from an iterable of batches."""
    if isinstance(videos, torch.Tensor):
        for start in range(0, videos.shape[0], batch_size):
            yield videos[start : start + batch_size]
        return
    for batch in videos:
        if isinstance(batch, dict) or hasattr(batch, "keys"):
            batch = batch["pixel_values"]
        yield batch


# --------------------------------------------------------------------------------------------------
# Shared base of the heads
# --------------------------------------------------------------------------------------------------


class SViTTHeadPreTrainedModel(SViTTPreTrainedModel):
    """Base of the task heads: `_init_weights` for head modules and the ITC / ITM machinery they share."""

    config: SViTTConfig

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SViTTLMPredictionHead):
            init.zeros_(module.bias)

    def tie_weights(self, missing_keys: set[str] | None = None, recompute_mapping: bool = True) -> None:
        """Tie the MLM / answer decoders to their embeddings, also when loading a checkpoint of another head.

        transformers' loader warns that a checkpoint "seems corrupted" when both sides of a tied pair are absent,
        which is the normal case when a head is initialised from another head's checkpoint (e.g. the MLM head of
        a pretraining model built from a retrieval checkpoint). Here such a pair is simply tied (both sides are
        freshly initialised and stay reported as missing); otherwise the library's rules apply: a loaded side
        is shared with the missing one, and two loaded sides with different values are left untied.
        """
        if missing_keys is None:
            return super().tie_weights(recompute_mapping=recompute_mapping)
        if recompute_mapping:
            tied = self.get_expanded_tied_weights_keys(all_submodels=True)
        else:
            tied = self.all_tied_weights_keys
        for target, source in list(tied.items()):
            source_loaded, target_loaded = source not in missing_keys, target not in missing_keys
            if source_loaded and target_loaded:
                if not torch.equal(self.get_parameter_or_buffer(source), self.get_parameter_or_buffer(target)):
                    logger.warning("`%s` and `%s` were loaded with different values: not tied.", target, source)
                    self.all_tied_weights_keys.pop(target, None)
                    continue
            elif target_loaded:
                target, source = source, target  # keep the value that was loaded
            parent_name, _, name = target.rpartition(".")
            parent = self.get_submodule(parent_name) if parent_name else self
            setattr(parent, name, self.get_parameter_or_buffer(source))
            if source_loaded or target_loaded:
                missing_keys.discard(target)

    # ITC ------------------------------------------------------------------------------------------

    def _contrastive(
        self,
        video_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        match_ids: torch.Tensor | None,
        verb_tags: torch.Tensor | None = None,
        noun_tags: torch.Tensor | None = None,
        video_ids: torch.Tensor | None = None,
    ) -> ContrastiveLossOutput:
        config = self.config
        return itc_loss(
            video_embeds,
            text_embeds,
            self.svitt.temperature,
            match_ids,
            loss_type=config.contrastive_loss,
            verb_tags=verb_tags,
            noun_tags=noun_tags,
            video_ids=video_ids,
            egonce_rule=config.egonce_positive_rule,
            gather_across_processes=config.gather_negatives_across_processes,
        )

    # ITM ------------------------------------------------------------------------------------------

    def _itm_negatives(
        self,
        contrastive: ContrastiveLossOutput,
        batch_size: int,
        negative_video_indices: torch.Tensor | None,
        negative_text_indices: torch.Tensor | None,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In-batch negatives for ITM: given ones are validated and used, missing ones are drawn."""
        local = slice(contrastive.local_offset, contrastive.local_offset + batch_size)
        # Fusion needs the negative's tokens, so negatives come from the local batch even when ITC gathers.
        text_to_video = contrastive.logits_per_text[:, local].detach()
        video_to_text = contrastive.logits_per_video[:, local].detach()
        text_positives = contrastive.text_positive_mask[:, local]
        video_positives = contrastive.video_positive_mask[:, local]
        hard = self.config.itm_hard_negatives
        if negative_video_indices is None:
            negative_video_indices = sample_itm_negatives(
                text_to_video, text_positives, hard=hard, generator=generator
            )
        else:
            negative_video_indices = self._check_negatives(
                negative_video_indices, text_positives, "negative_video_indices"
            )
        if negative_text_indices is None:
            negative_text_indices = sample_itm_negatives(
                video_to_text, video_positives, hard=hard, generator=generator
            )
        else:
            negative_text_indices = self._check_negatives(
                negative_text_indices, video_positives, "negative_text_indices"
            )
        return negative_video_indices, negative_text_indices

    @staticmethod
    def _check_negatives(indices: torch.Tensor, positives: torch.Tensor, name: str) -> torch.Tensor:
        indices = indices.to(device=positives.device, dtype=torch.long).reshape(-1)
        if indices.numel() != positives.shape[0]:
            raise ValueError(f"`{name}` needs one entry per sample ({positives.shape[0]}), got {indices.numel()}.")
        valid = indices >= 0
        if bool((indices >= positives.shape[1]).any()):
            raise ValueError(f"`{name}` holds an index outside the batch.")
        rows = torch.arange(indices.numel(), device=indices.device)
        if bool(positives[rows[valid], indices[valid]].any()):
            raise ValueError(f"`{name}` selects a positive pair (equal match ids) as a negative.")
        return indices

    def _matching(
        self,
        text_hidden_states: torch.Tensor,
        text_attention_mask: torch.Tensor,
        video_tokens: torch.Tensor,
        video_token_mask: torch.Tensor,
        negative_video_indices: torch.Tensor,
        negative_text_indices: torch.Tensor,
        output_attentions: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, SViTTTextModelOutput]:
        """ITM over the positives, then (text i, negative video) and (negative text, video i) pairs (spec §4.2)."""
        batch = text_hidden_states.shape[0]
        rows = torch.arange(batch, device=text_hidden_states.device)
        has_video_negative = negative_video_indices >= 0
        has_text_negative = negative_text_indices >= 0
        text_rows = torch.cat([rows, rows[has_video_negative], negative_text_indices[has_text_negative]])
        video_rows = torch.cat([rows, negative_video_indices[has_video_negative], rows[has_text_negative]])
        fusion = self.svitt.fuse(
            text_hidden_states[text_rows],
            text_attention_mask[text_rows],
            video_tokens[video_rows],
            video_token_mask[video_rows],
            output_attentions=output_attentions,
        )
        itm_logits = self.itm_head(fusion.last_hidden_state[:, 0])
        itm_labels = torch.zeros(text_rows.shape[0], dtype=torch.long, device=itm_logits.device)
        itm_labels[:batch] = 1
        return itm_logits, itm_labels, fusion

    def _itm_scores(self, itm_logits: torch.Tensor, itm_score: str) -> torch.Tensor:
        if itm_score == "positive_logit":
            return itm_logits[:, 1]
        if itm_score == "match_log_prob":
            return itm_logits.float().log_softmax(dim=-1)[:, 1]
        raise ValueError(f"`itm_score` must be one of {ITM_SCORES}, got {itm_score!r}.")

    def _contrastive_matching_forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        match_ids: torch.Tensor | None,
        verb_tags: torch.Tensor | None,
        noun_tags: torch.Tensor | None,
        video_ids: torch.Tensor | None,
        negative_video_indices: torch.Tensor | None,
        negative_text_indices: torch.Tensor | None,
        random_blocks: RandomBlocks | None,
        generator: torch.Generator | None,
        sampling_generator: torch.Generator | None,
        compute_itm: bool,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        compute_loss: bool = True,
    ) -> dict:
        """Towers, ITC and (optionally) ITM; the pieces shared by pretraining and retrieval.

        With `compute_loss=False` only the similarity logits are computed (no ITC loss, no ITM), so any number of
        videos can be scored against any number of texts (zero-shot use).
        """
        if self.training:
            self.svitt.clamp_temperature_()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        video = self.svitt.encode_video(pixel_values, random_blocks, generator, output_attentions, output_hidden_states)
        text = self.svitt.encode_text(input_ids, attention_mask, output_attentions, output_hidden_states)
        if not compute_loss:
            logits_per_video = video.embeds @ text.embeds.T / self.svitt.temperature
            return dict(
                video=video,
                text=text,
                contrastive=None,
                logits_per_video=logits_per_video,
                logits_per_text=logits_per_video.T,
                attention_mask=attention_mask,
            )
        contrastive = self._contrastive(video.embeds, text.embeds, match_ids, verb_tags, noun_tags, video_ids)
        result = dict(
            video=video,
            text=text,
            contrastive=contrastive,
            logits_per_video=contrastive.logits_per_video,
            logits_per_text=contrastive.logits_per_text,
            attention_mask=attention_mask,
        )
        if compute_itm:
            negative_video_indices, negative_text_indices = self._itm_negatives(
                contrastive, input_ids.shape[0], negative_video_indices, negative_text_indices, sampling_generator
            )
            itm_logits, itm_labels, fusion = self._matching(
                text.hidden_states,
                attention_mask,
                video.tokens,
                video.token_mask,
                negative_video_indices,
                negative_text_indices,
                output_attentions,
            )
            result.update(
                itm_logits=itm_logits,
                itm_labels=itm_labels,
                itm_fusion=fusion,
                negative_video_indices=negative_video_indices,
                negative_text_indices=negative_text_indices,
                loss_itm=image_text_matching_loss(itm_logits, itm_labels),
            )
        result["loss"] = self.config.loss_weight_itc * contrastive.loss
        if compute_itm:
            result["loss"] = result["loss"] + self.config.loss_weight_itm * result["loss_itm"]
        return result


# --------------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------------


class SViTTForPreTraining(SViTTHeadPreTrainedModel):
    """SViTT pretraining: ITC (or EgoNCE) + ITM with hard negatives + MLM (spec §4).

    ```python
    >>> model = SViTTForPreTraining(config)
    >>> out = model(pixel_values=videos, input_ids=ids, attention_mask=mask, match_ids=video_index)
    >>> out.loss.backward()      # weighted sum; out.loss_itc / loss_itm / loss_mlm hold the parts
    ```

    Randomness of a step: the video tower's random attention blocks (`random_blocks` or `generator`), the ITM
    negatives (`negative_video_indices` / `negative_text_indices` or `sampling_generator`) and the MLM masks
    (`mlm_input_ids` + `mlm_labels` or `sampling_generator`). Supplying them replays a step exactly.
    """

    _tied_weights_keys = {
        "mlm_head.predictions.decoder.weight": "svitt.text_model.embeddings.word_embeddings.weight",
        "mlm_head.predictions.decoder.bias": "mlm_head.predictions.bias",
    }
    _keys_to_ignore_on_load_unexpected = [r"^text_decoder\.", r"^decoder_head\."]

    def __init__(self, config: SViTTConfig) -> None:
        super().__init__(config)
        self.svitt = SViTTModel(config)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.mlm_head = SViTTOnlyMLMHead(config.text_config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.mlm_head.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.mlm_head.predictions.decoder = new_embeddings
        self.mlm_head.predictions.bias = new_embeddings.bias

    def mask_tokens(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MLM corruption with this model's settings (`mlm_probability`, special ids).

        See `losses.mask_tokens_for_mlm`.
        """
        text_config = self.config.text_config
        special = {text_config.cls_token_id}
        if text_config.pad_token_id is not None:
            special.add(text_config.pad_token_id)
        return mask_tokens_for_mlm(
            input_ids,
            vocab_size=text_config.vocab_size,
            mask_token_id=text_config.mask_token_id,
            mlm_probability=self.config.mlm_probability,
            special_token_ids=sorted(special),
            attention_mask=attention_mask,
            generator=generator,
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        match_ids: torch.Tensor | None = None,
        video_ids: torch.Tensor | None = None,
        verb_tags: torch.Tensor | None = None,
        noun_tags: torch.Tensor | None = None,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        negative_video_indices: torch.Tensor | None = None,
        negative_text_indices: torch.Tensor | None = None,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        sampling_generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SViTTForPreTrainingOutput:
        r"""
        pixel_values (`(batch_size, num_frames, num_channels, height, width)`): one clip per caption.
        input_ids, attention_mask (`(batch_size, sequence_length)`): ALBEF-style captions (`[CLS] tokens`, no `[SEP]`).
        match_ids (`(batch_size,)`, *optional*): equal ids mark the same video: ITC treats them as positives and ITM
            never uses them as negatives. Defaults to every sample being its own video. With
            `gather_negatives_across_processes` they must be unique across processes (dataset indices).
        video_ids, verb_tags, noun_tags (*optional*): EgoNCE inputs (`config.contrastive_loss="egonce"`): the source
            video of every clip (scene-aware negatives) and multi-hot verb / noun tags (action-aware positives).
        mlm_input_ids, mlm_labels (`(batch_size, sequence_length)`, *optional*): an already-masked text and its labels
            (-100 = not masked). Drawn with `sampling_generator` when omitted.
        negative_video_indices, negative_text_indices (`(batch_size,)`, *optional*): ITM negatives to use (the
            negative video of every text, the negative text of every video; -1 = none). Drawn when omitted.
        random_blocks, generator: replay or seed the video tower's random attention blocks.
        sampling_generator (`torch.Generator`, *optional*): on the inputs' device; seeds ITM negatives and MLM masks.
        """
        config = self.config
        if (mlm_input_ids is None) != (mlm_labels is None):
            raise ValueError("Pass `mlm_input_ids` and `mlm_labels` together (or neither, to mask on the fly).")
        compute_itm = config.loss_weight_itm != 0
        compute_mlm = config.loss_weight_mlm != 0
        shared = self._contrastive_matching_forward(
            pixel_values,
            input_ids,
            attention_mask,
            match_ids,
            verb_tags,
            noun_tags,
            video_ids,
            negative_video_indices,
            negative_text_indices,
            random_blocks,
            generator,
            sampling_generator,
            compute_itm,
            output_attentions,
            output_hidden_states,
        )
        video, text, contrastive = shared["video"], shared["text"], shared["contrastive"]
        attention_mask = shared["attention_mask"]
        loss_itc, loss_itm, loss = contrastive.loss, shared.get("loss_itm"), shared["loss"]

        loss_mlm = mlm_logits = mlm_fusion = None
        if compute_mlm:
            if mlm_input_ids is None:
                mlm_input_ids, mlm_labels = self.mask_tokens(input_ids, attention_mask, sampling_generator)
            masked_text = self.svitt.text_model(
                input_ids=mlm_input_ids, attention_mask=attention_mask, return_dict=True
            ).last_hidden_state
            # The masked caption cross-attends to its own (positive) video.
            mlm_fusion = self.svitt.fuse(
                masked_text, attention_mask, video.tokens, video.token_mask, output_attentions=output_attentions
            )
            mlm_logits = self.mlm_head(mlm_fusion.last_hidden_state)
            loss_mlm = masked_lm_loss(mlm_logits, mlm_labels)
            loss = loss + config.loss_weight_mlm * loss_mlm

        return SViTTForPreTrainingOutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            loss_mlm=loss_mlm,
            logits_per_video=contrastive.logits_per_video,
            logits_per_text=contrastive.logits_per_text,
            itm_logits=shared.get("itm_logits"),
            itm_labels=shared.get("itm_labels"),
            negative_video_indices=shared.get("negative_video_indices"),
            negative_text_indices=shared.get("negative_text_indices"),
            mlm_logits=mlm_logits,
            mlm_labels=mlm_labels if compute_mlm else None,
            video_embeds=video.embeds,
            text_embeds=text.embeds,
            vision_model_output=video.vision_output,
            text_model_output=text.text_output,
            itm_fusion_output=shared.get("itm_fusion"),
            mlm_fusion_output=mlm_fusion,
        )


# --------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------


class SViTTForVideoTextRetrieval(SViTTHeadPreTrainedModel):
    """Video-text retrieval: ITC + ITM fine-tuning, and the release's two-stage gallery ranking (spec §6.1).

    Training: `model(pixel_values, input_ids, attention_mask, match_ids=..., return_loss=True).loss`.

    Ranking a test set:

    ```python
    >>> videos = model.encode_videos(test_videos)            # (N, K*T, 3, H, W) tensor or an iterable of batches
    >>> texts = model.encode_texts(input_ids, attention_mask)
    >>> result = model.rank(videos, texts, k=128, clip_aggregation="lse")
    >>> retrieval_metrics(result.scores_t2v, text_video_ids, video_ids, scores_v2t=result.scores_v2t)
    ```
    """

    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^text_decoder\.", r"^decoder_head\."]

    def __init__(self, config: SViTTConfig) -> None:
        super().__init__(config)
        self.svitt = SViTTModel(config)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        match_ids: torch.Tensor | None = None,
        return_loss: bool | None = None,
        video_ids: torch.Tensor | None = None,
        verb_tags: torch.Tensor | None = None,
        noun_tags: torch.Tensor | None = None,
        negative_video_indices: torch.Tensor | None = None,
        negative_text_indices: torch.Tensor | None = None,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        sampling_generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SViTTForVideoTextRetrievalOutput:
        r"""
        pixel_values (`(batch_size, num_frames, num_channels, height, width)`): one clip per caption.
        match_ids (`(batch_size,)`, *optional*): equal ids mark the same video (positives; never ITM negatives).
        return_loss (`bool`, *optional*): compute ITC + ITM. Defaults to `True` in training mode or when
            `match_ids` is given; otherwise only the similarity logits are returned (zero-shot use).
        Other arguments: as in [`SViTTForPreTraining.forward`].
        """
        config = self.config
        if return_loss is None:
            return_loss = self.training or match_ids is not None
        compute_itm = return_loss and config.loss_weight_itm != 0
        shared = self._contrastive_matching_forward(
            pixel_values,
            input_ids,
            attention_mask,
            match_ids,
            verb_tags,
            noun_tags,
            video_ids,
            negative_video_indices,
            negative_text_indices,
            random_blocks,
            generator,
            sampling_generator,
            compute_itm,
            output_attentions,
            output_hidden_states,
            compute_loss=return_loss,
        )
        video, text, contrastive = shared["video"], shared["text"], shared["contrastive"]
        loss = shared.get("loss")
        loss_itc = contrastive.loss if return_loss else None
        loss_itm = shared.get("loss_itm")
        return SViTTForVideoTextRetrievalOutput(
            loss=loss,
            loss_itc=loss_itc,
            loss_itm=loss_itm,
            logits_per_video=shared["logits_per_video"],
            logits_per_text=shared["logits_per_text"],
            itm_logits=shared.get("itm_logits"),
            itm_labels=shared.get("itm_labels"),
            negative_video_indices=shared.get("negative_video_indices"),
            negative_text_indices=shared.get("negative_text_indices"),
            video_embeds=video.embeds,
            text_embeds=text.embeds,
            vision_model_output=video.vision_output,
            text_model_output=text.text_output,
            itm_fusion_output=shared.get("itm_fusion"),
        )

    # Gallery encoding ------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_videos(
        self,
        videos,
        *,
        clip_sampling: str = "consecutive",
        batch_size: int = 16,
        storage_device: torch.device | str | None = "cpu",
        storage_dtype: torch.dtype | None = None,
        seed: int | None = None,
    ) -> SViTTVideoGallery:
        """Encode test videos for ranking, clip by clip, keeping only what ranking needs.

        Args:
            videos: `(num_videos, K * T, C, H, W)` pixel values (cut into batches of `batch_size`), or an iterable
                of such batches (or of dicts with `pixel_values`, e.g. a `DataLoader`). Videos longer than the
                model's clip length `T` are cut into K clips (`clip_sampling`: "consecutive" or "strided").
            storage_device, storage_dtype: where and how the features are kept (default: CPU, model dtype), so
                that accelerator memory stays bounded by one batch whatever the gallery size.
            seed: draw the random attention blocks of every batch from a generator with this seed. By default the
                video tower's own rule applies: in eval mode with `vision_config.deterministic_eval` (the default)
                every forward re-seeds with `random_block_seed`, so a video's features do not depend on the batch it
                was encoded in; with `deterministic_eval=False` patterns are fresh, as the release draws them.
        """
        num_frames = self.config.vision_config.num_frames
        device = self.device
        embeds, tokens, masks = [], [], []
        for batch in _iterate_video_batches(videos, batch_size):
            clips, num_clips = split_into_clips(batch.to(device), num_frames, clip_sampling)
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            encoding = self.svitt.encode_video(clips, generator=generator)
            count = clips.shape[0] // num_clips
            store = {"device": storage_device} if storage_device is not None else {}
            embeds.append(encoding.embeds.reshape(count, num_clips, -1).to(**store))
            tokens.append(
                encoding.tokens.reshape(count, num_clips, *encoding.tokens.shape[1:]).to(dtype=storage_dtype, **store)
            )
            masks.append(encoding.token_mask.reshape(count, num_clips, -1).to(**store))
        if not embeds:
            raise ValueError("No videos to encode.")
        return SViTTVideoGallery(embeds=torch.cat(embeds), tokens=torch.cat(tokens), token_mask=torch.cat(masks))

    @torch.no_grad()
    def encode_texts(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        batch_size: int = 256,
        storage_device: torch.device | str | None = "cpu",
        storage_dtype: torch.dtype | None = None,
    ) -> SViTTTextGallery:
        """Encode captions for ranking: ITC embeddings plus the text-layer states the fusion layers need."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        device = self.device
        store = {"device": storage_device} if storage_device is not None else {}
        embeds, hidden = [], []
        for start in range(0, input_ids.shape[0], batch_size):
            encoding = self.svitt.encode_text(
                input_ids[start : start + batch_size].to(device), attention_mask[start : start + batch_size].to(device)
            )
            embeds.append(encoding.embeds.to(**store))
            hidden.append(encoding.hidden_states.to(dtype=storage_dtype, **store))
        if not embeds:
            raise ValueError("No texts to encode.")
        return SViTTTextGallery(
            embeds=torch.cat(embeds), hidden_states=torch.cat(hidden), attention_mask=attention_mask.to(**store)
        )

    # Ranking ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def itc_scores(self, videos: SViTTVideoGallery, texts: SViTTTextGallery, chunk_size: int = 1024) -> torch.Tensor:
        """`(num_texts, num_videos)` cosine similarities, averaged over each video's clips (no temperature)."""
        device = self.device
        text_embeds = texts.embeds.to(device)
        rows = []
        for start in range(0, videos.embeds.shape[0], chunk_size):
            video_embeds = videos.embeds[start : start + chunk_size].to(device, text_embeds.dtype)
            rows.append(torch.einsum("te,vke->tvk", text_embeds, video_embeds).mean(dim=-1).to(texts.embeds.device))
        return torch.cat(rows, dim=1)

    @torch.no_grad()
    def itm_pair_scores(
        self,
        videos: SViTTVideoGallery,
        texts: SViTTTextGallery,
        text_indices: torch.Tensor,
        video_indices: torch.Tensor,
        *,
        clip_aggregation: str = "lse",
        itm_score: str = "positive_logit",
        batch_size: int = 128,
    ) -> torch.Tensor:
        """ITM score of the pairs `(text_indices[i], video_indices[i])`, each clip fused and the clips combined.

        `batch_size` counts fusion rows (pairs x clips) per forward, which bounds memory.
        """
        device = self.device
        num_clips = videos.tokens.shape[1]
        pairs_per_batch = max(1, batch_size // num_clips)
        scores = []
        for start in range(0, text_indices.numel(), pairs_per_batch):
            t = text_indices[start : start + pairs_per_batch].to(texts.hidden_states.device)
            v = video_indices[start : start + pairs_per_batch].to(videos.tokens.device)
            count = t.numel()
            # galleries may be stored in a smaller dtype; compute in the model's
            text_hidden = texts.hidden_states[t].to(device, self.dtype).repeat_interleave(num_clips, dim=0)
            text_mask = texts.attention_mask[t.to(texts.attention_mask.device)].to(device)
            text_mask = text_mask.repeat_interleave(num_clips, dim=0)
            video_tokens = videos.tokens[v].to(device, self.dtype).flatten(0, 1)
            video_mask = videos.token_mask[v.to(videos.token_mask.device)].to(device).flatten(0, 1)
            fusion = self.svitt.fuse(text_hidden, text_mask, video_tokens, video_mask)
            logits = self.itm_head(fusion.last_hidden_state[:, 0])
            per_clip = self._itm_scores(logits, itm_score).float().reshape(count, num_clips)
            scores.append(aggregate_clips(per_clip, clip_aggregation).cpu())
        if not scores:
            return torch.empty(0)
        return torch.cat(scores)

    @torch.no_grad()
    def rank(
        self,
        videos: SViTTVideoGallery,
        texts: SViTTTextGallery,
        *,
        k: int = 128,
        use_itm: bool = True,
        clip_aggregation: str = "lse",
        itm_score: str = "positive_logit",
        itm_batch_size: int = 128,
        non_candidate_fill: str | float = "itc",
        fusion_token_keep_rate: float | None = None,
        fusion_token_drop_layers: Iterable[int] | None = None,
        fusion_token_keep_strategy: str | None = None,
    ) -> SViTTRetrievalOutput:
        """Rank every text against every video the way the release evaluates (spec §6.1).

        1. ITC for all pairs (cosine similarity averaged over each video's clips).
        2. With `use_itm`, ITM re-ranking in both directions: each text's top-`k` videos and each video's top-`k`
           texts by ITC are re-scored by the fusion layers + ITM head, per clip, and the clips combined with
           `clip_aggregation` ("lse", "mean", "max"). A pair that is a candidate in both directions is fused once.
        3. Non-candidates stay below every candidate of their row. `non_candidate_fill="itc"` keeps them in ITC
           order (so ranks beyond k, mean and median rank stay meaningful); a number fills them with that
           constant (the release uses -100).

        Args:
            itm_score: "positive_logit" (the release: raw class-1 logit) or "match_log_prob" (log p(match)).
            itm_batch_size: fusion rows (pairs x clips) per forward; bounds memory for any gallery size.
            fusion_token_keep_rate, fusion_token_drop_layers, fusion_token_keep_strategy: switch on text-guided
                video token selection in the fusion layers for this ranking only (see `text_guided_selection`).

        The result is deterministic and does not depend on how the galleries were batched.
        """
        if clip_aggregation not in CLIP_AGGREGATIONS:
            raise ValueError(f"`clip_aggregation` must be one of {CLIP_AGGREGATIONS}, got {clip_aggregation!r}.")
        itc = self.itc_scores(videos, texts).float().cpu()
        num_texts, num_videos = itc.shape
        if not use_itm or k <= 0:
            no_candidates = torch.zeros_like(itc, dtype=torch.bool)
            return SViTTRetrievalOutput(itc, itc.T.clone(), itc, no_candidates, no_candidates.T.clone())

        k_t2v, k_v2t = min(k, num_videos), min(k, num_texts)
        candidates_t2v = torch.zeros_like(itc, dtype=torch.bool)
        candidates_t2v.scatter_(1, itc.topk(k_t2v, dim=1).indices, True)
        candidates_v2t = torch.zeros(num_videos, num_texts, dtype=torch.bool)
        candidates_v2t.scatter_(1, itc.T.topk(k_v2t, dim=1).indices, True)
        # Scores do not depend on the direction, so every pair needed by either direction is fused once.
        needed = candidates_t2v | candidates_v2t.T
        text_indices, video_indices = needed.nonzero(as_tuple=True)
        selection = (fusion_token_keep_rate, fusion_token_drop_layers, fusion_token_keep_strategy)
        with text_guided_selection(self.svitt, *selection):
            pair_scores = self.itm_pair_scores(
                videos,
                texts,
                text_indices,
                video_indices,
                clip_aggregation=clip_aggregation,
                itm_score=itm_score,
                batch_size=itm_batch_size,
            )
        itm = torch.zeros_like(itc)
        itm[text_indices, video_indices] = pair_scores
        scores_t2v = self._fill_non_candidates(itm, itc, candidates_t2v, non_candidate_fill)
        scores_v2t = self._fill_non_candidates(itm.T, itc.T, candidates_v2t, non_candidate_fill)
        return SViTTRetrievalOutput(scores_t2v, scores_v2t, itc, candidates_t2v, candidates_v2t)

    @staticmethod
    def _fill_non_candidates(
        itm: torch.Tensor, itc: torch.Tensor, candidates: torch.Tensor, fill: str | float
    ) -> torch.Tensor:
        if fill != "itc":
            return torch.where(candidates, itm, torch.full_like(itm, float(fill)))
        lowest_candidate = itm.masked_fill(~candidates, float("inf")).min(dim=1, keepdim=True).values
        highest_itc = itc.masked_fill(candidates, float("-inf")).max(dim=1, keepdim=True).values
        # Shift each row's ITC scores so that the best non-candidate lands 1 below the worst candidate.
        shifted = itc - highest_itc + lowest_candidate - 1.0
        return torch.where(candidates, itm, shifted)

    @torch.no_grad()
    def retrieve(
        self,
        pixel_values,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        clip_sampling: str = "consecutive",
        video_batch_size: int = 16,
        text_batch_size: int = 256,
        storage_device: torch.device | str | None = "cpu",
        **rank_kwargs,
    ) -> SViTTRetrievalOutput:
        """`encode_videos` + `encode_texts` + `rank` in one call (keyword arguments of `rank` pass through)."""
        videos = self.encode_videos(
            pixel_values, clip_sampling=clip_sampling, batch_size=video_batch_size, storage_device=storage_device
        )
        texts = self.encode_texts(input_ids, attention_mask, batch_size=text_batch_size, storage_device=storage_device)
        return self.rank(videos, texts, **rank_kwargs)


# --------------------------------------------------------------------------------------------------
# Video question answering
# --------------------------------------------------------------------------------------------------


def answer_decoder_config(config: SViTTConfig) -> SViTTTextConfig:
    """Config of the answer decoder: the text config with as many layers as there are fusion layers, every one
    with causal self-attention and cross-attention to the question states (spec §6.2).

    `config.answer_decoder_num_layers` overrides the depth.
    """
    text_config = config.text_config
    values = text_config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"):
        values.pop(key, None)
    num_layers = config.answer_decoder_num_layers or text_config.num_fusion_layers
    if num_layers < 1:
        raise ValueError("The answer decoder needs at least one layer (`text_config` has no fusion layers).")
    values.update(
        num_hidden_layers=int(num_layers),
        fusion_layer=0,
        encoder_width=text_config.hidden_size,
        fusion_token_keep_rate=1.0,
        fusion_token_drop_layers=[0],
    )
    return SViTTTextConfig(**values)


def causal_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """`(N, L)` padding mask -> `(N, 1, L, L)` boolean mask: position i sees the real tokens j <= i."""
    length = attention_mask.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=attention_mask.device).tril()
    return causal[None, None] & attention_mask.bool()[:, None, None, :]


_DECODER_SOURCE_HEAD = "mlm_head.predictions."


class SViTTForVideoQuestionAnswering(SViTTHeadPreTrainedModel):
    """Video QA by ranking a closed answer list with an answer decoder (ALBEF-style, spec §6.2).

    The question is encoded by the whole text tower, cross-attending to the video in the fusion layers; a
    causal answer decoder (`text_decoder`, as deep as the fusion stack, cross-attending to the question
    states) scores answers by their likelihood. Loading a pretraining (or retrieval) checkpoint with
    `from_pretrained` initialises the decoder from the fusion layers, the word embeddings and the MLM head,
    as the release does.

    Ranking (`rank_answers`): the first answer token's probability picks the top-k answers, whose full
    likelihood then decides. Two scoring modes:

    * clean (default): per clip, the first-token log-probability and then each candidate's sequence
      log-likelihood (first token counted once); clips combined with `clip_aggregation`; rank by the result.
    * `release_scoring=True`: the release's `forward_ensemble` (its default evaluation path, even for one clip):
      per-clip first-token *probabilities* are aggregated and passed through a second softmax over the
      vocabulary (which nearly flattens them), and the candidate score is `log p_first + sequence
      log-likelihood`, i.e. the first token is counted twice. Use it to reproduce released numbers.
    """

    _tied_weights_keys = {
        "decoder_head.predictions.decoder.weight": "text_decoder.embeddings.word_embeddings.weight",
        "decoder_head.predictions.decoder.bias": "decoder_head.predictions.bias",
    }
    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^itm_head\."]
    # The release's QA model deletes these (they are unused by QA); checkpoints converted from it lack them.
    _keys_to_ignore_on_load_missing = [
        r"^svitt\.vision_model\.pooler\.",
        r"^svitt\.vision_projection\.",
        r"^svitt\.text_projection\.",
        r"^svitt\.temperature$",
    ]

    def __init__(self, config: SViTTConfig) -> None:
        super().__init__(config)
        self.svitt = SViTTModel(config)
        decoder_config = answer_decoder_config(config)
        self.text_decoder = SViTTTextModel(decoder_config)
        self.decoder_head = SViTTOnlyMLMHead(decoder_config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.decoder_head.predictions.decoder

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        self.decoder_head.predictions.decoder = new_embeddings
        self.decoder_head.predictions.bias = new_embeddings.bias

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Resize the vocabulary of the question encoder and, with it, of the answer decoder.

        Questions and answers share one tokenizer, but the answer decoder has its own word embeddings (with the
        prediction head tied to them), which the library's resizing does not reach.
        """
        embeddings = super().resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        size = embeddings.num_embeddings
        self.text_decoder.resize_token_embeddings(size, mean_resizing=mean_resizing)
        predictions = self.decoder_head.predictions
        old_bias = predictions.bias
        if old_bias.shape[0] != size:
            bias = old_bias.new_zeros(size)
            kept = min(size, old_bias.shape[0])
            bias[:kept] = old_bias.detach()[:kept]
            predictions.bias = nn.Parameter(bias, requires_grad=old_bias.requires_grad)
        self.tie_weights()
        return embeddings

    # Initialisation from another head --------------------------------------------------------------

    @torch.no_grad()
    def initialize_answer_decoder(self, mlm_head_state_dict: dict[str, torch.Tensor] | None = None) -> list[str]:
        """Initialise the answer decoder as the release does when fine-tuning QA from a pretrained model.

        Decoder layer i <- fusion layer `fusion_layer + i` of `svitt.text_model` (self-attention, cross-attention,
        feed-forward), decoder embeddings <- the text embeddings, `decoder_head` <- the pretraining MLM head
        (`mlm_head_state_dict`, keys relative to `mlm_head.predictions.`, e.g. `transform.dense.weight`, `bias`).
        Tensors whose shapes differ (e.g. cross-attention when `encoder_width` != text width) are skipped.
        Returns the decoder parameter names that were initialised.
        """
        source = self.svitt.text_model
        fusion_layer = source.config.fusion_layer
        copied = []

        def copy_module(target: nn.Module, origin: nn.Module, prefix: str) -> None:
            origin_state = origin.state_dict()
            for name, tensor in target.state_dict().items():
                value = origin_state.get(name)
                if value is None or value.shape != tensor.shape:
                    logger.warning("Answer decoder: `%s%s` has no matching fusion-layer weight.", prefix, name)
                    continue
                tensor.copy_(value)
                copied.append(prefix + name)

        copy_module(self.text_decoder.embeddings, source.embeddings, "text_decoder.embeddings.")
        for index, layer in enumerate(self.text_decoder.encoder.layer):
            origin_index = fusion_layer + index
            if origin_index >= len(source.encoder.layer):
                logger.warning("Answer decoder layer %d has no fusion layer to start from.", index)
                continue
            copy_module(layer, source.encoder.layer[origin_index], f"text_decoder.encoder.layer.{index}.")
        if mlm_head_state_dict:
            predictions = self.decoder_head.predictions
            for name, tensor in predictions.state_dict().items():
                value = mlm_head_state_dict.get(name)
                if name.startswith("decoder.") or value is None or value.shape != tensor.shape:
                    continue  # the decoder matrix is tied to the (just copied) word embeddings
                tensor.copy_(value)
                copied.append("decoder_head.predictions." + name)
        self.tie_weights()
        return copied

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus the release's QA initialisation for checkpoints of other heads.

        When the checkpoint has no answer decoder (a pretraining, retrieval or base-model checkpoint), the decoder
        is initialised from the fusion layers and the MLM head (`initialize_answer_decoder`) instead of randomly.
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        download_kwargs = {
            key: kwargs[key]
            for key in ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
            if key in kwargs
        }
        explicit_state_dict = kwargs.get("state_dict")
        checkpoint_keys, read_tensors = _checkpoint_reader(
            pretrained_model_name_or_path, explicit_state_dict, download_kwargs
        )
        from_other_head = checkpoint_keys is not None and not any(
            key.startswith("text_decoder.") for key in checkpoint_keys
        )

        ignored = list(cls._keys_to_ignore_on_load_missing or [])
        if from_other_head:
            # The decoder is filled right below; keep the load report from calling it "newly initialised".
            cls._keys_to_ignore_on_load_missing = ignored + [r"^text_decoder\.", r"^decoder_head\."]
        try:
            model, loading_info = super().from_pretrained(
                pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
            )
        finally:
            cls._keys_to_ignore_on_load_missing = ignored
        model._keys_to_ignore_on_load_missing = set(ignored)

        if from_other_head:
            head_keys = [key for key in checkpoint_keys if key.startswith(_DECODER_SOURCE_HEAD)]
            head_state = {key[len(_DECODER_SOURCE_HEAD) :]: value for key, value in read_tensors(head_keys).items()}
            model.initialize_answer_decoder(head_state)
            logger.info(
                "Initialised the answer decoder of %s from the fusion layers%s of the checkpoint.",
                cls.__name__,
                " and the MLM head" if head_state else "",
            )
        return (model, loading_info) if output_loading_info else model

    # Forward ----------------------------------------------------------------------------------------

    def encode_questions(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, SViTTVisionModelOutput]:
        """Question states from the whole text tower cross-attending to the clip; `pixel_values` holds one clip per
        question. Returns `(question_states, attention_mask, vision_output)`."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        video = self.svitt.encode_video(pixel_values, random_blocks, generator, output_attentions, output_hidden_states)
        question = self.svitt.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=video.tokens,
            encoder_attention_mask=video.token_mask,
            num_global_video_tokens=self.config.vision_config.num_global_tokens,
            output_attentions=output_attentions,
            return_dict=True,
        )
        return question.last_hidden_state, attention_mask, video.vision_output

    def decode_answers(
        self,
        answer_input_ids: torch.Tensor,
        answer_attention_mask: torch.Tensor | None,
        question_states: torch.Tensor,
        question_attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Teacher-forced decoder logits `(N, La, vocab)`; row i of the answers attends to row i of the questions."""
        if answer_attention_mask is None:
            answer_attention_mask = torch.ones_like(answer_input_ids)
        decoded = self.text_decoder(
            input_ids=answer_input_ids,
            attention_mask=causal_attention_mask(answer_attention_mask),
            encoder_hidden_states=question_states,
            encoder_attention_mask=question_attention_mask,
            return_dict=True,
        )
        return self.decoder_head(decoded.last_hidden_state)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        answer_input_ids: torch.Tensor | None = None,
        answer_attention_mask: torch.Tensor | None = None,
        answer_weights: torch.Tensor | None = None,
        answers_per_question: torch.Tensor | None = None,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SViTTForVideoQuestionAnsweringOutput:
        r"""
        pixel_values (`(batch_size, num_frames, num_channels, height, width)`): one clip per question.
        input_ids, attention_mask (`(batch_size, question_length)`): the questions.
        answer_input_ids, answer_attention_mask (`(num_answers, answer_length)`, *optional*): the ground-truth
            answers of all questions, concatenated question by question, as `[CLS] answer [SEP]` (the first token
            is the decoder's start token). When given, the weighted teacher-forced loss is returned.
        answer_weights (`(num_answers,)`, *optional*): weight of every answer (its share of the annotations).
        answers_per_question (`(batch_size,)`, *optional*): how many answers each question has (defaults to one).

        To predict, use [`rank_answers`] with the answer list.
        """
        question_states, question_mask, vision_output = self.encode_questions(
            pixel_values, input_ids, attention_mask, random_blocks, generator, output_attentions, output_hidden_states
        )
        loss = logits = None
        if answer_input_ids is not None:
            batch = input_ids.shape[0]
            if answers_per_question is None:
                if answer_input_ids.shape[0] != batch:
                    raise ValueError("Pass `answers_per_question` when questions have more than one answer.")
                answers_per_question = torch.ones(batch, dtype=torch.long, device=input_ids.device)
            answers_per_question = answers_per_question.to(question_states.device)
            if int(answers_per_question.sum()) != answer_input_ids.shape[0]:
                raise ValueError(
                    f"`answers_per_question` sums to {int(answers_per_question.sum())}, "
                    f"but {answer_input_ids.shape[0]} answers were given."
                )
            states = question_states.repeat_interleave(answers_per_question, dim=0)
            masks = question_mask.repeat_interleave(answers_per_question, dim=0)
            logits = self.decode_answers(answer_input_ids, answer_attention_mask, states, masks)
            labels = answer_token_labels(answer_input_ids, answer_attention_mask)
            loss = answer_decoder_loss(logits, labels, answer_weights, num_questions=batch)
        return SViTTForVideoQuestionAnsweringOutput(
            loss=loss, logits=logits, question_hidden_states=question_states, vision_model_output=vision_output
        )

    # Answer-list ranking ---------------------------------------------------------------------------

    def _first_token_logits(self, question_states, question_mask, start_token_id) -> torch.Tensor:
        shape = (question_states.shape[0], 1)
        start = torch.full(shape, start_token_id, dtype=torch.long, device=question_states.device)
        return self.decode_answers(start, torch.ones_like(start), question_states, question_mask)[:, 0].float()

    def _candidate_log_likelihood(self, question_states, question_mask, answer_ids, answer_mask, candidates):
        """`(B, k)` sequence log-likelihood of each question's candidates (first answer token included once)."""
        batch, k = candidates.shape
        flat = candidates.reshape(-1)
        ids, mask = answer_ids[flat], answer_mask[flat]
        states = question_states.repeat_interleave(k, dim=0)
        masks = question_mask.repeat_interleave(k, dim=0)
        logits = self.decode_answers(ids, mask, states, masks)
        nll = sequence_negative_log_likelihood(logits, answer_token_labels(ids, mask))
        return -nll.reshape(batch, k)

    @torch.no_grad()
    def rank_answers(
        self,
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
        """Pick each question's answer from a closed answer list (spec §6.2).

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
            raise ValueError(f"Ranking needs k >= 1 and a non-empty answer list (k={k}, {answer_input_ids.shape[0]} answers).")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if answer_attention_mask is None:
            answer_attention_mask = torch.ones_like(answer_input_ids)
        device = self.device
        batch = input_ids.shape[0]
        num_frames = self.config.vision_config.num_frames
        clips, num_clips = split_into_clips(pixel_values.to(device), num_frames, clip_sampling)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        question_ids = input_ids.to(device).repeat_interleave(num_clips, dim=0)
        question_mask = attention_mask.to(device).repeat_interleave(num_clips, dim=0)
        states, mask, _ = self.encode_questions(clips, question_ids, question_mask, generator=generator)
        answer_ids, answer_mask = answer_input_ids.to(device), answer_attention_mask.to(device)
        start_token_id = int(answer_ids[0, 0])
        first_tokens = answer_ids[:, 1]
        k = min(k, answer_ids.shape[0])

        first_logits = self._first_token_logits(states, mask, start_token_id).reshape(batch, num_clips, -1)
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
            log_likelihood = self._candidate_log_likelihood(
                states[rows], mask[rows], answer_ids, answer_mask, candidates
            )
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


# --------------------------------------------------------------------------------------------------
# Multiple choice (EgoMCQ)
# --------------------------------------------------------------------------------------------------


class SViTTForMultipleChoice(SViTTHeadPreTrainedModel):
    """One text, N candidate clips (EgoMCQ): `logits (batch_size, N)`, cross-entropy with `labels`.

    Candidates are scored by ITC (`scoring="itc"`, the default: cosine similarity / temperature, how EgoMCQ is
    evaluated zero-shot for dual encoders) or by the ITM head on the fused pair (`scoring="itm"`, raw match
    logit). The default can be changed with `config.multiple_choice_scoring`.
    """

    _keys_to_ignore_on_load_unexpected = [r"^mlm_head\.", r"^text_decoder\.", r"^decoder_head\."]

    def __init__(self, config: SViTTConfig) -> None:
        super().__init__(config)
        self.svitt = SViTTModel(config)
        self.itm_head = nn.Linear(config.text_config.hidden_size, 2)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        scoring: str | None = None,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        return_dict: bool | None = None,
    ) -> SViTTMultipleChoiceOutput:
        r"""
        pixel_values (`(batch_size, num_choices, num_frames, num_channels, height, width)`): the candidate clips.
        input_ids, attention_mask (`(batch_size, sequence_length)`): the text of every question.
        labels (`(batch_size,)`, *optional*): index of the correct clip; gives the cross-entropy loss.
        scoring (`str`, *optional*): "itc" or "itm" (defaults to `config.multiple_choice_scoring`, else "itc").
        """
        scoring = scoring or self.config.multiple_choice_scoring
        if scoring not in MULTIPLE_CHOICE_SCORINGS:
            raise ValueError(f"`scoring` must be one of {MULTIPLE_CHOICE_SCORINGS}, got {scoring!r}.")
        if pixel_values.dim() != 6:
            raise ValueError(
                "`pixel_values` must be (batch_size, num_choices, num_frames, channels, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        if self.training:
            self.svitt.clamp_temperature_()
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        batch, num_choices = pixel_values.shape[:2]
        video = self.svitt.encode_video(pixel_values.flatten(0, 1), random_blocks, generator)
        text = self.svitt.encode_text(input_ids, attention_mask)
        video_embeds = video.embeds.reshape(batch, num_choices, -1)
        if scoring == "itc":
            logits = torch.einsum("be,bne->bn", text.embeds, video_embeds) / self.svitt.temperature
        else:
            fusion = self.svitt.fuse(
                text.hidden_states.repeat_interleave(num_choices, dim=0),
                attention_mask.repeat_interleave(num_choices, dim=0),
                video.tokens,
                video.token_mask,
            )
            logits = self.itm_head(fusion.last_hidden_state[:, 0])[:, 1].reshape(batch, num_choices)
        loss = multiple_choice_loss(logits, labels.to(logits.device)) if labels is not None else None
        return SViTTMultipleChoiceOutput(loss=loss, logits=logits, video_embeds=video_embeds, text_embeds=text.embeds)


# --------------------------------------------------------------------------------------------------
# Checkpoint reading (for cross-head initialisation)
# --------------------------------------------------------------------------------------------------


def _checkpoint_reader(pretrained_model_name_or_path, state_dict, download_kwargs):
    """Key list of a checkpoint and a function reading some of its tensors, without loading the rest.

    Handles explicit state dicts, local folders and Hub repos, single-file and sharded safetensors. Returns
    `(None, None)` when the checkpoint cannot be inspected (then no cross-head initialisation happens).
    """
    if state_dict is not None:
        return list(state_dict), lambda names: {name: state_dict[name] for name in names}
    if pretrained_model_name_or_path is None:
        return None, None
    from safetensors import safe_open
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

    def resolve(filename):
        return cached_file(
            pretrained_model_name_or_path,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **download_kwargs,
        )

    single = resolve(SAFE_WEIGHTS_NAME)
    if single is not None:
        with safe_open(single, framework="pt") as handle:
            keys = list(handle.keys())
        file_of = dict.fromkeys(keys, SAFE_WEIGHTS_NAME)
    else:
        index = resolve(SAFE_WEIGHTS_INDEX_NAME)
        if index is None:
            return None, None
        with open(index, encoding="utf-8") as handle:
            file_of = json.load(handle)["weight_map"]
        keys = list(file_of)
    # Checkpoints of the bare SViTTModel have no `svitt.` prefix; normalise to the heads' names.
    prefixed = {(key if key.split(".")[0] in _HEAD_TOP_LEVEL else f"svitt.{key}"): key for key in keys}

    def read(names):
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(file_of[prefixed[name]], []).append(name)
        tensors = {}
        for filename, group in by_file.items():
            path = single if filename == SAFE_WEIGHTS_NAME and single is not None else resolve(filename)
            with safe_open(path, framework="pt") as handle:
                for name in group:
                    tensors[name] = handle.get_tensor(prefixed[name])
        return tensors

    return list(prefixed), read


_HEAD_TOP_LEVEL = {"svitt", "itm_head", "mlm_head", "text_decoder", "decoder_head"}


# --------------------------------------------------------------------------------------------------
# Registration
# --------------------------------------------------------------------------------------------------


HEAD_AUTO_CLASSES = {
    "AutoModelForPreTraining": SViTTForPreTraining,
    "AutoModelForZeroShotImageClassification": SViTTForVideoTextRetrieval,
    "AutoModelForVisualQuestionAnswering": SViTTForVideoQuestionAnswering,
    "AutoModelForMultipleChoice": SViTTForMultipleChoice,
}


def register_head_auto_classes() -> None:
    """Register the heads with transformers' Auto classes (in-process) and for Hub remote code.

    There is no Auto class for retrieval; like XCLIP / BLIP, retrieval answers to
    `AutoModelForZeroShotImageClassification`.
    """
    import transformers

    for auto_class_name, model_class in HEAD_AUTO_CLASSES.items():
        getattr(transformers, auto_class_name).register(SViTTConfig, model_class, exist_ok=True)
        model_class.register_for_auto_class(auto_class_name)


__all__ = [
    "SViTTAnswerRankingOutput",
    "SViTTForMultipleChoice",
    "SViTTForPreTraining",
    "SViTTForPreTrainingOutput",
    "SViTTForVideoQuestionAnswering",
    "SViTTForVideoQuestionAnsweringOutput",
    "SViTTForVideoTextRetrieval",
    "SViTTForVideoTextRetrievalOutput",
    "SViTTHeadPreTrainedModel",
    "SViTTMultipleChoiceOutput",
    "SViTTRetrievalOutput",
    "SViTTTextGallery",
    "SViTTVideoGallery",
    "aggregate_clips",
    "answer_decoder_config",
    "causal_attention_mask",
    "register_head_auto_classes",
    "split_into_clips",
    "text_guided_selection",
]
