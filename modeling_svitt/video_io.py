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

`av` is imported inside the functions that need it, so importing this module (and the model package) never
requires PyAV.
"""

from __future__ import annotations

import bisect
import gc
import io
import itertools
import math
import os
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import torch

SAMPLING_STRATEGIES = ("rand", "rand_release", "middle", "uniform", "fps<X>")
CLIP_LAYOUTS = ("consecutive", "strided")
_FPS_PATTERN = re.compile(r"^fps(\d+(?:\.\d*)?|\.\d+)$")
# Still images come through FFmpeg's image demuxers.
_IMAGE_FORMATS = ("image2", "image2pipe")
# Packets whose times are compared with a new one: decoding order differs from display order by at most the decoder's
# reorder depth (16 pictures in H.264 / HEVC).
_REORDER_WINDOW = 16


def is_sampling_strategy(sample: str) -> bool:
    """Whether `sample` names a frame sampling strategy of [`sample_frame_indices`] (`fps<X>` with X > 0)."""
    if not isinstance(sample, str):
        return False
    fps_match = _FPS_PATTERN.match(sample)
    if fps_match:
        return float(fps_match.group(1)) > 0
    return sample in SAMPLING_STRATEGIES[:-1]


class VideoDecodingError(OSError):
    """A video (or image) file could not be opened or decoded. The message and `path` name the file."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"Cannot decode video file '{self.path}': {reason}")

    def __reduce__(self):
        # Keeps the exception picklable across DataLoader worker processes.
        return (type(self), (self.path, self.reason))


class VideoNotFoundError(VideoDecodingError, FileNotFoundError):
    """The video file does not exist."""


class VideoSegmentError(VideoDecodingError, ValueError):
    """
    The requested time segment lies outside the video: a clip annotation that does not fit its file (e.g. an Ego4D
    narration past the end of a shorter-than-declared video). Datasets skip and count it like an unreadable file.
    """


_collects_before_fork = False


def _import_av():
    # Kept inside a try block so that Hub remote-code import checks do not demand PyAV for the whole package.
    try:
        import av
    except ImportError as error:
        raise ImportError("Decoding videos needs PyAV (`pip install av`).") from error
    _collect_decoders_before_fork()
    return av


def _collect_decoders_before_fork() -> None:
    """PyAV's containers, streams and frames form reference cycles, so a decoder or scaler (with FFmpeg's thread pool)
    outlives its video until the garbage collector runs. A process forked meanwhile (a data loader starting its
    workers) inherits it without the pool's threads, and the first collection there hangs for ever freeing it. So a
    process that decodes collects its garbage before it forks, while the threads still exist."""
    global _collects_before_fork
    if not _collects_before_fork and hasattr(os, "register_at_fork"):
        os.register_at_fork(before=gc.collect)
        _collects_before_fork = True


@dataclass
class VideoMetadata:
    """
    What the reader knows about a video before decoding it.

    Attributes:
        path (`str`): the file.
        num_frames (`int`): positions on the frame grid (the container's frame count, or an estimate).
        fps (`float`): average frame rate.
        duration (`float`): seconds from the first frame to the end of the last one.
        start_time (`float`): presentation time of the first frame, in seconds.
        width (`int`), height (`int`): frame size in pixels.
        num_frames_is_estimate (`bool`): `num_frames` was not stored in the container.
        is_still_image (`bool`): the file is an image, read as a one-frame video.
    """

    path: str
    num_frames: int
    fps: float
    duration: float
    start_time: float
    width: int
    height: int
    num_frames_is_estimate: bool = False
    is_still_image: bool = False

    @property
    def frame_step(self) -> float:
        """Seconds between two positions of the frame grid."""
        return self.duration / self.num_frames


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


class _InMemoryVideo(os.PathLike):
    """A video held in memory (the bytes of a file, e.g. a sample of a tar shard), opened like a file: every open
    starts at its first byte. `os.fspath` gives the name that messages use."""

    def __init__(self, data: bytes, name: str):
        self.data, self.name = data, name

    def open(self) -> io.BytesIO:
        return io.BytesIO(self.data)

    def __fspath__(self) -> str:
        return self.name

    __str__ = __fspath__


VideoSource = str | os.PathLike | bytes | bytearray | memoryview | io.RawIOBase | io.BufferedIOBase


