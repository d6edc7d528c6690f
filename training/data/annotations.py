"""Readers of the annotation formats of the SViTT release and of EgoVLP.

Each loader turns a file (or in-memory rows, e.g. a `datasets.Dataset`) into plain records with absolute video paths
and the targets the heads need (match ids, answers and weights, tags, choices). Decoding is left to `readers.py`.

Formats:

* caption JSON (pretraining, WebVid/CC style; retrieval train): `[{"video": "rel/path.mp4", "caption": "..."}]`,
  one entry per caption (`"image"` instead of `"video"` for image corpora);
* retrieval test: `[{"video": ..., "caption": str | [str, ...]}]`, one entry per video; DiDeMo paragraphs join the
  sentences of a video into one caption; SSv2 (several videos per caption): `[{"caption": str, "video": str | [...]}]`,
  one entry per caption;
* QA: `[{"video": ..., "question": str, "answer": str | [str, ...], "question_id": ...}]` plus an answer list file
  (a JSON list of candidate strings);
* EgoClip metadata: tab-separated, columns `clip_idx, video_uid, video_dur, narration_source, narration_ind,
  narration_time, clip_start, clip_end, clip_text, tag_verb, tag_noun` (tags are stringified lists of ints);
* EgoMCQ: `{"0": {"query": clip, "choices": {"0": clip, ..., "4": clip}, "answer": int, "types": 1 | 2}, ...}`
  with clip records `{video_uid, clip_start, clip_end, clip_text, tag_verb, tag_noun}`. Type 1 is inter-video and
  type 2 intra-video, as EgoVLP's loader says (its metric prints them under each other's names).
"""

from __future__ import annotations

import ast
import csv
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from svitt_tools.metrics import EGOMCQ_INTER_VIDEO, EGOMCQ_INTRA_VIDEO

AnnotationSource = str | os.PathLike | Sequence[Mapping[str, Any]] | Iterable[Mapping[str, Any]]

EGOMCQ_TYPE_NAMES = {EGOMCQ_INTER_VIDEO: "inter-video", EGOMCQ_INTRA_VIDEO: "intra-video"}
EGOCLIP_COLUMNS = (
    "clip_idx",
    "video_uid",
    "video_dur",
    "narration_source",
    "narration_ind",
    "narration_time",
    "clip_start",
    "clip_end",
    "clip_text",
    "tag_verb",
    "tag_noun",
)


class AnnotationError(ValueError):
    """An annotation file is malformed; the message names the file and the entry."""


# What each reader expects, for messages about files of the wrong format.
ANNOTATION_FORMATS = {
    "captions": 'caption JSON, a list of {"video": path, "caption": text} (one entry per caption)',
    "retrieval": (
        'retrieval test JSON, a list of {"video": path, "caption": text or [texts]} (one entry per video; with '
        'several videos per caption, one entry per caption whose "video" may list several)'
    ),
    "qa": 'QA JSON, a list of {"video": path, "question": text, "answer": text or [texts], "question_id": id}',
    "answer_list": "an answer list, a JSON list of answer strings",
    "egoclip": "EgoClip metadata, tab-separated with the columns " + ", ".join(EGOCLIP_COLUMNS),
    "egomcq": (
        'EgoMCQ JSON, {"0": {"query": clip, "choices": {"0": clip, ..., "4": clip}, "answer": 0-4, "types": 1 or 2}, '
        '...} with clips {"video_uid", "clip_start", "clip_end", "clip_text"}'
    ),
}


def _source_name(source: AnnotationSource) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else f"<in-memory {type(source).__name__}>"


def _base_dir(source: AnnotationSource, media_root: str | os.PathLike | None) -> str | None:
    if media_root is not None:
        return os.fspath(media_root)
    # Without a media root, relative paths are taken relative to the annotation file.
    if isinstance(source, (str, os.PathLike)):
        return os.path.dirname(os.path.abspath(os.fspath(source)))
    return None


def _media_path(base_dir: str | None, relative: str) -> str:
    return relative if base_dir is None or os.path.isabs(relative) else os.path.join(base_dir, relative)


