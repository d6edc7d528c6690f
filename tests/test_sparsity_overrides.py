"""`SViTTPreTrainedModel.set_sparsity` / `sparsity_overrides` / `get_sparsity`: the one way sparsity (and the other
settings a built model reads at run time) changes, used by retrieval ranking, the sweeps and the curriculum stages."""

import copy

import pytest
import torch
from helpers.tiny_configs import captions, make_model, tiny_config, videos

from modeling_svitt import SViTTConfig, SViTTModel, SViTTTextConfig, SViTTVisionConfig
from modeling_svitt.modeling_heads import SViTTForVideoTextRetrieval
from modeling_svitt.modeling_multiple_choice import SViTTForMultipleChoice
from modeling_svitt.modeling_video_qa import SViTTForVideoQuestionAnswering
from training.recipe import EvaluationSpec, RecipeError
from training.sweep import settings_applied


def outputs(model: SViTTModel) -> dict[str, torch.Tensor]:
    """Everything the settings reach: the video tower (edge and node sparsity) and the fusion layers (text-guided
    selection)."""
    ids, mask = captions(2)
    with torch.no_grad():
        video = model.encode_video(videos(2))
        text = model.encode_text(ids, mask)
        fused = model.fuse(text.hidden_states, text.attention_mask, video.tokens, video.token_mask)
    return {"video_embeds": video.embeds, "video_tokens": video.tokens, "fused": fused.last_hidden_state}


def built_with(config: SViTTConfig, weights: dict[str, torch.Tensor]) -> SViTTModel:
    model = SViTTModel(config).eval()
    model.load_state_dict(weights)
    return model


@pytest.mark.parametrize(
    "settings",
    [
        {"token_keep_rate": 0.5, "token_drop_layers": [1]},
        {"token_keep_rate": 0.4, "token_keep_strategy": "random", "prune_after_mlp": False},
        {"use_sparse_attention": False},
        {"attention_block_size": 4, "num_random_blocks": 2, "random_block_seed": 3},
        {"fusion_token_keep_rate": 0.3, "fusion_token_drop_layers": [0], "fusion_token_keep_strategy": "avg_attn"},
    ],
)
def test_an_override_gives_the_outputs_of_a_model_built_with_that_config(settings):
    model = make_model(SViTTModel)
    default = outputs(model)
    vision = {name: value for name, value in settings.items() if name in SViTTVisionConfig.runtime_fields}
    text = {name: value for name, value in settings.items() if name in SViTTTextConfig.runtime_fields}
    config = tiny_config(vision=vision, text={"num_hidden_layers": 4, **text})  # `make_config` with the settings
    reference = outputs(built_with(config, model.state_dict()))

    model.set_sparsity(**settings)
    changed = outputs(model)
    differs = [key for key in default if default[key].shape != changed[key].shape or
               not torch.equal(default[key], changed[key])]
    assert differs, "the settings must change the outputs, or this test proves nothing"
    for key in reference:
        torch.testing.assert_close(changed[key], reference[key], rtol=0, atol=0, msg=key)


def test_set_sparsity_returns_what_it_replaced_and_that_undoes_it():
    model = make_model(SViTTForVideoTextRetrieval)
    before = model.get_sparsity()
    previous = model.set_sparsity(token_keep_rate=0.5, fusion_token_keep_rate=0.3, num_random_blocks=None)
    assert previous == {"token_keep_rate": 0.7, "fusion_token_keep_rate": 1.0}  # `None` leaves a setting as it is
    assert model.get_sparsity() == {**before, "token_keep_rate": 0.5, "fusion_token_keep_rate": 0.3}
    model.set_sparsity(**previous)
    assert model.get_sparsity() == before


def test_values_are_stored_as_a_built_config_stores_them():
    model = make_model(SViTTModel)
    model.set_sparsity(token_keep_rate=1, token_drop_layers=(2, 0), fusion_token_drop_layers=range(2))
    vision, text = model.config.vision_config, model.config.text_config
    assert vision.token_keep_rate == 1.0 and isinstance(vision.token_keep_rate, float)
    assert vision.token_drop_layers == [2, 0] and text.fusion_token_drop_layers == [0, 1]


