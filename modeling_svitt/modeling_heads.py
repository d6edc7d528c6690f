"""Task heads of SViTT / SViTT-Ego: the shared head base, pretraining and video-text retrieval (video QA and multiple
choice, EgoMCQ, have modules of their own).

Every head holds the dual encoder as `self.svitt` ([`SViTTModel`]) and adds its task modules under the
names the checkpoint converter writes (`INTERFACE.md`): `itm_head`, `mlm_head.predictions.*`,
`text_decoder`, `decoder_head.predictions.*`. Because the names are shared, a checkpoint of one head loads
into another wherever the weights overlap (pretraining -> retrieval / multiple choice directly; pretraining
-> video QA initialises the answer decoder from the fusion layers and the MLM head, as the release does).

All losses come from `losses.py`; the heads only decide what to feed them.
"""

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_svitt import SViTTConfig, SViTTTextConfig
from .losses import (
    ContrastiveCache,
    ContrastiveLossOutput,
    image_text_matching_loss,
    mask_tokens_for_mlm,
    masked_lm_loss,
    sample_itm_negatives,
)
from .modeling_common import NestedModelOutput, SViTTPreTrainedModel
from .modeling_svitt import SViTTModel, SViTTTextEncoding, SViTTVideoEncoding
from .modeling_svitt_vision import RandomBlocks, SViTTVisionModelOutput
from .modeling_svitt_text import SViTTTextModelOutput
from .retrieval_ranking import (
    encode_text_gallery,
    encode_video_gallery,
    itc_scores,
    itm_pair_scores,
    rank_galleries,
    retrieve,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


@dataclass
class SViTTForPreTrainingOutput(NestedModelOutput):
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
class SViTTForVideoTextRetrievalOutput(NestedModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*): `loss_weight_itc * loss_itc + loss_weight_itm * loss_itm`.
    loss_itc, loss_itm (`torch.FloatTensor`, *optional*): the two objectives.
    logits_per_video (`(num_videos, num_texts)`), logits_per_text (`(num_texts, num_videos)`):
        Cosine similarities divided by the temperature (zero-shot scores when no loss is computed).
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

    # Randomness of the training objectives -----------------------------------------------------------

    def _sampling_generator(self, generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
        """The generator of ITM negatives and MLM masks: the caller's; in evaluation with `deterministic_eval`, one
        seeded with `random_block_seed` (like the video tower's blocks), so the same batch gives the same loss; else
        the global RNG."""
        vision_config = self.config.vision_config
        if generator is None and not self.training and vision_config.deterministic_eval:
            generator = torch.Generator(device=device).manual_seed(vision_config.random_block_seed)
        return generator

    # ITM ------------------------------------------------------------------------------------------

    def _itm_negatives(
        self,
        contrastive: ContrastiveLossOutput,
        batch_size: int,
        *,
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
            negative_video_indices = sample_itm_negatives(text_to_video, text_positives, hard=hard, generator=generator)
        else:
            negative_video_indices = self._check_negatives(
                negative_video_indices, text_positives, "negative_video_indices"
            )
        if negative_text_indices is None:
            negative_text_indices = sample_itm_negatives(video_to_text, video_positives, hard=hard, generator=generator)
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
        text: SViTTTextEncoding,
        video: SViTTVideoEncoding,
        *,
        negative_video_indices: torch.Tensor,
        negative_text_indices: torch.Tensor,
        output_attentions: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, SViTTTextModelOutput]:
        """ITM over the positives, then (text i, negative video) and (negative text, video i) pairs."""
        text_hidden_states = text.hidden_states
        device = text_hidden_states.device  # fusion runs on the text tower: gather the video side there
        video_tokens, video_token_mask = video.tokens.to(device), video.token_mask.to(device)
        negative_video_indices = negative_video_indices.to(device)
        negative_text_indices = negative_text_indices.to(device)
        batch = text_hidden_states.shape[0]
        rows = torch.arange(batch, device=device)
        has_video_negative = negative_video_indices >= 0
        has_text_negative = negative_text_indices >= 0
        text_rows = torch.cat([rows, rows[has_video_negative], negative_text_indices[has_text_negative]])
        video_rows = torch.cat([rows, negative_video_indices[has_video_negative], rows[has_text_negative]])
        fusion = self.svitt.fuse(
            text_hidden_states[text_rows],
            text.attention_mask.to(device)[text_rows],
            video_tokens[video_rows],
            video_token_mask[video_rows],
            output_attentions=output_attentions,
        )
        itm_logits = self.itm_head(fusion.last_hidden_state[:, 0])
        itm_labels = torch.zeros(text_rows.shape[0], dtype=torch.long, device=itm_logits.device)
        itm_labels[:batch] = 1
        return itm_logits, itm_labels, fusion

    # The forward of pretraining and retrieval -------------------------------------------------------

    def _contrastive_matching_forward(
        self,
        output_class: type[ModelOutput],
        *,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        match_ids: torch.Tensor | None,
        video_ids: torch.Tensor | None,
        verb_tags: torch.Tensor | None,
        noun_tags: torch.Tensor | None,
        negative_video_indices: torch.Tensor | None,
        negative_text_indices: torch.Tensor | None,
        random_blocks: RandomBlocks | None,
        generator: torch.Generator | None,
        sampling_generator: torch.Generator | None,
        output_attentions: bool | None,
        output_hidden_states: bool | None,
        compute_loss: bool = True,
        mlm_input_ids: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        contrastive_cache: ContrastiveCache | None = None,
        micro_batch_index: int | None = None,
    ) -> ModelOutput:
        """Towers, ITC and the objectives with a non-zero weight: ITM, and MLM when the head has an MLM head.

        With `compute_loss=False` only the similarity logits are computed (no ITC loss, no ITM), so any number of
        videos can be scored against any number of texts (zero-shot use). With `contrastive_cache`, ITC covers the
        whole accumulated batch; ITM negatives and MLM stay within this micro-batch.
        """
        video, text = self.svitt.encode_pairs(
            pixel_values,
            input_ids,
            attention_mask,
            random_blocks=random_blocks,
            generator=generator,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        fields = dict(
            video_embeds=video.embeds,
            text_embeds=text.embeds,
            vision_model_output=video.vision_output,
            text_model_output=text.text_output,
        )
        if not compute_loss:
            logits_per_text = self.svitt.similarity_logits(text.embeds, video.embeds)
            return output_class(logits_per_video=logits_per_text.T, logits_per_text=logits_per_text, **fields)

        fields.update(
            self._training_objectives(
                text,
                video,
                input_ids=input_ids,
                match_ids=match_ids,
                video_ids=video_ids,
                verb_tags=verb_tags,
                noun_tags=noun_tags,
                contrastive_cache=contrastive_cache,
                micro_batch_index=micro_batch_index,
                negative_video_indices=negative_video_indices,
                negative_text_indices=negative_text_indices,
                mlm_input_ids=mlm_input_ids,
                mlm_labels=mlm_labels,
                sampling_generator=sampling_generator,
                output_attentions=output_attentions,
            )
        )
        return output_class(**fields)

    def _training_objectives(
        self,
        text: SViTTTextEncoding,
        video: SViTTVideoEncoding,
        *,
        input_ids: torch.Tensor,
        match_ids: torch.Tensor | None,
        video_ids: torch.Tensor | None,
        verb_tags: torch.Tensor | None,
        noun_tags: torch.Tensor | None,
        contrastive_cache: ContrastiveCache | None,
        micro_batch_index: int | None,
        negative_video_indices: torch.Tensor | None,
        negative_text_indices: torch.Tensor | None,
        mlm_input_ids: torch.Tensor | None,
        mlm_labels: torch.Tensor | None,
        sampling_generator: torch.Generator | None,
        output_attentions: bool | None,
    ) -> dict[str, Any]:
        """ITC (or EgoNCE), then ITM and MLM where their weight is not 0: the losses, their weighted sum `loss`,
        and the output fields each objective fills."""
        contrastive = self.svitt.contrastive(
            video.embeds,
            text.embeds,
            match_ids,
            verb_tags=verb_tags,
            noun_tags=noun_tags,
            video_ids=video_ids,
            cache=contrastive_cache,
            micro_batch_index=micro_batch_index,
        )
        fields = dict(
            loss_itc=contrastive.loss,
            logits_per_video=contrastive.logits_per_video,
            logits_per_text=contrastive.logits_per_text,
        )
        # negatives and masks are drawn where the similarities are (the text tower's device)
        sampling_device = contrastive.logits_per_text.device
        sampling_generator = self._sampling_generator(sampling_generator, sampling_device)
        if self.config.loss_weight_itm != 0:
            fields.update(
                self._matching_objective(
                    contrastive,
                    text,
                    video,
                    negative_video_indices=negative_video_indices,
                    negative_text_indices=negative_text_indices,
                    sampling_generator=sampling_generator,
                    output_attentions=output_attentions,
                )
            )
        if getattr(self, "mlm_head", None) is not None and self.config.loss_weight_mlm != 0:
            fields.update(
                self._masked_lm_objective(
                    input_ids,
                    text,
                    video,
                    mlm_input_ids=mlm_input_ids,
                    mlm_labels=mlm_labels,
                    sampling_device=sampling_device,
                    sampling_generator=sampling_generator,
                    output_attentions=output_attentions,
                )
            )
        fields["loss"] = self._weighted_loss(fields)
        return fields

    def _weighted_loss(self, fields: dict[str, Any]) -> torch.Tensor:
        """`loss_weight_itc * loss_itc` plus the ITM and MLM terms that were computed."""
        config = self.config
        weights = {
            "loss_itc": config.loss_weight_itc,
            "loss_itm": config.loss_weight_itm,
            "loss_mlm": config.loss_weight_mlm,
        }
        # the parts may come from heads on different devices (device_map): add them up on the ITC loss's
        loss_device = fields["loss_itc"].device
        return sum(weight * fields[name].to(loss_device) for name, weight in weights.items() if name in fields)

    def _matching_objective(
        self,
        contrastive: ContrastiveLossOutput,
        text: SViTTTextEncoding,
        video: SViTTVideoEncoding,
        *,
        negative_video_indices: torch.Tensor | None,
        negative_text_indices: torch.Tensor | None,
        sampling_generator: torch.Generator | None,
        output_attentions: bool | None,
    ) -> dict[str, torch.Tensor | SViTTTextModelOutput]:
        """ITM: the loss and the output fields of the positives and the (given or drawn) in-batch negatives."""
        negative_video_indices, negative_text_indices = self._itm_negatives(
            contrastive,
            text.hidden_states.shape[0],
            negative_video_indices=negative_video_indices,
            negative_text_indices=negative_text_indices,
            generator=sampling_generator,
        )
        itm_logits, itm_labels, fusion = self._matching(
            text,
            video,
            negative_video_indices=negative_video_indices,
            negative_text_indices=negative_text_indices,
            output_attentions=output_attentions,
        )
        return dict(
            loss_itm=image_text_matching_loss(itm_logits, itm_labels),
            itm_logits=itm_logits,
            itm_labels=itm_labels,
            negative_video_indices=negative_video_indices,
            negative_text_indices=negative_text_indices,
            itm_fusion_output=fusion,
        )

    def _masked_lm_objective(
        self,
        input_ids: torch.Tensor,
        text: SViTTTextEncoding,
        video: SViTTVideoEncoding,
        *,
        mlm_input_ids: torch.Tensor | None,
        mlm_labels: torch.Tensor | None,
        sampling_device: torch.device,
        sampling_generator: torch.Generator | None,
        output_attentions: bool | None,
    ) -> dict[str, torch.Tensor | SViTTTextModelOutput]:
        """MLM on the caption (masked on `sampling_device` unless `mlm_input_ids` / `mlm_labels` are given)
        cross-attending to its own video: the loss and the output fields."""
        if mlm_input_ids is None:
            mlm_input_ids, mlm_labels = self.mask_tokens(
                input_ids.to(sampling_device), text.attention_mask.to(sampling_device), sampling_generator
            )
        masked_text = self.svitt.text_model(
            input_ids=mlm_input_ids, attention_mask=text.attention_mask, return_dict=True, mode="text"
        ).last_hidden_state
        # The masked caption cross-attends to its own (positive) video.
        mlm_fusion = self.svitt.fuse(
            masked_text, text.attention_mask, video.tokens, video.token_mask, output_attentions=output_attentions
        )
        mlm_logits = self.mlm_head(mlm_fusion.last_hidden_state)
        return dict(
            loss_mlm=masked_lm_loss(mlm_logits, mlm_labels),
            mlm_logits=mlm_logits,
            mlm_labels=mlm_labels,
            mlm_fusion_output=mlm_fusion,
        )


# --------------------------------------------------------------------------------------------------
# Pretraining
# --------------------------------------------------------------------------------------------------


class SViTTForPreTraining(SViTTHeadPreTrainedModel):
    """SViTT pretraining: ITC (or EgoNCE) + ITM with hard negatives + MLM.

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

    def parameters_unused_in_training(self) -> list[str]:
        """ITC always runs; the fusion layers run for ITM or MLM; each head runs only when its loss weight is not 0."""
        config = self.config
        itm, mlm = config.loss_weight_itm != 0, config.loss_weight_mlm != 0
        unused = [f"svitt.{name}" for name in self.svitt.parameters_unused_by(contrastive=True, fusion=itm or mlm)]
        if not itm:
            unused.append("itm_head.")
        if not mlm:
            unused.append("mlm_head.")
        return unused

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
        return_loss: bool = True,
        contrastive_cache: ContrastiveCache | None = None,
        micro_batch_index: int | None = None,
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
        sampling_generator (`torch.Generator`, *optional*): on the text tower's device (the inputs' device unless the
            model is split across devices); draws ITM negatives and MLM masks.
            By default training uses the global RNG and evaluation (with `vision_config.deterministic_eval`) a
            generator seeded with `vision_config.random_block_seed`, so the same batch gives the same loss.
        return_loss (`bool`, defaults to `True`): `False` runs the towers only (embeddings and similarity logits), e.g.
            to fill a `contrastive_cache` without gradient.
        contrastive_cache ([`ContrastiveCache`]), micro_batch_index (`int`): gradient accumulation with exact
            contrastive batches: ITC / EgoNCE over every micro-batch of the accumulated batch, this one (number
            `micro_batch_index`) with gradient and the others from the cache (see [`ContrastiveCache`]); ITM negatives
            and MLM stay within this micro-batch.
        """
        if (mlm_input_ids is None) != (mlm_labels is None):
            raise ValueError("Pass `mlm_input_ids` and `mlm_labels` together (or neither, to mask on the fly).")
        return self._contrastive_matching_forward(
            SViTTForPreTrainingOutput,
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            match_ids=match_ids,
            video_ids=video_ids,
            verb_tags=verb_tags,
            noun_tags=noun_tags,
            negative_video_indices=negative_video_indices,
            negative_text_indices=negative_text_indices,
            random_blocks=random_blocks,
            generator=generator,
            sampling_generator=sampling_generator,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            compute_loss=return_loss,
            mlm_input_ids=mlm_input_ids,
            mlm_labels=mlm_labels,
            contrastive_cache=contrastive_cache,
            micro_batch_index=micro_batch_index,
        )


# --------------------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------------------


class SViTTForVideoTextRetrieval(SViTTHeadPreTrainedModel):
    """Video-text retrieval: ITC + ITM fine-tuning, and the release's two-stage gallery ranking.

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

    def parameters_unused_in_training(self) -> list[str]:
        """ITC always runs in training; the fusion layers and the ITM head only when `loss_weight_itm` is not 0."""
        itm = self.config.loss_weight_itm != 0
        unused = [f"svitt.{name}" for name in self.svitt.parameters_unused_by(contrastive=True, fusion=itm)]
        return unused if itm else unused + ["itm_head."]

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
        contrastive_cache: ContrastiveCache | None = None,
        micro_batch_index: int | None = None,
    ) -> SViTTForVideoTextRetrievalOutput:
        r"""
        pixel_values (`(batch_size, num_frames, num_channels, height, width)`): one clip per caption.
        match_ids (`(batch_size,)`, *optional*): equal ids mark the same video (positives; never ITM negatives).
        return_loss (`bool`, *optional*): compute ITC + ITM. Defaults to `True` in training mode or when
            `match_ids` is given; otherwise only the similarity logits are returned (zero-shot use).
        Other arguments (`contrastive_cache` for gradient accumulation too): as in [`SViTTForPreTraining.forward`].
        """
        if return_loss is None:
            return_loss = self.training or match_ids is not None
        return self._contrastive_matching_forward(
            SViTTForVideoTextRetrievalOutput,
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            match_ids=match_ids,
            video_ids=video_ids,
            verb_tags=verb_tags,
            noun_tags=noun_tags,
            negative_video_indices=negative_video_indices,
            negative_text_indices=negative_text_indices,
            random_blocks=random_blocks,
            generator=generator,
            sampling_generator=sampling_generator,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            compute_loss=return_loss,
            contrastive_cache=contrastive_cache,
            micro_batch_index=micro_batch_index,
        )

    # Gallery ranking (implemented in `retrieval_ranking.py`) --------------------------------------------

    encode_videos = encode_video_gallery
    encode_texts = encode_text_gallery
    itc_scores = itc_scores
    itm_pair_scores = itm_pair_scores
    rank = rank_galleries
    retrieve = retrieve


__all__ = [
    "SViTTForPreTraining",
    "SViTTForPreTrainingOutput",
    "SViTTForVideoTextRetrieval",
    "SViTTForVideoTextRetrievalOutput",
    "SViTTHeadPreTrainedModel",
]
