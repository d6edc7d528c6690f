"""Opening a video with PyAV, and what its container declares (frame count, rate, duration, size) before any frame is
decoded; the errors every reader raises, naming the file.

`av` is imported inside the functions that need it ([`import_av`]), so importing this module never requires PyAV.
"""

from __future__ import annotations

import gc
import io
import os
from dataclasses import dataclass

# Still images come through FFmpeg's image demuxers.
_IMAGE_FORMATS = ("image2", "image2pipe")


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


def import_av():
    """The `av` module, with the collection before a fork registered (see `_collect_decoders_before_fork`)."""
    # Kept inside a try block so that Hub remote-code import checks do not demand PyAV for the whole package.
    try:
        import av
    except ImportError as error:
        raise ImportError("Decoding videos needs PyAV (`pip install av`).") from error
    _collect_decoders_before_fork()
    return av


def _collect_decoders_before_fork() -> None:
    """A decoder or scaler caught in a reference cycle (the readers here free theirs at once, but code that holds PyAV
    objects may not) outlives its video, with FFmpeg's thread pool, until the garbage collector runs. A process forked
    meanwhile (a data loader starting its workers) inherits it without the pool's threads, and the first collection
    there hangs for ever freeing it. So a process that decodes collects its garbage before it forks, while the
    threads still exist."""
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


class InMemoryVideo(os.PathLike):
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


def video_source(source: VideoSource) -> str | InMemoryVideo:
    """A path as a string, or in-memory data (bytes, or what a binary file object holds, read once: the reader may
    open the video twice) named by the file object's `name` or `<in-memory video>`."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return InMemoryVideo(bytes(source), "<in-memory video>")
    if hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, bytes):
            raise TypeError(f"read_video needs a binary file object; {source!r} gives {type(data).__name__}.")
        return InMemoryVideo(data, str(getattr(source, "name", "<in-memory video>")))
    raise TypeError(f"A video is a path, bytes or a binary file object, got {type(source).__name__}.")


def open_container(path: str | InMemoryVideo):
    """A PyAV input container at the start of the video (the caller closes it), or [`VideoDecodingError`] naming the
    file: missing, a folder, empty, unreadable, or without a video stream."""
    av = import_av()
    if isinstance(path, InMemoryVideo):
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
    container = open_container(path)
    try:
        return sum(1 for packet in container.demux(container.streams.video[0]) if packet.size > 0)
    finally:
        container.close()


def probe_container(container, path: str) -> VideoMetadata:
    """What `container` (opened from `path`) declares about its first video stream, estimated where it is silent
    (see `video_io`'s module docstring); decodes nothing."""
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


__all__ = [
    "InMemoryVideo",
    "VideoDecodingError",
    "VideoMetadata",
    "VideoNotFoundError",
    "VideoSegmentError",
    "VideoSource",
    "import_av",
    "open_container",
    "probe_container",
    "video_source",
]
