"""PyTorch SViTT video tower: BEiT applied per frame, one sequence per clip (Li et al., CVPR 2023).

Every layer adds a 3-D relative position bias (`relative_position.py`, the tower's only position signal), attends
block-sparsely (edge sparsity, `sparse_attention.py`) and, at the drop layers, keeps the patch tokens the [CLS]
token attends to most (node sparsity, `token_selection.py`). [`SViTTModel`] in `modeling_svitt.py` joins this tower
with the text tower.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput, can_return_tuple

from .configuration_svitt import SViTTVisionConfig
from .hash_random import RandomSource
from .modeling_common import SViTTDropPath, SViTTPreTrainedModel, eager_attention_forward
from .relative_position import (
    SViTTRelativePositionBias3D,
    relative_position_index,
    resample_relative_position_bias_table,
    with_global_positions,
)
from .scaled_linear import FUSED_ACTIVATIONS, layer_norm_linear, scaled_linear
from .sparse_attention import (
    BlockSparseLayout,
    block_sparse_attention,
    build_block_sparse_layout,
    num_blocks_for,
    num_random_blocks_for,
    softmax_in_float32,
)
from .token_selection import gather_tokens, keep_tokens, num_tokens_to_keep, video_token_scores

RandomBlocks = Mapping[int, torch.Tensor] | Sequence[torch.Tensor | None]


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


class SViTTPatchEmbeddings(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.projection(frames).flatten(2).transpose(1, 2)


class SViTTVisionEmbeddings(nn.Module):
    """Patchify every frame on its own and prepend the global tokens: `(B, num_global_tokens + T*P*P, D)` in
    frame-major order."""

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
        pre_norm: nn.LayerNorm,
        positions: torch.Tensor,
        layout: BlockSparseLayout | None,
        dense_bias_index: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`hidden_states`: the layer's input, normalised by `pre_norm` together with the projections."""
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        query, key, value = (
            projection.view(shape).transpose(1, 2)
            for projection in layer_norm_linear(hidden_states, pre_norm, (self.query, self.key, self.value))
        )
        dropout = self.config.attention_probs_dropout_prob if self.training else 0.0
        num_global = self.config.num_global_tokens

        if layout is not None:
            context, global_attention = block_sparse_attention(
                query,
                key,
                value,
                layout,
                positions,
                self.relative_position_bias,
                num_global_tokens=num_global,
                scaling=self.scaling,
                mask_padded_keys=self.config.mask_padded_keys,
                dropout=dropout,
                training=self.training,
                backend=self.config.sparse_attention_backend,
            )
            return context.transpose(1, 2).reshape(batch, length, -1), global_attention

        # Dense: the bias is gathered once per layer for every distinct position set (one before pruning), and the
        # global queries' rows are computed from their probabilities, so the returned attentions are in the graph.
        bias = self.relative_position_bias.pair_bias(dense_bias_index).to(query.dtype)  # (P, H, S, S)
        global_scores = torch.matmul(query[:, :, :num_global], key.transpose(-1, -2)) * self.scaling
        global_scores = global_scores + bias[:, :, :num_global]
        global_attention = softmax_in_float32(global_scores)
        global_context = torch.matmul(F.dropout(global_attention, p=dropout, training=self.training), value)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        patch_context, _ = attention(
            self, query[:, :, num_global:], key, value, bias[:, :, num_global:], scaling=self.scaling, dropout=dropout
        )
        context = torch.cat([global_context.transpose(1, 2), patch_context], dim=1)
        return context.reshape(batch, length, -1), global_attention


