"""3-D relative position bias of the SViTT video tower.

Tokens are addressed by *original position*, so pruning never invalidates a lookup:
a patch token carries `n = t * P * P + h * P + w` (frame-major raster order) and global token `i`
carries the negative position `-(i + 1)`. A zero-padded slot of a block-sparse layout carries -1,
i.e. it is looked up as the first global token, which is what the release does.

Table layout (rows x heads), with `R = (2T-1, 2P-1, 2P-1)` relative extents and `num_global` global tokens:
rows `0 .. L-1` with `L = (2T-1)(2P-1)^2` hold patch->patch offsets (temporal offset most
significant); then `num_global` rows global_i->patch, `num_global` rows patch->global_j and `num_global**2` rows
global_i->global_j. For `num_global = 1` and `T = 1` this is exactly HF BEiT's 2-D table (732 rows at 224 px).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def relative_position_table_rows(num_frames: int, patches_per_side: int, num_global_tokens: int = 1) -> int:
    spatial = (2 * patches_per_side - 1) ** 2
    return (2 * num_frames - 1) * spatial + 2 * num_global_tokens + num_global_tokens**2


def global_token_positions(num_global_tokens: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Positions of the global tokens, `-1, -2, ..., -num_global_tokens` (patch tokens carry their raster position
    `0, 1, ...`)."""
    return -torch.arange(1, num_global_tokens + 1, device=device)


def with_global_positions(positions: torch.Tensor, num_global_tokens: int) -> torch.Tensor:
    """`(P, n)` patch positions -> `(P, num_global_tokens + n)` positions of the whole sequence, global tokens first."""
    glob = global_token_positions(num_global_tokens, positions.device).expand(positions.shape[0], -1)
    return torch.cat([glob, positions], dim=1)


def relative_position_codes(positions: torch.Tensor, patches_per_side: int) -> torch.Tensor:
    """Code `t * E^2 + h * E + w` (`E = 2P - 1`) of patch positions, so that the table row of a patch pair is a plain
    difference: `code(q) - code(k) + patch_offset_centre(...)` (no per-pair division)."""
    side = patches_per_side
    extent = 2 * side - 1
    frame, within = positions.div(side * side, rounding_mode="floor"), positions.remainder(side * side)
    row, column = within.div(side, rounding_mode="floor"), within.remainder(side)
    return (frame * extent + row) * extent + column


def patch_offset_centre(num_frames: int, patches_per_side: int) -> int:
    """Table row of the zero offset between two patches (the constant of the code difference)."""
    extent = 2 * patches_per_side - 1
    return ((num_frames - 1) * extent + patches_per_side - 1) * extent + patches_per_side - 1


def relative_position_index(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    num_frames: int,
    patches_per_side: int,
    num_global_tokens: int = 1,
) -> torch.Tensor:
    """Row of the bias table for every (query, key) pair; positions broadcast against each other."""
    num_local = relative_position_table_rows(num_frames, patches_per_side, 0)
    num_global = num_global_tokens
    query_is_global = query_positions < 0
    key_is_global = key_positions < 0
    query_codes = relative_position_codes(query_positions.clamp(min=0), patches_per_side)
    key_codes = relative_position_codes(key_positions.clamp(min=0), patches_per_side)
    index = query_codes - key_codes + patch_offset_centre(num_frames, patches_per_side)

    global_query = -query_positions - 1
    global_key = -key_positions - 1
    index = torch.where(query_is_global & ~key_is_global, num_local + global_query, index)
    index = torch.where(~query_is_global & key_is_global, num_local + num_global + global_key, index)
    global_pair_rows = num_local + 2 * num_global + global_query * num_global + global_key
    index = torch.where(query_is_global & key_is_global, global_pair_rows, index)
    return index


