"""The synthetic temporal dataset: determinism, captions that match the motion, reversed-motion distractors, formats."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from modeling_svitt.processing_svitt import SViTTProcessor, SViTTVideoProcessor
from modeling_svitt.tokenization_svitt import SViTTTokenizer
from modeling_svitt.video_io import read_video
from helpers.bert_vocab import bert_vocab_dir
from training.data import (
    EgoClipDataset,
    EgoMCQDataset,
    MultipleChoiceCollator,
    RetrievalEvalDataset,
    VideoCaptionDataset,
    VideoQADataset,
    VideoTextCollator,
    generate_synthetic_dataset,
    load_synthetic_dataset,
)
from training.data.synthetic import (
    COLORS,
    DIRECTIONS,
    OBJECTS,
    OPPOSITE,
    SYNTHETIC_VERSION,
    SyntheticConfig,
    bag_of_frames_is_blind,
    default_synthetic_root,
    sample_clip_spec,
)

TINY = SyntheticConfig(
    seed=5,
    num_pretrain_clips=6,
    num_test_clips=5,
    num_ego_train_videos=2,
    num_ego_test_videos=5,
    segments_per_ego_video=5,
    mcq_items_per_type=4,
)
ANNOTATION_FILES = ("pretrain", "ret_train", "ret_test", "qa_train", "qa_test", "qa_answer_list", "egoclip", "egomcq")
_OBJECT, _DIRECTION = "|".join(OBJECTS), "left|right|up|down"
_MOVE = re.compile(
    rf"(?P<o1>{_OBJECT}) \w+ (?P<d1>{_DIRECTION}).*?(?P<o2>{_OBJECT}) \w+ (?P<d2>{_DIRECTION})"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "tiny", TINY)


def parse_moves(caption: str) -> tuple[str, str, str, str]:
    match = _MOVE.search(caption)
    assert match, caption
    return match["o1"], match["d1"], match["o2"], match["d2"]


def test_deterministic_by_seed(tiny, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "again", TINY)
    for name in ANNOTATION_FILES:
        assert getattr(again, name).read_bytes() == getattr(tiny, name).read_bytes(), name
    for video in sorted((tiny.root / "clips").glob("*.mp4")) + sorted((tiny.root / "ego").glob("*.mp4")):
        assert (again.root / video.relative_to(tiny.root)).read_bytes() == video.read_bytes(), video.name
    other = generate_synthetic_dataset(tmp_path / "other", SyntheticConfig(**{**TINY.__dict__, "seed": 6}))
    assert other.ret_test.read_bytes() != tiny.ret_test.read_bytes()


def test_every_test_clip_has_the_reversed_motion_as_distractor(tiny):
    entries = json.loads(tiny.ret_test.read_text())
    assert len(entries) == TINY.num_test_clips
    for entry in entries:
        first, first_direction, second, second_direction = parse_moves(entry["caption"])
        assert parse_moves(entry["distractor_caption"]) == (
            second, OPPOSITE[second_direction], first, OPPOSITE[first_direction]
        )
    dataset = RetrievalEvalDataset(tiny.ret_test)
    assert dataset.distractors == [entry["distractor_caption"] for entry in entries]


def test_reversed_clip_has_the_same_frames_in_reverse_order():
    # the probe's premise: an order-blind model sees identical inputs for caption and distractor
    rng = np.random.default_rng(0)
    config = SyntheticConfig()
    for _ in range(50):
        assert bag_of_frames_is_blind(sample_clip_spec(rng, config), config)


def _centroid(frame: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    mask = np.abs(frame.astype(int) - np.array(color)).sum(-1) < 60
    assert mask.sum() > 20, "shape not found"
    return np.argwhere(mask).mean(0)


def test_captions_describe_the_decoded_motion(tiny):
    # decode every frame of the test clips and check each named shape moves the named way, in the named order
    half = TINY.frames_per_clip // 2
    for entry in json.loads(tiny.ret_test.read_text()):
        decoded = read_video(tiny.root / entry["video"], TINY.frames_per_clip, "uniform")
        frames = decoded.frames.permute(0, 2, 3, 1).numpy()
        first, first_direction, second, second_direction = parse_moves(entry["caption"])
        for obj, direction, moving, still in ((first, first_direction, (0, half - 1), (half, -1)),
                                              (second, second_direction, (half, -1), (0, half - 1))):
            color = COLORS[obj.split()[0]]
            shift = _centroid(frames[moving[1]], color) - _centroid(frames[moving[0]], color)
            assert np.sign(np.round(shift / 5)).astype(int).tolist() == list(DIRECTIONS[direction]), entry
            rest = _centroid(frames[still[1]], color) - _centroid(frames[still[0]], color)
            assert np.abs(rest).max() < 1.5, entry  # the other half of the clip it stands still


def test_splits_load_with_their_readers(tiny):
    processor = SViTTProcessor(SViTTVideoProcessor(size=16), SViTTTokenizer.from_pretrained(bert_vocab_dir()))
    pretrain = VideoCaptionDataset(tiny.pretrain, processor, train=True)
    batch = VideoTextCollator(processor)([pretrain[i] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 4, 3, 16, 16) and batch["match_ids"].tolist() == [0, 1, 2]
    assert len(VideoCaptionDataset(tiny.ret_train, processor)) == TINY.num_pretrain_clips

    qa = VideoQADataset(tiny.qa_test, processor, answer_list=tiny.qa_answer_list)
    assert len(qa) == TINY.num_test_clips * TINY.questions_per_clip
    assert all(record["answers"][0] in qa.answer_list for record in qa.records)

    ego = EgoClipDataset(tiny.egoclip, processor, num_verbs=tiny.num_verbs, num_nouns=tiny.num_nouns)
    assert len(ego) == TINY.num_ego_train_videos * TINY.segments_per_ego_video
    item = ego[1]
    assert item["verb_tags"].sum() == 1 and item["noun_tags"].sum() == 1 and item["text"].startswith("#C C moves")

    mcq = EgoMCQDataset(tiny.egomcq, processor)
    assert sorted(set(mcq.types)) == [1, 2] and len(mcq) == 2 * TINY.mcq_items_per_type
    batch = MultipleChoiceCollator(processor)([mcq[0], mcq[len(mcq) - 1]])
    assert batch["pixel_values"].shape == (2, 5, 4, 3, 16, 16)
    assert all(dataset.num_bad_samples == 0 for dataset in (pretrain, qa, ego, mcq))


def test_egomcq_items_are_well_formed(tiny):
    items = json.loads(tiny.egomcq.read_text())
    for item in items.values():
        choices = [item["choices"][str(k)] for k in range(5)]
        assert choices[item["answer"]] == item["query"]
        uids = [choice["video_uid"] for choice in choices]
        if item["types"] == 2:  # intra-video (the dataset's code 2): five different moments of one video
            assert len(set(uids)) == 1 and len({c["clip_start"] for c in choices}) == 5
            assert len({c["clip_text"] for c in choices}) == 5  # one right answer
        else:  # inter-video (code 1): five videos
            assert item["types"] == 1 and len(set(uids)) == 5


def test_inter_video_egomcq_items_have_one_right_answer(tmp_path):
    # enough inter-video items that a distractor segment narrated exactly like the query (48 possible narrations)
    # would turn up: that choice would be a second right answer
    config = SyntheticConfig(
        seed=5, num_pretrain_clips=1, num_test_clips=1, num_ego_train_videos=1, num_ego_test_videos=5,
        segments_per_ego_video=5, mcq_items_per_type=100,
    )
    items = json.loads(generate_synthetic_dataset(tmp_path / "mcq", config).egomcq.read_text())
    for key, item in items.items():
        texts = [item["choices"][str(k)]["clip_text"] for k in range(5)]
        assert texts.count(item["query"]["clip_text"]) == 1, (key, texts)


def test_generated_on_first_use_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SVITT_CACHE_DIR", str(tmp_path / "cache"))
    assert default_synthetic_root() == tmp_path / "cache" / "synthetic" / f"{SYNTHETIC_VERSION}-0"
    assert default_synthetic_root(TINY).name == f"{SYNTHETIC_VERSION}-5-{TINY.fingerprint()}"
    first = load_synthetic_dataset(config=TINY)
    assert first.root == default_synthetic_root(TINY) and first.manifest.is_file()
    stamp = first.manifest.stat().st_mtime_ns
    assert load_synthetic_dataset(config=TINY).manifest.stat().st_mtime_ns == stamp  # not regenerated
    with pytest.raises(FileExistsError, match="another version or configuration"):
        generate_synthetic_dataset(first.root, SyntheticConfig(**{**TINY.__dict__, "num_test_clips": 6}))
    unrelated = tmp_path / "my-data"
    unrelated.mkdir()
    (unrelated / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a synthetic SViTT dataset"):
        generate_synthetic_dataset(unrelated, TINY, overwrite=True)
    assert (unrelated / "keep.txt").read_text() == "mine"


def test_default_set_has_the_configured_counts(tmp_path):
    dataset = generate_synthetic_dataset(tmp_path / "default")
    manifest = json.loads(dataset.manifest.read_text())
    assert manifest["counts"]["num_pretrain_clips"] == SyntheticConfig().num_pretrain_clips
    default = SyntheticConfig()
    assert len(list((dataset.root / "clips").glob("*.mp4"))) == default.num_pretrain_clips + default.num_test_clips
