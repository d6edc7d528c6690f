"""What every first-class `transformers` model guarantees, checked on every SViTT class with tiny configurations.

The project's own tests of the common-model contracts: building on the meta device (big-model loading, `device_map`,
DeepSpeed ZeRO-3), re-initialising buffers from meta, gradient checkpointing (reentrant or not), dict / tuple
outputs in their declared order, the output flags on every forward, deterministic evaluation, `dtype` loading,
feature getters, batching, embedding resizing and tying. By-design differences (documented in the classes and the
README) are asserted as such: vision attentions are the global-query rows only, hidden-state lengths shrink after
drop layers, and the text tower without video runs only the text layers.
"""

import dataclasses

import pytest
import torch
from accelerate import init_empty_weights
from helpers.tiny_configs import tiny_config
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from modeling_svitt import (
    SViTTForMultipleChoice,
    SViTTForPreTraining,
    SViTTForVideoQuestionAnswering,
    SViTTForVideoTextRetrieval,
    SViTTModel,
    SViTTTextModel,
    SViTTVisionModel,
)

BASE_CLASSES = [SViTTVisionModel, SViTTTextModel, SViTTModel]
HEAD_CLASSES = [SViTTForPreTraining, SViTTForVideoTextRetrieval, SViTTForVideoQuestionAnswering, SViTTForMultipleChoice]
ALL_CLASSES = BASE_CLASSES + HEAD_CLASSES


def config_for(cls, text=None, **overrides):
    config = tiny_config(text={"num_hidden_layers": 4, **(text or {})}, **overrides)  # 2 fusion layers
    if cls is SViTTVisionModel:
        return config.vision_config
    if cls is SViTTTextModel:
        return config.text_config
    return config


def make(cls, seed=0, **overrides):
    torch.manual_seed(seed)
    return cls(config_for(cls, **overrides))


