"""SViTT-Ego's multiple-choice head (EgoMCQ): one text, N candidate clips, scored by ITC or by the ITM head."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import can_return_tuple

from .configuration_svitt import MULTIPLE_CHOICE_SCORINGS, SViTTConfig
from .losses import multiple_choice_loss
from .modeling_common import NestedModelOutput
from .modeling_heads import SViTTHeadPreTrainedModel
from .modeling_svitt import SViTTModel
from .modeling_svitt_text import SViTTTextModelOutput
from .modeling_svitt_vision import RandomBlocks, SViTTVisionModelOutput


@dataclass
class SViTTMultipleChoiceOutput(NestedModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*, returned when `labels` is given): cross-entropy over the candidates.
    logits (`(batch_size, num_choices)`): score of every candidate clip for its question's text.
    video_embeds (`(batch_size, num_choices, embed_dim)`), text_embeds (`(batch_size, embed_dim)`): ITC embeddings.
    vision_model_output (`(batch_size * num_choices)` clips), text_model_output: the towers' outputs.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    vision_model_output: SViTTVisionModelOutput | None = None
    text_model_output: SViTTTextModelOutput | None = None


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

    def parameters_unused_in_training(self) -> list[str]:
        """With the configured `multiple_choice_scoring`: ITC scoring leaves the fusion layers and the ITM head
        unused, ITM scoring the pooler, the projections and the temperature."""
        itm = self.config.multiple_choice_scoring == "itm"
        unused = [f"svitt.{name}" for name in self.svitt.parameters_unused_by(contrastive=not itm, fusion=itm)]
        return unused if itm else unused + ["itm_head."]

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
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SViTTMultipleChoiceOutput:
        r"""
        pixel_values (`(batch_size, num_choices, num_frames, num_channels, height, width)`): the candidate clips.
        input_ids, attention_mask (`(batch_size, sequence_length)`): the text of every question.
        labels (`(batch_size,)`, *optional*): index of the correct clip; gives the cross-entropy loss.
        scoring (`str`, *optional*): "itc" or "itm" (defaults to `config.multiple_choice_scoring`, else "itc").
        output_attentions, output_hidden_states (`bool`, *optional*): return them in `vision_model_output` (every
            candidate clip, `batch_size * num_choices` rows) and `text_model_output`.
        """
        scoring = scoring or self.config.multiple_choice_scoring
        if scoring not in MULTIPLE_CHOICE_SCORINGS:
            raise ValueError(f"`scoring` must be one of {MULTIPLE_CHOICE_SCORINGS}, got {scoring!r}.")
        if pixel_values.dim() != 6:
            raise ValueError(
                "`pixel_values` must be (batch_size, num_choices, num_frames, channels, height, width), "
                f"got {tuple(pixel_values.shape)}."
            )
        batch, num_choices = pixel_values.shape[:2]
        video, text = self.svitt.encode_pairs(
            pixel_values.flatten(0, 1),
            input_ids,
            attention_mask,
            random_blocks=random_blocks,
            generator=generator,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        video_embeds = video.embeds.reshape(batch, num_choices, -1)
        if scoring == "itc":
            logits = self.svitt.similarity_logits(text.embeds[:, None], video_embeds)[:, 0]
        else:
            device = text.hidden_states.device
            fusion = self.svitt.fuse(
                text.hidden_states.repeat_interleave(num_choices, dim=0),
                text.attention_mask.to(device).repeat_interleave(num_choices, dim=0),
                video.tokens,
                video.token_mask,
            )
            logits = self.itm_head(fusion.last_hidden_state[:, 0])[:, 1].reshape(batch, num_choices)
        loss = multiple_choice_loss(logits, labels.to(logits.device)) if labels is not None else None
        return SViTTMultipleChoiceOutput(
            loss=loss,
            logits=logits,
            video_embeds=video_embeds,
            text_embeds=text.embeds,
            vision_model_output=video.vision_output,
            text_model_output=text.text_output,
        )


__all__ = ["SViTTForMultipleChoice", "SViTTMultipleChoiceOutput"]
