"""Sharded data: videos decoded from bytes, the shard writer, streamed training sets, and pretraining from shards."""

from __future__ import annotations

import io

import pytest
import torch

from modeling_svitt.video_io import VideoDecodingError, probe_video, read_video
from test_video_io import _bad_files, decoded_indices, mux_index_frames, write_index_video


@pytest.fixture(scope="module")
def video_30(tmp_path_factory) -> str:
    return write_index_video(tmp_path_factory.mktemp("videos") / "v30.mp4", 30, keyframe_interval=10)


# ------------------------------------------------------------------------------------------------------------------
# read_video from bytes and binary file objects


@pytest.mark.parametrize(
    "options",
    [
        dict(sample="middle"),
        dict(sample="uniform"),
        dict(sample="rand"),
        dict(sample="rand_release"),
        dict(sample="fps2"),
        dict(sample="middle", start=1.0, end=2.0),
        dict(sample="middle", num_clips=2, clip_layout="strided"),
    ],
)
def test_read_video_from_bytes_and_file_objects_matches_the_file(video_30, options):
    data = open(video_30, "rb").read()
    from_path = read_video(video_30, 3, generator=torch.Generator().manual_seed(3), **options)
    for source in (data, io.BytesIO(data), open(video_30, "rb")):
        decoded = read_video(source, 3, generator=torch.Generator().manual_seed(3), **options)
        assert torch.equal(decoded.frames, from_path.frames)
        assert decoded.frame_indices == from_path.frame_indices and decoded.timestamps == from_path.timestamps
    assert probe_video(data).num_frames == 30 and isinstance(probe_video(data).path, str)


def test_stream_that_cannot_seek_reads_from_bytes(tmp_path):
    # a raw H.264 stream is read from the start (the reader opens the data a second time)
    path = str(tmp_path / "raw.h264")
    mux_index_frames(path, list(range(30)), format="h264", codec_options={"crf": "4"})
    decoded = read_video(open(path, "rb").read(), 4, "middle")
    assert decoded.frame_indices == decoded_indices(decoded.frames) == [3, 10, 18, 25]


@pytest.mark.parametrize("kind", ["empty", "text", "truncated", "truncated_media", "truncated_matroska"])
def test_bad_bytes_raise_the_same_errors_naming_the_source(tmp_path, video_30, kind):
    path = _bad_files(tmp_path, video_30)[kind]
    with pytest.raises(VideoDecodingError) as from_file:
        read_video(path, 4)
    data = io.BytesIO(path.read_bytes())
    data.name = "shard-00003.tar:clip42.mp4"
    with pytest.raises(VideoDecodingError) as from_bytes:
        read_video(data, 4)
    assert from_bytes.value.path == "shard-00003.tar:clip42.mp4" and "clip42.mp4" in str(from_bytes.value)
    assert type(from_bytes.value) is type(from_file.value)
    with pytest.raises(VideoDecodingError, match="in-memory video"):
        read_video(path.read_bytes(), 4)


def test_text_file_objects_are_refused():
    with pytest.raises(TypeError, match="binary file object"):
        read_video(io.StringIO("not bytes"), 4)
