"""The built-in synthetic temporal dataset: coloured shapes whose captions say what moves, where, and in which order.

Each short clip shows two shapes on a plain background. During the first half of the clip the first shape moves in
one direction while the second stands still; during the second half the second shape moves. Captions name both
moves in order ("a red square moves left, then a blue circle moves up"). Played backwards, the same clip shows the
second shape moving the opposite way first, then the first shape moving the opposite way: the reversed clip holds
exactly the same frames in the opposite order, and its caption ("a blue circle moves down, then a red square moves
right") is stored with every retrieval test clip as `distractor_caption`. A model that ignores frame order sees the
same set of frames for both captions, so on this *temporal probe* (caption vs. distractor) it scores at chance.

Splits, all real mp4 files plus annotation files in the release's formats (`annotations.py`):

* `pretrain.json`: caption JSON (WebVid style); `ret_train.json`: the same clips as a retrieval training file;
* `ret_test.json`: retrieval test set, one entry per clip with `caption` and `distractor_caption`;
* `qa_train.json`, `qa_test.json`, `qa_answer_list.json`: questions about order, direction and colour (their
  `question_type`);
* `ego/egoclip.tsv`: EgoClip-style metadata over longer "egocentric" videos made of consecutive 2 s segments, each with
  one narrated move (`#C C moves the red square left`), verb tags (directions) and noun tags (objects);
* `ego/egomcq.json`: EgoMCQ items over held-out long videos, coded as the real file: type 2 (intra-video: five
  segments of one video) and type 1 (inter-video: segments of five videos), five choices each;
  `ego/egomcq_train.json`: items of the same kind over the EgoClip videos (inter-video ones when there are at least
  five), for multiple-choice fine-tuning;
  `taxonomy.json` names the tag classes.

Everything is a deterministic function of the seed. The set is generated on first use into
`~/.cache/svitt/synthetic/<version>-<seed>` (or `$SVITT_CACHE_DIR/synthetic/...`); the default size takes a few
seconds on two cores.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from svitt_tools.metrics import EGOMCQ_INTER_VIDEO, EGOMCQ_INTRA_VIDEO
from modeling_svitt.video_io import write_video

SYNTHETIC_VERSION = "v4"  # v2: inter-video EgoMCQ distractors never repeat the query's narration; v3: question
# types, EgoMCQ training items (the clips, captions and test items of v2 are unchanged); v4: EgoMCQ `types` coded as
# the real file (1 inter-video, 2 intra-video; the items themselves are those of v3)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (50, 90, 235),
    "yellow": (235, 210, 40),
}
SHAPES = ("square", "circle", "triangle")
# (row, column) unit steps; rows grow downwards.
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
OBJECTS = [f"{color} {shape}" for color in COLORS for shape in SHAPES]
VERBS = [f"move {direction}" for direction in DIRECTIONS]
BACKGROUND = (28, 28, 32)
CAPTION_TEMPLATES = (
    "a {first} moves {first_direction}, then a {second} moves {second_direction}",
    "the {first} moves {first_direction} first and then the {second} moves {second_direction}",
    "first a {first} goes {first_direction}, after that a {second} goes {second_direction}",
    "a {first} slides {first_direction} before a {second} slides {second_direction}",
)
EGO_TEMPLATE = "#C C moves the {object} {direction}"


@dataclass(frozen=True)
class SyntheticConfig:
    """
    Size and look of the synthetic set.

    Args:
        seed (`int`): everything is a deterministic function of it.
        num_pretrain_clips (`int`): clips of the pretraining / retrieval-train / QA-train splits.
        num_test_clips (`int`): clips of the retrieval test / temporal probe / QA-test splits.
        num_ego_train_videos (`int`), num_ego_test_videos (`int`): long videos for EgoClip and for EgoMCQ.
        segments_per_ego_video (`int`): narrated 2 s segments per long video (>= 5 for intra-video items).
        mcq_items_per_type (`int`): EgoMCQ items of each type (intra, inter).
        questions_per_clip (`int`): QA items per clip.
        frames_per_clip (`int`): frames of a clip and of an ego segment (even).
        fps (`float`): frame rate of all videos.
        frame_size (`int`): frame side in pixels (even, for H.264).
        object_size (`int`): shape side in pixels.
        speed (`int`): pixels a moving shape travels per frame.
        reversed_twins (`bool`): follow every clip of `pretrain.json` / `ret_train.json` with its reversed twin (the
            same frames backwards, captioned accordingly): a temporal hard negative that only frame order tells apart.
            Train with groups of 2 consecutive entries per batch to put the twins side by side.
    """

    seed: int = 0
    num_pretrain_clips: int = 256
    num_test_clips: int = 64
    num_ego_train_videos: int = 24
    num_ego_test_videos: int = 10
    segments_per_ego_video: int = 6
    mcq_items_per_type: int = 40
    questions_per_clip: int = 2
    frames_per_clip: int = 16
    fps: float = 8.0
    frame_size: int = 64
    object_size: int = 12
    speed: int = 3
    reversed_twins: bool = False

    def __post_init__(self):
        if self.frames_per_clip < 4 or self.frames_per_clip % 2:
            raise ValueError(f"`frames_per_clip` must be an even number >= 4, got {self.frames_per_clip}.")
        if self.frame_size % 2:
            raise ValueError(f"`frame_size` must be even (H.264), got {self.frame_size}.")
        if self.segments_per_ego_video < 5:
            raise ValueError("`segments_per_ego_video` must be >= 5: intra-video EgoMCQ items need five segments.")
        if self.num_ego_test_videos < 5:
            raise ValueError("`num_ego_test_videos` must be >= 5: inter-video EgoMCQ items need five videos.")
        travel = self.speed * (self.frames_per_clip // 2 - 1)
        if self.object_size + travel > self.frame_size:
            raise ValueError("A moving shape would leave the frame: lower `speed` or `object_size`, or enlarge frames.")

    def fingerprint(self) -> str:
        """Short hash of the configuration (names the cache folder of non-default sets)."""
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:10]


@dataclass(frozen=True)
class Move:
    """One shape moving in a straight line: `object` ("red square") leaves `start` (row, column) going `direction`."""

    object: str
    direction: str
    start: tuple[int, int]


@dataclass(frozen=True)
class ClipSpec:
    """A two-move clip: `first` moves during the first half, then `second` during the second half."""

    first: Move
    second: Move
    template: int

    def end(self, move: Move, travel: int) -> tuple[int, int]:
        step = DIRECTIONS[move.direction]
        return (move.start[0] + step[0] * travel, move.start[1] + step[1] * travel)

    def reversed(self, travel: int) -> ClipSpec:
        """The clip played backwards: the second shape moves back first, then the first one."""
        return ClipSpec(
            first=Move(self.second.object, OPPOSITE[self.second.direction], self.end(self.second, travel)),
            second=Move(self.first.object, OPPOSITE[self.first.direction], self.end(self.first, travel)),
            template=self.template,
        )

    def caption(self) -> str:
        return CAPTION_TEMPLATES[self.template].format(
            first=self.first.object,
            first_direction=self.first.direction,
            second=self.second.object,
            second_direction=self.second.direction,
        )


def _shape_mask(shape: str, size: int) -> np.ndarray:
    rows, cols = np.mgrid[0:size, 0:size] + 0.5
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        return (rows - size / 2) ** 2 + (cols - size / 2) ** 2 <= (size / 2) ** 2
    if shape == "triangle":  # apex up
        return np.abs(cols - size / 2) <= rows / 2
    raise ValueError(f"Unknown shape {shape!r}.")


def _draw(frame: np.ndarray, obj: str, position: tuple[int, int], size: int) -> None:
    color, shape = obj.split(" ")
    top, left = position
    frame[top : top + size, left : left + size][_shape_mask(shape, size)] = COLORS[color]


def _path(move: Move, num_frames: int, speed: int) -> list[tuple[int, int]]:
    step = DIRECTIONS[move.direction]
    return [(move.start[0] + step[0] * speed * t, move.start[1] + step[1] * speed * t) for t in range(num_frames)]


def render_clip(spec: ClipSpec, config: SyntheticConfig) -> np.ndarray:
    """The frames `(frames_per_clip, size, size, 3)` of a two-move clip."""
    half = config.frames_per_clip // 2
    first_path = _path(spec.first, half, config.speed)
    second_path = _path(spec.second, half, config.speed)
    positions = [(first_path[t], spec.second.start) for t in range(half)]
    positions += [(first_path[-1], second_path[t]) for t in range(half)]
    frames = np.empty((config.frames_per_clip, config.frame_size, config.frame_size, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    for frame, (first_position, second_position) in zip(frames, positions):
        _draw(frame, spec.first.object, first_position, config.object_size)
        _draw(frame, spec.second.object, second_position, config.object_size)
    return frames


def _swept_box(move: Move, travel: int, size: int) -> tuple[int, int, int, int]:
    step = DIRECTIONS[move.direction]
    end = (move.start[0] + step[0] * travel, move.start[1] + step[1] * travel)
    top, left = min(move.start[0], end[0]), min(move.start[1], end[1])
    bottom, right = max(move.start[0], end[0]) + size, max(move.start[1], end[1]) + size
    return top, left, bottom, right


def _boxes_overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _random_move(rng: np.random.Generator, obj: str, config: SyntheticConfig, travel: int) -> Move:
    direction = str(rng.choice(list(DIRECTIONS)))
    step = DIRECTIONS[direction]
    limit = config.frame_size - config.object_size
    # Start positions that keep the whole path inside the frame.
    bounds = [(max(0, -s * travel), limit - max(0, s * travel)) for s in step]
    start = tuple(int(rng.integers(low, high + 1)) for low, high in bounds)
    return Move(obj, direction, start)


def sample_clip_spec(rng: np.random.Generator, config: SyntheticConfig) -> ClipSpec:
    """A random two-move clip whose shapes never overlap."""
    travel = config.speed * (config.frames_per_clip // 2 - 1)
    first_object, second_object = rng.choice(len(OBJECTS), size=2, replace=False)
    # Two different shapes and colours keep the caption unambiguous.
    while OBJECTS[second_object].split(" ")[0] == OBJECTS[first_object].split(" ")[0] or (
        OBJECTS[second_object].split(" ")[1] == OBJECTS[first_object].split(" ")[1]
    ):
        second_object = rng.integers(len(OBJECTS))
    while True:
        first = _random_move(rng, OBJECTS[first_object], config, travel)
        second = _random_move(rng, OBJECTS[second_object], config, travel)
        boxes = (_swept_box(first, travel, config.object_size), _swept_box(second, travel, config.object_size))
        if not _boxes_overlap(*boxes):
            return ClipSpec(first, second, int(rng.integers(len(CAPTION_TEMPLATES))))


def _ego_travel(config: SyntheticConfig) -> int:
    # As far as a move of a two-move clip, spread over a whole segment.
    return config.speed * (config.frames_per_clip // 2 - 1)


@dataclass(frozen=True)
class EgoVideoSpec:
    """A long video: three shapes in view, one narrated move per segment."""

    video_uid: str
    objects: tuple[str, ...]
    starts: tuple[tuple[int, int], ...]
    moves: tuple[tuple[int, str], ...]  # (object position in `objects`, direction) per segment


def sample_ego_video_spec(rng: np.random.Generator, config: SyntheticConfig, video_uid: str) -> EgoVideoSpec:
    """Three shapes and a sequence of distinct (object, direction) moves that stay inside the frame."""
    travel = _ego_travel(config)
    limit = config.frame_size - config.object_size
    objects = tuple(OBJECTS[i] for i in rng.choice(len(OBJECTS), size=3, replace=False))
    while True:
        positions = [tuple(int(v) for v in rng.integers(0, limit + 1, size=2)) for _ in objects]
        starts, moves, used = tuple(positions), [], set()
        for _ in range(config.segments_per_ego_video):
            options = []
            for obj in range(len(objects)):
                for direction, step in DIRECTIONS.items():
                    end = [positions[obj][k] + step[k] * travel for k in range(2)]
                    if (obj, direction) not in used and all(0 <= v <= limit for v in end):
                        options.append((obj, direction))
            if not options:
                break
            obj, direction = options[int(rng.integers(len(options)))]
            used.add((obj, direction))
            step = DIRECTIONS[direction]
            positions[obj] = (positions[obj][0] + step[0] * travel, positions[obj][1] + step[1] * travel)
            moves.append((obj, direction))
        if len(moves) == config.segments_per_ego_video:
            return EgoVideoSpec(video_uid, objects, starts, tuple(moves))


def render_ego_video(spec: EgoVideoSpec, config: SyntheticConfig) -> np.ndarray:
    """The frames of a long video: `segments_per_ego_video * frames_per_clip` frames."""
    travel = _ego_travel(config)
    n = config.frames_per_clip
    positions = [np.array(start, dtype=float) for start in spec.starts]
    frames = np.empty((len(spec.moves) * n, config.frame_size, config.frame_size, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    for segment, (obj, direction) in enumerate(spec.moves):
        origin = positions[obj].copy()
        step = np.array(DIRECTIONS[direction], dtype=float)
        for j in range(n):
            positions[obj] = origin + step * round(travel * j / (n - 1))
            frame = frames[segment * n + j]
            for index, name in enumerate(spec.objects):
                _draw(frame, name, (int(positions[index][0]), int(positions[index][1])), config.object_size)
    return frames


def ego_caption(spec: EgoVideoSpec, segment: int) -> str:
    obj, direction = spec.moves[segment]
    return EGO_TEMPLATE.format(object=spec.objects[obj], direction=direction)


def _questions(spec: ClipSpec, rng: np.random.Generator, count: int) -> list[tuple[str, str, str]]:
    """`(question, answer, question type)` triples about a clip."""
    first, second = spec.first, spec.second
    pool = [
        ("what moves first?", first.object, "order"),
        ("what moves second?", second.object, "order"),
        (f"what moves after the {first.object}?", second.object, "order"),
        (f"what moves before the {second.object}?", first.object, "order"),
        (f"which direction does the {first.object} move?", first.direction, "direction"),
        (f"which direction does the {second.object} move?", second.direction, "direction"),
        (f"what color is the shape that moves {first.direction}?", first.object.split(" ")[0], "color"),
    ]
    if first.direction == second.direction:
        pool.pop()  # ambiguous
    chosen = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return [pool[i] for i in sorted(chosen)]


def default_cache_dir() -> Path:
    """`$SVITT_CACHE_DIR`, else `$XDG_CACHE_HOME/svitt`, else `~/.cache/svitt`."""
    if os.environ.get("SVITT_CACHE_DIR"):
        return Path(os.environ["SVITT_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "svitt" if xdg else Path.home() / ".cache" / "svitt"


def default_synthetic_root(config: SyntheticConfig | None = None) -> Path:
    """`<cache>/synthetic/<version>-<seed>`, with the config's fingerprint appended when it is not the default size."""
    config = config or SyntheticConfig()
    name = f"{SYNTHETIC_VERSION}-{config.seed}"
    if dataclasses.replace(config, seed=0) != SyntheticConfig():
        name += f"-{config.fingerprint()}"
    return default_cache_dir() / "synthetic" / name


