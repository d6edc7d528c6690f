"""Parity with the authors' code: the fixture's tensors were produced by the release on a tiny configuration."""

import json

import pytest
import torch
from helpers.original_fixture import TOLERANCE, VARIANTS, fixture_overrides, recorded_blocks
from safetensors.torch import load_file

from modeling_svitt import SViTTModel
from modeling_svitt.convert_original_svitt import convert_state_dict, detect_checkpoint_kind, infer_config


def converted_base_model(fixture_dir, variant) -> tuple[SViTTModel, dict]:
    meta = json.loads((fixture_dir / "meta.json").read_text())
    state_dict = load_file(fixture_dir / "state_dict.safetensors")
    original_config, text_overrides = fixture_overrides(meta, variant)
    config = infer_config(state_dict, original_config, text_overrides=text_overrides)
    converted, kind = convert_state_dict(state_dict)
    assert kind == "pretraining"
    model = SViTTModel(config).eval()
    base_weights = {key.removeprefix("svitt."): value for key, value in converted.items() if key.startswith("svitt.")}
    model.load_state_dict(base_weights, strict=True)
    return model, meta


@pytest.mark.parametrize("variant", VARIANTS)
def test_video_text_and_itc_outputs_match_the_release(original_fixture_dir, variant):
    model, meta = converted_base_model(original_fixture_dir, variant)
    inputs = load_file(original_fixture_dir / "inputs.safetensors")
    expected = load_file(original_fixture_dir / meta["variants"][variant]["outputs_file"])
    with torch.no_grad():
        video = model.encode_video(
            inputs["pixel_values"],
            random_blocks=recorded_blocks(original_fixture_dir, meta, variant, 0),
            output_attentions=True,
            output_hidden_states=True,
        )
        text = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
        second_call = model.encode_video(
            inputs["pixel_values"], random_blocks=recorded_blocks(original_fixture_dir, meta, variant, 1), output_attentions=True
        )
    mine = {
        "vision_last_hidden_state_pre_ln": video.vision_output.last_hidden_state,
        "vision_last_hidden_state": video.tokens,
        "vision_pooler_output": video.vision_output.pooler_output,
        "vision_embeds_itc": video.embeds,
        "text_embeds_itc": text.embeds,
        "text_last_hidden_state": text.hidden_states,
        "sim_i2t": video.embeds @ text.embeds.T / model.temperature,
        "sim_t2i": text.embeds @ video.embeds.T / model.temperature,
        "temp": model.temperature,
    }
    for prefix, encoding in (("", video), ("call1.", second_call)):
        for layer, attention in enumerate(encoding.vision_output.attentions):
            mine[f"{prefix}vision_cls_attn.layer{layer}"] = attention
        drop_layers = model.config.vision_config.token_drop_layers if model.config.vision_config.prunes_tokens else []
        for layer, kept in zip(drop_layers, encoding.vision_output.kept_token_indices):
            mine[f"{prefix}vision_token_idx.layer{layer}"] = kept
    mine["call1.vision_last_hidden_state_pre_ln"] = second_call.vision_output.last_hidden_state
    mine["call1.vision_last_hidden_state"] = second_call.tokens
    mine["call1.vision_pooler_output"] = second_call.vision_output.pooler_output
    for layer, hidden in enumerate(video.vision_output.hidden_states[:-1]):
        mine[f"vision_hidden_states.{layer}"] = hidden

    compared = 0
    for name, reference in expected.items():
        if name not in mine:
            continue  # ITM / MLM tensors: checked with the pretraining head
        compared += 1
        if reference.is_floating_point():
            torch.testing.assert_close(mine[name], reference, **TOLERANCE, msg=f"{variant}: {name}")
        else:
            assert torch.equal(mine[name], reference), f"{variant}: {name}"
    assert compared >= 18


def test_replaying_another_pattern_changes_the_output(original_fixture_dir):
    model, meta = converted_base_model(original_fixture_dir, "sparse")
    inputs = load_file(original_fixture_dir / "inputs.safetensors")
    with torch.no_grad():
        recorded = model.encode_video(inputs["pixel_values"], random_blocks=recorded_blocks(original_fixture_dir, meta, "sparse", 0))
        drawn = model.encode_video(inputs["pixel_values"])
    assert (recorded.vision_output.pooler_output - drawn.vision_output.pooler_output).abs().max() > 1e-3


def test_converter_detects_and_maps_every_release_layout(original_fixture_dir):
    state_dict = load_file(original_fixture_dir / "state_dict.safetensors")
    converted, kind = convert_state_dict(state_dict)
    assert kind == "pretraining"
    assert not any("relative_position_index" in key or key.endswith("position_ids") for key in converted)
    assert "mlm_head.predictions.bias" in converted and "mlm_head.predictions.decoder.weight" not in converted
    assert "svitt.temperature" in converted and "itm_head.weight" in converted

    retrieval = {
        key.replace("text_encoder.bert.", "text_encoder."): value
        for key, value in state_dict.items()
        if not key.startswith("text_encoder.cls.")
    }
    assert detect_checkpoint_kind(retrieval) == "retrieval"
    converted_retrieval, _ = convert_state_dict(retrieval)
    assert {key for key in converted_retrieval} == {key for key in converted if not key.startswith("mlm_head.")}

    qa = {key: value for key, value in retrieval.items() if not key.startswith(("vision_proj", "text_proj", "temp", "itm_head"))}
    qa["text_decoder.bert.encoder.layer.0.attention.self.query.weight"] = torch.zeros(32, 32)
    qa["text_decoder.cls.predictions.bias"] = torch.zeros(100)
    converted_qa, kind = convert_state_dict(qa)
    assert kind == "question_answering"
    assert "text_decoder.encoder.layer.0.attention.self.query.weight" in converted_qa
    assert "decoder_head.predictions.bias" in converted_qa

    with pytest.raises(ValueError, match="Not an SViTT release checkpoint"):
        convert_state_dict({"vision_encoder.embeddings.cls_token": torch.zeros(1)})


def test_config_inference_reads_shapes(original_fixture_dir):
    state_dict = load_file(original_fixture_dir / "state_dict.safetensors")
    with pytest.raises(ValueError, match="token_drop_layers"):  # the release's [3, 6, 9] do not fit 4 layers
        infer_config(state_dict)
    depth = {"token_drop_layers": [1, 2]}
    config = infer_config(state_dict, vision_overrides=depth, text_overrides={"num_attention_heads": 4})
    vision, text = config.vision_config, config.text_config
    assert (vision.num_frames, vision.image_size, vision.patch_size, vision.hidden_size) == (4, 32, 8, 32)
    assert (vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size) == (4, 4, 64)
    assert (text.num_hidden_layers, text.fusion_layer, text.vocab_size, text.max_position_embeddings) == (4, 2, 100, 64)
    assert config.embed_dim == 16 and abs(config.temperature - 0.07) < 1e-7
    # without the index buffers the grid comes from the image size
    no_index = {key: value for key, value in state_dict.items() if "relative_position_index" not in key}
    assert infer_config(no_index, {"image_res": 32}, depth).vision_config.num_frames == 4
    with pytest.raises(ValueError, match="frames"):
        infer_config(state_dict, {"video_input": {"num_frames": 8}}, depth)
