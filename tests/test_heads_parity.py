"""Parity of the pretraining head with the authors' code (ITM, MLM and the three losses), every fixture variant.

The fixture's state dict goes through the checkpoint converter into `SViTTForPreTraining`; its random-block
patterns, ITM negatives and MLM masks are replayed, and the outputs compared at 1e-5.
"""

import json

import pytest
import torch
from safetensors.torch import load_file
from helpers.original_fixture import TOLERANCE, VARIANTS, fixture_overrides, recorded_blocks

from modeling_svitt.convert_original_svitt import convert_loaded_state_dict
from modeling_svitt.modeling_heads import SViTTForPreTraining

COMPARED = (
    "itm_logits",
    "itm_logits_pos",
    "itm_logits_neg",
    "itm_labels",
    "itm_fusion_last_hidden_state",
    "mlm_text_last_hidden_state",
    "mlm_fusion_last_hidden_state",
    "mlm_logits",
    "loss_itc",
    "loss_itm",
    "loss_mlm",
    "sim_i2t",
    "sim_t2i",
    "vision_embeds_itc",
    "text_embeds_itc",
)


def converted_pretraining_model(fixture_dir, variant):
    meta = json.loads((fixture_dir / "meta.json").read_text())
    state_dict = load_file(fixture_dir / "state_dict.safetensors")
    original_config, text_overrides = fixture_overrides(meta, variant)
    model = convert_loaded_state_dict(state_dict, None, original_config, text_overrides=text_overrides)
    assert isinstance(model, SViTTForPreTraining)
    return model.eval(), meta


