"""Frame sampling (hand-computed indices), seek-based decoding, odd videos and bad files."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from modeling_svitt import video_seeking
from modeling_svitt.video_io import (
    VideoDecodingError,
    VideoNotFoundError,
    probe_video,
    read_video,
    sample_frame_indices,
    split_clips,
    write_video,
)


# ------------------------------------------------------------------------------------------------------------------
# Index-coded videos: frame i is a flat colour from which i can be read back despite lossy compression.


def index_frame(i: int, size: int = 32, identity: int = 0) -> np.ndarray:
    """A flat frame encoding `i` (red: i % 8, green: i // 8 % 8) and an `identity` of the video (blue: 0..7)."""
    color = ((i % 8) * 32 + 16, (i // 8 % 8) * 32 + 16, identity * 32 + 16)
    return np.broadcast_to(np.array(color, dtype=np.uint8), (size, size, 3)).copy()


def write_index_video(path, num_frames: int, fps: float = 10, identity: int = 0, **kwargs) -> str:
    frames = np.stack([index_frame(i, identity=identity) for i in range(num_frames)])
    return write_video(path, frames, fps=fps, crf=kwargs.pop("crf", 4), **kwargs)


def mux_index_frames(
    path: str,
    timestamps: list[int],
    *,
    format: str | None = None,
    codec: str = "libx264",
    codec_options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    time_base: Fraction | None = None,
) -> str:
    """Encode index frames 0, 1, ... at the given `pts` with PyAV directly, for the containers and timings that
    `write_video` does not make (variable frame rate, raw streams, still images, faststart)."""
    with av.open(path, "w", format=format, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=10) if codec != "png" else container.add_stream(codec)
        stream.width = stream.height = 32
        stream.pix_fmt = "rgb24" if codec == "png" else "yuv420p"
        if time_base is not None:
            stream.codec_context.time_base = time_base
        stream.codec_context.options = codec_options or {}
        for i, pts in enumerate(timestamps):
            frame = av.VideoFrame.from_ndarray(index_frame(i), format="rgb24")
            frame.pts = pts
            if time_base is not None:
                frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_indices(frames: torch.Tensor) -> list[int]:
    """Frame indices (modulo 64) encoded in `uint8 (T, 3, H, W)` frames."""
    means = frames.float().mean(dim=(-2, -1))
    red = ((means[:, 0] - 16) / 32).round().long()
    green = ((means[:, 1] - 16) / 32).round().long()
    return (red + 8 * green).tolist()


def decoded_identity(frames: torch.Tensor) -> int:
    """The `identity` of an index-coded video from its frames (any leading dims)."""
    blue = frames.reshape(-1, *frames.shape[-3:])[:, 2].float().mean()
    return int(((blue - 16) / 32).round())


@pytest.fixture(scope="module")
def video_30(tmp_path_factory) -> str:
    """30 frames at 10 fps, a keyframe every 8 frames."""
    return write_index_video(tmp_path_factory.mktemp("videos") / "v30.mp4", 30, keyframe_interval=8)


# ------------------------------------------------------------------------------------------------------------------
# Sampling strategies, hand-computed.


def test_middle_sampling_matches_release_formula():
    # segments of [0, 30): boundaries int(linspace(0, 30, 5)) = 0 7 15 22 30; middles (b_j + b_j+1 - 1) // 2
    assert sample_frame_indices(4, 30, "middle") == [3, 10, 18, 25]
    # 12 test frames as in retrieval evaluation: boundaries 0 2 5 7 10 12 15 17 20 22 25 27 30
    assert sample_frame_indices(12, 30, "middle") == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]


def test_uniform_sampling_includes_first_and_last_frame():
    # round(linspace(0, 29, 4)) = 0, 9.67, 19.33, 29
    assert sample_frame_indices(4, 30, "uniform") == [0, 10, 19, 29]
    assert sample_frame_indices(3, 7, "uniform") == [0, 3, 6]


def test_rand_sampling_stays_in_segments_reaches_their_last_frame_and_is_seeded():
    segments = [(0, 6), (7, 14), (15, 21), (22, 29)]
    seen = [set() for _ in segments]
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        indices = sample_frame_indices(4, 30, "rand", generator=generator)
        for j, (low, high) in enumerate(segments):
            assert low <= indices[j] <= high
            seen[j].add(indices[j])
    assert [len(s) for s in seen] == [7, 8, 7, 8]  # every frame of every segment, the last one included
    first = sample_frame_indices(4, 30, "rand", generator=torch.Generator().manual_seed(3))
    assert first == sample_frame_indices(4, 30, "rand", generator=torch.Generator().manual_seed(3))


def test_fps_sampling_matches_release_formula():
    # 30 frames at 10 fps = 3 s; every 0.5 s centred: seconds .25 .75 ... 2.75 -> frames around(2.5, 7.5, ...)
    assert sample_frame_indices(4, 30, "fps2", input_fps=10) == [2, 8, 12, 18, 22, 28]
    assert sample_frame_indices(4, 30, "fps2", input_fps=10, max_num_frames=3) == [2, 8, 12]
    assert sample_frame_indices(4, 30, "fps0.5", input_fps=10) == [10]
    # shorter than half an interval: the middle frame rather than nothing
    assert sample_frame_indices(4, 3, "fps0.1", input_fps=10) == [1]
    with pytest.raises(ValueError, match="frame rate"):
        sample_frame_indices(4, 30, "fps2")


def test_short_video_policy_repeats_the_last_frame():
    assert sample_frame_indices(4, 3, "middle") == [0, 1, 2, 2]
    assert sample_frame_indices(4, 1, "rand") == [0, 0, 0, 0]
    assert sample_frame_indices(5, 2, "uniform") == [0, 1, 1, 1, 1]


def test_unknown_strategy_is_rejected():
    with pytest.raises(ValueError, match="Unknown frame sampling strategy 'random'"):
        sample_frame_indices(4, 30, "random")


def test_split_clips_layouts():
    frames = torch.arange(12)
    assert split_clips(frames, 3, "consecutive").tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert split_clips(frames, 3, "strided").tolist() == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    with pytest.raises(ValueError, match="Cannot split 12 frames into 5 clips"):
        split_clips(frames, 5)


# ------------------------------------------------------------------------------------------------------------------
# Decoding.


def test_probe(video_30):
    metadata = probe_video(video_30)
    assert (metadata.num_frames, metadata.fps, metadata.width, metadata.height) == (30, 10.0, 32, 32)
    assert metadata.duration == pytest.approx(3.0)
    assert not metadata.num_frames_is_estimate and not metadata.is_still_image


@pytest.mark.parametrize("sample", ["middle", "uniform", "rand", "fps2"])
def test_read_video_returns_exactly_the_sampled_frames(video_30, sample):
    decoded = read_video(video_30, 4, sample, generator=torch.Generator().manual_seed(1))
    assert decoded.frames.dtype == torch.uint8 and decoded.frames.shape[1:] == (3, 32, 32)
    assert decoded_indices(decoded.frames) == decoded.frame_indices
    assert decoded.timestamps == pytest.approx([i / 10 for i in decoded.frame_indices])
    if sample == "middle":
        assert decoded.frame_indices == [3, 10, 18, 25]


def test_time_segment(video_30):
    # [1 s, 2 s] at 10 fps = positions 10..19; middle of 4 segments of those 10: 0 3 5 8 -> 10 13 15 18
    decoded = read_video(video_30, 4, "middle", start=1.0, end=2.0)
    assert decoded.frame_indices == [10, 13, 15, 18]
    assert decoded_indices(decoded.frames) == [10, 13, 15, 18]
    rand = read_video(video_30, 4, "rand", start=2.2, end=2.8, generator=torch.Generator().manual_seed(0))
    assert all(22 <= i < 28 for i in decoded_indices(rand.frames))
    with pytest.raises(ValueError, match="starts after the end"):
        read_video(video_30, 4, start=5.0, end=6.0)
    # a clip that does not fit its file is a bad sample for the datasets (skipped and counted), naming the file
    with pytest.raises(VideoDecodingError) as info:
        read_video(video_30, 4, start=5.0, end=6.0)
    assert info.value.path == video_30 and video_30 in str(info.value)


@pytest.mark.parametrize(
    "layout, expected", [("consecutive", [[2, 7, 12], [17, 22, 27]]), ("strided", [[2, 12, 22], [7, 17, 27]])]
)
def test_several_clips_per_video(video_30, layout, expected):
    # 6 middle frames of 30: boundaries 0 5 10 15 20 25 30 -> 2 7 12 17 22 27
    decoded = read_video(video_30, 3, "middle", num_clips=2, clip_layout=layout)
    assert decoded.frames.shape == (2, 3, 3, 32, 32)
    assert [decoded_indices(clip) for clip in decoded.frames] == expected
    assert decoded.frame_indices == [i for clip in expected for i in clip]


def test_video_shorter_than_requested(tmp_path):
    path = write_index_video(tmp_path / "short.mp4", 3)
    decoded = read_video(path, 4, "middle")
    assert decoded.frames.shape[0] == 4
    assert decoded_indices(decoded.frames) == [0, 1, 2, 2]


def test_seeking_decodes_only_around_the_wanted_frames(tmp_path, monkeypatch):
    # 400 frames with a keyframe every 25: four frames must not cost decoding the whole video
    path = write_index_video(tmp_path / "long.mp4", 400, fps=25, keyframe_interval=25)
    pulled = []
    original = video_seeking.SeekingFrameReader._next_frame

    def counting(self):
        item = original(self)  # (frame, seconds)
        if item is not None:
            pulled.append(item[1])
        return item

    monkeypatch.setattr(video_seeking.SeekingFrameReader, "_next_frame", counting)
    decoded = read_video(path, 4, "middle")
    assert decoded_indices(decoded.frames) == [i % 64 for i in (49, 149, 249, 349)]  # the colour code wraps at 64
    # each wanted frame costs at most one keyframe interval plus the look-ahead frame that shows it was passed
    assert len(set(pulled)) <= 4 * (25 + 1), f"decoded {len(set(pulled))} of 400 frames to get 4"


# One keyframe for the whole file (common among short web clips), one every 2 s, one every 10 s; B-frames on.
KEYFRAME_LAYOUTS = {"one keyframe": 100_000, "every 2 s": 20, "every 10 s": 100}
SAMPLINGS = [
    ("rand", {}),
    ("rand_release", {}),
    ("middle", {}),
    ("uniform", {}),
    ("fps0.7", {}),
    ("middle", {"start": 6.3, "end": 17.9}),
    ("rand", {"start": 11.0, "end": 23.0}),
    ("middle", {"num_clips": 3}),
    ("uniform", {"num_clips": 2, "clip_layout": "strided"}),
]


def write_textured_video(path, num_frames: int, keyframe_interval: int, fps: int = 10) -> str:
    """A panning noise texture with a moving block, so that every frame differs and depends on its references."""
    texture = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        # no keyframes at scene cuts: the layout is exactly the one asked for
        stream.options = {"g": str(keyframe_interval), "sc_threshold": "0", "preset": "veryfast", "crf": "30"}
        for i in range(num_frames):
            frame = np.roll(texture, (i, 2 * i), axis=(0, 1))[:48, :64].copy()
            frame[(i * 3) % 32 : (i * 3) % 32 + 12, (i * 5) % 48 : (i * 5) % 48 + 12] = (255 - i % 256, i % 256, 40)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def sequential_decode(path: str) -> list[tuple[np.ndarray, float]]:
    """Every frame of the file with its presentation time, decoded in one pass from the start."""
    with av.open(path) as container:
        return [(frame.to_ndarray(format="rgb24"), float(frame.time)) for frame in container.decode(video=0)]


@pytest.fixture(scope="module", params=list(KEYFRAME_LAYOUTS))
def textured_video(request, tmp_path_factory) -> tuple[str, list[tuple[np.ndarray, float]]]:
    """25 s at 10 fps in each keyframe layout, with its sequential decode."""
    path = tmp_path_factory.mktemp("layouts") / f"{request.param.replace(' ', '_')}.mp4"
    write_textured_video(path, 250, KEYFRAME_LAYOUTS[request.param])
    return str(path), sequential_decode(str(path))


@pytest.mark.parametrize("sample, kwargs", SAMPLINGS)
def test_frames_are_byte_identical_to_a_sequential_decode(textured_video, sample, kwargs):
    path, reference = textured_video
    decoded = read_video(path, 4, sample, generator=torch.Generator().manual_seed(3), **kwargs)
    step = decoded.metadata.frame_step
    frames = decoded.frames.reshape(-1, *decoded.frames.shape[-3:])
    assert len(frames) == len(decoded.frame_indices)
    for frame, position in zip(frames, decoded.frame_indices):
        # the frame on screen at the position's grid time, as the sequential pass saw it
        expected = [array for array, seconds in reference if seconds <= (position + 0.5) * step][-1]
        assert np.array_equal(frame.permute(1, 2, 0).numpy(), expected), (sample, kwargs, position)


def _count_decoded_frames(monkeypatch) -> list[float]:
    pulled = []
    original = video_seeking.SeekingFrameReader._next_frame

    def counting(self):
        from_decoder = self._pending is None  # a pending frame comes back once more without being decoded again
        item = original(self)  # (frame, seconds)
        if item is not None and from_decoder:
            pulled.append(item[1])
        return item

    monkeypatch.setattr(video_seeking.SeekingFrameReader, "_next_frame", counting)
    return pulled


@pytest.mark.parametrize("layout", list(KEYFRAME_LAYOUTS))
@pytest.mark.parametrize("sample, kwargs", [("middle", {}), ("rand", {}), ("fps0.7", {}), ("middle", {"num_clips": 3})])
def test_no_frame_is_decoded_twice(tmp_path, monkeypatch, layout, sample, kwargs):
    # a reader that seeks for every target decodes a long group of pictures once per target in it; planned reads
    # decode each frame at most once, so never more than a sequential pass up to the last wanted frame
    path = write_textured_video(tmp_path / "v.mp4", 250, KEYFRAME_LAYOUTS[layout])
    pulled = _count_decoded_frames(monkeypatch)
    decoded = read_video(path, 4, sample, generator=torch.Generator().manual_seed(0), **kwargs)
    assert len(pulled) == len(set(pulled)), f"{len(pulled) - len(set(pulled))} frames decoded twice"
    assert len(pulled) <= max(decoded.frame_indices) + 2  # up to the last wanted frame and the one after it
    if layout == "one keyframe":
        # the B-frames no other picture refers to are skipped where a later frame replaces them before the next target
        assert len(pulled) < 0.75 * max(decoded.frame_indices), f"decoded {len(pulled)} frames"
    if layout == "every 2 s" and sample == "middle" and not kwargs:
        assert len(pulled) <= 4 * (20 + 1)  # each target still costs at most its group of pictures


def test_variable_frame_rate(tmp_path):
    # 10 frames at 10 fps, then 5 frames 0.4 s apart: each sample is the frame on screen at its grid time
    path = str(tmp_path / "vfr.mp4")
    times_ms = [0, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1400, 1800, 2200, 2600]
    mux_index_frames(path, times_ms, codec_options={"bf": "0", "crf": "4"}, time_base=Fraction(1, 1000))
    metadata = probe_video(path)
    decoded = read_video(path, 6, "uniform")
    for position, index in zip(decoded.frame_indices, decoded_indices(decoded.frames)):
        target = (position + 0.5) * metadata.frame_step
        on_screen = max(i for i, t in enumerate(times_ms) if t / 1000 <= target)
        assert index == on_screen
    # the slow second part is reached: the last grid position shows the last frame
    assert decoded_indices(decoded.frames)[-1] == 14


@pytest.mark.parametrize("keyframe_interval", [5, 50])
def test_mpeg_ts_seeks_that_land_late_are_not_trusted(tmp_path, keyframe_interval):
    # MPEG-TS has no index: FFmpeg seeks it by byte estimates and lands seconds after the target (even for a target at
    # the very start), or on nothing at all; the frames must still be the sampled ones
    path = write_index_video(tmp_path / "v.ts", 100, keyframe_interval=keyframe_interval)
    for sample, kwargs in (("middle", {}), ("uniform", {}), ("middle", {"num_clips": 3})):
        decoded = read_video(path, 4, sample, **kwargs)
        flat = decoded.frames.reshape(-1, *decoded.frames.shape[-3:])
        assert decoded_indices(flat) == [i % 64 for i in decoded.frame_indices], (sample, kwargs)
    assert read_video(path, 4, "middle").frame_indices == [12, 37, 62, 87]


def test_missing_frame_count_is_estimated(tmp_path):
    # Matroska stores no frame count
    path = write_index_video(tmp_path / "v.mkv", 20)
    metadata = probe_video(path)
    assert metadata.num_frames_is_estimate and metadata.num_frames == 20
    assert decoded_indices(read_video(path, 4, "middle").frames) == [2, 7, 12, 17]


def test_raw_stream_without_timestamps_or_seeking(tmp_path):
    # a raw H.264 elementary stream: no frame count, no duration, no timestamps, cannot seek
    path = str(tmp_path / "raw.h264")
    mux_index_frames(path, list(range(30)), format="h264", codec_options={"crf": "4"})
    metadata = probe_video(path)
    assert metadata.num_frames == 30 and metadata.num_frames_is_estimate  # counted from the packets
    decoded = read_video(path, 4, "middle")
    assert decoded.frame_indices == decoded_indices(decoded.frames) == [3, 10, 18, 25]


def test_still_image_is_a_one_frame_video(tmp_path):
    path = str(tmp_path / "image.png")
    image = index_frame(0)  # what mux_index_frames writes first
    mux_index_frames(path, [0], format="image2", codec="png")
    decoded = read_video(path, 4, "rand")
    assert decoded.metadata.is_still_image
    assert decoded.frames.shape == (4, 3, 32, 32)
    assert torch.equal(decoded.frames[0].permute(1, 2, 0), torch.from_numpy(image))
    assert all(torch.equal(frame, decoded.frames[0]) for frame in decoded.frames)


# ------------------------------------------------------------------------------------------------------------------
# Bad input: every error names the file.


def _bad_files(tmp_path, video_30):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    truncated = tmp_path / "truncated.mp4"
    data = open(video_30, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: the file does not open
    # index at the front ("faststart", as streamed files are): the file opens, the media data stops half-way
    faststart = str(tmp_path / "faststart.mp4")
    mux_index_frames(
        faststart,
        list(range(60)),
        container_options={"movflags": "faststart"},
        codec_options={"x264-params": "keyint=5:min-keyint=5:scenecut=0", "crf": "4"},
    )
    data = open(faststart, "rb").read()
    truncated_media = tmp_path / "truncated_media.mp4"
    truncated_media.write_bytes(data[: len(data) * 3 // 5])
    # Matroska keeps its declared duration in the header and its blocks end cleanly: a file cut in half opens and
    # decodes, and only the timestamps show that the second half is missing
    matroska = write_index_video(tmp_path / "full.mkv", 100, keyframe_interval=5)
    data = open(matroska, "rb").read()
    truncated_matroska = tmp_path / "truncated.mkv"
    truncated_matroska.write_bytes(data[: len(data) // 2])
    return {
        "empty": empty,
        "text": text,
        "truncated": truncated,
        "truncated_media": truncated_media,
        "truncated_matroska": truncated_matroska,
        "directory": tmp_path,
    }


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "truncated_media", "truncated_matroska", "directory"])
def test_bad_files_raise_an_error_naming_the_file(tmp_path, video_30, kind):
    path = _bad_files(tmp_path, video_30)[kind]
    with pytest.raises(VideoDecodingError) as info:
        read_video(path, 4)
    assert str(path) in str(info.value) and info.value.path == str(path)
    if kind == "truncated_matroska":
        assert "truncated" in info.value.reason


def test_truncated_stream_is_caught_when_decoding_forward_into_its_end(tmp_path):
    # with a long keyframe interval the reader decodes forward rather than seeking, and meets the end of the stream
    # there: the last frame it has is seconds short of the wanted one, which must not stand in for it
    path = write_index_video(tmp_path / "full.mkv", 100, keyframe_interval=50)
    data = open(path, "rb").read()
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(data[: len(data) // 2])
    for kwargs in ({}, {"seek_threshold": 100.0}, {"num_clips": 3}):
        with pytest.raises(VideoDecodingError, match="truncated"):
            read_video(truncated, 4, "middle", **kwargs)



def _live_decoding_objects() -> int:
    decoding_types = (av.container.InputContainer, av.codec.context.CodecContext, av.VideoFrame)
    return sum(issubclass(type(obj), decoding_types) for obj in gc.get_objects())


def test_read_video_frees_its_decoders_without_the_garbage_collector(tmp_path, video_30):
    # A decoder caught in a reference cycle outlives its read, with FFmpeg's threads and frame buffers, until the next
    # collection: a data-loader worker reading clip after clip carried hundreds of them (and forked processes hung
    # collecting them). Every way through the reader must free its container, decoder and frames by reference
    # counting alone.
    raw = mux_index_frames(str(tmp_path / "raw.h264"), list(range(30)), format="h264", codec_options={"crf": "4"})
    full = open(write_index_video(tmp_path / "full.mkv", 100, keyframe_interval=50), "rb").read()
    truncated = tmp_path / "truncated.mkv"
    truncated.write_bytes(full[: len(full) // 2])
    gc.collect()
    before = _live_decoding_objects()
    gc.disable()
    try:
        read_video(video_30, 4, "middle")
        read_video(video_30, 3, "rand", num_clips=2, generator=torch.Generator().manual_seed(0))
        read_video(open(video_30, "rb").read(), 4, "uniform", start=0.5, end=2.5)
        read_video(raw, 4, "middle")  # read from the start: it cannot seek
        read_video(video_30, 4, "middle", seek_threshold=0.0)  # every target reached by a seek
        try:
            read_video(truncated, 4, "middle")  # decodes forward into the end of the stream
        except VideoDecodingError:
            pass
        left = _live_decoding_objects() - before
    finally:
        gc.enable()
    assert left == 0


def test_missing_file(tmp_path):
    path = tmp_path / "nope.mp4"
    with pytest.raises(VideoNotFoundError, match="nope.mp4"):
        read_video(path)
    with pytest.raises(FileNotFoundError):
        probe_video(path)


def test_decoding_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(VideoDecodingError("/x/y.mp4", "broken")))
    assert error.path == "/x/y.mp4" and "y.mp4" in str(error) and "broken" in str(error)


def test_importing_the_package_does_not_need_pyav():
    import subprocess
    import sys

    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'av' or name.startswith('av.'):\n"
        "            raise ImportError('PyAV is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import modeling_svitt, modeling_svitt.video_io, modeling_svitt.processing_svitt\n"
        "assert 'av' not in sys.modules\n"
        "try:\n"
        "    modeling_svitt.video_io.read_video('x.mp4')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pip install av" in result.stdout


def test_rand_release_reproduces_the_release_draw():
    from modeling_svitt.video_io import sample_frame_indices

    generator = torch.Generator().manual_seed(0)
    draws = [sample_frame_indices(4, 40, "rand_release", generator=generator) for _ in range(300)]
    for indices in draws:
        # segments [0,10) [10,20) [20,30) [30,40); the release never draws a segment's last frame
        assert all(10 * j <= index < 10 * j + 9 for j, index in enumerate(indices)), indices
    assert {indices[0] for indices in draws} == set(range(9))
    # segments too short for range(start, end - 1): a sorted random subset of all frames, as the release
    short = [sample_frame_indices(4, 5, "rand_release", generator=generator) for _ in range(50)]
    assert all(indices == sorted(indices) and len(set(indices)) == 4 for indices in short)
    assert len({tuple(indices) for indices in short}) > 1


FORK_AFTER_DECODING = """
import gc, os, sys, time
import av
import numpy as np
import modeling_svitt.video_container as video_container
import modeling_svitt.video_io as video_io

if sys.argv[2] == "without-the-collection":
    video_container._collects_before_fork = True  # as if the hook were never registered
path = sys.argv[1]
with av.open(path, "w") as out:
    stream = out.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 160, 128, "yuv420p"
    for index in range(30):
        pixels = np.random.default_rng(index).integers(0, 255, (128, 160, 3), dtype=np.uint8)
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
gc.disable()  # the decoders stay garbage until a collection, as between two automatic collections
for _ in range(3):
    video_io.read_video(path, num_frames=4, sample="middle")
child = os.fork()
if child == 0:
    gc.collect()  # what a data-loader worker does sooner or later
    os._exit(0)
deadline = time.time() + 30
while time.time() < deadline:
    if os.waitpid(child, os.WNOHANG)[0]:
        sys.exit(0)
    time.sleep(0.05)
os.kill(child, 9)
sys.exit("the forked process hung collecting the decoders")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="forking processes only")
# Without the collection before the fork, nothing of the reads may be left to collect: read_video frees its decoders
# itself (a decoder left in a cycle made the forked process hang).
@pytest.mark.parametrize("variant", ["with-the-collection", "without-the-collection"])
def test_a_process_forked_after_decoding_does_not_hang_collecting_the_decoders(tmp_path, variant):
    result = subprocess.run(
        [sys.executable, "-c", FORK_AFTER_DECODING, str(tmp_path / "clip.mp4"), variant],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
