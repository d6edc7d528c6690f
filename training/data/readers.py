"""PyTorch datasets over the annotation formats of `annotations.py`: decode, transform, skip what cannot be read.

Every dataset:

* decodes only the frames it needs ([`read_video`]) and applies [`SViTTVideoProcessor`] with the training transforms
  (`rand` frames, random resized crop, flip) when `train=True`, the evaluation ones (`middle` frames, resize)
  otherwise;
* draws all randomness from a generator seeded by `(seed, epoch, index)`, so a sample is the same whichever
  DataLoader worker reads it and however many workers there are (`set_epoch` changes it, also in persistent workers);
* skips unreadable samples: `__getitem__` returns `None` (the collators drop it), logs a warning naming the file and
  counts it once per sample in memory shared by all workers. A sample is always the video *and* the text of its own
  annotation entry: a failure never substitutes another video (the release did, silently mismatching captions).
  When the unreadable samples exceed `max_bad_fraction` of the dataset, reading aborts with
  [`TooManyBadSamplesError`] (a wrong `media_root` shows up after a handful of samples, not after an epoch);
* holds its records as a memory-mapped Arrow table ([`RecordTable`], see `records.py`), converted once per
  annotation file and cached, so that processes and DataLoader workers share its pages instead of each holding
  Python objects; accepts in-memory rows (a list of dicts or a `datasets.Dataset`) instead of an annotation file;
  `to_hf_dataset` gives the table as a `datasets.Dataset` whose `hf_transform` decodes lazily.
"""

from __future__ import annotations

import abc
import logging
import multiprocessing
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from modeling_svitt.processing_svitt import SViTTProcessor, SViTTVideoProcessor
from modeling_svitt.video_io import VideoDecodingError, read_video

from .annotations import AnnotationSource, load_answer_list
from .records import RecordTable, open_records

logger = logging.getLogger(__name__)


class TooManyBadSamplesError(RuntimeError):
    """More samples of a dataset could not be read than its `max_bad_fraction` allows."""


def _spawning() -> bool:
    # Shared memory may only be pickled while a child process is being spawned (e.g. DataLoader workers under the
    # "spawn" start method); any other pickling (deepcopy, `datasets` fingerprinting) must not try to share it.
    from multiprocessing.context import get_spawning_popen

    return get_spawning_popen() is not None


class SharedInt:
    """An integer in shared memory, seen by every process forked or spawned after its creation."""

    def __init__(self, value: int = 0):
        self._value = multiprocessing.Value("q", value)

    @property
    def value(self) -> int:
        return self._value.value

    @value.setter
    def value(self, value: int) -> None:
        self._value.value = value

    def get_lock(self):
        return self._value.get_lock()

    def __getstate__(self):
        return {"_value": self._value if _spawning() else self._value.value}

    def __setstate__(self, state):
        value = state["_value"]
        self._value = multiprocessing.Value("q", value) if isinstance(value, int) else value