def run_pretraining(model, fixture_dir, meta, variant, replay_negatives=True):
    inputs = load_file(fixture_dir / "inputs.safetensors")
    negatives = {}
    if replay_negatives:
        negatives = dict(
            negative_video_indices=inputs["itm_img_neg_indices"], negative_text_indices=inputs["itm_txt_neg_indices"]
        )
    with torch.no_grad():
        output = model(
            pixel_values=inputs["pixel_values"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            match_ids=inputs["idx"],
            mlm_input_ids=inputs["mlm_input_ids"],
            mlm_labels=inputs["mlm_labels"],
            random_blocks=recorded_blocks(fixture_dir, meta, variant, 0),
            **negatives,
        )
        mlm_text = model.svitt.text_model(
            input_ids=inputs["mlm_input_ids"], attention_mask=inputs["attention_mask"]
        ).last_hidden_state
    batch = inputs["input_ids"].shape[0]
    return output, {
        "itm_logits": output.itm_logits,
        "itm_logits_pos": output.itm_logits[:batch],
        "itm_logits_neg": output.itm_logits[batch:],
        "itm_labels": output.itm_labels,
        "itm_fusion_last_hidden_state": output.itm_fusion_output.last_hidden_state,
        "mlm_text_last_hidden_state": mlm_text,
        "mlm_fusion_last_hidden_state": output.mlm_fusion_output.last_hidden_state,
        "mlm_logits": output.mlm_logits,
        "loss_itc": output.loss_itc,
        "loss_itm": output.loss_itm,
        "loss_mlm": output.loss_mlm,
        "sim_i2t": output.logits_per_video,
        "sim_t2i": output.logits_per_text,
        "vision_embeds_itc": output.video_embeds,
        "text_embeds_itc": output.text_embeds,
    }


def assert_matches(mine, expected, variant):
    for name in COMPARED:
        reference = expected[name]
        if reference.is_floating_point():
            torch.testing.assert_close(mine[name], reference, **TOLERANCE, msg=f"{variant}: {name}")
        else:
            assert torch.equal(mine[name], reference), f"{variant}: {name}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_pretraining_head_matches_the_release(original_fixture_dir, variant):
    model, meta = converted_pretraining_model(original_fixture_dir, variant)
    expected = load_file(original_fixture_dir / meta["variants"][variant]["outputs_file"])
    output, mine = run_pretraining(model, original_fixture_dir, meta, variant)
    assert_matches(mine, expected, variant)
    total = output.loss_itc + output.loss_itm + output.loss_mlm
    torch.testing.assert_close(output.loss, total)


def test_drawn_negatives_equal_the_recorded_ones_when_forced(original_fixture_dir):
    # Two samples with distinct match ids: each row has exactly one non-positive, so sampling is forced.
    model, meta = converted_pretraining_model(original_fixture_dir, "sparse")
    inputs = load_file(original_fixture_dir / "inputs.safetensors")
    output, mine = run_pretraining(model, original_fixture_dir, meta, "sparse", replay_negatives=False)
    assert torch.equal(output.negative_video_indices, inputs["itm_img_neg_indices"])
    assert torch.equal(output.negative_text_indices, inputs["itm_txt_neg_indices"])
    assert_matches(mine, load_file(original_fixture_dir / "outputs.safetensors"), "sparse")


def test_parity_survives_save_and_from_pretrained(original_fixture_dir, tmp_path):
    model, meta = converted_pretraining_model(original_fixture_dir, "sparse")
    model.save_pretrained(tmp_path)
    reloaded = SViTTForPreTraining.from_pretrained(tmp_path).eval()
    assert reloaded.mlm_head.predictions.decoder.weight is reloaded.svitt.text_model.embeddings.word_embeddings.weight
    _, mine = run_pretraining(reloaded, original_fixture_dir, meta, "sparse")
    assert_matches(mine, load_file(original_fixture_dir / "outputs.safetensors"), "sparse")


def release_qa_state_dict(state_dict, fusion_layer=2, num_layers=4, decoder_sources=None):
    """The fixture's pretraining weights rearranged into the release's QA layout; decoder layer i is text layer
    `decoder_sources[i]` (by default the fusion layers, one for one)."""
    decoder_sources = decoder_sources or list(range(fusion_layer, num_layers))
    qa = {}
    for key, value in state_dict.items():
        if key.startswith(("vision_proj", "text_proj", "temp", "itm_head", "vision_encoder.pooler")):
            continue  # the release's QA model deletes these
        if key.startswith("text_encoder.cls."):
            qa[key.replace("text_encoder.cls.", "text_decoder.cls.")] = value
            continue
        qa[key.replace("text_encoder.bert.", "text_encoder.")] = value
        if key.startswith("text_encoder.bert.embeddings."):
            qa[key.replace("text_encoder.bert.", "text_decoder.bert.")] = value
        for index, source in enumerate(decoder_sources):
            prefix = f"text_encoder.bert.encoder.layer.{source}."
            if key.startswith(prefix):
                qa[key.replace(prefix, f"text_decoder.bert.encoder.layer.{index}.")] = value
    return qa


def test_release_qa_checkpoint_converts_into_the_qa_head(original_fixture_dir):
    from modeling_svitt.modeling_video_qa import SViTTForVideoQuestionAnswering

    meta = json.loads((original_fixture_dir / "meta.json").read_text())
    state_dict = load_file(original_fixture_dir / "state_dict.safetensors")
    original_config, text_overrides = fixture_overrides(meta, "sparse")
    model = convert_loaded_state_dict(release_qa_state_dict(state_dict), None, original_config, text_overrides=text_overrides)
    assert isinstance(model, SViTTForVideoQuestionAnswering)
    torch.testing.assert_close(
        model.text_decoder.encoder.layer[1].crossattention.self.key.weight,
        state_dict["text_encoder.bert.encoder.layer.3.crossattention.self.key.weight"],
    )
    torch.testing.assert_close(model.decoder_head.predictions.bias, state_dict["text_encoder.cls.predictions.bias"])
    assert model.decoder_head.predictions.decoder.weight is model.text_decoder.embeddings.word_embeddings.weight


def test_release_qa_checkpoint_with_a_three_layer_decoder_over_two_fusion_layers(original_fixture_dir):
    from modeling_svitt.modeling_video_qa import SViTTForVideoQuestionAnswering

    meta = json.loads((original_fixture_dir / "meta.json").read_text())
    state_dict = load_file(original_fixture_dir / "state_dict.safetensors")
    original_config, text_overrides = fixture_overrides(meta, "sparse")
    release = release_qa_state_dict(state_dict, decoder_sources=[2, 3, 3])  # the release always builds 3 layers
    model = convert_loaded_state_dict(release, None, original_config, text_overrides=text_overrides)
    assert isinstance(model, SViTTForVideoQuestionAnswering)
    assert model.config.text_config.num_fusion_layers == 2 and len(model.text_decoder.encoder.layer) == 3
    torch.testing.assert_close(
        model.text_decoder.encoder.layer[2].output.dense.weight,
        state_dict["text_encoder.bert.encoder.layer.3.output.dense.weight"],
    )