def inputs_for(cls, batch=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(batch, 2, 3, 32, 32, generator=generator)
    ids = torch.randint(5, 100, (batch, 7), generator=generator)
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[-1, 5:] = 0
    ids = ids.masked_fill(mask == 0, 0)
    if cls is SViTTVisionModel:
        return {"pixel_values": pixels}
    if cls is SViTTTextModel:
        return {"input_ids": ids, "attention_mask": mask}
    inputs = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
    if cls is SViTTModel:
        inputs["return_loss"] = True
    if cls is SViTTForVideoTextRetrieval:
        inputs["match_ids"] = torch.arange(batch)
    if cls is SViTTForVideoQuestionAnswering:
        inputs["answer_input_ids"] = torch.tensor([[2, 10, 3, 0], [2, 11, 12, 3], [2, 13, 3, 0]])[:batch]
        inputs["answer_attention_mask"] = (inputs["answer_input_ids"] != 0).long()
    if cls is SViTTForMultipleChoice:
        inputs["pixel_values"] = torch.randn(batch, 2, 2, 3, 32, 32, generator=generator)
        inputs["labels"] = torch.arange(batch) % 2
    return inputs


def tensors_of(output):
    """Every tensor of a (nested) output or tuple, in order."""
    if isinstance(output, ModelOutput):
        output = output.to_tuple()
    if isinstance(output, (tuple, list)):
        return [tensor for item in output for tensor in tensors_of(item)]
    return [output] if torch.is_tensor(output) else []


# Meta device --------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_builds_on_the_meta_device(cls):
    with torch.device("meta"):
        model = cls(config_for(cls))
    assert {tensor.device.type for tensor in [*model.parameters(), *model.buffers()]} == {"meta"}
    with init_empty_weights(include_buffers=True):
        model = cls(config_for(cls))
    assert {tensor.device.type for tensor in [*model.parameters(), *model.buffers()]} == {"meta"}


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_init_weights_after_meta_rebuilds_the_buffers_and_the_model_runs(cls):
    reference = make(cls)
    with torch.device("meta"):
        model = cls(config_for(cls))
    model.to_empty(device="cpu")
    model.init_weights()
    buffers, rebuilt = dict(reference.named_buffers()), dict(model.named_buffers())
    assert sorted(buffers) == sorted(rebuilt)
    for name, buffer in buffers.items():
        assert torch.equal(buffer, rebuilt[name]), name
    # a tensor that is neither parameter nor buffer would still be on meta and break the forward
    model.eval()(**inputs_for(cls))


# Gradient checkpointing ----------------------------------------------------------------------------


def _gradients(model, inputs):
    torch.manual_seed(123)  # dropout, drop path and the random blocks of training draw from the global RNG
    if not isinstance(model, SViTTModel):  # ITM negatives and MLM masks
        inputs = {**inputs, "sampling_generator": torch.Generator().manual_seed(4)}
    output = model(**inputs)
    output.loss.backward()
    return output.loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("cls", [SViTTModel, SViTTForPreTraining, SViTTForVideoTextRetrieval])
@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_replays_dropout_and_gives_the_same_gradients(cls, use_reentrant):
    dropout = {"vision": {"drop_path_rate": 0.2, "hidden_dropout_prob": 0.1}, "text": {"num_hidden_layers": 4}}
    dropout["text"].update(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    torch.manual_seed(0)
    config = tiny_config(**dropout)
    plain, checkpointed = cls(config).train(), cls(config).train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    loss, gradients = _gradients(plain, inputs_for(cls))
    checkpointed_loss, checkpointed_gradients = _gradients(checkpointed, inputs_for(cls))
    torch.testing.assert_close(checkpointed_loss, loss)
    assert checkpointed_gradients.keys() == gradients.keys()
    if cls is not SViTTModel:  # the fusion layers (cross-attention to the video tokens) were checkpointed too
        assert any("crossattention" in name for name in gradients)
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, atol=1e-6, rtol=1e-5, msg=name)


# Outputs -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_tuple_outputs_follow_the_declared_field_order(cls):
    model = make(cls).eval()
    inputs = inputs_for(cls)
    with torch.no_grad():
        output = model(**inputs, output_attentions=True, output_hidden_states=True)
        as_tuple = model(**inputs, output_attentions=True, output_hidden_states=True, return_dict=False)
    declared = [field.name for field in dataclasses.fields(output)]
    present = [name for name in declared if getattr(output, name) is not None]
    assert list(output.keys()) == present
    assert len(as_tuple) == len(present)
    for name, value in zip(present, as_tuple):
        expected = tensors_of(output[name]) if not torch.is_tensor(output[name]) else [output[name]]
        got = tensors_of(value) if not torch.is_tensor(value) else [value]
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected)), name


def test_video_tower_tuple_has_the_pooled_vector_second():
    tower = make(SViTTVisionModel).eval()
    with torch.no_grad():
        output = tower(**inputs_for(SViTTVisionModel))
        as_tuple = tower(**inputs_for(SViTTVisionModel), return_dict=False)
    assert torch.equal(as_tuple[1], output.pooler_output) and as_tuple[1].shape == (3, 32)


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_every_forward_takes_the_output_flags(cls):
    model = make(cls).eval()
    with torch.no_grad():
        quiet = model(**inputs_for(cls), output_attentions=False, output_hidden_states=False)
        loud = model(**inputs_for(cls), output_attentions=True, output_hidden_states=True)
    tower_outputs = [value for value in loud.values() if isinstance(value, ModelOutput) and "attentions" in value]
    if not tower_outputs:
        tower_outputs = [loud]
    assert all(output.attentions is not None for output in tower_outputs), cls.__name__
    assert all(getattr(output, "attentions", None) is None for output in quiet.values() if isinstance(output, ModelOutput))


def test_by_design_shapes_of_vision_attentions_and_hidden_states():
    tower = make(SViTTVisionModel).eval()  # 2 frames x 16 patches; drop layers 0 and 1 keep 70 %
    with torch.no_grad():
        output = tower(**inputs_for(SViTTVisionModel), output_attentions=True, output_hidden_states=True)
    # attentions: only the rows of the global queries (block-sparse attention has no full matrix)
    assert [tuple(a.shape) for a in output.attentions] == [(3, 4, 1, 33), (3, 4, 1, 24), (3, 4, 1, 18)]
    # hidden states: the sequence shrinks after every drop layer
    assert [h.shape[1] for h in output.hidden_states] == [33, 24, 18, 18]
    text = make(SViTTTextModel).eval()
    inputs = inputs_for(SViTTTextModel)
    with torch.no_grad():
        text_only = text(**inputs, output_hidden_states=True)
    # without video, only the text layers run (fusion_layer = 2 of 4)
    assert len(text_only.hidden_states) == text.config.fusion_layer + 1


