"""PyTorch SViTT text tower: BERT text layers, then fusion layers that cross-attend to the video tokens.

The first `fusion_layer` layers encode the caption alone (the ITC text encoder); the remaining "fusion layers"
add cross-attention to the video tokens between self-attention and feed-forward (ITM, MLM, question encoding),
and can select video tokens by the text's cross-attention (text-guided token selection, `token_selection.py`).
Parameter names follow BERT, so `bert-base` weights map one to one.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_svitt import SViTTTextConfig
from .modeling_common import SViTTPreTrainedModel, additive_attention_mask, eager_attention_forward
from .token_selection import gather_tokens, keep_tokens, text_guided_video_scores


@dataclass
class SViTTTextModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
        Output of the last layer that ran (the last text layer, or the last fusion layer).
    hidden_states, attentions, cross_attentions (`tuple(torch.FloatTensor)`, *optional*):
        Per layer that ran, as in BERT.
    kept_video_token_indices (`tuple(torch.LongTensor)`, *optional*):
        With text-guided token selection, after each selecting fusion layer, the indices `(batch_size, k)` of the
        kept video tokens among the non-global video tokens it received.
    """

    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    cross_attentions: tuple[torch.FloatTensor, ...] | None = None
    kept_video_token_indices: tuple[torch.LongTensor, ...] | None = None


class SViTTTextEmbeddings(nn.Module):
    def __init__(self, config: SViTTTextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False
        )

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        length = inputs_embeds.shape[1]
        if length > self.position_ids.shape[1]:
            raise ValueError(
                f"Text of {length} tokens is longer than `max_position_embeddings` ({self.position_ids.shape[1]})."
            )
        if position_ids is None:
            position_ids = self.position_ids[:, :length]
        if token_type_ids is None:
            token_type_ids = torch.zeros(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids) + self.position_embeddings(position_ids)
        return self.dropout(self.LayerNorm(embeddings))


class SViTTTextSelfAttention(nn.Module):
    def __init__(self, config: SViTTTextConfig, is_cross_attention: bool = False) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        key_width = config.encoder_width if is_cross_attention else config.hidden_size
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(key_width, config.hidden_size)
        self.value = nn.Linear(key_width, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        key_value_states: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        source = hidden_states if key_value_states is None else key_value_states
        query = self.query(hidden_states).view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.key(source).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.value(source).view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        attention = eager_attention_forward
        if not output_attentions:  # only eager returns the probabilities
            attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        dropout = self.config.attention_probs_dropout_prob if self.training else 0.0
        context, probs = attention(self, query, key, value, attention_mask, scaling=self.scaling, dropout=dropout)
        return context.reshape(batch, length, -1), probs


class SViTTTextSelfOutput(nn.Module):
    def __init__(self, config: SViTTTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, input_tensor: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden_states)) + input_tensor)


class SViTTTextAttention(nn.Module):
    def __init__(self, config: SViTTTextConfig, is_cross_attention: bool = False) -> None:
        super().__init__()
        self.self = SViTTTextSelfAttention(config, is_cross_attention)
        self.output = SViTTTextSelfOutput(config)

    def forward(self, hidden_states, attention_mask=None, key_value_states=None, output_attentions=False):
        context, probs = self.self(hidden_states, attention_mask, key_value_states, output_attentions)
        return self.output(context, hidden_states), probs


class SViTTTextIntermediate(nn.Module):
    def __init__(self, config: SViTTTextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class SViTTTextOutput(SViTTTextSelfOutput):
    def __init__(self, config: SViTTTextConfig) -> None:
        super().__init__(config)
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)


