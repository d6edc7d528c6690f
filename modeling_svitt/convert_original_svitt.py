"""Convert checkpoints of the authors' SViTT release into this package's format.

    python -m modeling_svitt.convert_original_svitt --checkpoint ckpt_best.pth --output svitt-msrvtt

Reads the pretraining, retrieval and video-QA layouts, as a plain state dict, the release's
`{"model": state_dict, "config": ...}` dict, or a safetensors file. Shapes give the architecture (frames,
patch grid, widths, depths, fusion layer); sparsity comes from the checkpoint's own training config when it
carries one (`vision_encoder_args`), else from the release's defaults, and every value can be overridden.
The written config reproduces the release's effective behaviour: block-sparse attention with padded keys
left in the softmax, pruning after the feed-forward, text-guided selection off.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from .configuration_svitt import (
    SViTTConfig,
    SViTTTextConfig,
    SViTTVisionConfig,
    answer_decoder_config_from_text,
)

PRETRAINING, RETRIEVAL, QUESTION_ANSWERING = "pretraining", "retrieval", "question_answering"

# release `vision_encoder_args` -> SViTTVisionConfig
_VISION_ARGS = {
    "attn_block_size": "attention_block_size",
    "sparse_local_attn": "num_local_blocks",
    "sparse_random_attn": "num_random_blocks",
    "token_keep_rate": "token_keep_rate",
    "token_keep_strategy": "token_keep_strategy",
    "token_drop_loc": "token_drop_layers",
    "num_cls_tokens": "num_global_tokens",
}
RELEASE_VISION_DEFAULTS = {
    "attention_block_size": 56,
    "num_local_blocks": 1,
    "num_random_blocks": 3,
    "token_keep_rate": 0.7,
    "token_keep_strategy": "cls_attn",
    "token_drop_layers": [3, 6, 9],
    "use_sparse_attention": True,
    "mask_padded_keys": False,
    "prune_after_mlp": True,
    "deterministic_eval": True,
}
RELEASE_QA_VISION_DEFAULTS = {**RELEASE_VISION_DEFAULTS, "token_keep_rate": 0.6}

_DROPPED = re.compile(r"(relative_position_index|embeddings\.position_ids)$")


def detect_checkpoint_kind(keys) -> str:
    """Which task model of the release wrote these keys."""
    keys = list(keys)
    if any(key.startswith("text_decoder.") for key in keys):
        return QUESTION_ANSWERING
    if any(key.startswith("text_encoder.cls.") for key in keys):
        return PRETRAINING
    if any(key.startswith("text_encoder.embeddings.") for key in keys) and "itm_head.weight" in keys:
        return RETRIEVAL
    raise ValueError(
        "Not an SViTT release checkpoint: expected `text_decoder.*` (video QA), `text_encoder.cls.*` (pretraining) "
        "or `text_encoder.embeddings.*` with `itm_head.*` (retrieval) keys."
    )


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Release key names -> this package's names (see `INTERFACE.md`); returns the new dict and the kind."""
    kind = detect_checkpoint_kind(state_dict)
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if _DROPPED.search(key):
            continue
        new_key = _convert_key(key)
        if new_key is None:
            continue
        converted[new_key] = tensor
    _check_tied(state_dict, "text_encoder.cls.predictions", "text_encoder.bert.embeddings.word_embeddings.weight")
    _check_tied(state_dict, "text_decoder.cls.predictions", "text_decoder.bert.embeddings.word_embeddings.weight")
    return converted, kind


def _convert_key(key: str) -> str | None:
    if key.endswith("cls.predictions.decoder.weight") or key.endswith("cls.predictions.decoder.bias"):
        return None  # tied to the word embeddings / `predictions.bias`; re-tied on load
    for old, new in (
        ("vision_encoder.", "svitt.vision_model."),
        ("vision_layernorm.", "svitt.vision_layernorm."),
        ("vision_proj.", "svitt.vision_projection."),
        ("text_proj.", "svitt.text_projection."),
        ("text_encoder.bert.", "svitt.text_model."),
        ("text_encoder.cls.", "mlm_head."),
        ("text_encoder.", "svitt.text_model."),
        ("text_decoder.bert.", "text_decoder."),
        ("text_decoder.cls.", "decoder_head."),
        ("itm_head.", "itm_head."),
    ):
        if key.startswith(old):
            return new + key[len(old) :]
    if key == "temp":
        return "svitt.temperature"
    raise ValueError(
        f"Unexpected key {key!r} in the checkpoint; this converter knows the release's pretraining, retrieval "
        "and QA layouts."
    )


