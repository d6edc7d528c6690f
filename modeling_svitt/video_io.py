"""Video decoding for SViTT with PyAV: sample frame positions, then decode only those frames by seeking.

The release read videos with decord (random access) and had a PyAV fallback that decoded every frame of the file.
Here the frames a clip needs are computed first, on a uniform time grid; the reader asks the demuxer which keyframe
each of them follows, decodes every group of pictures that holds a wanted frame once, and seeks only to skip the
groups in between. Taking 4 frames thus costs a few groups of pictures, not the length of the video, and never
more than one sequential pass (a file with a single keyframe is read once, from its start).

Frame grid and policies (documented choices, shared by every sampling strategy):

* A video is seen as `num_frames` positions on a uniform time grid from its first frame to its end
  (`step = duration / num_frames`, i.e. `1 / fps` for constant-frame-rate video). Position `i` is the frame shown at
  `start_time + i * step`: exact for constant frame rate, and the frame on screen at that instant for
  variable-frame-rate video (where "the i-th decoded frame" would not be evenly spaced in time).
* When the container does not store a frame count, it is estimated from duration x average frame rate, or counted
  from the packets (demuxing only, no decoding) when the duration is missing too. Streams that cannot seek, or whose
  frames carry no timestamps (raw elementary streams such as `.h264`), are read from the start, frames placed by
  their count. So are streams whose seeks land after the target or on nothing (MPEG-TS, seeked by byte estimates):
  a seek is trusted only when the first frame it gives is at or before the target (or is the stream's first frame).
* A video with fewer frames than requested gives as many distinct frames as it has and repeats the last one to reach
  the requested count (the release's policy), so a clip always has exactly `num_frames` frames.
* If the stream ends before a requested position (a header that overstates the length a little), the last decodable
  frame is used; a stream that ends more than `max(1 s, 10 %)` short of its declared duration is reported as
  truncated, and a file with no decodable frame at all raises [`VideoDecodingError`].
* A still image (JPEG, PNG, ... that FFmpeg can read) is a one-frame video.

Opening a file and reading what its container declares live in `video_container.py`; the read planning (which frames
to decode, where to seek) in `video_seeking.py`. `av` is imported inside the functions that need it, so importing
this module (and the model package) never requires PyAV.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

from .video_container import (
    VideoDecodingError,
    VideoMetadata,
    VideoNotFoundError,
    VideoSegmentError,
    VideoSource,
    import_av,
    open_container,
    probe_container,
    video_source,
)
from .video_seeking import decode_positions

SAMPLING_STRATEGIES = ("rand", "rand_release", "middle", "uniform", "fps<X>")
CLIP_LAYOUTS = ("consecutive", "strided")
_FPS_PATTERN = re.compile(r"^fps(\d+(?:\.\d*)?|\.\d+)$")


def is_sampling_strategy(sample: str) -> bool:
    """Whether `sample` names a frame sampling strategy of [`sample_frame_indices`] (`fps<X>` with X > 0)."""
    if not isinstance(sample, str):
        return False
    fps_match = _FPS_PATTERN.match(sample)
    if fps_match:
        return float(fps_match.group(1)) > 0
    return sample in SAMPLING_STRATEGIES[:-1]


@dataclass
class DecodedVideo:
    """
    Frames read from a video.

    Attributes:
        frames (`torch.Tensor`): `uint8` RGB frames, `(num_frames, 3, H, W)`, or `(num_clips, num_frames, 3, H, W)` when
            `num_clips` was passed to [`read_video`].
        frame_indices (`list[int]`): grid position of every frame, in the order of `frames` (flattened over clips).
        timestamps (`list[float]`): presentation time in seconds of every decoded frame, same order.
        metadata ([`VideoMetadata`]): what was known about the file.
    """

    frames: torch.Tensor
    frame_indices: list[int]
    timestamps: list[float]
    metadata: VideoMetadata = field(repr=False)


def _segment_bounds(num_frames: int, num_available: int) -> np.ndarray:
    # The release splits [0, vlen) into n equal integer segments with these boundaries.
    return np.linspace(0, num_available, num_frames + 1).astype(int)


def _pad_with_last(indices: list[int], num_frames: int) -> list[int]:
    return indices + [indices[-1]] * (num_frames - len(indices))


def sample_frame_indices(
    num_frames: int,
    num_available: int,
    sample: str = "middle",
    *,
    input_fps: float | None = None,
    max_num_frames: int | None = None,
    generator: torch.Generator | None = None,
) -> list[int]:
    """
    Choose which frame positions of a video to read (the release's `get_frame_indices`).

    `rand` and `middle` split `[0, num_available)` into `n = min(num_frames, num_available)` segments with integer
    boundaries `linspace(0, num_available, n + 1)`; `rand` takes a uniformly random frame of each segment (training),
    `middle` its middle frame `(start + end - 1) // 2` (evaluation). `uniform` takes `n` evenly spaced frames from
    the first to the last, both included. `fps<X>` (e.g. `fps0.5`) takes one frame every `1 / X` seconds, at the
    centre of each interval, up to `max_num_frames`; it ignores `num_frames`.

    Whenever fewer than `num_frames` positions exist, the last one is repeated (see the module docstring).

    Note: the release's `rand` never picks the last frame of a segment and switches to a sorted random permutation of
    all frames when a segment is too short for that; here every frame of the segment can be drawn, which keeps the
    same per-segment layout. `rand_release` reproduces the release's draw exactly (its statistics, for parity).

    Args:
        num_frames (`int`): frames wanted.
        num_available (`int`): positions on the video's frame grid.
        sample (`str`): one of `rand`, `rand_release`, `middle`, `uniform` or `fps<X>`.
        input_fps (`float`, *optional*): frame rate of the video; required by `fps<X>`.
        max_num_frames (`int`, *optional*): cap on the number of frames `fps<X>` returns.
        generator (`torch.Generator`, *optional*): source of randomness for `rand` (reproducible sampling).

    Returns:
        `list[int]`: sorted positions (`num_frames` of them, except for `fps<X>`).
    """
    if num_available < 1:
        raise ValueError(f"A video needs at least one frame to sample from, got num_available={num_available}.")
    fps_match = _FPS_PATTERN.match(sample)
    if fps_match:
        if input_fps is None or input_fps <= 0:
            raise ValueError(f"Sampling strategy {sample!r} needs the video's frame rate (`input_fps`).")
        output_fps = float(fps_match.group(1))
        if output_fps <= 0:
            raise ValueError(f"Sampling strategy {sample!r} needs a positive frame rate.")
        duration, delta = num_available / input_fps, 1.0 / output_fps
        seconds = np.arange(delta / 2, duration + delta / 2, delta)
        indices = [int(i) for i in np.around(seconds * input_fps) if i < num_available]
        if max_num_frames is not None and max_num_frames > 0:
            indices = indices[:max_num_frames]
        # A video shorter than half a sampling interval still yields its middle frame rather than nothing.
        return indices or [(num_available - 1) // 2]

    if num_frames < 1:
        raise ValueError(f"`num_frames` must be >= 1, got {num_frames}.")
    count = min(num_frames, num_available)
    if sample == "uniform":
        indices = np.round(np.linspace(0, num_available - 1, count)).astype(int).tolist()
    elif sample == "rand_release":
        bounds = _segment_bounds(count, num_available)
        starts, last = bounds[:-1], bounds[1:] - 1  # the release draws from range(start, end - 1)
        if (last <= starts).any():
            permutation = torch.randperm(num_available, generator=generator)[:count]
            indices = permutation.sort().values.tolist()
        else:
            lengths = torch.as_tensor(last - starts, dtype=torch.float64)
            offsets = (torch.rand(count, generator=generator, dtype=torch.float64) * lengths).long()
            indices = (torch.as_tensor(starts) + offsets).tolist()
    elif sample in ("rand", "middle"):
        bounds = _segment_bounds(count, num_available)
        starts, ends = bounds[:-1], bounds[1:]  # segment j holds frames starts[j] .. ends[j] - 1
        if sample == "middle":
            indices = ((starts + ends - 1) // 2).tolist()
        else:
            lengths = torch.as_tensor(ends - starts, dtype=torch.float64)
            offsets = (torch.rand(count, generator=generator, dtype=torch.float64) * lengths).long()
            indices = (torch.as_tensor(starts) + offsets).tolist()
    else:
        raise ValueError(f"Unknown frame sampling strategy {sample!r}; expected one of {SAMPLING_STRATEGIES}.")
    return _pad_with_last(indices, num_frames)


def split_clips(frames: torch.Tensor, num_clips: int, layout: str = "consecutive", dim: int = 0) -> torch.Tensor:
    """
    Split `num_clips * T` frames into `num_clips` clips of `T` frames for test-time ensembling.

    `consecutive` (the release's default) makes clip `k` frames `k*T .. k*T + T - 1`; `strided` (the release's
    `eval_sparse_sampling`) makes it frames `k, k + K, k + 2K, ...`, so every clip spans the whole video.

    Args:
        frames (`torch.Tensor`): `(..., num_clips * T, ...)`, the frame axis at `dim`.
        num_clips (`int`): number of clips `K`.
        layout (`str`): `consecutive` or `strided`.
        dim (`int`, defaults to 0): the frame axis (1 for a batch of videos).

    Returns:
        `torch.Tensor`: the frame axis replaced by `(num_clips, T)`.
    """
    length = frames.shape[dim]
    if num_clips < 1 or length % num_clips:
        raise ValueError(f"Cannot split {length} frames into {num_clips} clips of equal length.")
    per_clip = length // num_clips
    before, after = frames.shape[:dim], frames.shape[dim + 1 :]
    if layout == "consecutive":
        return frames.reshape(*before, num_clips, per_clip, *after)
    if layout == "strided":
        return frames.reshape(*before, per_clip, num_clips, *after).transpose(dim, dim + 1).contiguous()
    raise ValueError(f"Unknown clip layout {layout!r}; expected one of {CLIP_LAYOUTS}.")


def probe_video(path: VideoSource) -> VideoMetadata:
    """
    Read a video's frame count, frame rate, duration and size without decoding any frame (`path`: a file, its bytes
    or a binary file object, as for [`read_video`]).

    Raises:
        [`VideoDecodingError`]: the file is missing, empty, not a video or unreadable (the message names it).
    """
    path = video_source(path)
    container = open_container(path)
    try:
        metadata = probe_container(container, path)
        metadata.path = os.fspath(metadata.path)
        return metadata
    finally:
        container.close()


def read_video(
    path: VideoSource,
    num_frames: int = 4,
    sample: str = "middle",
    *,
    num_clips: int | None = None,
    clip_layout: str = "consecutive",
    start: float | None = None,
    end: float | None = None,
    max_num_frames: int | None = None,
    generator: torch.Generator | None = None,
    seek_threshold: float = 1.0,
) -> DecodedVideo:
    """
    Decode the frames of a clip (or of several clips) from a video file, seeking instead of decoding everything.

    Args:
        path (`str`, `os.PathLike`, `bytes` or a binary file object): a video file, or an image file (read as a
            one-frame video); or its content in memory (e.g. a sample of a tar shard), as bytes or a binary file
            object (read into memory; its `name`, if it has one, names it in messages). Sampling and errors are the
            same whichever form the video takes.
        num_frames (`int`, defaults to 4): frames per clip.
        sample (`str`, defaults to `"middle"`): `rand` (training), `middle` (evaluation), `uniform` or `fps<X>`;
            see [`sample_frame_indices`].
        num_clips (`int`, *optional*): read `num_clips * num_frames` frames and return them split into clips with
            `clip_layout` (test-time ensembling, see [`split_clips`]); `frames` then has a leading clip axis.
        clip_layout (`str`, defaults to `"consecutive"`): `consecutive` or `strided`.
        start (`float`, *optional*), end (`float`, *optional*): restrict sampling to this time segment, in seconds
            from the start of the video (EgoClip clips). The segment is clipped to the video.
        max_num_frames (`int`, *optional*): cap for `fps<X>` sampling.
        generator (`torch.Generator`, *optional*): randomness for `rand`.
        seek_threshold (`float`, defaults to 1.0): for streams that do not tell where a seek lands (the reader asks
            the demuxer first, and seeks only where that skips frames), a target farther ahead than this many seconds
            is reached by seeking rather than by decoding forward (grows by itself for long keyframe intervals).

    Returns:
        [`DecodedVideo`]: `uint8` frames `(num_frames, 3, H, W)` (or `(num_clips, num_frames, 3, H, W)`), their grid
        positions and timestamps, and the file's metadata.

    Raises:
        [`VideoDecodingError`]: the file is missing, empty, truncated, corrupt or not a video, or the segment
            `[start, end]` starts after its end ([`VideoSegmentError`], also a `ValueError`); the message names it.
        `ValueError`: invalid arguments (unknown strategy, a negative or reversed segment).
    """
    path = video_source(path)
    if num_clips is not None and _FPS_PATTERN.match(sample):
        raise ValueError(f"Sampling strategy {sample!r} yields a variable frame count and cannot be split into clips.")
    container = open_container(path)
    try:
        metadata = probe_container(container, path)
        metadata.path = os.fspath(metadata.path)
        first, available = 0, metadata.num_frames
        if start is not None or end is not None:
            first, available = _segment_positions(metadata, start, end)
        wanted = num_frames * (num_clips or 1)
        local = sample_frame_indices(
            wanted, available, sample, input_fps=metadata.fps, max_num_frames=max_num_frames, generator=generator
        )
        indices = [first + i for i in local]
        positions = sorted(set(indices))
        if metadata.is_still_image:
            decoded = [_decode_first_frame(container, path)]
            decoded_times = [0.0]
        else:
            decoded, decoded_times = decode_positions(container, path, metadata, positions, seek_threshold)
    finally:
        container.close()

    by_position = dict(zip(positions, zip(decoded, decoded_times)))
    frames = torch.from_numpy(np.stack([by_position[i][0] for i in indices])).permute(0, 3, 1, 2).contiguous()
    if num_clips is not None:
        frames = split_clips(frames, num_clips, clip_layout)
        index_tensor = split_clips(torch.tensor(indices), num_clips, clip_layout)
        indices = index_tensor.flatten().tolist()
    return DecodedVideo(frames, indices, [by_position[i][1] for i in indices], metadata)


def _segment_positions(metadata: VideoMetadata, start: float | None, end: float | None) -> tuple[int, int]:
    """Grid positions `[first, first + count)` covering the time segment `[start, end]`."""
    start = 0.0 if start is None else float(start)
    end = metadata.duration if end is None else float(end)
    if start < 0 or end < start:
        raise ValueError(f"Invalid time segment [{start}, {end}] for '{metadata.path}'.")
    if metadata.is_still_image:
        return 0, 1
    end = min(end, metadata.duration)
    step = metadata.frame_step
    first = int(round(start / step))
    if first >= metadata.num_frames:
        raise VideoSegmentError(
            metadata.path,
            f"the time segment [{start}, {end}] starts after the end of the video (duration {metadata.duration:.3f} s)",
        )
    last = min(int(round(end / step)), metadata.num_frames)
    return first, max(1, last - first)


def _decode_first_frame(container, path: str) -> np.ndarray:
    av = import_av()
    try:
        for frame in container.decode(video=0):
            return frame.to_ndarray(format="rgb24")
    except (av.FFmpegError, ValueError) as error:
        raise VideoDecodingError(path, f"decoding failed ({error})") from error
    raise VideoDecodingError(path, "no frame could be decoded")


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | torch.Tensor | Iterable[np.ndarray],
    fps: float = 8.0,
    *,
    codec: str | None = None,
    keyframe_interval: int | None = None,
    crf: int | None = None,
    preset: str = "veryfast",
    threads: int | None = None,
) -> str:
    """
    Write RGB frames to a video file with PyAV (used for the synthetic data and the benchmarks).

    Args:
        path (`str` or `os.PathLike`): the output file; the container follows the extension (`.mp4`, `.mkv`, ...).
        frames: `uint8` RGB frames `(N, H, W, 3)`: a tensor, an array, or any iterable of `(H, W, 3)` arrays (a
            generator streams long videos without holding them in memory). Odd sizes are fine for `mpeg4` but H.264
            needs even ones.
        fps (`float`, defaults to 8): frame rate.
        codec (`str`, *optional*): encoder; defaults to `libx264` when available, else `mpeg4`.
        keyframe_interval (`int`, *optional*): frames between keyframes (the encoder's default when unset).
        crf (`int`, *optional*): H.264 constant rate factor (quality; lower is better).
        preset (`str`, defaults to `"veryfast"`): H.264 speed/size trade-off.
        threads (`int`, *optional*): encoder threads (the encoder's default when unset; 1 for byte-identical
            output across machines).

    Returns:
        `str`: the path written.
    """
    av = import_av()
    path = os.fspath(path)
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError(f"No frames to write to '{path}'.")
    height, width = np.shape(first)[:2]
    if codec is None:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if keyframe_interval is not None:
            stream.codec_context.gop_size = keyframe_interval
        if threads is not None:
            stream.codec_context.thread_count = threads
        if codec == "libx264":
            options = {"preset": preset}
            if crf is not None:
                options["crf"] = str(crf)
            # Macroblock-tree rate control makes x264's output differ from run to run on identical input (measured
            # with the bundled build); without it, the same frames always give the same bytes.
            params = ["mbtree=0"]
            if keyframe_interval is not None:
                # Fixed interval: x264 would otherwise add keyframes at scene cuts and stretch the interval.
                params += [f"keyint={keyframe_interval}", f"min-keyint={keyframe_interval}", "scenecut=0"]
            options["x264-params"] = ":".join(params)
            stream.codec_context.options = options
        for index, array in enumerate(itertools.chain([first], frames)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array, dtype=np.uint8), format="rgb24")
            frame.pts, frame.time_base = index, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


__all__ = [
    "CLIP_LAYOUTS",
    "SAMPLING_STRATEGIES",
    "DecodedVideo",
    "VideoDecodingError",
    "VideoMetadata",
    "VideoNotFoundError",
    "VideoSegmentError",
    "is_sampling_strategy",
    "probe_video",
    "read_video",
    "sample_frame_indices",
    "split_clips",
    "write_video",
]
