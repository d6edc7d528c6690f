import pytest

from modeling_svitt import SViTTVisionConfig
from transformers import TimesformerConfig, VideoMAEConfig

from svitt_tools.compute_cost import (
    dense_to_sparse_ratio,
    timesformer_macs,
    video_tower_gmacs,
    video_tower_macs,
    videomae_macs,
)


@pytest.mark.parametrize(
    "frames, keep, dense, sparse",
    [(4, 0.7, 78.0, 48.2), (8, 0.6, 178.6, 85.2), (16, 0.5, 447.8, 151.4)],
)
def test_base_tower_matches_the_hand_count_of_the_release_settings(frames, keep, dense, sparse):
    # BEiT-B/16 at 224 px: 12 N d^2 + 2 N k d per layer, keep rate after layers 3/6/9, 225 keys per patch query
    config = SViTTVisionConfig(num_frames=frames, token_keep_rate=keep)
    assert video_tower_gmacs(config, use_sparse_attention=False, token_keep_rate=1.0) == pytest.approx(dense, abs=0.05)
    assert video_tower_gmacs(config) == pytest.approx(sparse, abs=0.05)
    assert dense_to_sparse_ratio(config) == pytest.approx(dense / sparse, rel=1e-3)


def test_each_kind_of_sparsity_saves_and_pruning_before_the_feed_forward_saves_more():
    config = SViTTVisionConfig(num_frames=8, token_keep_rate=0.6)
    dense = video_tower_macs(config, use_sparse_attention=False, token_keep_rate=1.0)
    edge = video_tower_macs(config, token_keep_rate=1.0)
    node = video_tower_macs(config, use_sparse_attention=False)
    assert edge < dense and node < dense and video_tower_macs(config) < min(edge, node)
    early = SViTTVisionConfig(num_frames=8, token_keep_rate=0.6, prune_after_mlp=False)
    assert video_tower_macs(early) < video_tower_macs(config)


def test_longer_clips_cost_linearly_under_edge_sparsity_and_quadratically_without():
    config = SViTTVisionConfig(token_keep_rate=1.0)
    sparse = [video_tower_macs(config, frames) for frames in (16, 32, 64)]
    dense = [video_tower_macs(config, frames, use_sparse_attention=False) for frames in (16, 32, 64)]
    assert sparse[2] / sparse[1] == pytest.approx(2.0, rel=0.02)
    assert dense[2] / dense[1] > 3.0


def test_peers_are_counted_the_same_way():
    # VideoMAE with tubelet 1: SViTT's dense tower without its [CLS] token
    videomae = VideoMAEConfig(num_frames=8, tubelet_size=1)
    tokens, width = 8 * 196, 768
    assert videomae_macs(videomae) == 12 * (tokens * 12 * width**2 + 2 * tokens * tokens * width)
    assert videomae_macs(VideoMAEConfig(num_frames=8, tubelet_size=2)) < videomae_macs(videomae) / 2
    dense = SViTTVisionConfig(num_frames=8, use_sparse_attention=False, token_keep_rate=1.0)
    assert video_tower_macs(dense) / videomae_macs(videomae) == pytest.approx(1.0, abs=0.002)
    # TimeSformer, divided space-time: temporal attention over 8 frames per patch (q, k, v, out + temporal_dense),
    # spatial attention over 197 tokens per frame, feed-forward on 1 + 8 * 196 tokens
    timesformer = TimesformerConfig(num_frames=8)
    temporal = 196 * 8 * 5 * width**2 + 196 * 2 * 64 * width
    spatial = 8 * (197 * 4 * width**2 + 2 * 197**2 * width)
    assert timesformer_macs(timesformer) == 12 * (temporal + spatial + (1 + 8 * 196) * 2 * width * 3072)
    # divided attention grows linearly with frames at fixed size, dense attention quadratically
    assert timesformer_macs(timesformer, 64) / timesformer_macs(timesformer, 32) == pytest.approx(2.0, rel=0.01)
    assert videomae_macs(videomae, 64) / videomae_macs(videomae, 32) > 3.0