@dataclass(frozen=True)
class SyntheticDataset:
    """
    Paths of a generated synthetic set. Video paths in each annotation file are relative to that file's folder
    (the readers' default media root): `root` for the clip splits, `root/ego` for EgoClip and EgoMCQ.
    """

    root: Path
    config: SyntheticConfig

    def __getattr__(self, name: str) -> Path:
        files = {
            "pretrain": "pretrain.json",
            "ret_train": "ret_train.json",
            "ret_test": "ret_test.json",
            "qa_train": "qa_train.json",
            "qa_test": "qa_test.json",
            "qa_answer_list": "qa_answer_list.json",
            "egoclip": "ego/egoclip.tsv",
            "egomcq": "ego/egomcq.json",
            "egomcq_train": "ego/egomcq_train.json",
            "taxonomy": "taxonomy.json",
            "manifest": "manifest.json",
        }
        if name in files:
            return self.root / files[name]
        raise AttributeError(name)

    @property
    def num_verbs(self) -> int:
        return len(VERBS)

    @property
    def num_nouns(self) -> int:
        return len(OBJECTS)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")


def _encode(path: Path, frames: np.ndarray, config: SyntheticConfig) -> None:
    # One keyframe per segment/clip, like real footage where seeking matters; single-threaded for reproducibility.
    write_video(path, frames, fps=config.fps, keyframe_interval=config.frames_per_clip, crf=18, threads=1)


