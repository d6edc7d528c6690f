import pytest
from helpers.tiny_configs import tiny_config, tiny_text_config, tiny_vision_config

from modeling_svitt import SViTTConfig, SViTTTextConfig, SViTTVisionConfig


def test_defaults_reproduce_the_release_stage_one():
    config = SViTTConfig()
    vision, text = config.vision_config, config.text_config
    assert (vision.num_frames, vision.image_size, vision.patch_size) == (4, 224, 16)
    assert (vision.attention_block_size, vision.num_local_blocks, vision.num_random_blocks) == (56, 1, 3)
    assert (vision.token_keep_rate, vision.token_drop_layers, vision.token_keep_strategy) == (0.7, [3, 6, 9], "cls_attn")
    assert vision.prune_after_mlp and not vision.mask_padded_keys
    assert (text.fusion_layer, text.num_hidden_layers, text.fusion_token_keep_rate) == (9, 12, 1.0)
    assert (config.embed_dim, config.temperature) == (256, 0.07)


def test_json_round_trip_and_sub_config_loading(tmp_path):
    config = tiny_config(vision={"num_frames": 3, "token_drop_layers": [1]}, contrastive_loss="egonce")
    config.save_pretrained(tmp_path)
    loaded = SViTTConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert isinstance(loaded.vision_config, SViTTVisionConfig)
    assert SViTTVisionConfig.from_pretrained(tmp_path).num_frames == 3
    assert SViTTTextConfig.from_pretrained(tmp_path).fusion_layer == 2


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"token_keep_rate": 0.0}, "token_keep_rate"),
        ({"token_keep_rate": 1.5}, "token_keep_rate"),
        ({"token_drop_layers": [3]}, "token_drop_layers"),
        ({"token_drop_layers": [-1]}, "token_drop_layers"),
        ({"image_size": 30}, "patch_size"),
        ({"attention_block_size": 0}, "attention_block_size"),
        ({"num_local_blocks": 2}, "odd"),
        ({"num_random_blocks": -1}, "num_random_blocks"),
        ({"num_frames": 0}, "num_frames"),
        ({"token_keep_strategy": "best"}, "token_keep_strategy"),
        ({"num_attention_heads": 5}, "divisible"),
        ({"sparse_attention_backend": "magic"}, "sparse_attention_backend"),
    ],
)
def test_impossible_vision_settings_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_vision_config(**overrides)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"fusion_layer": 4}, "fusion_layer"),
        ({"fusion_token_keep_rate": 0.0}, "fusion_token_keep_rate"),
        ({"fusion_token_keep_rate": 0.5, "fusion_token_drop_layers": [1]}, "fusion_token_drop_layers"),
        ({"fusion_token_keep_strategy": "max"}, "fusion_token_keep_strategy"),
    ],
)
def test_impossible_text_settings_raise_value_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_text_config(**overrides)


def test_composite_checks_widths_and_temperature():
    with pytest.raises(ValueError, match="encoder_width"):
        SViTTConfig(vision_config=tiny_vision_config(), text_config=tiny_text_config(encoder_width=48))
    with pytest.raises(ValueError, match="temperature"):
        tiny_config(temperature=0.9)
    with pytest.raises(ValueError, match="contrastive_loss"):
        tiny_config(contrastive_loss="triplet")


def test_drop_layers_are_not_checked_when_pruning_is_off():
    assert tiny_vision_config(token_keep_rate=1.0, token_drop_layers=[7]).prunes_tokens is False


def test_encoder_width_follows_the_video_tower_unless_given():
    vision = {"hidden_size": 48, "num_attention_heads": 4, "intermediate_size": 64, "image_size": 32, "patch_size": 8}
    text = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "num_hidden_layers": 3, "fusion_layer": 2}
    for vision_config, text_config in ((vision, text), (SViTTVisionConfig(**vision), SViTTTextConfig(**text))):
        assert SViTTConfig(vision_config=vision_config, text_config=text_config).text_config.encoder_width == 48
    with pytest.raises(ValueError, match="encoder_width"):  # a width that is given and wrong is still an error
        SViTTConfig(vision_config=vision, text_config={**text, "encoder_width": 32})
