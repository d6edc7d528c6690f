"""Start an SViTT model from public image and text checkpoints, as the release does.

The video tower starts from a BEiT (`microsoft/beit-base-patch16-224-pt22k-ft22k` in the paper): every
layer's 2-D relative-position table is inflated to 3-D (the same spatial bias for every temporal offset).
The text tower starts from a BERT (`bert-base-uncased`): layers map one to one; the fusion layers'
cross-attention is new. Projections, `vision_layernorm` and the temperature start fresh.

    from modeling_svitt.pretrained_init import svitt_from_beit_and_bert
    model = svitt_from_beit_and_bert("microsoft/beit-base-patch16-224-pt22k-ft22k", "bert-base-uncased")
"""

from __future__ import annotations

import re
from typing import Any

import torch
from transformers import BeitConfig, BeitModel, BertConfig, BertModel, PreTrainedModel

from .configuration_svitt import SViTTConfig, SViTTTextConfig, SViTTVisionConfig
from .relative_position import inflate_relative_position_bias_table

# BEiT's in-memory names (transformers 5) and its older checkpoint names -> ours, per layer
_BEIT_LAYER_NAMES = [
    (r"attention\.q_proj\.", "attention.attention.query."),
    (r"attention\.k_proj\.", "attention.attention.key."),
    (r"attention\.v_proj\.", "attention.attention.value."),
    (r"attention\.o_proj\.", "attention.output.dense."),
    (r"mlp\.fc1\.", "intermediate.dense."),
    (r"mlp\.fc2\.", "output.dense."),
    (r"relative_position_bias\.", "attention.attention.relative_position_bias."),
    (r"attention\.attention\.relative_position_bias\.", "attention.attention.relative_position_bias."),
]
_BEIT_LAYER = re.compile(r"^(?:beit\.)?(?:layers|encoder\.layer)\.(\d+)\.(.*)$")


def _load(model_or_path, model_class, **kwargs) -> PreTrainedModel:
    if isinstance(model_or_path, PreTrainedModel):
        return model_or_path
    return model_class.from_pretrained(model_or_path, **kwargs)


def vision_config_from_beit(beit_config: BeitConfig, **overrides: Any) -> SViTTVisionConfig:
    if beit_config.use_absolute_position_embeddings:
        raise ValueError("SViTT's video tower has no absolute position embeddings; use a BEiT with relative bias.")
    values = dict(
        hidden_size=beit_config.hidden_size,
        num_hidden_layers=beit_config.num_hidden_layers,
        num_attention_heads=beit_config.num_attention_heads,
        intermediate_size=beit_config.intermediate_size,
        hidden_act=beit_config.hidden_act,
        layer_norm_eps=beit_config.layer_norm_eps,
        image_size=beit_config.image_size,
        patch_size=beit_config.patch_size,
        num_channels=beit_config.num_channels,
        layer_scale_init_value=beit_config.layer_scale_init_value,
        initializer_range=beit_config.initializer_range,
    )
    values.update(overrides)
    return SViTTVisionConfig(**values)


def text_config_from_bert(bert_config: BertConfig, **overrides: Any) -> SViTTTextConfig:
    values = dict(
        vocab_size=bert_config.vocab_size,
        hidden_size=bert_config.hidden_size,
        num_hidden_layers=bert_config.num_hidden_layers,
        num_attention_heads=bert_config.num_attention_heads,
        intermediate_size=bert_config.intermediate_size,
        hidden_act=bert_config.hidden_act,
        hidden_dropout_prob=bert_config.hidden_dropout_prob,
        attention_probs_dropout_prob=bert_config.attention_probs_dropout_prob,
        max_position_embeddings=bert_config.max_position_embeddings,
        type_vocab_size=bert_config.type_vocab_size,
        layer_norm_eps=bert_config.layer_norm_eps,
        initializer_range=bert_config.initializer_range,
        pad_token_id=bert_config.pad_token_id,
        fusion_layer=max(0, bert_config.num_hidden_layers - 3),
    )
    values.update(overrides)
    return SViTTTextConfig(**values)