def _check_tied(state_dict, prefix: str, embeddings_key: str) -> None:
    decoder = state_dict.get(f"{prefix}.decoder.weight")
    if decoder is not None and embeddings_key in state_dict and not torch.equal(decoder, state_dict[embeddings_key]):
        raise ValueError(f"`{prefix}.decoder.weight` differs from `{embeddings_key}`; the release ties them.")


def _layer_count(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(match.group(1)) for key in keys if (match := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _frames_and_grid(table_rows: int, index_size: int | None, image_size: int | None, patch_size: int, num_global: int):
    special = 2 * num_global + num_global**2
    local = table_rows - special
    if index_size is not None:
        num_patches = index_size - num_global
        for side in range(1, 257):
            if num_patches % (side * side) == 0:
                frames = num_patches // (side * side)
                if (2 * frames - 1) * (2 * side - 1) ** 2 == local:
                    return frames, side
        raise ValueError(f"A {table_rows}-row bias table does not fit a {index_size}-token relative-position index.")
    side = (image_size or 224) // patch_size
    spatial = (2 * side - 1) ** 2
    if local % spatial or (local // spatial) % 2 == 0:
        raise ValueError(
            f"A {table_rows}-row bias table does not fit {side}x{side} patches; pass the image size that was trained."
        )
    return (local // spatial + 1) // 2, side


def infer_config(
    state_dict: dict[str, torch.Tensor],
    original_config: dict[str, Any] | None = None,
    vision_overrides: dict[str, Any] | None = None,
    text_overrides: dict[str, Any] | None = None,
    decoder_overrides: dict[str, Any] | None = None,
) -> SViTTConfig:
    """Architecture from tensor shapes, sparsity from the training config (or release defaults), then overrides.

    `state_dict` is in the release's key format. For a QA checkpoint the answer decoder's depth and widths come from
    its own tensors (the release hard-codes 3 layers, whatever the fusion depth); `decoder_overrides` sets fields of
    `answer_decoder_config`.
    """
    original_config = original_config or {}
    kind = detect_checkpoint_kind(state_dict)
    vision = _vision_fields(state_dict, original_config, kind)
    vision.update(vision_overrides or {})
    text = _text_fields(state_dict, kind, encoder_width=vision["hidden_size"])
    text.update(text_overrides or {})
    text_config = SViTTTextConfig(**text)
    model_args = _model_fields(state_dict, original_config)
    if kind == QUESTION_ANSWERING:
        model_args["answer_decoder_config"] = _answer_decoder_config(state_dict, text_config, decoder_overrides)
    return SViTTConfig(vision_config=SViTTVisionConfig(**vision), text_config=text_config, **model_args)


def _vision_fields(state_dict: dict[str, torch.Tensor], original_config: dict[str, Any], kind: str) -> dict[str, Any]:
    """The video tower: sizes from the tensors, sparsity from `vision_encoder_args` over the release's defaults."""
    cls_token = state_dict["vision_encoder.embeddings.cls_token"]
    projection = state_dict["vision_encoder.embeddings.patch_embeddings.projection.weight"]
    layer0 = "vision_encoder.encoder.layer.0."
    table = state_dict[layer0 + "attention.attention.relative_position_bias.relative_position_bias_table"]
    index = state_dict.get(layer0 + "attention.attention.relative_position_bias.relative_position_index")
    num_global = cls_token.shape[1]
    image_size = original_config.get("image_res")
    frames, side = _frames_and_grid(
        table.shape[0], index.shape[0] if index is not None else None, image_size, projection.shape[-1], num_global
    )
    recorded_frames = (original_config.get("video_input") or {}).get("num_frames")
    if recorded_frames is not None and int(recorded_frames) != frames:
        raise ValueError(f"The training config says {recorded_frames} frames, the bias tables hold {frames}.")

    vision = dict(RELEASE_QA_VISION_DEFAULTS if kind == QUESTION_ANSWERING else RELEASE_VISION_DEFAULTS)
    for old, new in _VISION_ARGS.items():
        value = (original_config.get("vision_encoder_args") or {}).get(old, "absent")
        if value == "absent":
            continue
        if old == "sparse_random_attn" and value is None:
            vision["use_sparse_attention"] = False
            continue
        vision[new] = list(value) if old == "token_drop_loc" else value
    vision.update(
        hidden_size=cls_token.shape[-1],
        num_hidden_layers=_layer_count(state_dict, "vision_encoder.encoder.layer."),
        num_attention_heads=table.shape[1],
        intermediate_size=state_dict[layer0 + "intermediate.dense.weight"].shape[0],
        patch_size=projection.shape[-1],
        num_channels=projection.shape[1],
        image_size=side * projection.shape[-1],
        num_frames=frames,
        num_global_tokens=num_global,
        layer_scale_init_value=0.1 if layer0 + "lambda_1" in state_dict else 0.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.1,
    )
    return vision


def _text_fields(state_dict: dict[str, torch.Tensor], kind: str, *, encoder_width: int) -> dict[str, Any]:
    """The text tower: BERT sizes, and the first layer with cross-attention as the fusion layer."""
    text_prefix = "text_encoder.bert." if kind == PRETRAINING else "text_encoder."
    text = _bert_shapes(state_dict, text_prefix)
    cross_attention = re.compile(re.escape(text_prefix) + r"encoder\.layer\.(\d+)\.crossattention\.")
    fusion_layer = min(
        (int(match.group(1)) for key in state_dict if (match := cross_attention.match(key))),
        default=text["num_hidden_layers"],
    )
    text.update(fusion_layer=fusion_layer, encoder_width=encoder_width)
    return text


def _model_fields(state_dict: dict[str, torch.Tensor], original_config: dict[str, Any]) -> dict[str, Any]:
    """The joint model's fields the checkpoint holds: the projection width, the temperature, the MLM rate."""
    model_args: dict[str, Any] = {}
    if "vision_proj.weight" in state_dict:
        model_args["embed_dim"] = state_dict["vision_proj.weight"].shape[0]
    if "temp" in state_dict:
        model_args["temperature"] = float(state_dict["temp"])
        model_args["temperature_min"] = min(0.001, model_args["temperature"])
        model_args["temperature_max"] = max(0.5, model_args["temperature"])
    if "mlm_prob" in original_config:
        model_args["mlm_probability"] = float(original_config["mlm_prob"])
    return model_args


def _bert_shapes(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    """Sizes of a BERT stored under `prefix`; heads cannot be read from shapes: BERT's 64 dimensions per head."""
    words = state_dict[prefix + "embeddings.word_embeddings.weight"]
    return dict(
        vocab_size=words.shape[0],
        hidden_size=words.shape[1],
        num_hidden_layers=_layer_count(state_dict, prefix + "encoder.layer."),
        num_attention_heads=max(1, words.shape[1] // 64),
        intermediate_size=state_dict[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state_dict[prefix + "embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state_dict[prefix + "embeddings.token_type_embeddings.weight"].shape[0],
    )


def _answer_decoder_config(
    state_dict: dict[str, torch.Tensor], text_config: SViTTTextConfig, overrides: dict[str, Any] | None
) -> SViTTTextConfig:
    shapes = _bert_shapes(state_dict, "text_decoder.bert.")
    num_layers = shapes.pop("num_hidden_layers")
    if shapes["hidden_size"] == text_config.hidden_size:
        del shapes["num_attention_heads"]  # as the question encoder's, which may have been overridden
    shapes.update(overrides or {})
    return answer_decoder_config_from_text(text_config, num_layers, **shapes)


def load_original_checkpoint(
    path: str | Path, allow_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a release checkpoint: returns its state dict and its training config (as a plain dict) if any.

    `.pth` files are read with `torch.load(weights_only=True)`. The release pickles an OmegaConf config into its
    checkpoints, which that refuses; `allow_pickle=True` reads such files fully (only for files you trust).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path)), None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except Exception as error:  # noqa: BLE001 - torch raises UnpicklingError or RuntimeError here
        if allow_pickle:
            raise ValueError(f"Could not read {path} as a PyTorch checkpoint: {error}") from error
        raise ValueError(
            f"{path} holds more than tensors (the release pickles its OmegaConf training config into checkpoints), "
            "so it cannot be read with `weights_only=True`. If you trust the file, pass `--allow-pickle` "
            f"(`allow_pickle=True`), which needs `omegaconf` installed. Original error: {error}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a state dict or a checkpoint dict.")
    config = None
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        config = _to_plain(checkpoint.get("config"))
        checkpoint = checkpoint["model"]
    elif "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], dict):
        checkpoint = checkpoint["state_dict"]
    tensors = {key: value for key, value in checkpoint.items() if isinstance(value, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors.")
    return tensors, config


def _to_plain(config: Any) -> dict[str, Any] | None:
    if config is None or isinstance(config, dict):
        return config
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(config):
            return OmegaConf.to_container(config, resolve=True)
    except ImportError:
        pass
    return dict(vars(config)) if hasattr(config, "__dict__") else dict(config)


def model_class_for_kind(kind: str):
    from .modeling_heads import SViTTForPreTraining, SViTTForVideoTextRetrieval
    from .modeling_video_qa import SViTTForVideoQuestionAnswering

    return {
        PRETRAINING: SViTTForPreTraining,
        RETRIEVAL: SViTTForVideoTextRetrieval,
        QUESTION_ANSWERING: SViTTForVideoQuestionAnswering,
    }[kind]


def convert_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path | None = None,
    original_config: dict[str, Any] | None = None,
    vision_overrides: dict[str, Any] | None = None,
    text_overrides: dict[str, Any] | None = None,
    allow_pickle: bool = False,
    decoder_overrides: dict[str, Any] | None = None,
):
    """Read a release checkpoint, build the matching head model, load the weights strictly, optionally save."""
    state_dict, recorded_config = load_original_checkpoint(checkpoint_path, allow_pickle=allow_pickle)
    return convert_loaded_state_dict(
        state_dict, output_dir, original_config or recorded_config, vision_overrides, text_overrides, decoder_overrides
    )


def convert_loaded_state_dict(
    state_dict: dict[str, torch.Tensor],
    output_dir: str | Path | None = None,
    original_config: dict[str, Any] | None = None,
    vision_overrides: dict[str, Any] | None = None,
    text_overrides: dict[str, Any] | None = None,
    decoder_overrides: dict[str, Any] | None = None,
):
    config = infer_config(state_dict, original_config, vision_overrides, text_overrides, decoder_overrides)
    converted, kind = convert_state_dict(state_dict)
    model = model_class_for_kind(kind)(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    tied = {
        name
        for name in missing
        if name.endswith("predictions.decoder.weight") or name.endswith("predictions.decoder.bias")
    }
    # weights the release deletes from a task model (the QA model has no projections, temperature or pooler)
    optional = [re.compile(pattern) for pattern in (model._keys_to_ignore_on_load_missing or ())]
    missing = [name for name in missing if name not in tied and not any(p.search(name) for p in optional)]
    if missing or unexpected:
        raise ValueError(
            f"Converted weights do not fit {type(model).__name__}: missing {missing}, unexpected {unexpected}."
        )
    model.tie_weights()
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
    return model


if __name__ == "__main__":
    # The command line (with `--model-card`) lives in the tools package, which the model package never imports; this
    # keeps `python -m modeling_svitt.convert_original_svitt` working without putting it on the package's import path.
    from svitt_tools.convert import main

    main()
