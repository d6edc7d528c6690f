"""Read planning: the frames at a few target times of a video, decoding as little as possible and never more than one
sequential pass (see [`SeekingFrameReader`]). [`decode_positions`] is what `video_io.read_video` calls once it has
chosen the frame positions of a clip.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

from .video_container import VideoDecodingError, VideoMetadata, import_av, open_container

# Packets whose times are compared with a new one: decoding order differs from display order by at most the decoder's
# reorder depth (16 pictures in H.264 / HEVC).
_REORDER_WINDOW = 16


class SeekingFrameReader:
    """
    Returns, for increasing target times, the frame on screen at each target, decoding as little as possible.

    Before decoding, [`~SeekingFrameReader.landing_times`] asks the demuxer where a seek for each target would land
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
        av = import_av()
        offset = int(math.floor(seconds / self.time_base)) if self.time_base else 0
        try:
            self.container.seek(max(offset, 0), stream=self.stream, backward=True, any_frame=False)
        except av.FFmpegError as error:
            raise NeedsSequentialReading() from error

    def landing_times(self, targets: list[float]) -> list[float | None]:
        """
        For each target time, the presentation time of the packet a seek for it lands on (the keyframe at or before
        it), or `None` where the demuxer does not say. Demuxes one packet per target and decodes nothing.
        """
        if self.sequential is not None:
            return [None] * len(targets)
        av = import_av()
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
            raise NeedsSequentialReading()
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
            raise NeedsSequentialReading()
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


class NeedsSequentialReading(Exception):
    """The stream cannot seek, or its frames carry no timestamps (internal: read it from the start instead)."""


def decode_positions(container, path: str, metadata: VideoMetadata, positions: list[int], seek_threshold: float):
    """Decode the frames at the given (sorted, unique) grid positions. Returns `(frames, timestamps)`."""
    av = import_av()
    stream = container.streams.video[0]
    try:
        try:
            return _decode_with(SeekingFrameReader(container, stream, seek_threshold), path, metadata, positions)
        except NeedsSequentialReading:
            fresh = open_container(path)  # a container at the very start, since this one may not seek back
            try:
                sequential = (metadata.start_time, metadata.frame_step)
                reader = SeekingFrameReader(fresh, fresh.streams.video[0], math.inf, sequential=sequential)
                return _decode_with(reader, path, metadata, positions)
            finally:
                fresh.close()
    except (av.FFmpegError, ValueError) as error:
        raise VideoDecodingError(path, f"decoding failed ({error})") from error


def _decode_with(reader: SeekingFrameReader, path: str, metadata: VideoMetadata, positions: list[int]):
    """The frames and timestamps at `positions`, read through `reader`; the reader in use at the end (`reader`, or one
    that took over at the end of the stream) is closed whatever happens (see [`~SeekingFrameReader.close`])."""
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
                reader = SeekingFrameReader(reader.container, reader.stream, math.inf)
                reader._seek_to(timestamps[-1] if timestamps else metadata.start_time)
                item = reader.frame_at(target)
                if item is None:
                    # Seeking found nothing even where frames were found before (or at the start): only reading from
                    # the start can tell an undecodable file from one whose seeks cannot be trusted.
                    raise NeedsSequentialReading()
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


__all__ = ["NeedsSequentialReading", "SeekingFrameReader", "decode_positions"]