def read_rows(source: AnnotationSource) -> list[dict[str, Any]]:
    """
    Rows of an annotation source: a `.json` list, a `.jsonl` file, a JSON object keyed by index (EgoMCQ), or an
    in-memory sequence of mappings (a list of dicts, a `datasets.Dataset`, ...).
    """
    if isinstance(source, Mapping):  # an EgoMCQ-style object keyed by index, already loaded
        return _rows_of_keyed_object(source)
    if not isinstance(source, (str, os.PathLike)):
        return [dict(row) for row in source]
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file '{path}' does not exist.")
    try:
        with open(path, encoding="utf-8") as handle:
            if path.endswith(".jsonl"):
                return [json.loads(line) for line in handle if line.strip()]
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise AnnotationError(f"Annotation file '{path}' is not valid JSON: {error}") from error
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from error
    if isinstance(data, dict):
        return _rows_of_keyed_object(data)
    if not isinstance(data, list):
        raise AnnotationError(f"Annotation file '{path}' must hold a JSON list, got {type(data).__name__}.")
    return data


def _rows_of_keyed_object(data: Mapping[Any, Any]) -> list[dict[str, Any]]:
    # EgoMCQ stores its items under stringified indices; keep them in numeric order.
    keys = sorted(data, key=lambda k: (len(str(k)), str(k)))
    for key in keys:
        if not isinstance(data[key], Mapping):
            raise AnnotationError(f"Item {key!r} is a {type(data[key]).__name__}, not a mapping of fields.")
    return [dict(data[key], _key=key) for key in keys]


def _require(row: Mapping[str, Any], keys: Sequence[str], source: str, position: int) -> None:
    if not isinstance(row, Mapping):
        raise AnnotationError(f"Entry {position} of '{source}' is a {type(row).__name__}, not a mapping of fields.")
    missing = [key for key in keys if key not in row]
    if missing:
        raise AnnotationError(f"Entry {position} of '{source}' lacks {missing} (has {sorted(row)}).")


def _media_field(row: Mapping[str, Any], source: str, position: int) -> str | list[str]:
    for key in ("video", "image"):
        if key in row:
            return _texts(row[key], source, position, key) if isinstance(row[key], list) else _text(
                row[key], source, position, key
            )
    raise AnnotationError(f"Entry {position} of '{source}' has neither a 'video' nor an 'image' field.")


# Type checks of one entry's fields, so that a malformed entry fails when the file is read, naming the file, the
# entry and the field, instead of when (and if) a training step first samples it.


def _not_utf8(path: str, error: UnicodeDecodeError) -> AnnotationError:
    return AnnotationError(
        f"Annotation file '{path}' is not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
        "save it as UTF-8."
    )


def _field_error(source: str, position: int, field: str, problem: str) -> AnnotationError:
    return AnnotationError(f"Entry {position} of '{source}', field '{field}': {problem}")


def _shown(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r:.60}"


def _text(value: Any, source: str, position: int, field: str) -> str:
    """A field holding one string (a video path, a question, a narration)."""
    if not isinstance(value, str):
        raise _field_error(source, position, field, f"must be a string, got {_shown(value)}")
    return value


def _texts(value: Any, source: str, position: int, field: str) -> list[str]:
    """A field holding a string or a non-empty list of strings (the captions of a video, the videos of a caption)."""
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, (list, tuple)) or not values or not all(isinstance(item, str) for item in values):
        raise _field_error(
            source, position, field, f"must be a string or a non-empty list of strings, got {_shown(value)}"
        )
    return list(values)


def _segment(clip: Mapping[str, Any], source: str, position: int, prefix: str = "") -> tuple[float, float]:
    """`clip_start` / `clip_end` in seconds (numbers, or numeric text as in EgoClip's TSV): start >= 0, end >= start."""
    bounds = []
    for key in ("clip_start", "clip_end"):
        value = clip[key]
        try:
            seconds = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            seconds = math.nan
        if not math.isfinite(seconds):
            raise _field_error(source, position, prefix + key, f"must be a number of seconds, got {_shown(value)}")
        bounds.append(seconds)
    start, end = bounds
    if start < 0:
        raise _field_error(source, position, prefix + "clip_start", f"must be >= 0, got {start:g}")
    if end < start:
        raise _field_error(source, position, prefix + "clip_end", f"{end:g} is before clip_start {start:g}")
    return start, end


