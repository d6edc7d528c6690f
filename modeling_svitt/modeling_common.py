"""What the SViTT towers and heads share: the pretrained-model base class, attention helpers, stochastic depth,
output plumbing.

The video tower (`modeling_svitt_vision.py`), the text tower (`modeling_svitt_text.py`) and the task heads all derive
from [`SViTTPreTrainedModel`] defined here, so loading at another clip length and saving with remote code work the
same for every class.
"""

import contextlib
import difflib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from .configuration_svitt import (
    SViTTConfig,
    SViTTTextConfig,
    SViTTVisionConfig,
    check_runtime_value,
    config_field_names,
    runtime_field_owners,
)
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

    def get_sparsity(self) -> dict[str, Any]:
        """The current value of every setting [`~SViTTPreTrainedModel.set_sparsity`] can change on this model."""
        owners = runtime_field_owners(self.config)
        configs = self._runtime_configs(owners)
        values = {name: getattr(configs[owner], name) for name, owner in owners.items()}
        return {name: list(value) if isinstance(value, list) else value for name, value in values.items()}

    def set_sparsity(self, **settings: Any) -> dict[str, Any]:
        """Change how sparse this built model runs: the configuration fields its forward pass reads at run time.

        Settings (flat names; those of towers this model lacks are refused):
            - edge sparsity of the video tower: `use_sparse_attention`, `attention_block_size`, `num_local_blocks`,
              `num_random_blocks`, `sparse_attention_backend`, `mask_padded_keys`;
            - its random blocks in evaluation: `deterministic_eval`, `random_block_seed`;
            - node sparsity: `token_keep_rate`, `token_keep_strategy`, `token_drop_layers`, `prune_after_mlp`;
            - text-guided video token selection in the fusion layers: `fusion_token_keep_rate`,
              `fusion_token_drop_layers`, `fusion_token_keep_strategy`;
            - the multiple-choice head's `multiple_choice_scoring` (ITC alone, or the fusion layers).

        The result is the model its config with these values would build (the same weights, the same outputs), and
        `save_pretrained` writes them. `None` leaves a setting unchanged. Values are checked as the config checks
        them when a model is built; a refused value changes nothing. Fields that shape the weights (widths, depths,
        `num_frames`: see `resize_num_frames`) cannot change here.

        Returns:
            The previous values of the settings changed: `model.set_sparsity(**previous)` undoes the change (see
            [`~SViTTPreTrainedModel.sparsity_overrides`] for a change that lasts one `with` block).

        Raises:
            `ValueError` naming a field that is unknown or fixed on a built model (listing the settings), or a value
            the config refuses; `TypeError` for a value of the wrong type.
        """
        owners = runtime_field_owners(self.config)
        refused = [name for name in settings if name not in owners]
        if refused:
            raise ValueError(self._not_settable_message(refused, owners))
        configs = self._runtime_configs(owners)
        changes = {
            name: check_runtime_value(type(configs[owners[name]]), name, value)
            for name, value in settings.items()
            if value is not None
        }
        previous = _write_settings(changes, configs, owners)
        try:
            for owner in {owners[name] for name in changes}:
                configs[owner].validate_architecture()
        except ValueError:
            _write_settings(previous, configs, owners)
            raise
        return previous

    @contextlib.contextmanager
    def sparsity_overrides(self, **settings: Any) -> Iterator["SViTTPreTrainedModel"]:
        """[`~SViTTPreTrainedModel.set_sparsity`] for the duration of a `with` block: on exit, also when the block
        raises, every setting changed has its previous value again.

        ```python
        >>> with model.sparsity_overrides(token_keep_rate=0.5, fusion_token_keep_rate=0.3):
        ...     outputs = model(**inputs)
        ```
        """
        previous = self.set_sparsity(**settings)
        try:
            yield self
        finally:
            owners = runtime_field_owners(self.config)
            _write_settings(previous, self._runtime_configs(owners), owners)

    def _runtime_configs(self, owners: dict[str, str]) -> dict[str, PreTrainedConfig]:
        """The config object that holds the settings of each owner (a sub-config key, `""` for this model's config).

        The composite config's sub-config and the config the tower's modules read are one object (the heads read
        the former, the layers the latter). Where they differ (a config object assigned after the model was built),
        a setting would reach only part of the model: that is refused."""
        configs = {owner: getattr(self.config, owner) if owner else self.config for owner in set(owners.values())}
        for name, module in self.named_modules():
            held = getattr(module, "config", None)
            for owner, config in configs.items():
                if type(held) is type(config) and held is not config:
                    raise ValueError(
                        f"`{type(self).__name__}.{name}` reads another {type(config).__name__} object than "
                        f"`config{'.' + owner if owner else ''}`, so its settings cannot change consistently (was a "
                        "config object assigned after the model was built?). Change settings with `set_sparsity` "
                        "instead, or build the model again from its config."
                    )
        return configs

    def _not_settable_message(self, names: list[str], owners: dict[str, str]) -> str:
        configs = [self.config] + [getattr(self.config, key) for key in getattr(self.config, "sub_configs", {})]
        fields = {field for config in configs if config is not None for field in config_field_names(type(config))}
        problems = []
        for name in names:
            other_part = next((part for owner, part in _PARTS.items() if name in owner.runtime_fields), None)
            if name == "num_frames":
                problems.append(
                    "`num_frames` sizes the relative-position tables: load with `from_pretrained(..., num_frames=...)` "
                    "or call the video tower's `resize_num_frames`"
                )
            elif name in fields:
                problems.append(f"`{name}` is fixed when the model is built")
            elif other_part is not None:
                problems.append(f"`{name}` is a setting of {other_part}, which {type(self).__name__} does not have")
            else:
                close = difflib.get_close_matches(name, list(owners), n=1)
                hint = f" (did you mean `{close[0]}`?)" if close else ""
                problems.append(f"`{name}` is not a setting of {type(self).__name__}{hint}")
        return (
            f"{'; '.join(problems)}. The settings that can change on a built {type(self).__name__} (read at run "
            f"time, shaping no weight): {', '.join(owners)}."
        )

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


# the parts of a model whose settings `set_sparsity` changes, as its error messages name them
_PARTS = {SViTTVisionConfig: "the video tower", SViTTTextConfig: "the text tower", SViTTConfig: "the task heads"}


def _write_settings(
    values: dict[str, Any], configs: dict[str, PreTrainedConfig], owners: dict[str, str]
) -> dict[str, Any]:
    """Write checked `values` into the configs that hold them; returns the values they replace."""
    previous = {}
    for name, value in values.items():
        config = configs[owners[name]]
        previous[name] = getattr(config, name)
        setattr(config, name, value)
    return previous


__all__ = [
    "NestedModelOutput",
    "SViTTDropPath",
    "SViTTPreTrainedModel",
    "additive_attention_mask",
    "drop_path",
    "eager_attention_forward",
]