def _build(root: Path, config: SyntheticConfig) -> dict[str, Any]:
    # One generator drives every split, in this order: drawing anything in between would change every later split.
    rng = np.random.default_rng(config.seed)
    (root / "clips").mkdir(parents=True)
    (root / "ego").mkdir()
    clips = _write_clips(root, config, rng)
    _write_caption_files(root, config, clips)
    _write_qa_files(root, config, clips, rng)
    ego_videos = _write_ego_videos(root, config, rng)
    _write_egoclip(root / "ego" / "egoclip.tsv", config, ego_videos["ego_train"])
    # intra-video items are drawn first, so the items are those of v3 under the dataset's codes
    mcq = _egomcq_items(ego_videos["ego_test"], (EGOMCQ_INTRA_VIDEO, EGOMCQ_INTER_VIDEO), config, rng)
    # drawn after everything else, so the other splits stay what they were before this split existed
    train_types = (
        (EGOMCQ_INTRA_VIDEO, EGOMCQ_INTER_VIDEO) if len(ego_videos["ego_train"]) >= 5 else (EGOMCQ_INTRA_VIDEO,)
    )
    _write_json(root / "ego" / "egomcq_train.json", _egomcq_items(ego_videos["ego_train"], train_types, config, rng))
    _write_json(root / "ego" / "egomcq.json", mcq)
    _write_json(root / "taxonomy.json", {"verbs": VERBS, "nouns": OBJECTS})
    return {
        "num_pretrain_clips": config.num_pretrain_clips,
        "num_test_clips": config.num_test_clips,
        "num_egoclip_clips": config.num_ego_train_videos * config.segments_per_ego_video,
        "num_egomcq_items": len(mcq),
    }