def beit_state_dict_to_svitt(beit_state_dict: dict[str, torch.Tensor], config: SViTTVisionConfig) -> dict[str, torch.Tensor]:
    """BEiT weights -> `SViTTVisionModel` weights, with every relative-position table inflated to 3-D."""
    shared_table = None
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in beit_state_dict.items():
        key = key.removeprefix("beit.")
        if key.endswith("relative_position_index") or key.startswith(("embeddings.mask_token", "layernorm.")):
            continue
        if "shared_position_bias" in key or key.startswith("encoder.relative_position_bias."):
            shared_table = tensor
            continue
        match = _BEIT_LAYER.match(key)
        if match is None:
            if key == "embeddings.cls_token":
                tensor = tensor.expand(-1, config.num_global_tokens, -1).clone()
            converted[key] = tensor
            continue
        layer, name = match.groups()
        for pattern, replacement in _BEIT_LAYER_NAMES:
            if re.match(pattern, name):
                name = re.sub("^" + pattern, replacement, name)
                break
        if name.endswith("relative_position_bias_table"):
            tensor = inflate_relative_position_bias_table(tensor, config.num_frames, config.num_global_tokens)
        converted[f"encoder.layer.{layer}.{name}"] = tensor
    if shared_table is not None:
        table = inflate_relative_position_bias_table(shared_table, config.num_frames, config.num_global_tokens)
        for layer in range(config.num_hidden_layers):
            converted[f"encoder.layer.{layer}.attention.attention.relative_position_bias.relative_position_bias_table"] = table.clone()
    return converted


def svitt_from_beit_and_bert(
    beit: str | BeitModel | None,
    bert: str | BertModel,
    vision_overrides: dict[str, Any] | None = None,
    text_overrides: dict[str, Any] | None = None,
    model_class: type[PreTrainedModel] | None = None,
    **config_kwargs: Any,
):
    """Build `model_class` (default `SViTTModel`) with its video tower from `beit` and its text tower from `bert`.

    Args:
        beit: a `BeitModel` or a path / Hub id loadable by `BeitModel.from_pretrained` (a `BeitFor*` checkpoint
            works too: its `beit.*` weights are used, including the pooler's LayerNorm). `None` gives a freshly
            initialised video tower of `SViTTVisionConfig(**vision_overrides)` (a text tower from BERT alone).
        bert: a `BertModel` or a path / Hub id loadable by `BertModel.from_pretrained`.
        vision_overrides / text_overrides: SViTT config fields (e.g. `num_frames`, `token_keep_rate`,
            `fusion_layer`; the default fusion layer leaves the last 3 BERT layers as fusion layers).
        config_kwargs: `SViTTConfig` fields (e.g. `embed_dim`).

    Weights that the source checkpoints do not have (cross-attention, projections, `vision_layernorm`,
    heads) keep their fresh initialisation; every source weight must find a home, else this raises.
    """
    from .modeling_svitt import SViTTModel

    model_class = model_class or SViTTModel
    beit_model = _load(beit, BeitModel, add_pooling_layer=True) if beit is not None else None
    bert_model = _load(bert, BertModel, add_pooling_layer=False)
    if beit_model is None:
        vision_config = SViTTVisionConfig(**(vision_overrides or {}))
    else:
        vision_config = vision_config_from_beit(beit_model.config, **(vision_overrides or {}))
    text_config = text_config_from_bert(
        bert_model.config, **{"encoder_width": vision_config.hidden_size, **(text_overrides or {})}
    )
    config = SViTTConfig(vision_config=vision_config, text_config=text_config, **config_kwargs)
    model = model_class(config)
    base = model if isinstance(model, SViTTModel) else getattr(model, model.base_model_prefix)

    text_weights = {
        key: tensor
        for key, tensor in bert_model.state_dict().items()
        if not key.startswith("pooler.") and not key.endswith("position_ids")
    }
    sources = [(base.text_model, text_weights)]
    if beit_model is not None:
        sources.append((base.vision_model, beit_state_dict_to_svitt(beit_model.state_dict(), vision_config)))
    for tower, weights in sources:
        missing, unexpected = tower.load_state_dict(weights, strict=False)
        if unexpected:
            raise ValueError(f"{type(tower).__name__} has no place for these source weights: {unexpected}.")
    return model


__all__ = [
    "beit_state_dict_to_svitt",
    "svitt_from_beit_and_bert",
    "text_config_from_bert",
    "vision_config_from_beit",
]