def _basename_id(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


class _IdAssigner:
    """Dense integer ids in order of first appearance (the release's `img_ids` construction)."""

    def __init__(self):
        self.ids: dict[Any, int] = {}

    def __call__(self, key: Any) -> int:
        return self.ids.setdefault(key, len(self.ids))


def load_caption_annotations(
    source: AnnotationSource,
    media_root: str | os.PathLike | None = None,
    match_by: str = "video",
    paragraphs: bool = False,
) -> list[dict[str, Any]]:
    """The records of `iter_caption_annotations` as a list."""
    return list(iter_caption_annotations(source, media_root, match_by, paragraphs))


def iter_caption_annotations(
    source: AnnotationSource,
    media_root: str | os.PathLike | None = None,
    match_by: str = "video",
    paragraphs: bool = False,
) -> Iterator[dict[str, Any]]:
    """
    Pretraining and retrieval-train records, one per caption.

    Args:
        source: caption JSON (`[{"video": ..., "caption": ...}]`) or rows.
        media_root: directory the video paths are relative to (defaults to the annotation file's directory).
        match_by (`str`, defaults to `"video"`): what makes two captions positives of each other. `"video"` gives
            captions of the same video (same file basename, as the release) the same `match_id`; `"caption"` gives
            the same id to identical caption texts (SSv2, where a label caption has many videos).
        paragraphs (`bool`): DiDeMo; the captions of an entry are joined with spaces into one caption.

    Yields:
        `dict` with `index`, `video` (path), `caption`, `match_id` and `video_id`.
    """
    if match_by not in ("video", "caption"):
        raise ValueError(f"`match_by` must be 'video' or 'caption', got {match_by!r}.")
    name, base_dir = _source_name(source), _base_dir(source, media_root)
    video_ids, caption_ids = _IdAssigner(), _IdAssigner()
    count = 0
    for position, row in enumerate(read_rows(source)):
        _require(row, ["caption"], name, position)
        media = _media_field(row, name, position)
        captions = _texts(row["caption"], name, position, "caption")
        if paragraphs:
            captions = [" ".join(captions)]
        videos = [media] if isinstance(media, str) else list(media)
        # Lists on either side expand to one record per (caption, video) pair.
        for video in videos:
            for caption in captions:
                video_id = video_ids(_basename_id(video))
                yield {
                    "index": count,
                    "video": _media_path(base_dir, video),
                    "caption": caption,
                    "match_id": video_id if match_by == "video" else caption_ids(caption),
                    "video_id": video_id,
                }
                count += 1


def load_retrieval_test_annotations(
    source: AnnotationSource,
    media_root: str | os.PathLike | None = None,
    is_paragraph_retrieval: bool = False,
    has_multi_vision_gt: bool = False,
) -> dict[str, Any]:
    """
    A retrieval evaluation set: its videos, its texts and which texts match which videos.

    Args:
        source: retrieval test JSON or rows.
        media_root: directory the video paths are relative to (defaults to the annotation file's directory).
        is_paragraph_retrieval (`bool`): DiDeMo; the sentences of a video are joined with spaces into one text.
        has_multi_vision_gt (`bool`): SSv2; one entry per caption, whose `video` may list several videos.

    Returns:
        `dict` with `videos` (paths), `texts`, `text_to_videos` (list of lists of video positions),
        `video_to_texts` and `distractors` (per video, the entry's `distractor_caption` or `None`; the synthetic
        temporal probe uses it).
    """
    name, base_dir = _source_name(source), _base_dir(source, media_root)
    videos: list[str] = []
    video_position: dict[str, int] = {}
    texts: list[str] = []
    text_to_videos: list[list[int]] = []
    distractors: list[str | None] = []

    def add_video(relative: str) -> int:
        path = _media_path(base_dir, relative)
        if path not in video_position:
            video_position[path] = len(videos)
            videos.append(path)
            distractors.append(None)
        return video_position[path]

    for position, row in enumerate(read_rows(source)):
        _require(row, ["caption"], name, position)
        media = _media_field(row, name, position)
        if has_multi_vision_gt:
            if not isinstance(row["caption"], str):
                raise AnnotationError(
                    f"Entry {position} of '{name}': with several videos per caption, 'caption' must be one string."
                )
            targets = [add_video(v) for v in ([media] if isinstance(media, str) else media)]
            texts.append(row["caption"])
            text_to_videos.append(targets)
            continue
        if not isinstance(media, str):
            raise AnnotationError(f"Entry {position} of '{name}': 'video' must be one path (one entry per video).")
        video = add_video(media)
        if row.get("distractor_caption") is not None:
            distractors[video] = _text(row["distractor_caption"], name, position, "distractor_caption")
        captions = _texts(row["caption"], name, position, "caption")
        if is_paragraph_retrieval:
            captions = [" ".join(captions)]
        for caption in captions:
            texts.append(caption)
            text_to_videos.append([video])

    video_to_texts: list[list[int]] = [[] for _ in videos]
    for text, targets in enumerate(text_to_videos):
        for video in targets:
            video_to_texts[video].append(text)
    return {
        "videos": videos,
        "texts": texts,
        "text_to_videos": text_to_videos,
        "video_to_texts": video_to_texts,
        "distractors": distractors,
    }


def answer_weights(answers: str | Sequence[str]) -> tuple[list[str], list[float]]:
    """Unique answers and their weights `count / number of answers` (the release's VQA targets)."""
    answers = [answers] if isinstance(answers, str) else list(answers)
    if not answers:
        return [], []
    counts = Counter(answers)
    unique = list(counts)
    return unique, [counts[answer] / len(answers) for answer in unique]


def load_answer_list(path: str | os.PathLike) -> list[str]:
    """The candidate answers of a QA dataset (a JSON list of strings)."""
    rows = read_rows(path)
    if not all(isinstance(answer, str) for answer in rows):
        raise AnnotationError(f"Answer list '{os.fspath(path)}' must be a JSON list of strings.")
    return list(rows)


def load_qa_annotations(source: AnnotationSource, media_root: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """The records of `iter_qa_annotations` as a list."""
    return list(iter_qa_annotations(source, media_root))


def iter_qa_annotations(
    source: AnnotationSource, media_root: str | os.PathLike | None = None
) -> Iterator[dict[str, Any]]:
    """
    Video QA records.

    Yields:
        `dict` with `index`, `video`, `question`, `question_id`, `answers` (unique), `answer_weights` and
        `question_type` (the entry's `question_type` or `type`, else `None`). Entries without an `answer` (an
        unlabelled test set) get empty `answers`.
    """
    name, base_dir = _source_name(source), _base_dir(source, media_root)
    for position, row in enumerate(read_rows(source)):
        _require(row, ["question"], name, position)
        media = _text(_media_field(row, name, position), name, position, "video")
        answer = row.get("answer", [])
        answers, weights = answer_weights(_texts(answer, name, position, "answer") if answer != [] else answer)
        yield {
            "index": position,
            "video": _media_path(base_dir, media),
            "question": _text(row["question"], name, position, "question"),
            "question_id": row.get("question_id", position),
            "answers": answers,
            "answer_weights": weights,
            "question_type": row.get("question_type", row.get("type")),
        }


def parse_tags(value: Any) -> list[int]:
    """EgoClip/EgoMCQ tags: a stringified list of ints (`"[3, 17]"`), parsed without `eval`."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    parsed = value
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:  # the common "[3, 17]" without the parser: millions of EgoClip rows
                inner = text[1:-1]
                return [int(v) for v in inner.split(",")] if inner.strip() else []
            except ValueError:
                pass
        parsed = ast.literal_eval(value)
    if isinstance(parsed, int):
        return [parsed]
    return [int(v) for v in parsed]


def ego_video_path(
    media_root: str | None,
    video_uid: str,
    start: float,
    end: float,
    path_template: str = "{video_uid}.mp4",
    chunk_seconds: float | None = None,
) -> tuple[str, float, float]:
    """
    File and in-file segment of an Ego4D clip.

    With `chunk_seconds` (EgoVLP stores Ego4D as 600 s chunks, `path_template="{video_uid}/{chunk}.mp4"`), the
    chunk holding the clip start is used and the segment is shifted into it; a clip crossing a chunk boundary is cut
    at the boundary.
    """
    chunk = 0
    if chunk_seconds:
        chunk = int(start // chunk_seconds)
        offset = chunk * chunk_seconds
        start, end = start - offset, min(end - offset, chunk_seconds)
    return _media_path(media_root, path_template.format(video_uid=video_uid, chunk=chunk)), start, end


def load_egoclip_annotations(
    source: AnnotationSource,
    media_root: str | os.PathLike | None = None,
    path_template: str = "{video_uid}.mp4",
    chunk_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """The records of `iter_egoclip_annotations` as a list."""
    return list(iter_egoclip_annotations(source, media_root, path_template, chunk_seconds))


def _egoclip_rows(source: AnnotationSource) -> Iterator[Mapping[str, Any]]:
    if isinstance(source, (str, os.PathLike)) and not os.fspath(source).endswith((".json", ".jsonl")):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"EgoClip metadata file '{path}' does not exist.")
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                yield from csv.DictReader(handle, delimiter="\t")
        except UnicodeDecodeError as error:
            raise _not_utf8(path, error) from error
    else:
        yield from read_rows(source)


def iter_egoclip_annotations(
    source: AnnotationSource,
    media_root: str | os.PathLike | None = None,
    path_template: str = "{video_uid}.mp4",
    chunk_seconds: float | None = None,
) -> Iterator[dict[str, Any]]:
    """
    EgoClip records (tab-separated metadata, or rows with the same columns), read row by row.

    Yields:
        `dict` with `index`, `video`, `start`, `end` (seconds in that file), `caption` (`clip_text`),
        `video_uid`, `video_id` (dense id of `video_uid`, for EgoNCE's same-video negatives), `match_id` (one per
        clip), `verb_tags`, `noun_tags` (lists of class indices).
    """
    name, base_dir = _source_name(source), _base_dir(source, media_root)
    video_ids = _IdAssigner()
    for position, row in enumerate(_egoclip_rows(source)):
        _require(row, ["video_uid", "clip_start", "clip_end", "clip_text"], name, position)
        start, end = _segment(row, name, position)
        video_uid = _text(row["video_uid"], name, position, "video_uid")
        _text(row["clip_text"], name, position, "clip_text")
        video, start, end = ego_video_path(base_dir, video_uid, start, end, path_template, chunk_seconds)
        try:
            verbs, nouns = parse_tags(row.get("tag_verb")), parse_tags(row.get("tag_noun"))
        except (ValueError, SyntaxError) as error:
            raise AnnotationError(f"Entry {position} of '{name}' has unreadable tags: {error}") from error
        yield {
            "index": position,
            "video": video,
            "start": start,
            "end": end,
            "caption": row["clip_text"],
            "video_uid": row["video_uid"],
            "video_id": video_ids(row["video_uid"]),
            "match_id": position,
            "verb_tags": verbs,
            "noun_tags": nouns,
        }


def load_egomcq_annotations(
    source: AnnotationSource,
    media_root: str | os.PathLike | None = None,
    path_template: str = "{video_uid}.mp4",
    chunk_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """The records of `iter_egomcq_annotations` as a list."""
    return list(iter_egomcq_annotations(source, media_root, path_template, chunk_seconds))


def iter_egomcq_annotations(
    source: AnnotationSource,
    media_root: str | os.PathLike | None = None,
    path_template: str = "{video_uid}.mp4",
    chunk_seconds: float | None = None,
) -> Iterator[dict[str, Any]]:
    """
    EgoMCQ items: one text query and five candidate clips.

    Yields:
        `dict` with `index`, `query` (text), `choices` (five `{"video", "start", "end"}`), `answer` (0-4) and
        `type` (1 inter-video, 2 intra-video).
    """
    name, base_dir = _source_name(source), _base_dir(source, media_root)
    for position, row in enumerate(read_rows(source)):
        _require(row, ["query", "choices", "answer", "types"], name, position)
        try:
            choices_field = row["choices"]
            choice_rows = (
                [choices_field[key] for key in sorted(choices_field, key=int)]
                if isinstance(choices_field, Mapping)
                else list(choices_field)
            )
            choices = []
            for number, clip in enumerate(choice_rows):
                start, end = _segment(clip, name, position, f"choices.{number}.")
                video_uid = _text(clip["video_uid"], name, position, f"choices.{number}.video_uid")
                video, start, end = ego_video_path(base_dir, video_uid, start, end, path_template, chunk_seconds)
                choices.append({"video": video, "start": start, "end": end})
            query = _text(row["query"]["clip_text"], name, position, "query.clip_text")
            item_type = int(row["types"])
        except AnnotationError:
            raise
        except (KeyError, TypeError, ValueError) as error:
            raise AnnotationError(f"Entry {position} of '{name}' is not an EgoMCQ item: {error!r}") from error
        if item_type not in EGOMCQ_TYPE_NAMES:
            raise AnnotationError(
                f"Entry {position} of '{name}' has types={item_type}; expected 1 (inter-video) or 2 (intra-video)."
            )
        answer = int(row["answer"])
        if not 0 <= answer < len(choices):
            raise AnnotationError(f"Entry {position} of '{name}' has answer {answer} but {len(choices)} choices.")
        yield {
            "index": position,
            "query": query,
            "choices": choices,
            "answer": answer,
            "type": item_type,
        }
