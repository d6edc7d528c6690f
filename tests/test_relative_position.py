import torch
from transformers.models.beit.modeling_beit import BeitRelativePositionBias

from modeling_svitt.relative_position import (
    inflate_relative_position_bias_table,
    relative_position_index,
    relative_position_table_rows,
    resample_relative_position_bias_table,
)


def test_table_sizes_of_the_release():
    assert [relative_position_table_rows(t, 14) for t in (1, 4, 8, 16)] == [732, 5106, 10938, 22602]


def test_index_matches_the_closed_form_on_a_small_window():
    # window (2, 3, 3): query (t=1, h=0, w=0) = position 9 vs key (0, 0, 0): 2*25 + 2*5 + 2
    assert relative_position_index(torch.tensor(9), torch.tensor(0), num_frames=2, patches_per_side=3) == 62
    positions = torch.arange(18)
    index = relative_position_index(positions[:, None], positions[None, :], 2, 3)
    t, h, w = positions // 9, (positions % 9) // 3, positions % 3
    expected = (t[:, None] - t[None] + 1) * 25 + (h[:, None] - h[None] + 2) * 5 + (w[:, None] - w[None] + 2)
    assert torch.equal(index, expected)


def test_global_token_rows_follow_beit_order():
    cls, patch = torch.tensor(-1), torch.tensor(5)
    local = 729
    assert relative_position_index(cls, patch, 1, 14) == local  # cls -> token
    assert relative_position_index(patch, cls, 1, 14) == local + 1  # token -> cls
    assert relative_position_index(cls, cls, 1, 14) == local + 2  # cls -> cls
    # two global tokens: rows L..L+1 global->patch, L+2..L+3 patch->global, then global x global
    g0, g1 = torch.tensor(-1), torch.tensor(-2)
    assert relative_position_index(g1, patch, 1, 14, 2) == local + 1
    assert relative_position_index(patch, g1, 1, 14, 2) == local + 3
    assert relative_position_index(g1, g0, 1, 14, 2) == local + 4 + 2


def test_single_frame_index_equals_hf_beit():
    side = 4
    hf_index = BeitRelativePositionBias.generate_relative_position_index((side, side))
    # HF puts [CLS] at position 0; ours addresses it as -1 and patches from 0
    positions = torch.cat([torch.tensor([-1]), torch.arange(side * side)])
    ours = relative_position_index(positions[:, None], positions[None, :], 1, side)
    assert torch.equal(ours, hf_index)


def test_inflation_and_curriculum_resampling_match_the_release(original_fixture_dir):
    from safetensors.torch import load_file

    tensors = load_file(original_fixture_dir / "inflation.safetensors")
    assert torch.equal(inflate_relative_position_bias_table(tensors["table_2d"], 4), tensors["inflated_3d"])
    resampled = resample_relative_position_bias_table(tensors["table_3d_src"], 4, 8, patches_per_side=4)
    assert torch.equal(resampled, tensors["resampled_3d"])


def test_nearest_resampling_uses_the_release_mapping():
    spatial = 9  # 2x2 patches -> 3x3 offsets
    slices = torch.arange(7, dtype=torch.float)[:, None, None].expand(7, spatial, 1).reshape(-1, 1)
    table = torch.cat([slices, torch.full((3, 1), -1.0)])
    resampled = resample_relative_position_bias_table(table, 4, 8, patches_per_side=2)
    per_offset = resampled[:-3].reshape(15, spatial)[:, 0]
    assert per_offset.tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    assert torch.equal(resampled[-3:], table[-3:])


def test_linear_resampling_is_symmetric_and_keeps_end_points():
    table = torch.cat([torch.arange(7, dtype=torch.float).repeat_interleave(9)[:, None], torch.zeros(3, 1)])
    resampled = resample_relative_position_bias_table(table, 4, 8, patches_per_side=2, mode="linear")
    per_offset = resampled[:-3].reshape(15, 9)[:, 0]
    assert per_offset[0] == 0 and per_offset[-1] == 6 and per_offset[7] == 3
    torch.testing.assert_close(per_offset + per_offset.flip(0), torch.full((15,), 6.0))
