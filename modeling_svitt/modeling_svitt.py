"""PyTorch SViTT: sparse video-text transformer (Li et al., CVPR 2023).

Video tower: BEiT applied per frame, one sequence per clip, 3-D relative position bias, block-sparse
attention (edge sparsity, `sparse_attention.py`) and [CLS]-attention token pruning (node sparsity,
`token_selection.py`). Text tower: BERT whose last layers ("fusion layers") cross-attend to the video.
"""


import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_svitt import SViTTConfig, SViTTTextConfig, SViTTVisionConfig
from .losses import video_text_contrastive_loss
from .relative_position import (
    SViTTRelativePositionBias3D,
    relative_position_index,
    resample_relative_position_bias_table,
)
from .remote_code import copy_model_sources, model_auto_map
from .sparse_attention import (
    BlockSparseLayout,
    block_sparse_attention,
    build_block_sparse_layout,
    softmax_in_float32,
)
from .token_selection import (
    gather_tokens,
    keep_tokens,
    text_guided_video_scores,
    video_token_scores,
)

RandomBlocks = Mapping[int, torch.Tensor] | Sequence[torch.Tensor | None]


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


@dataclass
class SViTTVisionModelOutput(ModelOutput):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, num_global_tokens + num_kept_tokens, hidden_size)`):
        Output of the last layer: the global tokens, then the patch tokens that survived pruning, in ascending
        original order (before the composite model's `vision_layernorm`).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        Layer-normed mean of the kept patch tokens of the last layer (global tokens excluded).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        Input of every layer and the final output; their lengths shrink after each drop layer.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Per layer, the attention probabilities of the global queries, `(batch_size, num_heads, num_global_tokens,
        sequence_length)` (the full matrix does not exist under block-sparse attention).
    kept_token_indices (`tuple(torch.LongTensor)`):
        After each drop layer, the original positions `t * P * P + h * P + w` of the kept patch tokens, `(batch_size, k)`.
    random_blocks (`tuple(torch.LongTensor)`):
        Per layer, the random key blocks of every query block `(num_blocks, num_random_blocks)`; pass them back as
        `random_blocks=` to replay the same attention pattern. `None` for dense layers.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    kept_token_indices: tuple[torch.LongTensor, ...] | None = None
    random_blocks: tuple[torch.LongTensor | None, ...] | None = None


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
class SViTTOutput(ModelOutput):
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

    def to_tuple(self) -> tuple:
        return tuple(
            value.to_tuple() if isinstance(value, ModelOutput) else value for value in super().to_tuple()
        )


# --------------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention on `(B, H, L, d)` inputs with an additive mask; returns `(B, L, H, d)` and the probabilities."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = softmax_in_float32(scores)
    output = torch.matmul(F.dropout(probs, p=dropout, training=module.training), value)
    return output.transpose(1, 2).contiguous(), probs


def _attention_function(config, need_weights: bool):
    if need_weights:
        return eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)


def additive_attention_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Attention mask -> additive float mask broadcastable to `(B, H, Lq, Lk)`.

    A 2-D mask `(B, Lk)` is a padding mask (1 = real token). A 4-D mask `(B, 1, Lq, Lk)` is boolean or 0/1 integer
    (True = attend, e.g. causal), or already additive when it is floating point.
    """
    if mask is None:
        return None
    if mask.dim() == 2:
        mask = mask[:, None, None, :].bool()
    elif mask.dim() != 4:
        raise ValueError(
            f"An attention mask must be (batch, length) or (batch, 1, query_length, length), got {tuple(mask.shape)}."
        )
    elif mask.is_floating_point():
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask.bool(), torch.finfo(dtype).min)


def drop_path(hidden_states: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    if drop_prob == 0.0 or not training:
        return hidden_states
    keep_prob = 1 - drop_prob
    shape = (hidden_states.shape[0],) + (1,) * (hidden_states.dim() - 1)
    keep = torch.empty(shape, dtype=hidden_states.dtype, device=hidden_states.device).bernoulli_(keep_prob)
    return hidden_states * keep / keep_prob


class SViTTDropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return drop_path(hidden_states, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


# --------------------------------------------------------------------------------------------------
# Video tower
# --------------------------------------------------------------------------------------------------


class SViTTPatchEmbeddings(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.projection(frames).flatten(2).transpose(1, 2)


class SViTTVisionEmbeddings(nn.Module):
    """Patchify every frame on its own and prepend the global tokens: `(B, c + T*P*P, D)` in frame-major order."""

    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.cls_token = nn.Parameter(torch.zeros(1, config.num_global_tokens, config.hidden_size))
        self.patch_embeddings = SViTTPatchEmbeddings(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        config = self.config
        expected = (config.num_frames, config.num_channels, config.image_size, config.image_size)
        if pixel_values.dim() != 5 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"`pixel_values` must have shape (batch, {', '.join(map(str, expected))}) = (batch, frames, channels, "
                f"height, width), got {tuple(pixel_values.shape)}. The relative position bias is sized for "
                f"{config.num_frames} frames: split longer videos into clips or call `resize_num_frames`."
            )
        batch, frames = pixel_values.shape[:2]
        dtype = self.patch_embeddings.projection.weight.dtype
        patches = self.patch_embeddings(pixel_values.flatten(0, 1).to(dtype))
        patches = patches.reshape(batch, frames * patches.shape[1], -1)
        embeddings = torch.cat([self.cls_token.expand(batch, -1, -1), patches], dim=1)
        return self.dropout(embeddings)


class SViTTVisionSelfAttention(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.relative_position_bias = SViTTRelativePositionBias3D(
            config.num_frames, config.patches_per_side, config.num_attention_heads, config.num_global_tokens
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        positions: torch.Tensor,
        layout: BlockSparseLayout | None,
        dense_bias_index: torch.Tensor | None,
        need_global_attention: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        query = self.query(hidden_states).view(shape).transpose(1, 2)
        key = self.key(hidden_states).view(shape).transpose(1, 2)
        value = self.value(hidden_states).view(shape).transpose(1, 2)
        dropout = self.config.attention_probs_dropout_prob if self.training else 0.0
        c = self.config.num_global_tokens

        if layout is not None:
            context, global_attention = block_sparse_attention(
                query,
                key,
                value,
                layout,
                positions,
                self.relative_position_bias,
                num_global_tokens=c,
                scaling=self.scaling,
                mask_padded_keys=self.config.mask_padded_keys,
                dropout=dropout,
                training=self.training,
                backend=self.config.sparse_attention_backend,
            )
            return context.transpose(1, 2).reshape(batch, length, -1), global_attention

        bias = self.relative_position_bias.relative_position_bias_table[dense_bias_index]  # (B, S, S, H)
        bias = bias.permute(0, 3, 1, 2).to(query.dtype)
        attention = _attention_function(self.config, need_weights=False)
        context, _ = attention(self, query, key, value, bias, scaling=self.scaling, dropout=dropout)
        global_attention = None
        if need_global_attention:
            # SDPA does not return probabilities; the global rows are cheap to recompute (c x S scores).
            scores = torch.matmul(query[:, :, :c], key.transpose(-1, -2)) * self.scaling + bias[:, :, :c]
            global_attention = softmax_in_float32(scores)
        return context.reshape(batch, length, -1), global_attention


class SViTTVisionSelfOutput(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class SViTTVisionAttention(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.attention = SViTTVisionSelfAttention(config)
        self.output = SViTTVisionSelfOutput(config)

    def forward(self, hidden_states, positions, layout, dense_bias_index, need_global_attention):
        context, global_attention = self.attention(
            hidden_states, positions, layout, dense_bias_index, need_global_attention
        )
        return self.output(context), global_attention


class SViTTVisionIntermediate(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(hidden_states))


class SViTTVisionOutput(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.dense(hidden_states))


class SViTTVisionLayer(GradientCheckpointingLayer):
    """Pre-LN BEiT layer with layer scale; a drop layer prunes patch tokens (after the FFN, as the release)."""

    def __init__(self, config: SViTTVisionConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = SViTTVisionAttention(config)
        self.drop_path = SViTTDropPath(drop_path_rate)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.intermediate = SViTTVisionIntermediate(config)
        self.output = SViTTVisionOutput(config)
        if config.layer_scale_init_value > 0:
            self.lambda_1 = nn.Parameter(torch.full((config.hidden_size,), float(config.layer_scale_init_value)))
            self.lambda_2 = nn.Parameter(torch.full((config.hidden_size,), float(config.layer_scale_init_value)))
        else:
            self.lambda_1, self.lambda_2 = None, None

    def _scale(self, hidden_states: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        return hidden_states if scale is None else scale * hidden_states

    def _prune(self, hidden_states, positions, global_attention, keep_rate, random_scores):
        c = self.config.num_global_tokens
        scores = video_token_scores(
            global_attention, self.config.token_keep_strategy, positions.shape[1], c, random_scores
        )
        hidden_states, kept = keep_tokens(hidden_states, scores, keep_rate, c)
        return hidden_states, gather_tokens(positions, kept)

    def forward(
        self,
        hidden_states: torch.Tensor,
        positions: torch.Tensor,
        layout: BlockSparseLayout | None = None,
        dense_bias_index: torch.Tensor | None = None,
        keep_rate: float = 1.0,
        random_scores: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        prune = keep_rate < 1.0
        need_global_attention = output_attentions or (prune and self.config.token_keep_strategy == "cls_attn")
        attention_output, global_attention = self.attention(
            self.layernorm_before(hidden_states), positions, layout, dense_bias_index, need_global_attention
        )
        hidden_states = hidden_states + self.drop_path(self._scale(attention_output, self.lambda_1))
        if prune and not self.config.prune_after_mlp:
            hidden_states, positions = self._prune(hidden_states, positions, global_attention, keep_rate, random_scores)
        mlp_output = self.output(self.intermediate(self.layernorm_after(hidden_states)))
        hidden_states = hidden_states + self.drop_path(self._scale(mlp_output, self.lambda_2))
        if prune and self.config.prune_after_mlp:
            hidden_states, positions = self._prune(hidden_states, positions, global_attention, keep_rate, random_scores)
        return hidden_states, positions, global_attention


class SViTTVisionEncoder(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.config = config
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.layer = nn.ModuleList([SViTTVisionLayer(config, rate) for rate in rates])
        self.gradient_checkpointing = False

    def _layout(self, layer_index, num_tokens, random_blocks, generator, device) -> BlockSparseLayout:
        config = self.config
        return build_block_sparse_layout(
            num_tokens,
            config.attention_block_size,
            config.num_local_blocks,
            config.num_random_blocks,
            generator=generator,
            random_blocks=random_blocks.get(layer_index) if random_blocks is not None else None,
            device=device,
        )

    def _dense_bias_index(self, positions: torch.Tensor) -> torch.Tensor:
        config = self.config
        c = config.num_global_tokens
        batch = positions.shape[0]
        global_positions = -torch.arange(1, c + 1, device=positions.device).expand(batch, c)
        all_positions = torch.cat([global_positions, positions], dim=1)
        return relative_position_index(
            all_positions[:, :, None], all_positions[:, None, :], config.num_frames, config.patches_per_side, c
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        random_blocks: dict[int, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
    ) -> SViTTVisionModelOutput:
        config = self.config
        batch = hidden_states.shape[0]
        c = config.num_global_tokens
        positions = torch.arange(config.num_patch_tokens, device=hidden_states.device).expand(batch, -1)
        all_hidden_states, all_attentions, kept_token_indices, used_random_blocks = [], [], [], []
        dense_bias_index = None

        for index, layer in enumerate(self.layer):
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            num_tokens = hidden_states.shape[1] - c
            layout = None
            if config.use_sparse_attention:
                layout = self._layout(index, num_tokens, random_blocks, generator, hidden_states.device)
                used_random_blocks.append(layout.random_blocks.cpu())
            else:
                used_random_blocks.append(None)
                if dense_bias_index is None:  # shared by the layers until pruning changes the positions
                    dense_bias_index = self._dense_bias_index(positions)
            keep_rate = config.token_keep_rate if index in config.token_drop_layers else 1.0
            random_scores = None
            if keep_rate < 1.0 and config.token_keep_strategy == "random":
                # Drawn here, not inside the layer, so a checkpointed layer recomputes the same selection; from a
                # generator of their own, seeded by one fixed-size draw, so that the random blocks of later layers do
                # not depend on the batch size.
                seed = int(torch.randint(0, 2**62, (1,), generator=generator))
                scores_generator = torch.Generator().manual_seed(seed)
                random_scores = torch.rand((batch, num_tokens), generator=scores_generator).to(hidden_states.device)
            hidden_states, new_positions, global_attention = layer(
                hidden_states,
                positions,
                layout=layout,
                dense_bias_index=dense_bias_index,
                keep_rate=keep_rate,
                random_scores=random_scores,
                output_attentions=output_attentions,
            )
            if keep_rate < 1.0:
                kept_token_indices.append(new_positions)
                dense_bias_index = None
            positions = new_positions
            if output_attentions:
                all_attentions.append(global_attention)

        if output_hidden_states:
            all_hidden_states.append(hidden_states)
        return SViTTVisionModelOutput(
            last_hidden_state=hidden_states,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
            kept_token_indices=tuple(kept_token_indices),
            random_blocks=tuple(used_random_blocks),
        )


class SViTTVisionPooler(nn.Module):
    """Mean of the patch tokens (global tokens excluded), then LayerNorm (BEiT mean pooling)."""

    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.num_global_tokens = config.num_global_tokens
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layernorm(hidden_states[:, self.num_global_tokens :].mean(dim=1))


# --------------------------------------------------------------------------------------------------
# Text tower
# --------------------------------------------------------------------------------------------------


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
        attention = _attention_function(self.config, need_weights=output_attentions)
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
    ) -> SViTTTextModelOutput:
        all_hidden_states, self_attentions, cross_attentions, kept_video = [], [], [], []
        dtype = hidden_states.dtype
        additive_mask = additive_attention_mask(attention_mask, dtype)
        encoder_mask = additive_attention_mask(encoder_padding_mask, dtype)
        for index in layers:
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            select = self._selects_video_tokens(index)
            hidden_states, self_attention, cross_attention = self.layer[index](
                hidden_states,
                additive_mask,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_mask,
                output_attentions=output_attentions,
                output_cross_attentions=output_attentions or select,
            )
            if output_attentions:
                self_attentions.append(self_attention)
                if cross_attention is not None:
                    cross_attentions.append(cross_attention)
            if select:
                scores = text_guided_video_scores(
                    cross_attention, text_padding_mask, self.config.fusion_token_keep_strategy, num_global_video_tokens
                )
                encoder_hidden_states, kept = keep_tokens(
                    encoder_hidden_states, scores, self.config.fusion_token_keep_rate, num_global_video_tokens
                )
                if encoder_padding_mask is not None:
                    c = num_global_video_tokens
                    encoder_padding_mask = torch.cat(
                        [encoder_padding_mask[:, :c], gather_tokens(encoder_padding_mask[:, c:], kept)], dim=1
                    )
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


# --------------------------------------------------------------------------------------------------
# Pretrained models
# --------------------------------------------------------------------------------------------------


class SViTTPreTrainedModel(PreTrainedModel):
    config: SViTTConfig
    base_model_prefix = "svitt"
    main_input_name = "pixel_values"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["SViTTVisionLayer", "SViTTTextLayer"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, num_frames: int | None = None, **kwargs):
        """`PreTrainedModel.from_pretrained`, with an optional move to another clip length.

        `num_frames` loads the checkpoint at its own clip length, then resamples every relative-position table of
        the video tower to the new one (the temporal expansion between curriculum stages and to downstream tasks,
        spec §5; interpolation from `vision_config.temporal_bias_interpolation`, "nearest" as the release).
        """
        if num_frames is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        video_tower = next((module for module in model.modules() if isinstance(module, SViTTVisionModel)), None)
        if video_tower is None:
            raise ValueError(f"{cls.__name__} has no video tower, so `num_frames` does not apply to it.")
        if num_frames != video_tower.config.num_frames:
            video_tower.resize_num_frames(num_frames)
        return (model, loading_info) if output_loading_info else model

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs) -> None:
        """Also writes the full `auto_map` and the model source, so the folder loads with `trust_remote_code=True`."""
        self.config.auto_map = model_auto_map()
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            copy_model_sources(save_directory)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = getattr(self.config, "initializer_range", None) or 0.02
        if isinstance(module, SViTTVisionEmbeddings):
            init.trunc_normal_(module.cls_token, mean=0.0, std=std)
        elif isinstance(module, SViTTRelativePositionBias3D):
            init.zeros_(module.relative_position_bias_table)
        elif isinstance(module, SViTTVisionLayer) and module.lambda_1 is not None:
            init.constant_(module.lambda_1, module.config.layer_scale_init_value)
            init.constant_(module.lambda_2, module.config.layer_scale_init_value)
        elif isinstance(module, SViTTTextEmbeddings):
            init.copy_(module.position_ids, torch.arange(module.position_ids.shape[-1]).expand((1, -1)))
        elif isinstance(module, SViTTModel):
            init.constant_(module.temperature, self.config.temperature)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


def _random_blocks_by_layer(random_blocks: RandomBlocks | None) -> dict[int, torch.Tensor] | None:
    if random_blocks is None:
        return None
    if isinstance(random_blocks, Mapping):
        return {int(layer): blocks for layer, blocks in random_blocks.items()}
    return {layer: blocks for layer, blocks in enumerate(random_blocks) if blocks is not None}


class SViTTVisionModel(SViTTPreTrainedModel):
    """The SViTT video tower: `pixel_values (B, T, 3, H, W)` -> kept tokens and a pooled clip vector."""

    config: SViTTVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("video",)

    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__(config)
        self.embeddings = SViTTVisionEmbeddings(config)
        self.encoder = SViTTVisionEncoder(config)
        self.pooler = SViTTVisionPooler(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def resize_num_frames(self, num_frames: int, mode: str | None = None) -> None:
        """Move to a new clip length (a curriculum stage): resample every layer's relative-bias table."""
        mode = mode or self.config.temporal_bias_interpolation
        for layer in self.encoder.layer:
            bias = layer.attention.attention.relative_position_bias
            table = resample_relative_position_bias_table(
                bias.relative_position_bias_table.data,
                self.config.num_frames,
                num_frames,
                self.config.patches_per_side,
                self.config.num_global_tokens,
                mode,
            )
            bias.relative_position_bias_table = nn.Parameter(table, requires_grad=bias.relative_position_bias_table.requires_grad)
            bias.num_frames = num_frames
        self.config.num_frames = num_frames

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor,
        random_blocks: RandomBlocks | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> SViTTVisionModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_frames, num_channels, height, width)`):
            Normalised frames (see `SViTTVideoProcessor`).
        random_blocks (`dict[int, LongTensor]` or sequence, *optional*):
            Random key blocks to replay per layer (`(num_blocks, num_random_blocks)` each), e.g. the
            `random_blocks` of an earlier output or a recorded pattern file (`load_random_block_patterns`).
        generator (`torch.Generator`, *optional*):
            Source of the random blocks (CPU generator). By default training draws from the global RNG and
            evaluation from a generator seeded with `config.random_block_seed` (when `config.deterministic_eval`).
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if generator is None and not self.training and self.config.deterministic_eval:
            generator = torch.Generator().manual_seed(self.config.random_block_seed)
        embeddings = self.embeddings(pixel_values)
        output = self.encoder(
            embeddings,
            random_blocks=_random_blocks_by_layer(random_blocks),
            generator=generator,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        output.pooler_output = self.pooler(output.last_hidden_state)
        return output


class SViTTTextModel(SViTTPreTrainedModel):
    """The SViTT text tower: BERT text layers, then fusion layers with cross-attention to video tokens.

    - `input_ids` alone: embeddings + text layers (`0 .. fusion_layer-1`), the ITC text encoder.
    - `input_ids` + `encoder_hidden_states`: every layer (e.g. question encoding for video QA).
    - `text_hidden_states` + `encoder_hidden_states`: only the fusion layers, on text-layer outputs (ITM, MLM).
    """

    config: SViTTTextConfig
    main_input_name = "input_ids"
    input_modalities = ("text",)

    def __init__(self, config: SViTTTextConfig) -> None:
        super().__init__(config)
        self.embeddings = SViTTTextEmbeddings(config)
        self.encoder = SViTTTextEncoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings.word_embeddings = value

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
    ) -> SViTTTextModelOutput:
        r"""
        attention_mask (`torch.Tensor`, *optional*):
            `(batch_size, sequence_length)` padding mask, or a `(batch_size, 1, query_length, sequence_length)`
            boolean mask (True = attend), e.g. a causal mask for a decoder.
        text_hidden_states (`torch.FloatTensor`, *optional*):
            Output of the text layers; runs only the fusion layers on it.
        encoder_hidden_states (`torch.FloatTensor` of shape `(batch_size, num_video_tokens, encoder_width)`, *optional*):
            Video tokens the fusion layers attend to (global tokens first).
        encoder_attention_mask (`torch.Tensor` of shape `(batch_size, num_video_tokens)`, *optional*):
            Video padding mask (all ones when omitted).
        num_global_video_tokens (`int`, defaults to 1):
            Leading video tokens that text-guided selection always keeps.
        """
        config = self.config
        output_attentions = output_attentions if output_attentions is not None else config.output_attentions
        output_hidden_states = output_hidden_states if output_hidden_states is not None else config.output_hidden_states
        if text_hidden_states is not None:
            if encoder_hidden_states is None:
                raise ValueError("`text_hidden_states` runs the fusion layers, which need `encoder_hidden_states`.")
            hidden_states = text_hidden_states
            layers = range(config.fusion_layer, config.num_hidden_layers)
        else:
            if (input_ids is None) == (inputs_embeds is None):
                raise ValueError("Pass exactly one of `input_ids`, `inputs_embeds` (or `text_hidden_states`).")
            hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
            last = config.num_hidden_layers if encoder_hidden_states is not None else config.fusion_layer
            layers = range(0, last)
        if encoder_hidden_states is not None and encoder_hidden_states.shape[-1] != config.encoder_width:
            raise ValueError(
                f"Video tokens have width {encoder_hidden_states.shape[-1]}, the fusion layers expect "
                f"`encoder_width` = {config.encoder_width}."
            )
        if attention_mask is None:
            attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.long, device=hidden_states.device)
        text_padding_mask = attention_mask if attention_mask.dim() == 2 else None
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
        )