class BadSampleTracker:
    """
    Counts unreadable samples of a dataset across DataLoader worker processes and aborts past a limit.

    The flags and the counter live in shared memory created with the dataset, so every worker (forked or spawned
    from the process that built the dataset) updates the same numbers; each sample counts once however often it is
    read. A plain copy of the tracker (deepcopy, pickling outside process start-up) gets its own snapshot.

    Two rules abort: more than `max_bad_fraction` of the distinct samples read failed, or the first
    `abort_if_first_all_fail` distinct samples read all failed (nothing is readable, e.g. a wrong media root: on a
    dataset of millions the fraction alone would only trip after thousands of failures). The fraction counts against
    what this process read, and at least against its share of one epoch (`num_samples / num_readers`, see
    `set_num_readers`), so that early failures do not abort while the budget stays a fraction of what was read.

    Args:
        num_samples (`int`): size of the dataset.
        max_bad_fraction (`float`): abort when more than `max_bad_fraction * num_samples` distinct samples failed.
        name (`str`): the dataset, for messages.
        abort_if_first_all_fail (`int`, defaults to 32): abort when this many distinct samples were read and none
            succeeded (0 disables the rule; so does `max_bad_fraction=1`).
    """

    _UNREAD, _BAD, _GOOD = 0, 1, 2

    def __init__(self, num_samples: int, max_bad_fraction: float, name: str = "dataset", abort_if_first_all_fail: int = 32):
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"`max_bad_fraction` must be in [0, 1], got {max_bad_fraction}.")
        self.num_samples, self.max_bad_fraction, self.name = num_samples, max_bad_fraction, name
        self.abort_if_first_all_fail = abort_if_first_all_fail
        self.num_readers = 1
        self._flags = multiprocessing.RawArray("b", max(num_samples, 1))
        self._count = SharedInt(0)
        self._good = SharedInt(0)
        self.errors: dict[int, str] = {}  # this process's view, for inspection

    def __getstate__(self):
        state = self.__dict__.copy()
        if not _spawning():
            state["_flags"] = bytes(self._flags)
        return state

    def __setstate__(self, state):
        if isinstance(state["_flags"], bytes):
            state["_flags"] = multiprocessing.RawArray("b", list(state["_flags"]))
        self.__dict__.update(state)

    @property
    def num_bad(self) -> int:
        """Distinct samples that could not be read so far (all processes)."""
        return self._count.value

    @property
    def bad_indices(self) -> list[int]:
        """Indices of the samples that could not be read so far (all processes)."""
        return [index for index in range(self.num_samples) if self._flags[index] == self._BAD]

    def set_num_readers(self, num_readers: int) -> None:
        """The dataset is read by `num_readers` processes, each with its own tracker and about `1 / num_readers` of
        every epoch: the budget counts against this process's share instead of the whole dataset (which would make
        it `num_readers` times looser). Call it before the loader's workers start."""
        if num_readers < 1:
            raise ValueError(f"`num_readers` must be positive, got {num_readers}.")
        self.num_readers = num_readers

    @property
    def budget_basis(self) -> int:
        """The number of samples the fraction counts against: the distinct samples this process read, at least its
        share of one epoch."""
        share = -(-self.num_samples // self.num_readers)
        return max(self._good.value + self._count.value, share)

    def record_success(self, index: int) -> None:
        """Note a sample that was read (only the first read of each sample takes the lock)."""
        if self._flags[index] == self._UNREAD:
            with self._good.get_lock():
                if self._flags[index] == self._UNREAD:
                    self._flags[index] = self._GOOD
                    self._good.value += 1

    def record(self, index: int, error: Exception) -> None:
        """Count a failed sample, warn, and raise [`TooManyBadSamplesError`] once a limit is passed."""
        with self._count.get_lock():
            if self._flags[index] != self._BAD:
                self._flags[index] = self._BAD
                self._count.value += 1
            count = self._count.value
        self.errors[index] = str(error)
        basis = self.budget_basis
        limit = self.max_bad_fraction * basis
        logger.warning(f"Skipping sample {index} of {self.name}: {error} ({count} unreadable so far).")
        first = min(self.abort_if_first_all_fail, -(-self.num_samples // self.num_readers))
        if self.max_bad_fraction < 1.0 and first and count >= first and self._good.value == 0:
            raise TooManyBadSamplesError(
                f"The first {count} samples of {self.name} read could not be read, and none could: nothing in it "
                f"seems readable. Last failure: {error}. Check the media root and the files."
            )
        if count > limit:
            scope = "" if basis == self.num_samples else (
                f"(what this process read, at least its share of the {self.num_samples} samples) "
            )
            raise TooManyBadSamplesError(
                f"{count} of the {basis} samples of {self.name} {scope}could not be read, more than "
                f"max_bad_fraction={self.max_bad_fraction} allows ({limit:g}). Last failure: {error}. Check the "
                "media root and the files, or raise `max_bad_fraction`."
            )


def _video_processor(processor: SViTTProcessor | SViTTVideoProcessor | None) -> SViTTVideoProcessor:
    if processor is None:
        return SViTTVideoProcessor()
    if isinstance(processor, SViTTProcessor):
        return processor.video_processor
    return processor


def _mix_seed(seed: int, epoch: int, index: int) -> int:
    # Distinct, reproducible streams per (seed, epoch, sample), independent of the worker that reads the sample.
    return ((seed * 1_000_003 + epoch) * 1_000_033 + index) % (2**63 - 1)


class VideoDatasetBase(Dataset, abc.ABC):
    """
    Shared machinery of the SViTT datasets (decoding, transforms, seeding, bad-sample accounting).

    Args:
        records ([`RecordTable`] or `list[dict]`): normalised records from `annotations.py`.
        processor ([`SViTTVideoProcessor`] or [`SViTTProcessor`], *optional*): frame transforms (size, mean/std,
            crop ranges). Defaults to the release's settings at 224 px.
        train (`bool`, defaults to `False`): training transforms and `rand` sampling, else evaluation ones.
        num_frames (`int`, *optional*): frames per clip (defaults to the processor's `num_frames`).
        frame_sampling (`str`, *optional*): overrides `rand` (train) / `middle` (eval).
        num_clips (`int`, *optional*): clips per video for test-time ensembling (`pixel_values (K, T, 3, H, W)`).
        clip_layout (`str`, defaults to `"consecutive"`): how the clips are cut from the sampled frames.
        seed (`int`, defaults to 0): seed of all per-sample randomness.
        horizontal_flip (`bool`, defaults to `True`): flip training clips at random (the release does). Turn it off
            when captions name left and right, as the synthetic set's do: a flipped clip contradicts its caption.
        max_bad_fraction (`float`, defaults to 0.01): abort once more than this fraction of the samples failed.
        name (`str`, *optional*): name used in messages (defaults to the annotation file).
    """

    def __init__(
        self,
        records: RecordTable | list[dict[str, Any]],
        processor: SViTTProcessor | SViTTVideoProcessor | None = None,
        *,
        train: bool = False,
        num_frames: int | None = None,
        frame_sampling: str | None = None,
        num_clips: int | None = None,
        clip_layout: str = "consecutive",
        seed: int = 0,
        horizontal_flip: bool = True,
        max_bad_fraction: float = 0.01,
        name: str | None = None,
    ):
        self.records = records
        self.video_processor = _video_processor(processor)
        self.train = train
        self.num_frames = num_frames or self.video_processor.num_frames
        self.frame_sampling = frame_sampling or ("rand" if train else "middle")
        self.num_clips = num_clips
        self.clip_layout = clip_layout
        self.seed = seed
        self.horizontal_flip = horizontal_flip
        self.name = name or type(self).__name__
        self.bad_samples = BadSampleTracker(len(self), max_bad_fraction, self.name)
        self._epoch = SharedInt(0)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_bad_samples(self) -> int:
        """Distinct samples skipped so far because their media could not be read."""
        return self.bad_samples.num_bad

    def set_epoch(self, epoch: int) -> None:
        """Change the random draws (frames, crops, flips) for a new epoch; seen by persistent workers too."""
        self._epoch.value = epoch

    def generator(self, index: int) -> torch.Generator:
        """The random generator of sample `index` in the current epoch."""
        return torch.Generator().manual_seed(_mix_seed(self.seed, self._epoch.value, index))

    def read_clip(
        self,
        path: str,
        generator: torch.Generator,
        start: float | None = None,
        end: float | None = None,
    ) -> torch.Tensor:
        """Decode and transform one clip: `(T, 3, H, W)`, or `(K, T, 3, H, W)` with `num_clips`."""
        decoded = read_video(
            path,
            self.num_frames,
            self.frame_sampling,
            num_clips=self.num_clips,
            clip_layout=self.clip_layout,
            start=start,
            end=end,
            generator=generator,
        )
        return self.video_processor.process_video(
            decoded,
            generator=generator,
            do_random_resized_crop=self.train,
            do_random_horizontal_flip=self.train and self.horizontal_flip,
        )

    @abc.abstractmethod
    def build_item(self, record: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        """The sample of one record; subclasses define it. May raise [`VideoDecodingError`]."""

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        record = self.records[index]
        try:
            item = self.build_item(record, self.generator(index))
        except VideoDecodingError as error:
            self.bad_samples.record(index, error)
            return None
        self.bad_samples.record_success(index)
        item["index"] = index
        return item

    def to_hf_dataset(self):
        """The records as a `datasets.Dataset` (paths and targets, no pixels); pair it with `hf_transform`."""
        import datasets

        if isinstance(self.records, RecordTable):
            return self.records.to_hf_dataset()
        return datasets.Dataset.from_list([dict(record) for record in self.records])

    def hf_transform(self, batch: dict[str, list]) -> dict[str, list]:
        """
        `datasets` transform that decodes rows of `to_hf_dataset()` into samples (`dataset.set_transform(...)`).
        Unreadable rows come back with `pixel_values=None`, which the collators drop.
        """
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        items = [self[int(row["index"])] for row in rows]
        keys = dict.fromkeys(key for item in items if item is not None for key in item)
        if not keys:
            keys = dict.fromkeys(["pixel_values", "index"])
        columns: dict[str, list] = {key: [] for key in keys}
        for row, item in zip(rows, items):
            item = item if item is not None else {"pixel_values": None, "index": row["index"]}
            for key in columns:
                columns[key].append(item.get(key))
        return columns


class VideoCaptionDataset(VideoDatasetBase):
    """
    Video-caption pairs for pretraining (WebVid/CC caption JSON) and retrieval fine-tuning (MSRVTT, DiDeMo,
    Charades, SSv2 train files).

    Items: `pixel_values (T, 3, H, W)`, `text`, `match_id` (same id = positives: same video, or same caption with
    `match_by="caption"` for SSv2), `video_id`, `index`.

    Args:
        annotations: caption JSON path or rows.
        media_root (*optional*): directory of the videos (defaults to the annotation file's directory).
        match_by (`str`, defaults to `"video"`): `"video"` or `"caption"` (SSv2).
        paragraphs (`bool`): join the captions of an entry into one (DiDeMo paragraphs).
        **kwargs: see [`VideoDatasetBase`].
    """

    def __init__(
        self,
        annotations: AnnotationSource,
        processor: SViTTProcessor | SViTTVideoProcessor | None = None,
        media_root: str | os.PathLike | None = None,
        match_by: str = "video",
        paragraphs: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("name", _describe(annotations))
        tables = open_records("captions", annotations, media_root, match_by=match_by, paragraphs=paragraphs)
        super().__init__(tables["captions"], processor, **kwargs)

    def build_item(self, record, generator):
        return {
            "pixel_values": self.read_clip(record["video"], generator),
            "text": record["caption"],
            "match_id": record["match_id"],
            "video_id": record["video_id"],
        }


class RetrievalEvalDataset(VideoDatasetBase):
    """
    The videos of a retrieval test set (MSRVTT, DiDeMo paragraphs, Charades, SSv2 with several videos per caption).

    Items are videos: `pixel_values` (`(K, T, 3, H, W)` with `num_clips`, the release's 12 test frames as 3 clips of
    4) and `index`. The texts are attributes: `texts`, `text_to_videos`, `video_to_texts` (ground truth, list of
    lists), and `distractors` (the reversed-motion caption of each video when the annotations carry one: the
    temporal probe of the synthetic set).

    Args:
        annotations: retrieval test JSON path or rows.
        media_root (*optional*): directory of the videos.
        is_paragraph_retrieval (`bool`): DiDeMo paragraphs.
        has_multi_vision_gt (`bool`): SSv2, one entry per caption with several videos.
        **kwargs: see [`VideoDatasetBase`]; a missing video is skipped, so evaluation code should use the `index`
            of the items it got (with `max_bad_fraction=0.0`, any missing video aborts instead).
    """

    def __init__(
        self,
        annotations: AnnotationSource,
        processor: SViTTProcessor | SViTTVideoProcessor | None = None,
        media_root: str | os.PathLike | None = None,
        is_paragraph_retrieval: bool = False,
        has_multi_vision_gt: bool = False,
        **kwargs,
    ):
        kwargs.setdefault("name", _describe(annotations))
        tables = open_records(
            "retrieval", annotations, media_root, is_paragraph_retrieval=is_paragraph_retrieval,
            has_multi_vision_gt=has_multi_vision_gt,
        )
        videos, texts = tables["retrieval_videos"], tables["retrieval_texts"]
        # Test sets are small (thousands of texts): their texts and ground truth are kept as lists.
        self.texts: list[str] = texts.column("text")
        self.text_to_videos: list[list[int]] = texts.column("videos")
        self.video_to_texts: list[list[int]] = [[] for _ in range(len(videos))]
        for text, targets in enumerate(self.text_to_videos):
            for video in targets:
                self.video_to_texts[video].append(text)
        self.distractors: list[str | None] = videos.column("distractor")
        super().__init__(videos, processor, **kwargs)

    @property
    def videos(self) -> list[str]:
        return self.records.column("video")

    def build_item(self, record, generator):
        return {"pixel_values": self.read_clip(record["video"], generator)}


class VideoQADataset(VideoDatasetBase):
    """
    Video question answering (MSRVTT-QA, ActivityNet-QA, AGQA formats).

    Items: `pixel_values`, `question`, `answers` (unique ground-truth answers), `answer_weights` (count / number of
    answers), `question_id`, `index`. `answer_list` holds the candidates of the answer-list file for ranking.

    Args:
        annotations: QA JSON path or rows.
        answer_list (*optional*): path of the answer list file (or the list itself).
        media_root (*optional*): directory of the videos.
        **kwargs: see [`VideoDatasetBase`].
    """

    def __init__(
        self,
        annotations: AnnotationSource,
        processor: SViTTProcessor | SViTTVideoProcessor | None = None,
        answer_list: str | os.PathLike | Sequence[str] | None = None,
        media_root: str | os.PathLike | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", _describe(annotations))
        if isinstance(answer_list, (str, os.PathLike)):
            answer_list = load_answer_list(answer_list)
        self.answer_list: list[str] | None = list(answer_list) if answer_list is not None else None
        super().__init__(open_records("qa", annotations, media_root)["qa"], processor, **kwargs)

    def build_item(self, record, generator):
        return {
            "pixel_values": self.read_clip(record["video"], generator),
            "question": record["question"],
            "answers": list(record["answers"]),
            "answer_weights": list(record["answer_weights"]),
            "question_id": record["question_id"],
        }


class EgoClipDataset(VideoDatasetBase):
    """
    EgoClip pretraining clips (time segments of Ego4D videos) with verb/noun tags for EgoNCE.

    Items: `pixel_values` (frames sampled inside `[clip_start, clip_end]`), `text`, `match_id` (one per clip),
    `video_id` (source video, for EgoNCE's same-video negatives), `verb_tags (num_verbs,)` and `noun_tags
    (num_nouns,)` multi-hot float vectors, `index`.

    Args:
        annotations: EgoClip metadata (tab-separated) path or rows.
        media_root (*optional*): directory of the videos.
        num_verbs (`int`, defaults to 118), num_nouns (`int`, defaults to 582): tag vocabulary sizes (Ego4D's).
        path_template (`str`, defaults to `"{video_uid}.mp4"`), chunk_seconds (*optional*): video file layout
            (`"{video_uid}/{chunk}.mp4"` and 600 for EgoVLP's chunks).
        **kwargs: see [`VideoDatasetBase`].
    """

    def __init__(
        self,
        annotations: AnnotationSource,
        processor: SViTTProcessor | SViTTVideoProcessor | None = None,
        media_root: str | os.PathLike | None = None,
        num_verbs: int = 118,
        num_nouns: int = 582,
        path_template: str = "{video_uid}.mp4",
        chunk_seconds: float | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", _describe(annotations))
        records = open_records(
            "egoclip", annotations, media_root, path_template=path_template, chunk_seconds=chunk_seconds
        )["egoclip"]
        self.num_verbs, self.num_nouns = num_verbs, num_nouns
        for key, size in (("verb_tags", num_verbs), ("noun_tags", num_nouns)):
            position = _first_tag_outside(records, key, size)
            if position is not None:
                record = records[position]
                raise ValueError(
                    f"Clip {record['index']} of {kwargs['name']} has {key} {record[key]} outside 0..{size - 1}; "
                    f"set num_{key.split('_')[0]}s."
                )
        super().__init__(records, processor, **kwargs)

    @staticmethod
    def _multi_hot(tags: list[int], size: int) -> torch.Tensor:
        vector = torch.zeros(size)
        vector[torch.as_tensor(tags, dtype=torch.long)] = 1.0
        return vector

    def build_item(self, record, generator):
        return {
            "pixel_values": self.read_clip(record["video"], generator, record["start"], record["end"]),
            "text": record["caption"],
            "match_id": record["match_id"],
            "video_id": record["video_id"],
            "verb_tags": self._multi_hot(record["verb_tags"], self.num_verbs),
            "noun_tags": self._multi_hot(record["noun_tags"], self.num_nouns),
        }


class EgoMCQDataset(VideoDatasetBase):
    """
    EgoMCQ: one narration and five candidate clips; the label is the matching clip.

    Items: `pixel_values (5, T, 3, H, W)`, `text`, `label` (0-4), `type` (1 inter-video, 2 intra-video), `index`.
    If any of the five clips cannot be read the whole item is skipped (scoring four choices would change the task).

    Args:
        annotations: EgoMCQ JSON path or rows.
        media_root (*optional*), path_template, chunk_seconds: video file layout, as for [`EgoClipDataset`].
        **kwargs: see [`VideoDatasetBase`] (evaluation transforms by default).
    """

    def __init__(
        self,
        annotations: AnnotationSource,
        processor: SViTTProcessor | SViTTVideoProcessor | None = None,
        media_root: str | os.PathLike | None = None,
        path_template: str = "{video_uid}.mp4",
        chunk_seconds: float | None = None,
        **kwargs,
    ):
        kwargs.setdefault("name", _describe(annotations))
        records = open_records(
            "egomcq", annotations, media_root, path_template=path_template, chunk_seconds=chunk_seconds
        )["egomcq"]
        super().__init__(records, processor, **kwargs)

    @property
    def types(self) -> list[int]:
        return self.records.column("type")

    def build_item(self, record, generator):
        clips = [self.read_clip(c["video"], generator, c["start"], c["end"]) for c in record["choices"]]
        return {
            "pixel_values": torch.stack(clips),
            "text": record["query"],
            "label": record["answer"],
            "type": record["type"],
        }


def _first_tag_outside(records: RecordTable, column: str, size: int) -> int | None:
    """Position of the first record with a tag outside `0..size-1`, or `None`. Vectorised, one stored chunk at a
    time (millions of clips: no copy of the whole column)."""
    import pyarrow.compute as pc

    start = 0
    for chunk in records.table.data.table.column(column).chunks:
        flat = chunk.flatten()
        if len(flat) and pc.any(pc.or_(pc.less(flat, 0), pc.greater_equal(flat, size))).as_py():
            for offset, tags in enumerate(chunk.to_pylist()):
                if any(not 0 <= tag < size for tag in tags):
                    return start + offset
        start += len(chunk)
    return None


def _describe(annotations: AnnotationSource) -> str:
    if isinstance(annotations, (str, os.PathLike)):
        return f"'{os.fspath(annotations)}'"
    return f"<{type(annotations).__name__} of {len(annotations) if hasattr(annotations, '__len__') else '?'} rows>"
