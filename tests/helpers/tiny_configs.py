"""Tiny SViTT configurations and inputs shared by the tests (hidden 32, 32x32 frames, patch 8: 16 patches per frame)."""

import torch

from modeling_svitt import SViTTConfig, SViTTTextConfig, SViTTVisionConfig

FRAMES = 2  # tiny_config's clip length
# an answer list as `[CLS] answer [SEP]` (ids of the tiny 100-word vocabulary: 2 [CLS], 3 [SEP], 0 padding)
ANSWERS = torch.tensor([[2, 10, 3, 0], [2, 11, 12, 3], [2, 13, 3, 0], [2, 14, 15, 3], [2, 10, 16, 3]])
ANSWER_MASK = (ANSWERS != 0).long()


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


def make_config(**overrides):
    # 2 fusion layers, so text-guided selection after the first one changes the second, and QA gets 2 decoder layers
    return tiny_config(text={"num_hidden_layers": 4}, **overrides)


def make_model(cls, seed=0, **overrides):
    torch.manual_seed(seed)
    return cls(make_config(**overrides)).eval()


def videos(batch, frames=FRAMES, seed=1):
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def captions(batch, length=8, seed=2):
    ids = torch.randint(5, 100, (batch, length), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = 2  # [CLS]
    mask = torch.ones_like(ids)
    for row in range(batch):
        cut = length - row % 3
        ids[row, cut:], mask[row, cut:] = 0, 0
    return ids, mask