class SViTTTextLayer(GradientCheckpointingLayer):
    """Post-LN BERT layer; fusion layers add cross-attention to the video between self-attention and FFN."""

    def __init__(self, config: SViTTTextConfig, layer_index: int) -> None:
        super().__init__()
        self.attention = SViTTTextAttention(config)
        self.has_cross_attention = layer_index >= config.fusion_layer
        if self.has_cross_attention:
            self.crossattention = SViTTTextAttention(config, is_cross_attention=True)
        self.intermediate = SViTTTextIntermediate(config)
        self.output = SViTTTextOutput(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_cross_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        hidden_states, self_attention = self.attention(hidden_states, attention_mask, None, output_attentions)
        cross_attention = None
        if self.has_cross_attention:
            if encoder_hidden_states is None:
                raise ValueError("Fusion layers need `encoder_hidden_states` (the video tokens).")
            hidden_states, cross_attention = self.crossattention(
                hidden_states, encoder_attention_mask, encoder_hidden_states, output_cross_attentions
            )
        hidden_states = self.output(self.intermediate(hidden_states), hidden_states)
        return hidden_states, self_attention, cross_attention


class SViTTTextEncoder(nn.Module):
    def __init__(self, config: SViTTTextConfig) -> None:
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([SViTTTextLayer(config, index) for index in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def _selects_video_tokens(self, index: int) -> bool:
        config = self.config
        return (
            config.fusion_token_keep_rate < 1.0
            and index >= config.fusion_layer
            and index - config.fusion_layer in config.fusion_token_drop_layers
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        layers: range,
        attention_mask: torch.Tensor | None,
        text_padding_mask: torch.Tensor | None,
        encoder_hidden_states: torch.Tensor | None,
        encoder_padding_mask: torch.Tensor | None,
        num_global_video_tokens: int,
        output_attentions: bool,
        output_hidden_states: bool,
        generator: torch.Generator | None = None,
    ) -> SViTTTextModelOutput:
        all_hidden_states, self_attentions, cross_attentions, kept_video = [], [], [], []
        dtype = hidden_states.dtype
        additive_mask = additive_attention_mask(attention_mask, dtype)
        encoder_mask = additive_attention_mask(encoder_padding_mask, dtype)
        for index in layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            select = self._selects_video_tokens(index)
            # Tensors go positionally: a checkpointed layer (reentrant or not) must see them as inputs, so that the
            # video tokens' own graph is not entered twice when the layer is recomputed.
            hidden_states, self_attention, cross_attention = self.layer[index](
                hidden_states,
                additive_mask,
                encoder_hidden_states,
                encoder_mask,
                output_attentions=output_attentions,
                output_cross_attentions=output_attentions or select,
            )
            if output_attentions:
                self_attentions.append(self_attention)
                if cross_attention is not None:
                    cross_attentions.append(cross_attention)
            if select:
                scores = text_guided_video_scores(
                    cross_attention,
                    text_padding_mask,
                    self.config.fusion_token_keep_strategy,
                    num_global_video_tokens,
                    generator,
                )
                encoder_hidden_states, kept = keep_tokens(
                    encoder_hidden_states,
                    scores.to(encoder_hidden_states.device),
                    self.config.fusion_token_keep_rate,
                    num_global_video_tokens,
                )
                if encoder_padding_mask is not None:
                    global_mask = encoder_padding_mask[:, :num_global_video_tokens]
                    patch_mask = encoder_padding_mask[:, num_global_video_tokens:]
                    encoder_padding_mask = torch.cat([global_mask, gather_tokens(patch_mask, kept)], dim=1)
                    encoder_mask = additive_attention_mask(encoder_padding_mask, dtype)
                kept_video.append(kept)
        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return SViTTTextModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(self_attentions) if output_attentions else None,
            cross_attentions=tuple(cross_attentions) if output_attentions else None,
            kept_video_token_indices=tuple(kept_video) if kept_video else None,
        )


TEXT_MODEL_MODES = ("text", "fusion", "multimodal")


class SViTTTextModel(SViTTPreTrainedModel):
    """The SViTT text tower: BERT text layers, then fusion layers with cross-attention to video tokens.

    `mode` says which layers run (the release's `mode` argument of its BERT):

    - `"text"`: embeddings + text layers (`0 .. fusion_layer-1`), on `input_ids`; the ITC text encoder.
    - `"fusion"`: only the fusion layers, on `text_hidden_states` (the output of `"text"` mode) cross-attending to
      `encoder_hidden_states` (ITM, MLM).
    - `"multimodal"`: every layer, on `input_ids` cross-attending to `encoder_hidden_states` (question encoding for
      video QA, the answer decoder).

    When `mode` is omitted it follows from the arguments: `text_hidden_states` -> fusion, `encoder_hidden_states`
    -> multimodal, otherwise text. Unlike a plain BERT, a call without video therefore runs only the text layers,
    and `hidden_states` / `attentions` cover the layers that ran.
    """

    config: SViTTTextConfig
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config: SViTTTextConfig) -> None:
        super().__init__(config)
        self.embeddings = SViTTTextEmbeddings(config)
        self.encoder = SViTTTextEncoder(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SViTTTextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.word_embeddings = value

    @staticmethod
    def _resolve_mode(
        mode: str | None,
        has_text_input: bool,
        has_text_hidden_states: bool,
        has_video: bool,
    ) -> str:
        if mode is None:
            mode = "fusion" if has_text_hidden_states else "multimodal" if has_video else "text"
        if mode not in TEXT_MODEL_MODES:
            raise ValueError(f"`mode` must be one of {TEXT_MODEL_MODES}, got {mode!r}.")
        if mode == "fusion":
            if not has_text_hidden_states or has_text_input:
                raise ValueError(
                    "mode='fusion' runs the fusion layers on `text_hidden_states` (the text layers' output), not on "
                    "`input_ids` / `inputs_embeds`."
                )
        elif has_text_hidden_states:
            raise ValueError(f"`text_hidden_states` is the input of mode='fusion', not of mode={mode!r}.")
        elif not has_text_input:
            raise ValueError(f"mode={mode!r} needs exactly one of `input_ids`, `inputs_embeds`.")
        if mode == "text" and has_video:
            raise ValueError("mode='text' runs no fusion layer: `encoder_hidden_states` would be ignored.")
        if mode != "text" and not has_video:
            raise ValueError(f"mode={mode!r} runs the fusion layers, which need `encoder_hidden_states`.")
        return mode

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        text_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        num_global_video_tokens: int = 1,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        mode: str | None = None,
        generator: torch.Generator | None = None,
    ) -> SViTTTextModelOutput:
        r"""
        attention_mask (`torch.Tensor`, *optional*):
            `(batch_size, sequence_length)` padding mask, or a `(batch_size, 1, query_length, sequence_length)`
            boolean mask (True = attend), e.g. a causal mask for a decoder.
        text_hidden_states (`torch.FloatTensor`, *optional*):
            Output of the text layers, the input of mode "fusion".
        encoder_hidden_states (`torch.FloatTensor` of shape `(batch_size, num_video_tokens, encoder_width)`, *optional*):
            Video tokens the fusion layers attend to (global tokens first); moved to this tower's device.
        encoder_attention_mask (`torch.Tensor` of shape `(batch_size, num_video_tokens)`, *optional*):
            Video padding mask (all ones when omitted).
        num_global_video_tokens (`int`, defaults to 1):
            Leading video tokens that text-guided selection always keeps.
        mode (`str`, *optional*):
            "text", "fusion" or "multimodal" (see the class docstring); inferred from the arguments when omitted.
        generator (`torch.Generator`, *optional*):
            On this tower's device; draws the scores of the "random" text-guided selection. Without it, training
            draws from the global RNG and evaluation from a generator seeded with 0 (same input, same output).
        """
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        has_text_input = input_ids is not None or inputs_embeds is not None
        if input_ids is not None and inputs_embeds is not None:
            raise ValueError("Pass exactly one of `input_ids`, `inputs_embeds`.")
        has_video = encoder_hidden_states is not None
        mode = self._resolve_mode(mode, has_text_input, text_hidden_states is not None, has_video)
        if mode == "fusion":
            hidden_states = text_hidden_states
            layers = range(config.fusion_layer, config.num_hidden_layers)
        else:
            hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
            layers = range(0, config.num_hidden_layers if mode == "multimodal" else config.fusion_layer)
        if encoder_hidden_states is not None:
            if encoder_hidden_states.shape[-1] != config.encoder_width:
                raise ValueError(
                    f"Video tokens have width {encoder_hidden_states.shape[-1]}, the fusion layers expect "
                    f"`encoder_width` = {config.encoder_width}."
                )
            # the video tower may live on another device (device_map): fusion happens here
            encoder_hidden_states = encoder_hidden_states.to(hidden_states.device)
            if encoder_attention_mask is not None:
                encoder_attention_mask = encoder_attention_mask.to(hidden_states.device)
        if attention_mask is None:
            attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
        text_padding_mask = attention_mask if attention_mask.dim() == 2 else None
        if generator is None and not self.training and self._draws_random_video_selection(mode):
            generator = torch.Generator(device=hidden_states.device).manual_seed(0)
        return self.encoder(
            hidden_states,
            layers,
            attention_mask,
            text_padding_mask,
            encoder_hidden_states,
            encoder_attention_mask,
            num_global_video_tokens,
            output_attentions,
            output_hidden_states,
            generator,
        )

    def _draws_random_video_selection(self, mode: str) -> bool:
        config = self.config
        return mode != "text" and config.fusion_token_keep_rate < 1.0 and config.fusion_token_keep_strategy == "random"


__all__ = ["SViTTTextModel", "SViTTTextModelOutput"]
