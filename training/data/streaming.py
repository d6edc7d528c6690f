"""Training data streamed from tar shards (the `webdataset` / `video2dataset` layout) through `datasets`.

Samples are read with the `webdataset` builder of `datasets` (`load_dataset("webdataset", data_files=...,
streaming=True)`): local files and any URL `fsspec` opens (`https://`, `s3://`, `hf://`, ...). The shard order and a
shuffle buffer are drawn from the run's seed and the epoch (`IterableDataset.shuffle` + `set_epoch`), the shards are
split among the processes (`split_dataset_by_node`: by shards when their number is a multiple of the number of
processes, else every process reads every shard and keeps its share of the samples) and,
inside a process, among its DataLoader workers (by `datasets`, shard i to worker i mod W). Videos are decoded from
the archive's bytes ([`read_video`] reads bytes), with the transforms and per-sample seeding of the file datasets.

A stream has no length: a stage that reads one gives its length in `steps`. Each worker cycles over its shards,
epoch after epoch, so every step gets a full batch. Resuming in the middle of an epoch is exact: [`StreamLoader`]
records, for every worker, the epoch and the number of samples it consumed (`state_dict()`, saved with the training
state); a resumed run skips those samples without decoding them (it reads their bytes again: the cost of a resume is
reading, not decoding, the part of the epoch already seen) and delivers the workers' batches in the same order.
`datasets`' own `state_dict` is not used for this: it drops the shuffle buffer on resumption.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from modeling_svitt.video_io import VideoDecodingError

from .loader import seed_worker
from .readers import TooManyBadSamplesError, VideoDatasetBase, _mix_seed

logger = logging.getLogger(__name__)

STREAM_FORMATS = ("captions", "egoclip")


class ShardSpecError(ValueError):
    """Shards named in a way that cannot be read (the message says what to write instead)."""


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    span = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if span:
        first, last = span.groups()
        width = len(first) if first.startswith("0") or len(first) == len(last) else 0
        options = [str(i).zfill(width) for i in range(int(first), int(last) + 1)]
    elif "," in body:
        options = body.split(",")
    else:
        return [head + "{" + body + "}" + piece for piece in _expand_braces(tail)]
    return [expanded for option in options for expanded in _expand_braces(head + option + tail)]


def expand_shards(spec: str | list[str]) -> list[str]:
    """The shard files of a recipe's `data.shards`: brace patterns (`shards/{00000..00127}.tar`, `{a,b}`), several
    specs separated by `::` (or a list), and folders (their `.tar` files, sorted). URLs are left to `fsspec`; the
    `pipe:` commands of the `webdataset` package are not supported (name the files or URLs instead)."""
    parts = spec if isinstance(spec, list) else str(spec).split("::")
    shards: list[str] = []
    for part in parts:
        part = part.strip()
        if part.startswith("pipe:"):
            raise ShardSpecError(
                f"'{part}': `pipe:` commands are a feature of the webdataset package; the `datasets` reader used here "
                "opens local files and fsspec URLs (https://, s3://, gs://, hf://): name those instead"
            )
        if "://" not in part and os.path.isdir(part):
            found = sorted(os.path.join(part, name) for name in os.listdir(part) if name.endswith(".tar"))
            if not found:
                raise ShardSpecError(f"the folder '{part}' holds no .tar shards")
            shards += found
        else:
            shards += _expand_braces(part)
    if not shards:
        raise ShardSpecError("no shard is named")
    missing = [shard for shard in shards if "://" not in shard and not os.path.isfile(shard)]
    if missing:
        raise ShardSpecError(f"{len(missing)} of the {len(shards)} shards do not exist (the first: '{missing[0]}')")
    return shards


def _key_number(key: str) -> int:
    # A stable number for samples whose metadata has no index or ids (shards written by other tools).
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=7).digest(), "big")


def _clip_records(example: dict[str, Any], data_format: str) -> list[dict[str, Any]]:
    """The records (as `annotations.py` gives them, the video as a named in-memory file) of one shard sample."""
    meta = example.get("json") or {}
    key, url = example["__key__"], example.get("__url__", "")
    if "group" in meta and meta["group"]:
        metas = list(meta["group"])
        media = [example.get(f"{member}.mp4") for member in range(len(metas))]
    else:
        metas, media = [meta], [example.get("mp4")]
    records = []
    for member, (info, data) in enumerate(zip(metas, media)):
        if isinstance(data, dict):  # a `Video` feature with decoding switched off
            data = data.get("bytes")
        name = f"{url}:{key}.{member}.mp4" if len(metas) > 1 else f"{url}:{key}.mp4"
        video = io.BytesIO(data or b"")
        video.name = name
        caption = info.get("caption") or example.get("txt")
        if caption is None:
            raise ShardSpecError(f"sample '{key}' of '{url}' has no caption (neither {key}.txt nor a json 'caption')")
        identity = info.get("match_id")
        identity = _key_number(f"{key}.{member}") if identity is None else identity
        record = {
            "index": info["index"] if info.get("index") is not None else identity,
            "video": video, "caption": caption, "match_id": identity,
            "video_id": info["video_id"] if info.get("video_id") is not None else identity,
        }
        if data_format == "egoclip":
            if info.get("verb_tags") is None or info.get("noun_tags") is None:
                raise ShardSpecError(f"sample '{key}' of '{url}' has no verb_tags / noun_tags: not an EgoClip shard")
            record.update(start=info.get("start"), end=info.get("end"), verb_tags=list(info["verb_tags"]),
                          noun_tags=list(info["noun_tags"]))
        records.append(record)
    return records


class StreamedVideoDataset(IterableDataset):
    """
    Samples of tar shards, decoded and transformed as `builder` (a dataset of the format, e.g. an empty
    [`EgoClipDataset`] with the stage's processor and options) builds its items.

    Args:
        shards (`str` or `list[str]`): see [`expand_shards`].
        builder ([`VideoDatasetBase`]): builds an item from a record (`build_item`); its records are not used.
        data_format (`str`): `captions` or `egoclip`.
        seed (`int`): the run's seed: shard order and shuffle buffer of epoch e are drawn from `seed + e`, and a
            sample's frames, crop and flip from `(seed, epoch, its index)`.
        shuffle_buffer (`int`, defaults to 1000): samples in the shuffle buffer (0: read in order).
        rank (`int`), world_size (`int`): this process and their number.
        max_bad_fraction (`float`): a worker aborts when more than this fraction of its samples (and over 32) fail, or
            when its first 32 all fail.
    """

    def __init__(
        self,
        shards: str | list[str],
        builder: VideoDatasetBase,
        data_format: str = "captions",
        *,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        max_bad_fraction: float = 0.01,
    ):
        import datasets
        from datasets.distributed import split_dataset_by_node

        if data_format not in STREAM_FORMATS:
            raise ShardSpecError(f"streamed data must be one of {STREAM_FORMATS}, got {data_format!r}")
        self.shards = expand_shards(shards)
        self.builder, self.data_format, self.seed = builder, data_format, seed
        self.max_bad_fraction = max_bad_fraction
        stream = datasets.load_dataset("webdataset", data_files={"train": self.shards}, split="train", streaming=True)
        stream = stream.decode(False)  # the videos stay bytes: they are decoded here, only the frames needed
        self._source = stream  # unshuffled: a check reads one sample, not a buffer's worth
        if shuffle_buffer:
            stream = stream.shuffle(seed=seed, buffer_size=shuffle_buffer)
        self.stream = split_dataset_by_node(stream, rank=rank, world_size=world_size) if world_size > 1 else stream
        self.num_shards = self.stream.num_shards
        self.name = f"shards {self.shards[0]}...({len(self.shards)})"
        self.positions: dict[int, tuple[int, int]] = {}  # worker -> (epoch, samples consumed): where to resume

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do: a stream counts its own epochs (each worker cycles over its shards)."""

    def first_records(self) -> list[dict[str, Any]]:
        """The records of the first sample (reads one sample: a check of the shards' layout before training)."""
        for example in self._source:
            return _clip_records(example, self.data_format)
        raise ShardSpecError(f"the shards {self.shards[:3]}... hold no sample")

    def _item(self, record: dict[str, Any], epoch: int) -> dict[str, Any] | None:
        generator = torch.Generator().manual_seed(_mix_seed(self.seed, epoch, int(record["index"]) % (2**62)))
        try:
            item = self.builder.build_item(record, generator)
        except VideoDecodingError as error:
            logger.warning(f"Skipping sample {record['video'].name}: {error}")
            return None
        item["index"] = record["index"]
        return item

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        epoch, skip = self.positions.get(worker, (0, 0))
        seen = failed = 0
        while True:
            self.stream.set_epoch(epoch)
            count = 0
            for count, example in enumerate(self.stream, 1):
                if count <= skip:
                    continue
                for record in _clip_records(example, self.data_format):
                    item = self._item(record, epoch)
                    seen, failed = seen + 1, failed + (item is None)
                    self._check_failures(seen, failed)
                    yield {**(item or {"pixel_values": None}), "_stream_position": (worker, epoch, count)}
            if count == 0:
                return  # no shard for this worker
            epoch, skip = epoch + 1, 0

    def _check_failures(self, seen: int, failed: int) -> None:
        if failed and failed == seen and seen >= 32 and self.max_bad_fraction < 1:
            raise TooManyBadSamplesError(f"The first {seen} samples of {self.name} could not be read, and none could.")
        if failed > max(32, self.max_bad_fraction * seen):
            raise TooManyBadSamplesError(
                f"{failed} of {seen} samples of {self.name} could not be read, more than max_bad_fraction="
                f"{self.max_bad_fraction} allows. Check the shards, or raise `max_bad_fraction`."
            )


class _PositionedCollator:
    """Collates in the worker and passes on where the batch ends in the worker's stream."""

    def __init__(self, collate_fn: Callable):
        self.collate_fn = collate_fn

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        position = items[-1]["_stream_position"]
        samples = [None if item.get("pixel_values") is None else
                   {key: value for key, value in item.items() if key != "_stream_position"} for item in items]
        return {"batch": self.collate_fn(samples), "position": position}


def _in_round_order(batches, offset: int, workers: int):
    """The batches of a DataLoader restarted after `offset` batches of a round of `workers`: workers below `offset`
    are one batch ahead, so each round's first `offset` batches come after the others, as in the uninterrupted run."""
    if offset == 0:
        yield from batches
        return
    iterator = iter(batches)
    while True:
        ahead = list(itertools.islice(iterator, offset))
        behind = list(itertools.islice(iterator, workers - offset))
        yield from behind
        yield from ahead
        if len(ahead) < offset or len(behind) < workers - offset:
            return


class StreamLoader:
    """
    Batches of a [`StreamedVideoDataset`] for one process, resumable mid-epoch (`state_dict` / `load_state_dict`;
    register it with `accelerator.register_for_checkpointing`). Batches are moved to `device`. `len()` is the
    stage's number of steps (`total_steps`), as a stream has no length of its own.
    """

    def __init__(self, dataset: StreamedVideoDataset, batch_size: int, collate_fn: Callable, *, num_workers: int = 0,
                 prefetch_factor: int | None = None, device: torch.device | str = "cpu", total_steps: int = 0):
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.num_workers = min(num_workers, dataset.num_shards)  # every worker gets a shard
        self.prefetch_factor, self.device, self.total_steps = prefetch_factor, torch.device(device), total_steps
        self.delivered = 0
        self.positions: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        return self.total_steps

    def set_epoch(self, epoch: int) -> None:
        """Nothing to do (see [`StreamedVideoDataset.set_epoch`])."""

    def state_dict(self) -> dict[str, Any]:
        return {"delivered": self.delivered, "workers": self.num_workers,
                "positions": {str(worker): list(position) for worker, position in self.positions.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["workers"] != self.num_workers:
            raise ValueError(f"The stream was saved with {state['workers']} data-loader workers, this run has "
                             f"{self.num_workers}: resume with the same data.num_workers.")
        self.delivered = state["delivered"]
        self.positions = {int(worker): tuple(position) for worker, position in state["positions"].items()}

    def __iter__(self) -> Iterator[dict[str, Any] | None]:
        self.dataset.positions = dict(self.positions)
        extra = {"prefetch_factor": self.prefetch_factor} if self.num_workers and self.prefetch_factor else {}
        loader = DataLoader(self.dataset, batch_size=self.batch_size, collate_fn=_PositionedCollator(self.collate_fn),
                            num_workers=self.num_workers, worker_init_fn=seed_worker, **extra)
        rounds = max(self.num_workers, 1)
        produced = False
        for wrapped in _in_round_order(loader, self.delivered % rounds, rounds):
            produced = True
            worker, epoch, consumed = wrapped["position"]
            self.positions[worker] = (epoch, consumed)
            self.delivered += 1
            batch = wrapped["batch"]
            yield None if batch is None else _to_device(batch, self.device)
        if not produced:
            raise ShardSpecError(f"{self.dataset.name} gave no batch: do the shards hold samples?")


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


__all__ = ["STREAM_FORMATS", "ShardSpecError", "StreamLoader", "StreamedVideoDataset", "expand_shards"]