class SViTTRelativePositionBias3D(nn.Module):
    """One learnable table per layer; `forward(q_pos, k_pos)` gathers the bias of every pair as `(..., heads)`."""

    def __init__(self, num_frames: int, patches_per_side: int, num_heads: int, num_global_tokens: int = 1) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.patches_per_side = patches_per_side
        self.num_global_tokens = num_global_tokens
        rows = relative_position_table_rows(num_frames, patches_per_side, num_global_tokens)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))

    @property
    def num_patch_rows(self) -> int:
        """Rows of patch->patch offsets; the global-token rows follow them."""
        return relative_position_table_rows(self.num_frames, self.patches_per_side, 0)

    @property
    def centre(self) -> int:
        return patch_offset_centre(self.num_frames, self.patches_per_side)

    def codes(self, positions: torch.Tensor) -> torch.Tensor:
        return relative_position_codes(positions, self.patches_per_side)

    def index(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        return relative_position_index(
            query_positions, key_positions, self.num_frames, self.patches_per_side, self.num_global_tokens
        )

    def forward(self, query_positions: torch.Tensor, key_positions: torch.Tensor) -> torch.Tensor:
        return self.relative_position_bias_table[self.index(query_positions, key_positions)]

    def pair_bias(self, index: torch.Tensor) -> torch.Tensor:
        """Bias of precomputed table rows `index (P, Lq, Lk)` as `(P, heads, Lq, Lk)`, the layout attention adds."""
        by_head = self.relative_position_bias_table.t().contiguous()
        return by_head.index_select(1, index.flatten()).view(-1, *index.shape).transpose(0, 1)


def _split_table(table: torch.Tensor, spatial_rows: int, num_global_tokens: int):
    num_special = 2 * num_global_tokens + num_global_tokens**2
    local, special = table[:-num_special], table[-num_special:]
    if local.shape[0] % spatial_rows:
        raise ValueError(
            f"A relative-position table of {table.shape[0]} rows does not hold whole temporal slices of "
            f"{spatial_rows} spatial rows plus {num_special} global rows."
        )
    return local.reshape(-1, spatial_rows, table.shape[-1]), special


def inflate_relative_position_bias_table(
    table_2d: torch.Tensor, num_frames: int, num_global_tokens: int = 1
) -> torch.Tensor:
    """BEiT 2-D table (`(2P-1)^2 + 3` rows) -> 3-D table for `num_frames`, identical for every temporal offset.

    The 2-D table has one [CLS]; with several global tokens its three [CLS] rows are repeated for each.
    """
    spatial_rows = table_2d.shape[0] - 3
    side = (int(round(spatial_rows**0.5)) + 1) // 2
    if (2 * side - 1) ** 2 != spatial_rows:
        raise ValueError(f"{table_2d.shape[0]} rows is not a BEiT 2-D relative-position table ((2P-1)^2 + 3 rows).")
    spatial, (cls_to_token, token_to_cls, cls_to_cls) = table_2d[:spatial_rows], table_2d[spatial_rows:]
    num_global = num_global_tokens
    special = torch.cat(
        [
            cls_to_token.expand(num_global, -1),
            token_to_cls.expand(num_global, -1),
            cls_to_cls.expand(num_global * num_global, -1),
        ],
        dim=0,
    )
    return torch.cat([spatial.repeat(2 * num_frames - 1, 1), special], dim=0)


def resample_relative_position_bias_table(
    table: torch.Tensor,
    num_frames: int,
    new_num_frames: int,
    patches_per_side: int,
    num_global_tokens: int = 1,
    mode: str = "nearest",
) -> torch.Tensor:
    """Resize the temporal-offset axis of a 3-D table from `2T-1` to `2T'-1` offsets (curriculum stages).

    `nearest` reproduces the release (`F.interpolate(mode="nearest")`: new offset i takes old offset
    `floor(i * (2T-1) / (2T'-1))`, which is asymmetric). `linear` interpolates with aligned end points, so the
    largest offsets map onto each other and the result stays symmetric.
    """
    spatial_rows = (2 * patches_per_side - 1) ** 2
    slices, special = _split_table(table, spatial_rows, num_global_tokens)
    if slices.shape[0] != 2 * num_frames - 1:
        raise ValueError(
            f"The table holds {slices.shape[0]} temporal offsets, expected {2 * num_frames - 1} for {num_frames} frames."
        )
    if new_num_frames == num_frames:
        return table.clone()
    heads = table.shape[-1]
    # (offsets, spatial, heads) -> (spatial * heads, 1, offsets): interpolate along the offsets only.
    series = slices.permute(1, 2, 0).reshape(spatial_rows * heads, 1, -1)
    if mode == "nearest":
        resized = F.interpolate(series, size=2 * new_num_frames - 1, mode="nearest")
    elif mode == "linear":
        resized = F.interpolate(series, size=2 * new_num_frames - 1, mode="linear", align_corners=True)
    else:
        raise ValueError(f"Unknown temporal interpolation mode {mode!r}; use 'nearest' or 'linear'.")
    resized = resized.reshape(spatial_rows, heads, -1).permute(2, 0, 1).reshape(-1, heads)
    return torch.cat([resized, special], dim=0)


# Preferred frame offset (query frame - key frame) of head h, by h modulo 4: the previous frame, the next frame, the
# same frame, none.
_MOTION_HEAD_OFFSETS = (1, -1, 0, None)


@torch.no_grad()
def init_relative_bias_for_motion(vision_model: torch.nn.Module, temporal: float, spatial_decay: float) -> None:
    """Start a fresh video tower able to see motion.

    Without position embeddings its only position signal is the relative-position bias, which starts at zero: every
    head then mixes all frames alike, a clip and its time reversal encode almost the same, and contrastive training
    stays at that symmetric point for hundreds of steps (the captions of a clip and of its reversal barely differ
    either, so neither tower pulls the other away from it). Here every head prefers nearby patches (`-spatial_decay`
    per patch of distance) and, by head index, the same place in the previous frame, the next frame or the same frame
    (`+temporal`, see `_MOTION_HEAD_OFFSETS`): comparing a patch with its neighbour in time is what reveals a
    direction of motion. The global-token entries stay at zero."""
    config = vision_model.config
    frames, side = config.num_frames, config.patches_per_side
    offsets_t = torch.arange(1 - frames, frames)[:, None, None]
    offsets_h = torch.arange(1 - side, side)[None, :, None]
    offsets_w = torch.arange(1 - side, side)[None, None, :]
    spatial = -spatial_decay * (offsets_h.abs() + offsets_w.abs()).float().expand(2 * frames - 1, -1, -1)
    for layer in vision_model.encoder.layer:
        table = layer.attention.attention.relative_position_bias.relative_position_bias_table
        heads = []
        for head in range(table.shape[1]):
            preferred = _MOTION_HEAD_OFFSETS[head % len(_MOTION_HEAD_OFFSETS)]
            temporal_bias = 0.0 if preferred is None else temporal * (offsets_t == preferred).float()
            heads.append((spatial + temporal_bias).reshape(-1))
        local = torch.stack(heads, dim=1)
        table[: local.shape[0]] = local.to(table.dtype)


__all__ = [
    "SViTTRelativePositionBias3D",
    "global_token_positions",
    "init_relative_bias_for_motion",
    "inflate_relative_position_bias_table",
    "relative_position_codes",
    "relative_position_index",
    "relative_position_table_rows",
    "resample_relative_position_bias_table",
    "with_global_positions",
]