class SViTTModel(SViTTPreTrainedModel):
    """Dual encoder with fusion layers: video tower, text tower, projections to a shared space, temperature."""

    config: SViTTConfig

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

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_model.set_input_embeddings(value)

    @torch.no_grad()
    def clamp_temperature_(self) -> None:
        """Keep the learnable temperature in `[temperature_min, temperature_max]` (done in every training forward)."""
        self.temperature.clamp_(self.config.temperature_min, self.config.temperature_max)

    def encode_video(
        self,
        pixel_values: torch.Tensor,
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
        )
        hidden_states = text_output.last_hidden_state
        return SViTTTextEncoding(
            embeds=F.normalize(self.text_projection(hidden_states[:, 0]), dim=-1),
            hidden_states=hidden_states,
            attention_mask=attention_mask,
            text_output=text_output,
        )

    def fuse(
        self,
        text_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor,
        video_tokens: torch.Tensor,
        video_token_mask: torch.Tensor | None = None,
        output_attentions: bool | None = None,
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
        )

    def get_video_features(self, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
        """L2-normalised video embeddings `(batch_size, embed_dim)` (cosine similarity = dot product)."""
        return self.encode_video(pixel_values, **kwargs).embeds

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised text embeddings `(batch_size, embed_dim)`."""
        return self.encode_text(input_ids, attention_mask).embeds

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
    ) -> SViTTOutput:
        r"""
        match_ids (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Equal ids mark positive pairs (several captions of one video); by default pair i matches only pair i.
        """
        if self.training:
            self.clamp_temperature_()
        video = self.encode_video(pixel_values, random_blocks, generator, output_attentions, output_hidden_states)
        text = self.encode_text(input_ids, attention_mask, output_attentions, output_hidden_states)
        logits_per_video = video.embeds @ text.embeds.t() / self.temperature
        loss = None
        if return_loss:
            loss = video_text_contrastive_loss(logits_per_video, match_ids)
        return SViTTOutput(
            loss=loss,
            logits_per_video=logits_per_video,
            logits_per_text=logits_per_video.t(),
            video_embeds=video.embeds,
            text_embeds=text.embeds,
            vision_model_output=video.vision_output,
            text_model_output=text.text_output,
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
