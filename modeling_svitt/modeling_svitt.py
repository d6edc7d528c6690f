"""PyTorch SViTT: sparse video-text transformer (Li et al., CVPR 2023).

[`SViTTModel`] joins the video tower (`modeling_svitt_vision.py`: per-frame BEiT with edge and node sparsity) and the
text tower (`modeling_svitt_text.py`: BERT whose last layers, the "fusion layers", cross-attend to the video), with
the projections to the shared embedding space and the contrastive temperature.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_svitt import SViTTConfig
from .losses import ContrastiveCache, ContrastiveLossOutput, itc_loss, similarity_logits
from .modeling_common import NestedModelOutput, SViTTPreTrainedModel
from .modeling_svitt_text import SViTTTextModel, SViTTTextModelOutput
from .modeling_svitt_vision import RandomBlocks, SViTTVisionModel, SViTTVisionModelOutput

# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


@dataclass
class SViTTVideoEncoding(ModelOutput):
    r"""
    embeds (`(batch_size, embed_dim)`): L2-normalised projection of the pooled video (ITC embedding).
    tokens (`(batch_size, num_tokens, hidden_size)`): `vision_layernorm` of the video tower's last hidden state,
        what the fusion layers attend to.
    token_mask (`(batch_size, num_tokens)`): all ones (every video token is real).
    vision_output ([`SViTTVisionModelOutput`]): the video tower's output.
    """

    embeds: torch.FloatTensor | None = None
    tokens: torch.FloatTensor | None = None
    token_mask: torch.LongTensor | None = None
    vision_output: SViTTVisionModelOutput | None = None


@dataclass
class SViTTTextEncoding(ModelOutput):
    r"""
    embeds (`(batch_size, embed_dim)`): L2-normalised projection of the text [CLS] state (ITC embedding).
    hidden_states (`(batch_size, sequence_length, hidden_size)`): output of the text layers, input of the fusion layers.
    attention_mask (`(batch_size, sequence_length)`): the text padding mask.
    text_output ([`SViTTTextModelOutput`]): the text layers' output.
    """

    embeds: torch.FloatTensor | None = None
    hidden_states: torch.FloatTensor | None = None
    attention_mask: torch.LongTensor | None = None
    text_output: SViTTTextModelOutput | None = None


@dataclass
class SViTTOutput(NestedModelOutput):
    r"""
    loss (`torch.FloatTensor`, *optional*, returned when `return_loss=True`): video-text contrastive loss.
    logits_per_video (`(video_batch_size, text_batch_size)`): cosine similarities divided by the temperature.
    logits_per_text (`(text_batch_size, video_batch_size)`): the transpose.
    video_embeds, text_embeds (`(batch_size, embed_dim)`): L2-normalised embeddings.
    vision_model_output, text_model_output: outputs of the two towers.
    """

    loss: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    vision_model_output: SViTTVisionModelOutput | None = None
    text_model_output: SViTTTextModelOutput | None = None


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class SViTTModel(SViTTPreTrainedModel):
    """Dual encoder with fusion layers: video tower, text tower, projections to a shared space, temperature.

    The towers may sit on different devices (`device_map`): embeddings, scores and the video tokens the fusion
    layers read are combined on the text tower's device.
    """

    config: SViTTConfig
    # Every similarity is divided by the temperature (about 0.07 or smaller): it stays float32 under a bf16 / fp16 load.
    _keep_in_fp32_modules_strict = ["temperature"]

    def __init__(self, config: SViTTConfig) -> None:
        super().__init__(config)
        vision_config, text_config = config.vision_config, config.text_config
        self.vision_model = SViTTVisionModel(vision_config)
        self.text_model = SViTTTextModel(text_config)
        self.vision_layernorm = nn.LayerNorm(vision_config.hidden_size, eps=vision_config.layer_norm_eps)
        self.vision_projection = nn.Linear(vision_config.hidden_size, config.embed_dim)
        self.text_projection = nn.Linear(text_config.hidden_size, config.embed_dim)
        self.temperature = nn.Parameter(torch.tensor(float(config.temperature)))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is self:
            init.constant_(module.temperature, self.config.temperature)
        elif module is self.vision_projection:  # the generic init would use the text tower's range for both
            init.normal_(module.weight, mean=0.0, std=self.config.vision_config.initializer_range)
        elif module is self.text_projection:
            init.normal_(module.weight, mean=0.0, std=self.config.text_config.initializer_range)

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    @torch.no_grad()
    def clamp_temperature_(self) -> None:
        """Keep the learnable temperature in `[temperature_min, temperature_max]` (done in every training forward)."""
        self.temperature.clamp_(self.config.temperature_min, self.config.temperature_max)

    def parameters_unused_by(self, *, contrastive: bool, fusion: bool) -> list[str]:
        """The parameters (name prefixes) a forward leaves unused when it does, or does not, compute the ITC
        embeddings (`contrastive`: pooler, projections, temperature) and run the fusion layers (`fusion`: those
        layers and `vision_layernorm`, which prepares the video tokens they attend to)."""
        unused = []
        if not contrastive:
            unused += ["vision_model.pooler.", "vision_projection.", "text_projection.", "temperature"]
        if not fusion:
            text_config = self.config.text_config
            unused.append("vision_layernorm.")
            fusion_layers = range(text_config.fusion_layer, text_config.num_hidden_layers)
            unused += [f"text_model.encoder.layer.{i}." for i in fusion_layers]
        return unused

    def parameters_unused_in_training(self) -> list[str]:
        """`forward` is contrastive only: the fusion layers and `vision_layernorm` get no gradient."""
        return self.parameters_unused_by(contrastive=True, fusion=False)

    def encode_video(
        self,
        pixel_values: torch.Tensor,
        *,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SViTTVideoEncoding:
        """Video tower, then the ITC embedding (from the pooled vector) and the fusion tokens (layer-normed)."""
        vision_output = self.vision_model(
            pixel_values,
            random_blocks=random_blocks,
            generator=generator,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        tokens = self.vision_layernorm(vision_output.last_hidden_state)
        return SViTTVideoEncoding(
            embeds=F.normalize(self.vision_projection(vision_output.pooler_output), dim=-1),
            tokens=tokens,
            token_mask=torch.ones(tokens.shape[:2], dtype=torch.long, device=tokens.device),
            vision_output=vision_output,
        )

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> SViTTTextEncoding:
        """Text layers, then the ITC embedding from the [CLS] state."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_output = self.text_model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            mode="text",
        )
        hidden_states = text_output.last_hidden_state
        return SViTTTextEncoding(
            embeds=F.normalize(self.text_projection(hidden_states[:, 0]), dim=-1),
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            text_output=text_output,
        )

    def encode_pairs(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> tuple[SViTTVideoEncoding, SViTTTextEncoding]:
        """Both towers on a batch, as every contrastive forward starts (in training, after clamping the temperature,
        as the release does at every step)."""
        if self.training:
            self.clamp_temperature_()
        towers = dict(output_attentions=output_attentions, output_hidden_states=output_hidden_states)
        video = self.encode_video(pixel_values, random_blocks=random_blocks, generator=generator, **towers)
        text = self.encode_text(input_ids, attention_mask, **towers)
        return video, text

    def similarity_logits(self, text_embeds: torch.Tensor, video_embeds: torch.Tensor) -> torch.Tensor:
        """`(num_texts, num_videos)` cosine similarities of normalised embeddings divided by the temperature (float32,
        on the text side). Batched `(..., n, E)` inputs give `(..., n_texts, n_videos)`."""
        return similarity_logits(text_embeds, video_embeds, self.temperature)

    def contrastive(
        self,
        video_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        match_ids: torch.Tensor | None = None,
        *,
        verb_tags: torch.Tensor | None = None,
        noun_tags: torch.Tensor | None = None,
        video_ids: torch.Tensor | None = None,
        cache: ContrastiveCache | None = None,
        micro_batch_index: int | None = None,
    ) -> ContrastiveLossOutput:
        """The configured contrastive objective (`contrastive_loss`: multi-positive ITC or EgoNCE, negatives gathered
        across processes when `gather_negatives_across_processes`, the other micro-batches of an accumulated batch
        from `cache`): one path for this model and every head."""
        config = self.config
        return itc_loss(
            video_embeds,
            text_embeds,
            self.temperature,
            match_ids,
            loss_type=config.contrastive_loss,
            verb_tags=verb_tags,
            noun_tags=noun_tags,
            video_ids=video_ids,
            egonce_rule=config.egonce_positive_rule,
            gather_across_processes=config.gather_negatives_across_processes,
            cache=cache,
            micro_batch_index=micro_batch_index,
        )

    def fuse(
        self,
        text_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        video_tokens: torch.Tensor,
        video_token_mask: torch.Tensor | None = None,
        *,
        output_attentions: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> SViTTTextModelOutput:
        """Fusion layers: text-layer states cross-attending to (layer-normed) video tokens."""
        return self.text_model(
            text_hidden_states=text_hidden_states,
            attention_mask=attention_mask,
            encoder_hidden_states=video_tokens,
            encoder_attention_mask=video_token_mask,
            num_global_video_tokens=self.config.vision_config.num_global_tokens,
            output_attentions=output_attentions,
            return_dict=True,
            mode="fusion",
            generator=generator,
        )

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values: torch.Tensor,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """The video tower's output with `pooler_output` = the L2-normalised projected video embedding
        `(batch_size, embed_dim)` (cosine similarity = dot product)."""
        video = self.encode_video(
            pixel_values,
            random_blocks=random_blocks,
            generator=generator,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        return _features_output(video.vision_output, video.embeds)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> BaseModelOutputWithPooling:
        """The text layers' output with `pooler_output` = the L2-normalised projected text embedding
        `(batch_size, embed_dim)`."""
        text = self.encode_text(
            input_ids, attention_mask, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        return _features_output(text.text_output, text.embeds)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        return_loss: bool = False,
        match_ids: torch.Tensor | None = None,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        video_ids: torch.Tensor | None = None,
        verb_tags: torch.Tensor | None = None,
        noun_tags: torch.Tensor | None = None,
        contrastive_cache: ContrastiveCache | None = None,
        micro_batch_index: int | None = None,
    ) -> SViTTOutput:
        r"""
        return_loss (`bool`, defaults to `False`):
            Also return the configured contrastive loss (`config.contrastive_loss`, with negatives from every process
            when `config.gather_negatives_across_processes`), the same objective as the heads' ITC.
        match_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Equal ids mark positive pairs (several captions of one video); by default pair i matches only pair i.
        video_ids, verb_tags, noun_tags (*optional*):
            EgoNCE inputs (`config.contrastive_loss="egonce"`): the source video of every clip and multi-hot verb /
            noun tags.
        contrastive_cache ([`ContrastiveCache`]), micro_batch_index (`int`, *optional*):
            Gradient accumulation with the contrastive batch of the whole accumulated batch: this micro-batch with
            gradient, the others from the cache (see [`ContrastiveCache`]).

        Without a loss, `logits_per_video` is `(num_videos, num_texts)`: any number of each. With the loss and
        gathered negatives, its columns cover the texts of every process (as in the heads).
        """
        video, text = self.encode_pairs(
            pixel_values,
            input_ids,
            attention_mask,
            random_blocks=random_blocks,
            generator=generator,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        loss = None
        if return_loss:
            contrastive = self.contrastive(
                video.embeds,
                text.embeds,
                match_ids,
                verb_tags=verb_tags,
                noun_tags=noun_tags,
                video_ids=video_ids,
                cache=contrastive_cache,
                micro_batch_index=micro_batch_index,
            )
            loss = contrastive.loss
            logits_per_video, logits_per_text = contrastive.logits_per_video, contrastive.logits_per_text
        else:
            logits_per_text = self.similarity_logits(text.embeds, video.embeds)
            logits_per_video = logits_per_text.t()
        return SViTTOutput(
            loss=loss,
            logits_per_video=logits_per_video,
            logits_per_text=logits_per_text,
            video_embeds=video.embeds,
            text_embeds=text.embeds,
            vision_model_output=video.vision_output,
            text_model_output=text.text_output,
        )


def _features_output(tower_output: ModelOutput, embeds: torch.Tensor) -> BaseModelOutputWithPooling:
    return BaseModelOutputWithPooling(
        last_hidden_state=tower_output.last_hidden_state,
        pooler_output=embeds,
        hidden_states=tower_output.hidden_states,
        attentions=tower_output.attentions,
    )


__all__ = [
    "SViTTModel",
    "SViTTOutput",
    "SViTTPreTrainedModel",
    "SViTTTextEncoding",
    "SViTTTextModel",
    "SViTTTextModelOutput",
    "SViTTVideoEncoding",
    "SViTTVisionModel",
    "SViTTVisionModelOutput",
]