# Deterministic evaluation ----------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_evaluation_gives_the_same_output_twice(cls):
    model = make(cls, text={"fusion_token_keep_rate": 0.5, "fusion_token_keep_strategy": "random"})
    model.eval()
    with torch.no_grad():
        first, second = tensors_of(model(**inputs_for(cls))), tensors_of(model(**inputs_for(cls)))
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_heads_draw_fresh_negatives_and_masks_in_training():
    model = make(SViTTForPreTraining).train()
    inputs = inputs_for(SViTTForPreTraining, batch=6)
    draws = set()
    for _ in range(5):
        output = model(**inputs)
        draws.add((tuple(output.negative_video_indices.tolist()), tuple(output.mlm_labels.flatten().tolist())))
    assert len(draws) > 1


# Loading in another dtype, feature getters, batching, embeddings ---------------------------------------


@pytest.mark.parametrize("cls", [SViTTModel, SViTTForPreTraining])
def test_bf16_loading_keeps_the_temperature_in_float32(cls, tmp_path):
    make(cls).save_pretrained(tmp_path)
    model = cls.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    base = model if cls is SViTTModel else model.svitt
    assert base.temperature.dtype == torch.float32
    assert base.vision_projection.weight.dtype == torch.bfloat16
    with torch.no_grad():
        output = model(**inputs_for(cls))
    assert output.logits_per_video.dtype == torch.float32 and torch.isfinite(output.loss)


def test_feature_getters_return_outputs_with_the_projected_embedding():
    model = make(SViTTModel).eval()
    inputs = inputs_for(SViTTModel)
    with torch.no_grad():
        reference = model(**inputs)
        video = model.get_video_features(inputs["pixel_values"], output_hidden_states=True, output_attentions=True)
        text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"], output_hidden_states=True)
        as_tuple = model.get_text_features(inputs["input_ids"], inputs["attention_mask"], return_dict=False)
    assert isinstance(video, BaseModelOutputWithPooling) and isinstance(text, BaseModelOutputWithPooling)
    torch.testing.assert_close(video.pooler_output, reference.video_embeds)
    torch.testing.assert_close(text.pooler_output, reference.text_embeds)
    assert len(video.hidden_states) == 4 and len(video.attentions) == 3 and len(text.hidden_states) == 3
    torch.testing.assert_close(as_tuple[1], text.pooler_output)


def test_batching_does_not_change_any_sample():
    model = make(SViTTModel).eval()
    inputs = inputs_for(SViTTModel, batch=3)
    with torch.no_grad():
        together = model(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
        for row in range(3):
            alone = model(
                inputs["pixel_values"][row : row + 1],
                inputs["input_ids"][row : row + 1],
                inputs["attention_mask"][row : row + 1],
            )
            torch.testing.assert_close(alone.video_embeds, together.video_embeds[row : row + 1], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(alone.text_embeds, together.text_embeds[row : row + 1], atol=1e-5, rtol=1e-5)
            kept = [indices[row : row + 1] for indices in together.vision_model_output.kept_token_indices]
            assert all(torch.equal(a, b) for a, b in zip(alone.vision_model_output.kept_token_indices, kept))


def test_resizing_the_vocabulary_keeps_the_mlm_head_tied():
    model = make(SViTTForPreTraining)
    model.resize_token_embeddings(120, mean_resizing=False)
    head = model.mlm_head.predictions
    assert model.config.text_config.vocab_size == 120
    assert head.decoder.weight is model.svitt.text_model.embeddings.word_embeddings.weight
    assert head.decoder.weight.shape == (120, 32) and head.bias.shape == (120,) and head.decoder.bias is head.bias
    inputs = inputs_for(SViTTForPreTraining)
    inputs["input_ids"][0, 1] = 115
    assert model(**inputs).mlm_logits.shape[-1] == 120