class SViTTVisionSelfOutput(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        return self.dropout(scaled_linear(self.dense, hidden_states, scale))


class SViTTVisionAttention(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.attention = SViTTVisionSelfAttention(config)
        self.output = SViTTVisionSelfOutput(config)

    def forward(self, hidden_states, pre_norm, positions, layout, dense_bias_index, scale=None):
        context, global_attention = self.attention(hidden_states, pre_norm, positions, layout, dense_bias_index)
        return self.output(context, scale), global_attention


class SViTTVisionIntermediate(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden_states: torch.Tensor, pre_norm: nn.LayerNorm, activate: bool = True) -> torch.Tensor:
        """`hidden_states` are normalised by `pre_norm` together with the projection."""
        (hidden_states,) = layer_norm_linear(hidden_states, pre_norm, (self.dense,))
        return self.intermediate_act_fn(hidden_states) if activate else hidden_states


class SViTTVisionOutput(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, hidden_states: torch.Tensor, scale: torch.Tensor | None = None, activation: str | None = None
    ) -> torch.Tensor:
        """`activation`: a `FUSED_ACTIVATIONS` name applied to the input first (recomputed in backward)."""
        return self.dropout(scaled_linear(self.dense, hidden_states, scale, activation))


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

    def _prune(self, hidden_states, positions, global_attention, keep_rate, random_scores):
        num_global = self.config.num_global_tokens
        scores = video_token_scores(
            global_attention, self.config.token_keep_strategy, positions.shape[1], num_global, random_scores
        )
        hidden_states, kept = keep_tokens(hidden_states, scores, keep_rate, num_global)
        return hidden_states, gather_tokens(positions.expand(kept.shape[0], -1), kept)

    def forward(
        self,
        hidden_states: torch.Tensor,
        positions: torch.Tensor,
        layout: BlockSparseLayout | None = None,
        dense_bias_index: torch.Tensor | None = None,
        keep_rate: float = 1.0,
        random_scores: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`positions` `(P, n)`: original positions of the patch tokens, `P = 1` while all samples share them."""
        prune = keep_rate < 1.0
        attention_output, global_attention = self.attention(
            hidden_states, self.layernorm_before, positions, layout, dense_bias_index, self.lambda_1
        )
        hidden_states = hidden_states + self.drop_path(attention_output)
        if prune and not self.config.prune_after_mlp:
            hidden_states, positions = self._prune(hidden_states, positions, global_attention, keep_rate, random_scores)
        fused = self.config.hidden_act if self.config.hidden_act in FUSED_ACTIVATIONS else None
        intermediate = self.intermediate(hidden_states, self.layernorm_after, activate=fused is None)
        mlp_output = self.output(intermediate, self.lambda_2, fused)
        hidden_states = hidden_states + self.drop_path(mlp_output)
        if prune and self.config.prune_after_mlp:
            hidden_states, positions = self._prune(hidden_states, positions, global_attention, keep_rate, random_scores)
        return hidden_states, positions, global_attention


class SViTTVisionEncoder(nn.Module):
    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.config = config
        # on the CPU explicitly: a model built under `torch.device("meta")` still needs these numbers
        rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers, device="cpu").tolist()
        self.layer = nn.ModuleList([SViTTVisionLayer(config, rate) for rate in rates])
        self.gradient_checkpointing = False

    def tokens_per_layer(self, num_tokens: int) -> list[int]:
        """Patch tokens entering every layer (known from the configuration: `ceil(rate * n)` after a drop layer)."""
        config = self.config
        counts = []
        for index in range(config.num_hidden_layers):
            counts.append(num_tokens)
            if config.token_keep_rate < 1.0 and index in config.token_drop_layers:
                num_tokens = num_tokens_to_keep(num_tokens, config.token_keep_rate)
        return counts

    def _draw(self, counts, batch, random_blocks, source: RandomSource):
        """Every random choice of a forward, drawn at once on the model's device: the random blocks of each sparse
        layer (first, so they do not depend on the batch size), then the scores of random token pruning (drawn here,
        not inside the layers, so a checkpointed layer recomputes the same selection)."""
        config = self.config
        num_layers = config.num_hidden_layers
        random_blocks = random_blocks or {}
        drawn_layers, shapes, streams = [], [], []
        if config.use_sparse_attention:
            for index, count in enumerate(counts):
                blocks = num_blocks_for(count, config.attention_block_size)
                if index not in random_blocks and num_random_blocks_for(
                    blocks, config.num_local_blocks, config.num_random_blocks
                ):
                    drawn_layers.append(index)
                    shapes.append((blocks, blocks))
                    streams.append(index)
        pruning_layers = []
        if config.token_keep_rate < 1.0 and config.token_keep_strategy == "random":
            pruning_layers = [index for index in config.token_drop_layers]
            shapes += [(batch, counts[index]) for index in pruning_layers]
            streams += [num_layers + index for index in pruning_layers]
        uniform = source.uniform(shapes, streams) if shapes else []
        block_scores = dict(zip(drawn_layers, uniform))
        token_scores = dict(zip(pruning_layers, uniform[len(drawn_layers) :]))
        layouts = [None] * num_layers
        if config.use_sparse_attention:
            for index, count in enumerate(counts):
                layouts[index] = build_block_sparse_layout(
                    count,
                    config.attention_block_size,
                    config.num_local_blocks,
                    config.num_random_blocks,
                    random_blocks=random_blocks.get(index),
                    device=source.device,
                    uniform_scores=block_scores.get(index),
                )
        return layouts, token_scores

    def forward(
        self,
        hidden_states: torch.Tensor,
        random_blocks: dict[int, torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        seed: int | None = None,
    ) -> SViTTVisionModelOutput:
        config = self.config
        batch, device = hidden_states.shape[0], hidden_states.device
        num_global = config.num_global_tokens
        counts = self.tokens_per_layer(hidden_states.shape[1] - num_global)
        layouts, token_scores = self._draw(counts, batch, random_blocks, RandomSource(device, generator, seed))
        positions = torch.arange(counts[0], device=device)[None]  # shared by the batch until the first pruning
        all_hidden_states, all_attentions, kept_token_indices = [], [], []
        dense_bias_index = None

        for index, layer in enumerate(self.layer):
            if output_hidden_states:
                all_hidden_states.append(hidden_states)
            if layouts[index] is None and dense_bias_index is None:  # shared by the layers until pruning
                all_positions = with_global_positions(positions, num_global)
                dense_bias_index = relative_position_index(
                    all_positions[:, :, None],
                    all_positions[:, None, :],
                    config.num_frames,
                    config.patches_per_side,
                    num_global,
                )
            keep_rate = config.token_keep_rate if index in config.token_drop_layers else 1.0
            hidden_states, new_positions, global_attention = layer(
                hidden_states,
                positions,
                layout=layouts[index],
                dense_bias_index=dense_bias_index,
                keep_rate=keep_rate,
                random_scores=token_scores.get(index),
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
            random_blocks=tuple(layout.random_blocks if layout is not None else None for layout in layouts),
        )


class SViTTVisionPooler(nn.Module):
    """Mean of the patch tokens (global tokens excluded), then LayerNorm (BEiT mean pooling)."""

    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__()
        self.num_global_tokens = config.num_global_tokens
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.layernorm(hidden_states[:, self.num_global_tokens :].mean(dim=1))


def _random_blocks_by_layer(random_blocks: RandomBlocks | None) -> dict[int, torch.Tensor] | None:
    if random_blocks is None:
        return None
    if isinstance(random_blocks, Mapping):
        return {int(layer): blocks for layer, blocks in random_blocks.items()}
    return {layer: blocks for layer, blocks in enumerate(random_blocks) if blocks is not None}


class SViTTVisionModel(SViTTPreTrainedModel):
    """The SViTT video tower: `pixel_values (B, T, 3, H, W)` -> kept tokens and a pooled clip vector.

    Differences from a plain ViT, by design: `attentions` hold only the rows of the global queries (block-sparse
    attention never forms the full matrix), and `hidden_states` get shorter after every drop layer (pruned tokens
    are gone; `kept_token_indices` says which survived).
    """

    config: SViTTVisionConfig
    main_input_name = "pixel_values"
    input_modalities = ("video",)

    def __init__(self, config: SViTTVisionConfig) -> None:
        super().__init__(config)
        self.embeddings = SViTTVisionEmbeddings(config)
        self.encoder = SViTTVisionEncoder(config)
        self.pooler = SViTTVisionPooler(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, SViTTVisionEmbeddings):
            init.trunc_normal_(module.cls_token, mean=0.0, std=self.config.initializer_range)
        elif isinstance(module, SViTTRelativePositionBias3D):
            init.zeros_(module.relative_position_bias_table)
        elif isinstance(module, SViTTVisionLayer) and module.lambda_1 is not None:
            init.constant_(module.lambda_1, module.config.layer_scale_init_value)
            init.constant_(module.lambda_2, module.config.layer_scale_init_value)

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
            bias.relative_position_bias_table = nn.Parameter(
                table, requires_grad=bias.relative_position_bias_table.requires_grad
            )
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
            Source of the random blocks (on any device; the pattern is moved to the model's device). By default
            training draws from the global RNG of the model's device, and evaluation (when `config.deterministic_eval`)
            from a counter-based hash of `config.random_block_seed` and the layer index: the same patterns on every
            device, independent of the batch, and traceable by `torch.compile`.
        """
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        seed = None
        if generator is None and not self.training and self.config.deterministic_eval:
            seed = self.config.random_block_seed
        embeddings = self.embeddings(pixel_values)
        output = self.encoder(
            embeddings,
            random_blocks=_random_blocks_by_layer(random_blocks),
            generator=generator,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            seed=seed,
        )
        # a new output, so that `to_tuple()` (return_dict=False) lists the fields in their declared order
        return SViTTVisionModelOutput(
            last_hidden_state=output.last_hidden_state,
            pooler_output=self.pooler(output.last_hidden_state),
            hidden_states=output.hidden_states,
            attentions=output.attentions,
            kept_token_indices=output.kept_token_indices,
            random_blocks=output.random_blocks,
        )
