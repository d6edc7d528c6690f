"""Tiny SViTT configurations shared by the tests (hidden 32, 32x32 frames, patch 8: 16 patches per frame)."""

from modeling_svitt import SViTTConfig, SViTTTextConfig, SViTTVisionConfig


def tiny_vision_config(**overrides) -> SViTTVisionConfig:
    values = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
        num_frames=2,
        attention_block_size=8,
        num_local_blocks=1,
        num_random_blocks=1,
        token_keep_rate=0.7,
        token_drop_layers=[0, 1],
        drop_path_rate=0.0,
    )
    values.update(overrides)
    return SViTTVisionConfig(**values)


def tiny_text_config(**overrides) -> SViTTTextConfig:
    values = dict(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=24,
        fusion_layer=2,
        encoder_width=32,
        cls_token_id=2,
        sep_token_id=3,
        mask_token_id=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return SViTTTextConfig(**values)


def tiny_config(vision: dict | None = None, text: dict | None = None, **overrides) -> SViTTConfig:
    return SViTTConfig(
        vision_config=tiny_vision_config(**(vision or {})),
        text_config=tiny_text_config(**(text or {})),
        embed_dim=16,
        **overrides,
    )