def test_every_alias_holds_the_value_and_save_pretrained_writes_it(tmp_path):
    model = make_model(SViTTForVideoTextRetrieval)
    svitt = model.svitt
    aliases = lambda: (  # noqa: E731
        model.config.vision_config is svitt.config.vision_config is svitt.vision_model.config,
        model.config.text_config is svitt.config.text_config is svitt.text_model.config,
        svitt.vision_model.encoder.config is svitt.vision_model.config,
    )
    assert aliases() == (True, True, True)
    with model.sparsity_overrides(token_keep_rate=0.5, fusion_token_keep_rate=0.3, fusion_token_drop_layers=[0]):
        assert aliases() == (True, True, True)
        assert svitt.vision_model.encoder.config.token_keep_rate == 0.5
        assert svitt.text_model.encoder.config.fusion_token_keep_rate == 0.3
        model.save_pretrained(tmp_path)
    assert aliases() == (True, True, True)
    saved = SViTTConfig.from_pretrained(tmp_path)
    assert (saved.vision_config.token_keep_rate, saved.text_config.fusion_token_keep_rate) == (0.5, 0.3)
    assert model.config.vision_config.token_keep_rate == 0.7


def test_the_answer_decoder_keeps_its_own_config():
    model = make_model(SViTTForVideoQuestionAnswering)
    model.set_sparsity(fusion_token_keep_rate=0.5)
    assert model.svitt.text_model.config.fusion_token_keep_rate == 0.5
    assert model.text_decoder.config.fusion_token_keep_rate == 1.0  # it cross-attends to the question, selects nothing


def test_the_head_setting_changes_how_multiple_choice_scores():
    model = make_model(SViTTForMultipleChoice)
    ids, mask = captions(2)
    candidates = torch.randn(2, 3, 2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        by_itm = model(pixel_values=candidates, input_ids=ids, attention_mask=mask, scoring="itm").logits
        with model.sparsity_overrides(multiple_choice_scoring="itm"):
            overridden = model(pixel_values=candidates, input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(overridden, by_itm, rtol=0, atol=0)
    assert model.config.multiple_choice_scoring == "itc"


def test_the_context_manager_restores_also_after_an_exception():
    model = make_model(SViTTForVideoTextRetrieval)
    before = model.get_sparsity()
    with model.sparsity_overrides(token_keep_rate=0.5, use_sparse_attention=False) as same:
        assert same is model and model.svitt.vision_model.config.token_keep_rate == 0.5
        with model.sparsity_overrides(token_keep_rate=0.3, token_drop_layers=[0]):  # nested: each restores its own
            assert model.get_sparsity()["token_drop_layers"] == [0]
        assert model.get_sparsity() == {**before, "token_keep_rate": 0.5, "use_sparse_attention": False}
    assert model.get_sparsity() == before
    with pytest.raises(RuntimeError, match="inside the block"):
        with model.sparsity_overrides(fusion_token_keep_rate=0.2, token_keep_strategy="random"):
            raise RuntimeError("inside the block")
    assert model.get_sparsity() == before


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"token_keep_ratio": 0.5}, ValueError, r"`token_keep_ratio` is not a setting of SViTTForVideoTextRetrieval "
                                                r"\(did you mean `token_keep_rate`\?\)\. The settings that can change"),
        ({"hidden_size": 64}, ValueError, r"`hidden_size` is fixed when the model is built\. .*token_keep_rate, "),
        ({"num_frames": 4}, ValueError, r"`num_frames` sizes the relative-position tables: .*resize_num_frames"),
        ({"token_keep_rate": 0.0}, ValueError, r"`token_keep_rate` must be in \(0, 1\], got 0.0"),
        ({"token_keep_rate": 0.5, "token_drop_layers": [7]}, ValueError, r"`token_drop_layers` contains 7"),
        ({"fusion_token_keep_strategy": "best"}, ValueError, r"`fusion_token_keep_strategy` must be one of"),
        ({"num_local_blocks": 2}, ValueError, r"`num_local_blocks` must be a positive odd number"),
        ({"token_keep_rate": "half"}, TypeError, r"`token_keep_rate` must be a number, got 'half' \(str\)"),
        ({"use_sparse_attention": 1}, TypeError, r"`use_sparse_attention` must be `True` or `False`"),
        ({"num_random_blocks": 1.5}, TypeError, r"`num_random_blocks` must be an integer"),
        ({"token_drop_layers": "0,1"}, TypeError, r"`token_drop_layers` must be a list of layer indices"),
    ],
)
def test_a_refused_setting_names_the_field_and_changes_nothing(settings, error, message):
    model = make_model(SViTTForVideoTextRetrieval)
    before = model.get_sparsity()
    with pytest.raises(error, match=message):
        model.set_sparsity(**{"random_block_seed": 5, **settings})  # a valid setting beside it is not applied either
    assert model.get_sparsity() == before
    with pytest.raises(error, match=message), model.sparsity_overrides(**settings):
        pass
    assert model.get_sparsity() == before


