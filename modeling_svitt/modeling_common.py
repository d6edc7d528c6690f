"""What the SViTT towers and heads share: the pretrained-model base class, attention helpers, stochastic depth,
output plumbing.

The video tower (`modeling_svitt_vision.py`), the text tower (`modeling_svitt_text.py`) and the task heads all derive
from [`SViTTPreTrainedModel`] defined here, so loading at another clip length and saving with remote code work the
same for every class.
"""

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_svitt import SViTTConfig, SViTTVisionConfig
from .remote_code import copy_model_sources, model_auto_map
from .sparse_attention import softmax_in_float32


class NestedModelOutput(ModelOutput):
    """`to_tuple` that also flattens nested outputs (as CLIP / XCLIP outputs do)."""

    def to_tuple(self) -> tuple:
        return tuple(value.to_tuple() if isinstance(value, ModelOutput) else value for value in super().to_tuple())


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
        the video tower to the new one (the temporal expansion between curriculum stages and to downstream tasks;
        interpolation from `vision_config.temporal_bias_interpolation`, "nearest" as the release).
        """
        if num_frames is None:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        # the video tower is the model of a vision config (named by its config: the towers sit above this module)
        video_tower = next(
            (
                module
                for module in model.modules()
                if isinstance(module, SViTTPreTrainedModel) and isinstance(module.config, SViTTVisionConfig)
            ),
            None,
        )
        if video_tower is None:
            raise ValueError(f"{cls.__name__} has no video tower, so `num_frames` does not apply to it.")
        if num_frames != video_tower.config.num_frames:
            video_tower.resize_num_frames(num_frames)
        return (model, loading_info) if output_loading_info else model

    def set_attn_implementation(self, attn_implementation: str | dict, *args, **kwargs) -> None:
        """`PreTrainedModel.set_attn_implementation`. The answer decoder's config travels with every head's config (so
        that a question-answering head can be built from any checkpoint), but only that head has the decoder: elsewhere
        it is left out of the search for the sub-models to update, which would otherwise warn that it found none."""
        decoder_config = getattr(self.config, "answer_decoder_config", None)
        has_decoder = any(
            module.config is decoder_config for module in self.modules() if isinstance(module, PreTrainedModel)
        )
        if decoder_config is None or has_decoder:
            return super().set_attn_implementation(attn_implementation, *args, **kwargs)
        self.config.answer_decoder_config = None
        try:
            return super().set_attn_implementation(attn_implementation, *args, **kwargs)
        finally:
            self.config.answer_decoder_config = decoder_config

    def parameters_unused_in_training(self) -> list[str]:
        """Name prefixes of the parameters that this model's training forward leaves without a gradient, for the
        current config (e.g. the MLM head when `loss_weight_mlm` is 0).

        Distributed data parallel expects a gradient for every trainable parameter in every step; rather than
        letting it search the graph for unused ones each step, training code freezes these. A listed parameter that
        is tied to a used one (the MLM decoder shares the word embeddings) is still used.
        """
        return []

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs) -> None:
        """Also writes an `auto_map` and the model source, so the folder loads with `trust_remote_code=True`.

        The composite model and the heads write the full map (every head can start from their folder); a tower
        saved on its own writes the map that rebuilds that tower.
        """
        previous_auto_map = getattr(self.config, "auto_map", None)
        self.config.auto_map = model_auto_map(self.config.model_type)
        try:
            super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        finally:
            # the map belongs to the saved folder; a tower's config must not carry it into a composite model's save
            if previous_auto_map is None:
                del self.config.auto_map
            else:
                self.config.auto_map = previous_auto_map
        if is_main_process:
            copy_model_sources(save_directory)

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        # Private hook, kept because `save_pretrained(..., push_to_hub=True)` must upload the remote code with the
        # weights: transformers uploads from inside its `save_pretrained`, before the override above copies the
        # sources (tests/test_push_to_hub.py::test_save_pretrained_push_uploads_the_model_source).
        copy_model_sources(working_dir)
        return super()._upload_modified_files(working_dir, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Generic initialisation; every concrete model adds its own modules (transformers calls the `_init_weights`
        of each sub-model, e.g. the towers inside [`SViTTModel`], on that sub-model's modules)."""
        super()._init_weights(module)
        if isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


__all__ = [
    "NestedModelOutput",
    "SViTTDropPath",
    "SViTTPreTrainedModel",
    "additive_attention_mask",
    "drop_path",
    "eager_attention_forward",
]