_Clips = dict[str, list[tuple[str, ClipSpec]]]  # split -> (path relative to the set's root, spec) of each clip


def _write_clips(root: Path, config: SyntheticConfig, rng: np.random.Generator) -> _Clips:
    """Draw and encode the two-move clips of the `"pretrain"` and `"test"` splits."""
    specs = {
        "pretrain": [sample_clip_spec(rng, config) for _ in range(config.num_pretrain_clips)],
        "test": [sample_clip_spec(rng, config) for _ in range(config.num_test_clips)],
    }
    clips: _Clips = {}
    for split, split_specs in specs.items():
        clips[split] = []
        for i, spec in enumerate(split_specs):
            relative = f"clips/{split}_{i:05d}.mp4"
            _encode(root / relative, render_clip(spec, config), config)
            clips[split].append((relative, spec))
    return clips


def _write_caption_files(root: Path, config: SyntheticConfig, clips: _Clips) -> None:
    """`pretrain.json` and `ret_train.json` (encoding the reversed twins when asked for), and `ret_test.json` with the
    reversed clip's caption as each test clip's distractor."""
    travel = config.speed * (config.frames_per_clip // 2 - 1)
    captions = []
    for i, (relative, spec) in enumerate(clips["pretrain"]):
        captions.append({"video": relative, "caption": spec.caption()})
        if config.reversed_twins:
            twin, twin_relative = spec.reversed(travel), f"clips/pretrain_{i:05d}_reversed.mp4"
            _encode(root / twin_relative, render_clip(twin, config), config)
            captions.append({"video": twin_relative, "caption": twin.caption()})
    _write_json(root / "pretrain.json", captions)
    _write_json(root / "ret_train.json", captions)
    test_entries = [
        {"video": relative, "caption": spec.caption(), "distractor_caption": spec.reversed(travel).caption()}
        for relative, spec in clips["test"]
    ]
    _write_json(root / "ret_test.json", test_entries)


def _write_qa_files(
    root: Path, config: SyntheticConfig, clips: _Clips, rng: np.random.Generator
) -> None:
    """`qa_train.json` (questions about the pretraining clips), `qa_test.json` and `qa_answer_list.json`."""
    for split, name in (("pretrain", "qa_train.json"), ("test", "qa_test.json")):
        items = []
        for relative, spec in clips[split]:
            for question, answer, kind in _questions(spec, rng, config.questions_per_clip):
                items.append({"video": relative, "question": question, "answer": answer, "question_id": len(items),
                              "question_type": kind})
        _write_json(root / name, items)
    _write_json(root / "qa_answer_list.json", list(DIRECTIONS) + list(COLORS) + OBJECTS)


def _write_ego_videos(root: Path, config: SyntheticConfig, rng: np.random.Generator) -> dict[str, list[EgoVideoSpec]]:
    """Draw and encode the long videos: `{"ego_train": [...], "ego_test": [...]}`."""
    counts = {"ego_train": config.num_ego_train_videos, "ego_test": config.num_ego_test_videos}
    videos = {
        split: [sample_ego_video_spec(rng, config, f"{split}{i:04d}") for i in range(count)]
        for split, count in counts.items()
    }
    for split_videos in videos.values():
        for spec in split_videos:
            _encode(root / "ego" / f"{spec.video_uid}.mp4", render_ego_video(spec, config), config)
    return videos


def _ego_clip_record(spec: EgoVideoSpec, segment: int, config: SyntheticConfig) -> dict[str, Any]:
    """The EgoClip fields of one narrated segment of a long video."""
    segment_seconds = config.frames_per_clip / config.fps
    obj, direction = spec.moves[segment]
    return {
        "video_uid": spec.video_uid,
        "clip_start": segment * segment_seconds,
        "clip_end": (segment + 1) * segment_seconds,
        "clip_text": ego_caption(spec, segment),
        "tag_verb": str([list(DIRECTIONS).index(direction)]),
        "tag_noun": str([OBJECTS.index(spec.objects[obj])]),
    }


def _write_egoclip(path: Path, config: SyntheticConfig, videos: list[EgoVideoSpec]) -> None:
    """The EgoClip metadata (TSV) of every segment of the training videos."""
    segment_seconds = config.frames_per_clip / config.fps
    duration = config.segments_per_ego_video * segment_seconds
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(
            ["clip_idx", "video_uid", "video_dur", "narration_source", "narration_ind", "narration_time",
             "clip_start", "clip_end", "clip_text", "tag_verb", "tag_noun"]
        )
        clip_idx = 0
        for spec in videos:
            for segment in range(config.segments_per_ego_video):
                record = _ego_clip_record(spec, segment, config)
                writer.writerow(
                    [clip_idx, spec.video_uid, duration, "narration_pass_1", segment,
                     (segment + 0.5) * segment_seconds, record["clip_start"], record["clip_end"],
                     record["clip_text"], record["tag_verb"], record["tag_noun"]]
                )
                clip_idx += 1


def _intra_video_candidates(
    video: EgoVideoSpec, segment: int, config: SyntheticConfig, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """Four other segments of the query's own video."""
    others = [s for s in range(config.segments_per_ego_video) if s != segment]
    picks = rng.choice(others, size=4, replace=False)
    return [_ego_clip_record(video, int(s), config) for s in picks]


def _inter_video_candidates(
    videos: list[EgoVideoSpec], video: int, query_text: str, config: SyntheticConfig, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """A segment of each of four other videos, never one narrated exactly like the query: that would be a second right
    answer (one video narrates each move once, so at most one of its segments is excluded)."""
    others = [v for v in range(len(videos)) if v != video]
    picks = rng.choice(others, size=4, replace=False)
    candidates = []
    for v in picks:
        other = videos[int(v)]
        segments = [s for s in range(config.segments_per_ego_video) if ego_caption(other, s) != query_text]
        candidates.append(_ego_clip_record(other, int(rng.choice(segments)), config))
    return candidates


def _egomcq_items(
    videos: list[EgoVideoSpec], item_types: tuple[int, ...], config: SyntheticConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """`mcq_items_per_type` EgoMCQ items of each type over `videos`, keyed `"0"`, `"1"`, ... as in the real file."""
    mcq: dict[str, Any] = {}
    for item_type in item_types:
        for _ in range(config.mcq_items_per_type):
            video = int(rng.integers(len(videos)))
            segment = int(rng.integers(config.segments_per_ego_video))
            query = _ego_clip_record(videos[video], segment, config)
            if item_type == EGOMCQ_INTRA_VIDEO:
                candidates = _intra_video_candidates(videos[video], segment, config, rng)
            else:
                candidates = _inter_video_candidates(videos, video, query["clip_text"], config, rng)
            answer = int(rng.integers(5))
            candidates.insert(answer, query)
            mcq[str(len(mcq))] = {
                "query": query,
                "choices": {str(k): clip for k, clip in enumerate(candidates)},
                "answer": answer,
                "types": item_type,
            }
    return mcq


def generate_synthetic_dataset(
    root: str | os.PathLike | None = None,
    config: SyntheticConfig | None = None,
    overwrite: bool = False,
) -> SyntheticDataset:
    """
    Generate the synthetic set into `root` (unless a complete one for the same configuration is there already).

    The set is written to a temporary folder next to `root` and moved into place at the end, so an interrupted run
    leaves nothing half-written and concurrent runs do not corrupt each other.

    Args:
        root (*optional*): target folder (defaults to [`default_synthetic_root`]).
        config ([`SyntheticConfig`], *optional*): size and seed (defaults to the default set, seed 0).
        overwrite (`bool`): regenerate even if a complete set is present.

    Returns:
        [`SyntheticDataset`] with the paths of every split.
    """
    config = config or SyntheticConfig()
    root = Path(root) if root is not None else default_synthetic_root(config)
    manifest = root / "manifest.json"
    if manifest.is_file():
        stored = json.loads(manifest.read_text(encoding="utf-8"))
        same = stored.get("version") == SYNTHETIC_VERSION and stored.get("config") == dataclasses.asdict(config)
        if same and not overwrite:
            return SyntheticDataset(root, config)
        if not same and not overwrite:
            raise FileExistsError(
                f"'{root}' holds a synthetic set of another version or configuration; pass overwrite=True or "
                "another root."
            )
    elif root.exists() and (not root.is_dir() or any(root.iterdir())):
        # Never delete a folder this module did not write.
        raise FileExistsError(f"'{root}' exists and is not a synthetic SViTT dataset; choose another root.")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        started = time.perf_counter()
        counts = _build(staging / "data", config)
        _write_json(
            staging / "data" / "manifest.json",
            {
                "version": SYNTHETIC_VERSION,
                "config": dataclasses.asdict(config),
                "counts": counts,
                "generation_seconds": round(time.perf_counter() - started, 3),
            },
        )
        if (root / "manifest.json").is_file():
            if not overwrite:  # another process finished first
                return SyntheticDataset(root, config)
            shutil.rmtree(root)
        elif root.is_dir():
            root.rmdir()  # empty, checked above
        os.replace(staging / "data", root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SyntheticDataset(root, config)


def load_synthetic_dataset(
    root: str | os.PathLike | None = None, config: SyntheticConfig | None = None
) -> SyntheticDataset:
    """The synthetic set, generated on first use (see [`generate_synthetic_dataset`])."""
    return generate_synthetic_dataset(root, config, overwrite=False)


def bag_of_frames_is_blind(spec: ClipSpec, config: SyntheticConfig) -> bool:
    """Whether a clip and its distractor's clip hold the same frames in opposite order (the probe's premise)."""
    travel = config.speed * (config.frames_per_clip // 2 - 1)
    return bool(np.array_equal(render_clip(spec.reversed(travel), config), render_clip(spec, config)[::-1]))


__all__: Sequence[str] = [
    "CAPTION_TEMPLATES",
    "OBJECTS",
    "SYNTHETIC_VERSION",
    "VERBS",
    "ClipSpec",
    "EgoVideoSpec",
    "Move",
    "SyntheticConfig",
    "SyntheticDataset",
    "bag_of_frames_is_blind",
    "default_synthetic_root",
    "generate_synthetic_dataset",
    "load_synthetic_dataset",
    "render_clip",
    "render_ego_video",
    "sample_clip_spec",
    "sample_ego_video_spec",
]