def test_a_tower_takes_only_its_own_settings():
    tower = make_model(SViTTModel).vision_model
    tower.set_sparsity(token_keep_rate=0.5)
    assert tower.config.token_keep_rate == 0.5
    with pytest.raises(ValueError, match=r"`fusion_token_keep_rate` is a setting of the text tower, which "
                                         r"SViTTVisionModel does not have\. .*: use_sparse_attention, "):
        tower.set_sparsity(fusion_token_keep_rate=0.5)


def test_a_config_object_assigned_after_building_is_refused():
    model = make_model(SViTTForVideoTextRetrieval)
    model.config.vision_config = copy.deepcopy(model.config.vision_config)
    with pytest.raises(ValueError, match=r"`SViTTForVideoTextRetrieval\.svitt\.vision_model` reads another "
                                         r"SViTTVisionConfig object than `config\.vision_config`"):
        model.set_sparsity(token_keep_rate=0.5)
    assert model.svitt.vision_model.config.token_keep_rate == 0.7


def test_sweep_settings_go_through_the_model_and_come_back():
    model = make_model(SViTTForVideoTextRetrieval)
    before = model.get_sparsity()
    spec = EvaluationSpec(annotations="test.json")
    settings = {"vision_config.token_keep_rate": 0.5, "text.fusion_token_keep_rate": 0.3, "k": 4}
    with settings_applied(model, spec, settings) as applied:
        assert applied.k == 4
        assert model.get_sparsity() == {**before, "token_keep_rate": 0.5, "fusion_token_keep_rate": 0.3}
    assert model.get_sparsity() == before
    with pytest.raises(RecipeError, match=r"`token_keep_rate` must be in \(0, 1\]"):
        with settings_applied(model, spec, {"fusion_token_keep_rate": 0.3, "token_keep_rate": 1.5}):
            pass
    assert model.get_sparsity() == before


def test_a_curriculum_stage_sets_sparsity_through_the_model_and_its_nulls_keep_the_previous_values():
    from training.building import configure_stage
    from training.recipe import StageSpec

    model = make_model(SViTTForVideoTextRetrieval)
    vision = model.svitt.vision_model
    stage = StageSpec(num_frames=4, token_keep_rate=0.5, token_drop_layers=[1], num_random_blocks=2,
                      fusion_token_keep_rate=0.3)
    configure_stage(model, stage, contrastive=False)
    assert model.config.vision_config is vision.config and model.config.text_config is model.svitt.text_model.config
    assert vision.config.num_frames == 4
    expected = {"token_keep_rate": 0.5, "token_drop_layers": [1], "num_random_blocks": 2, "fusion_token_keep_rate": 0.3}
    assert {name: model.get_sparsity()[name] for name in expected} == expected
    configure_stage(model, StageSpec(num_frames=4, token_keep_rate=0.7), contrastive=False)
    assert {name: model.get_sparsity()[name] for name in expected} == {**expected, "token_keep_rate": 0.7}
    with pytest.raises(ValueError, match=r"`num_local_blocks` must be a positive odd number"):
        configure_stage(model, StageSpec(num_frames=4, num_local_blocks=2), contrastive=False)
    assert model.get_sparsity()["num_local_blocks"] == 1