def _video_source(source: VideoSource) -> str | _InMemoryVideo:
    """A path as a string, or in-memory data (bytes, or what a binary file object holds, read once: the reader may
    open the video twice) named by the file object's `name` or `<in-memory video>`."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _InMemoryVideo(bytes(source), "<in-memory video>")
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes):
            raise TypeError(f"read_video needs a binary file object; {source!r} gives {type(data).__name__}.")
        return _InMemoryVideo(data, str(getattr(source, "name", "<in-memory video>")))
    raise TypeError(f"A video is a path, bytes or a binary file object, got {type(source).__name__}.")


def _open(path: str | _InMemoryVideo):
    av = _import_av()
    if isinstance(path, _InMemoryVideo):
        if not path.data:
            raise VideoDecodingError(path, "the data is empty")
        source = path.open()
    else:
        if not os.path.exists(path):
            raise VideoNotFoundError(path, "the file does not exist")
        if os.path.isdir(path):
            raise VideoDecodingError(path, "this is a directory, not a video file")
        if os.path.getsize(path) == 0:
            raise VideoDecodingError(path, "the file is empty")
        source = path
    try:
        container = av.open(source, metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as error:
        raise VideoDecodingError(path, f"not a readable video or image ({error})") from error
    if not container.streams.video:
        container.close()
        raise VideoDecodingError(path, "the file has no video stream")
    return container


def _count_packets(path: str) -> int:
    # Demuxing reads packets without decoding them: cheap, and only used when the container stores neither a frame
    # count nor a duration. A separate container, because such streams often cannot seek back.
    container = _open(path)
    try:
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size > 0)
    finally:
        container.close()


def _probe(container, path: str) -> VideoMetadata:
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if container.format.name in _IMAGE_FORMATS or container.format.name.endswith("_pipe"):
        return VideoMetadata(path, 1, 1.0, 1.0, 0.0, width, height, is_still_image=True)

    time_base = stream.time_base
    start_time = float(stream.start_time * time_base) if stream.start_time is not None and time_base else 0.0
    duration = None
    if stream.duration is not None and time_base:
        duration = float(stream.duration * time_base)
    elif container.duration is not None:
        duration = container.duration / 1_000_000  # AV_TIME_BASE
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else None

    num_frames, estimated = int(stream.frames or 0), False
    if num_frames <= 0:
        estimated = True
        if duration and fps:
            num_frames = max(1, round(duration * fps))
        else:
            num_frames = _count_packets(path)
    if num_frames <= 0:
        raise VideoDecodingError(path, "the video stream holds no frames")
    if not duration or duration <= 0:
        duration = num_frames / fps if fps else float(num_frames)
    if not fps:
        fps = num_frames / duration
    return VideoMetadata(path, num_frames, fps, duration, start_time, width, height, estimated)


def probe_video(path: VideoSource) -> VideoMetadata:
    """
    Read a video's frame count, frame rate, duration and size without decoding any frame (`path`: a file, its bytes
    or a binary file object, as for [`read_video`]).

    Raises:
        [`VideoDecodingError`]: the file is missing, empty, not a video or unreadable (the message names it).
    """
    path = _video_source(path)
    container = _open(path)
    try:
        metadata = _probe(container, path)
        metadata.path = os.fspath(metadata.path)
        return metadata
    finally:
        container.close()


class _SeekingFrameReader:
    """
    Returns, for increasing target times, the frame on screen at each target, decoding as little as possible.

    Before decoding, [`~_SeekingFrameReader.landing_times`] asks the demuxer where a seek for each target would land
    (the keyframe at or before it: one seek and one packet read, no decoding). A target is then reached by seeking
    only when that keyframe lies after the decoder's position, so that the seek skips frames; otherwise the reader
    decodes forward through the group of pictures it is in. Every group is thus decoded at most once, from its start
    or from where the decoder already is, and the reader never decodes more than one sequential pass would.

    Where a stream does not tell where its seeks land, a target farther ahead than `seek_threshold` seconds is reached
    by seeking; when such a seek lands on a keyframe the decoder had already passed, the threshold grows to that
    interval, so later targets are not decoded twice.

    Between targets the decoder skips the pictures that no other picture refers to (B-frames, mostly: about half of
    the frames of an H.264 stream with B-frames) when a frame already demuxed is known to replace them on screen before
    the next target. Skipping them changes no other frame: nothing is predicted from them.

    Frames travel as `(frame, seconds)` pairs. With `sequential=(start_time, frame_step)` the reader never seeks (for
    streams that cannot, given a container opened at their start) and places frames without timestamps (raw
    elementary streams) by their count: frame `i` at `start_time + i * frame_step`.
    """

    def __init__(self, container, stream, seek_threshold: float, sequential: tuple[float, float] | None = None):
        self.container, self.stream = container, stream
        self.time_base = stream.time_base
        # Seconds per timestamp tick as a float: `Fraction` arithmetic on every decoded frame costs ~5% of decoding.
        self.tick = float(self.time_base) if self.time_base else None
        self.seek_threshold = math.inf if sequential is not None else seek_threshold
        self.sequential = sequential
        # Presentation time of the stream's first frame: the only frame a correct seek may return after its target.
        self.first_time = float(stream.start_time * self.time_base) if stream.start_time is not None else None
        self._frames = None
        self._decoded = 0
        self._targets: list[float] = []  # every target, sorted (known once `landing_times` ran)
        self._recent = deque(maxlen=_REORDER_WINDOW)  # times of the packets demuxed last, in decoding order
        self._skipping = False
        self._fed_until = -math.inf  # latest packet time given to the decoder since the last seek
        self._previous = None  # last (frame, seconds) at or before the current target
        self._pending = None  # first (frame, seconds) after the current target, kept for the next one
        self.ended = False  # the stream ran out before a target: `frame_at` returned the last decodable frame

    def close(self) -> None:
        """Let go of the decoding generator and the frames held. The generator refers to the reader, so until then the
        two form a cycle that keeps the stream's decoder, with FFmpeg's threads and frame buffers, alive until the
        garbage collector runs: a data-loader worker carried hundreds of them."""
        if self._frames is not None:
            self._frames.close()
        self._frames = self._previous = self._pending = None

    def _seek_container(self, seconds: float) -> None:
        av = _import_av()
        offset = int(math.floor(seconds / self.time_base)) if self.time_base else 0
        try:
            self.container.seek(max(offset, 0), stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError as error:
            raise _NeedsSequentialReading() from error

    def landing_times(self, targets: list[float]) -> list[float | None]:
        """
        For each target time, the presentation time of the packet a seek for it lands on (the keyframe at or before
        it), or `None` where the demuxer does not say. Demuxes one packet per target and decodes nothing.
        """
        if self.sequential is not None:
            return [None] * len(targets)
        av = _import_av()
        self._targets = sorted(targets)
        landings = []
        for target in targets:
            self._seek_container(target)
            try:
                packet = next(self.container.demux(self.stream), None)
            except av.FFmpegError:
                packet = None
            timestamp = None if packet is None else packet.pts if packet.pts is not None else packet.dts
            landings.append(timestamp * self.tick if timestamp is not None and self.tick else None)
        self._frames = None  # the demuxer was moved: decoding starts with a seek
        self._previous = self._pending = None
        return landings

    def _seek(self, seconds: float) -> None:
        if self.sequential is not None:
            if self._frames is None:
                self._frames = self.container.decode(self.stream)
            return
        self._seek_container(seconds)
        self._frames = self._decode_from_demuxer()
        self._decoded = 0
        self._previous = self._pending = None

    def _decode_from_demuxer(self):
        """`container.decode(stream)`, deciding for each packet whether its picture may be skipped if unreferenced."""
        codec = self.stream.codec_context
        self._recent.clear()
        self._fed_until = -math.inf
        for packet in self.container.demux(self.stream):
            seconds = packet.pts * self.tick if packet.pts is not None and self.tick else None
            skip = seconds is not None and self._replaced_before_next_target(seconds)
            if skip != self._skipping:
                codec.skip_frame = "NONREF" if skip else "DEFAULT"
                self._skipping = skip
            if seconds is not None:
                self._recent.append(seconds)
                self._fed_until = max(self._fed_until, seconds)
            yield from packet.decode()

    def _replaced_before_next_target(self, seconds: float) -> bool:
        """Whether a packet already demuxed shows after `seconds` and no later than the first target at or after it
        (so the picture at `seconds` is on screen at no target). Past the last target any later frame will do."""
        index = bisect.bisect_left(self._targets, seconds)
        if index == len(self._targets):
            return bool(self._targets)
        target = self._targets[index]
        return any(seconds < other <= target for other in self._recent)

    def _seek_to(self, target: float) -> None:
        """Seek for `target` and check where the seek landed (the frame it gives is kept as pending)."""
        self._seek(target)
        if self.sequential is not None:
            return
        first = self._next_frame()
        if first is not None and first[1] > target and (self.first_time is None or first[1] > self.first_time):
            # The demuxer went past the target (MPEG-TS seeks on byte estimates and can land seconds later, or on
            # nothing): the frames before the landing point are unreachable this way, so read from the start instead.
            raise _NeedsSequentialReading()
        self._pending = first

    def _next_frame(self):
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        frame = next(self._frames, None)
        if frame is None:
            return None
        if frame.pts is not None and self.tick:
            seconds = frame.pts * self.tick
        elif frame.time is not None:
            seconds = float(frame.time)
        elif self.sequential is not None:
            seconds = self.sequential[0] + self._decoded * self.sequential[1]
        else:
            raise _NeedsSequentialReading()
        self._decoded += 1
        return frame, seconds

    def frame_at(self, target: float, landing: float | None = None):
        """
        `(frame, seconds)` of the last frame shown at or before `target` seconds (or of the first after it).
        `landing` is where a seek for `target` would land (from [`landing_times`]), when known.
        """
        if self._frames is None:
            self._seek_to(target)
        else:
            current = self._pending if self._pending is not None else self._previous
            if current is None or self.sequential is not None:
                pass
            elif landing is not None:
                # Seek only past the frames already decoded, including those the decoder holds back to reorder them
                # (a keyframe just after the current frame is often decoded already); otherwise decode forward.
                if landing > max(current[1], self._fed_until):
                    self._seek_to(target)
            elif target - current[1] > self.seek_threshold:
                self._seek_to(target)
                if self._pending is not None and self._pending[1] <= current[1]:
                    # The seek went back into a keyframe interval already decoded: decode forward next time.
                    self.seek_threshold = max(self.seek_threshold, target - self._pending[1])
        while True:
            item = self._next_frame()
            if item is None:  # end of stream: the last decodable frame stands in
                self.ended = True
                return self._previous
            if item[1] <= target:
                self._previous = item
                continue
            self._pending = item
            return self._previous if self._previous is not None else item


class _NeedsSequentialReading(Exception):
    """The stream cannot seek, or its frames carry no timestamps (internal: read it from the start instead)."""


def _decode_positions(container, path: str, metadata: VideoMetadata, positions: list[int], seek_threshold: float):
    """Decode the frames at the given (sorted, unique) grid positions. Returns `(frames, timestamps)`."""
    av = _import_av()
    stream = container.streams.video[0]
    try:
        try:
            return _decode_with(_SeekingFrameReader(container, stream, seek_threshold), path, metadata, positions)
        except _NeedsSequentialReading:
            fresh = _open(path)  # a container at the very start, since this one may not seek back
            try:
                sequential = (metadata.start_time, metadata.frame_step)
                reader = _SeekingFrameReader(fresh, fresh.streams.video[0], math.inf, sequential=sequential)
                return _decode_with(reader, path, metadata, positions)
            finally:
                fresh.close()
    except (av.FFmpegError, ValueError) as error:
        raise VideoDecodingError(path, f"decoding failed ({error})") from error


def _decode_with(reader: _SeekingFrameReader, path: str, metadata: VideoMetadata, positions: list[int]):
    """The frames and timestamps at `positions`, read through `reader`; the reader in use at the end (`reader`, or one
    that took over at the end of the stream) is closed whatever happens (see [`~_SeekingFrameReader.close`])."""
    frames, timestamps = [], []
    # Half a step of slack picks frame i itself despite rounding in its timestamp.
    targets = [metadata.start_time + (position + 0.5) * metadata.frame_step for position in positions]
    try:
        for target, landing in zip(targets, reader.landing_times(targets)):
            item = reader.frame_at(target, landing)
            if item is None and reader.sequential is not None:
                raise VideoDecodingError(path, "no frame could be decoded")
            if item is None:
                # The seek found no data: the stream ends before `target`. Decode forward from the last frame obtained
                # (or the start) to find the last decodable one.
                reader.close()
                reader = _SeekingFrameReader(reader.container, reader.stream, math.inf)
                reader._seek_to(timestamps[-1] if timestamps else metadata.start_time)
                item = reader.frame_at(target)
                if item is None:
                    # Seeking found nothing even where frames were found before (or at the start): only reading from
                    # the start can tell an undecodable file from one whose seeks cannot be trusted.
                    raise _NeedsSequentialReading()
            # Whichever way the end of the stream was reached (a seek past it, or decoding forward into it), a last
            # frame far short of the target means the file is cut short.
            if reader.ended and target - item[1] > max(1.0, 0.1 * metadata.duration):
                raise VideoDecodingError(
                    path,
                    f"the video stream ends at {item[1]:.2f} s but the file declares {metadata.duration:.2f} s "
                    "(truncated?)",
                )
            frames.append(item[0].to_ndarray(format="rgb24"))
            timestamps.append(item[1])
    finally:
        reader.close()
    shapes = {frame.shape for frame in frames}
    if len(shapes) > 1:
        raise VideoDecodingError(path, f"frames change size mid-stream ({sorted(shapes)})")
    return frames, timestamps


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
    path = _video_source(path)
    if num_clips is not None and _FPS_PATTERN.match(sample):
        raise ValueError(f"Sampling strategy {sample!r} yields a variable frame count and cannot be split into clips.")
    container = _open(path)
    try:
        metadata = _probe(container, path)
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
            decoded, decoded_times = _decode_positions(container, path, metadata, positions, seek_threshold)
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
    av = _import_av()
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
    av = _import_av()
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
