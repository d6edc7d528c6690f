"""Analytic compute of video transformers: how many multiply-accumulates a clip costs, with and without sparsity.

Counts the matrix products of the transformer layers (query/key/value/output projections, the feed-forward, and
the query-key and attention-value products); the patch embedding, layer norms, softmax and the relative-bias
lookup are left out. Edge sparsity changes the keys every patch query sees (the `num_global_tokens` global tokens plus
`num_local_blocks + num_random_blocks` blocks of `attention_block_size`); node sparsity shrinks the number of
tokens after each drop layer (`ceil(token_keep_rate * n)`). Benchmarks report measured speed-ups as a share of
the ratio of these counts, between SViTT settings and against the peers counted the same way
(`videomae_macs`: a plain ViT on tubelet tokens; `timesformer_macs`: divided space-time attention).
"""

from __future__ import annotations

import math

from modeling_svitt.configuration_svitt import SViTTVisionConfig


def video_tower_macs(
    config: SViTTVisionConfig,
    num_frames: int | None = None,
    *,
    use_sparse_attention: bool | None = None,
    token_keep_rate: float | None = None,
) -> int:
    """Multiply-accumulates of one clip through the video tower's layers.

    Args:
        config: the tower's configuration (widths, depth, geometry, sparsity).
        num_frames: clip length; defaults to `config.num_frames`.
        use_sparse_attention: override edge sparsity (`False` gives dense attention).
        token_keep_rate: override node sparsity (`1.0` keeps every token).
    """
    frames = config.num_frames if num_frames is None else num_frames
    sparse = config.use_sparse_attention if use_sparse_attention is None else use_sparse_attention
    keep_rate = config.token_keep_rate if token_keep_rate is None else token_keep_rate
    width, num_global = config.hidden_size, config.num_global_tokens
    drop_layers = set(config.token_drop_layers) if keep_rate < 1.0 else set()

    def dense_part(num_tokens: int) -> int:  # projections and feed-forward, per token linear in width
        return num_tokens * (4 * width * width + 2 * width * config.intermediate_size)

    patches = frames * config.patches_per_frame
    total = 0
    for layer in range(config.num_hidden_layers):
        tokens = patches + num_global
        if sparse:
            blocks = math.ceil(patches / config.attention_block_size)
            key_blocks = min(blocks, config.num_local_blocks + config.num_random_blocks)
            score_pairs = patches * (num_global + key_blocks * config.attention_block_size) + num_global * tokens
        else:
            score_pairs = tokens * tokens
        total += 2 * score_pairs * width  # query-key scores and attention-weighted values
        if layer in drop_layers:
            kept = math.ceil(keep_rate * patches)
            mlp_tokens = tokens if config.prune_after_mlp else kept + num_global
            total += tokens * 4 * width * width + mlp_tokens * 2 * width * config.intermediate_size
            patches = kept
        else:
            total += dense_part(tokens)
    return total


def video_tower_gmacs(config: SViTTVisionConfig, num_frames: int | None = None, **overrides) -> float:
    """`video_tower_macs` in billions."""
    return video_tower_macs(config, num_frames, **overrides) / 1e9


def dense_to_sparse_ratio(config: SViTTVisionConfig, num_frames: int | None = None) -> float:
    """How many times fewer multiply-accumulates the configured sparsity needs than dense attention on all tokens."""
    dense = video_tower_macs(config, num_frames, use_sparse_attention=False, token_keep_rate=1.0)
    return dense / video_tower_macs(config, num_frames)


def _layer_macs(num_tokens: int, width: int, intermediate: int, keys_per_query: int) -> int:
    """One pre-LN transformer layer over `num_tokens` tokens that each attend to `keys_per_query` keys."""
    return num_tokens * (4 * width * width + 2 * width * intermediate) + 2 * num_tokens * keys_per_query * width


def videomae_macs(config, num_frames: int | None = None) -> int:
    """`VideoMAEModel` (any ViT on tubelet tokens, no [CLS]): dense attention over `T / tubelet * P * P` tokens."""
    frames = config.num_frames if num_frames is None else num_frames
    tokens = (frames // config.tubelet_size) * (config.image_size // config.patch_size) ** 2
    layer = _layer_macs(tokens, config.hidden_size, config.intermediate_size, tokens)
    return config.num_hidden_layers * layer


def timesformer_macs(config, num_frames: int | None = None) -> int:
    """`TimesformerModel` with divided space-time attention: per layer a temporal attention of every patch over the
    `T` frames (with its extra `temporal_dense` projection), a spatial attention of every frame over its patches and
    the [CLS] token, and the feed-forward of all `1 + T * P * P` tokens."""
    if config.attention_type != "divided_space_time":
        raise ValueError(f"Only divided space-time attention is counted, got {config.attention_type!r}.")
    frames = config.num_frames if num_frames is None else num_frames
    width, patches = config.hidden_size, (config.image_size // config.patch_size) ** 2
    temporal = patches * frames * 5 * width * width + patches * 2 * frames * frames * width
    spatial_tokens = patches + 1
    spatial = frames * (spatial_tokens * 4 * width * width + 2 * spatial_tokens * spatial_tokens * width)
    feed_forward = (1 + frames * patches) * 2 * width * config.intermediate_size
    return config.num_hidden_layers * (temporal + spatial + feed_forward)


__all__ = ["dense_to_sparse_ratio", "timesformer_macs", "video_tower_gmacs", "video_tower_macs", "videomae_macs"]
