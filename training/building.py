"""The model and processor a recipe describes: the processor saved with every stage, the first stage's model (from
a checkpoint, from BEiT + BERT, or fresh), and each stage's clip length, sparsity, losses and frozen parameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from modeling_svitt import (
    SViTTConfig,
    SViTTForPreTraining,
    SViTTProcessor,
    SViTTTokenizer,
    SViTTVideoProcessor,
)
from modeling_svitt.pretrained_init import svitt_from_beit_and_bert
from modeling_svitt.relative_position import init_relative_bias_for_motion
from training.recipe import RELEASE_PROCESSOR, Recipe, StageSpec, resolve_path


def build_processor(recipe: Recipe) -> SViTTProcessor:
    """The processor saved with every stage: the model's tokenizer, and the recipe's frame size, crop, normalisation
    and text lengths; a field the recipe leaves null comes from the starting checkpoint's processor (when it has one)
    or is the release's."""
    spec, model = recipe.processor, recipe.model
    base = dict(RELEASE_PROCESSOR)
    if model.init == "checkpoint":
        checkpoint = resolve_path(model.checkpoint)
        try:
            saved = SViTTProcessor.from_pretrained(checkpoint)
        except (OSError, ValueError, TypeError):  # weights and tokenizer without a processor (e.g. converted)
            tokenizer = SViTTTokenizer.from_pretrained(checkpoint)
        else:
            tokenizer, video = saved.tokenizer, saved.video_processor
            base.update(
                image_size=video.size["height"], crop_scale=video.crop_scale, image_mean=video.image_mean,
                image_std=video.image_std, max_text_length=saved.max_text_length,
                max_answer_length=saved.max_answer_length,
            )
    else:
        source = resolve_path(model.tokenizer or model.bert)
        vocab = Path(source) / "vocab.txt" if Path(source).is_dir() else None
        if vocab is not None and vocab.is_file():
            tokenizer = SViTTTokenizer(vocab=str(vocab))
        elif Path(source).is_file():
            tokenizer = SViTTTokenizer(vocab=source)
        else:
            tokenizer = SViTTTokenizer.from_pretrained(source)
    values = {**base, **{key: value for key, value in dataclasses.asdict(spec).items() if value is not None}}
    video_processor = SViTTVideoProcessor(
        size=values["image_size"], crop_scale=values["crop_scale"], image_mean=values["image_mean"],
        image_std=values["image_std"],
    )
    return SViTTProcessor(
        video_processor, tokenizer, max_text_length=values["max_text_length"],
        max_answer_length=values["max_answer_length"],
    )


def build_initial_model(recipe: Recipe, model_class: type = SViTTForPreTraining):
    """The first stage's model as the recipe says: from a checkpoint, from BEiT + BERT weights, or from scratch."""
    spec = recipe.model
    overrides = dict(spec.config)
    if spec.init == "checkpoint":
        return model_class.from_pretrained(resolve_path(spec.checkpoint), **overrides)
    if spec.init == "pretrained":
        model = svitt_from_beit_and_bert(
            resolve_path(spec.beit),
            resolve_path(spec.bert),
            vision_overrides=dict(spec.vision),
            text_overrides=dict(spec.text),
            model_class=model_class,
            **overrides,
        )
    else:
        vision = {"hidden_size": 768, **spec.vision}
        text = {"encoder_width": vision["hidden_size"], **spec.text}
        model = model_class(SViTTConfig(vision_config=vision, text_config=text, **overrides))
    if spec.temporal_bias_init or spec.spatial_bias_decay:
        init_relative_bias_for_motion(model.svitt.vision_model, spec.temporal_bias_init, spec.spatial_bias_decay)
    return model


def configure_stage(model, stage: StageSpec, contrastive: bool = True) -> None:
    """Set a stage's clip length (resampling the relative bias), sparsity and, for heads trained with contrastive and
    matching losses (`contrastive`), its losses, on the model and its config. Heads with losses of their own (QA,
    multiple choice) keep the checkpoint's, which say how it was trained (e.g. EgoNCE, or without ITM)."""
    config = model.config
    vision = model.svitt.vision_model
    if vision.config.num_frames != stage.num_frames:
        vision.resize_num_frames(stage.num_frames)
    model.set_sparsity(  # a stage's null keeps the previous stage's value
        token_keep_rate=stage.token_keep_rate,
        token_drop_layers=stage.token_drop_layers,
        use_sparse_attention=stage.use_sparse_attention,
        attention_block_size=stage.attention_block_size,
        num_local_blocks=stage.num_local_blocks,
        num_random_blocks=stage.num_random_blocks,
        fusion_token_keep_rate=stage.fusion_token_keep_rate,
    )
    if not contrastive:
        return
    config.contrastive_loss = stage.contrastive_loss
    config.loss_weight_itc = stage.loss_weights.itc
    config.loss_weight_itm = stage.loss_weights.itm
    config.loss_weight_mlm = stage.loss_weights.mlm


def freeze_unused_parameters(model: torch.nn.Module, also: Sequence[str] = ()) -> list[str]:
    """Freeze the parameters the model's training forward does not use (`parameters_unused_in_training`), so DDP
    needs no search for unused parameters, and those whose names start with a prefix in `also` (a stage's `freeze`).
    A parameter shared with a used one (tied weights) stays trainable. Returns the names of the frozen parameters."""
    prefixes = tuple(model.parameters_unused_in_training()) + tuple(also)
    if not prefixes:
        return []
    named = list(model.named_parameters(remove_duplicate=False))
    used = {id(param) for name, param in named if not name.startswith(prefixes)}
    frozen = []
    for name, param in named:
        if name.startswith(prefixes) and id(param) not in used and param.requires_grad:
            param.requires_grad_(False)
            frozen.append(name)
    return frozen
