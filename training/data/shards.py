"""Write tar shards (the `webdataset` / `video2dataset` layout) from annotations and their media, to convert once.

    python -m training.data.shards --format egoclip --annotations egoclip.csv --media-root ego4d/ --output shards/ \\
        --samples-per-shard 1000

A sample is `{key}.mp4` (the video; for EgoClip the clip's segment, cut from its Ego4D file without re-encoding:
from the keyframe before the clip to a second past its end), `{key}.txt` (the caption) and `{key}.json` (what the
reader of the format gives: caption, ids, and for EgoClip the segment inside the cut file and the verb and noun
tags). With `--group-size g`, g consecutive annotation entries form one sample (`{key}.0.mp4 ... {key}.<g-1>.mp4`,
`{key}.json` = `{"group": [metadata, ...]}`), so that a group (e.g. a clip and its reversed twin) stays in one batch
after shuffling. Samples are shuffled (`--seed`) before they are written, because the streamed reader only shuffles
shard order and within a buffer. Shards are `<output>/00000.tar, 00001.tar, ...`; the tool prints the pattern a
recipe names them by (`data.shards: shards/{00000..00127}.tar`). Unreadable videos are skipped and counted.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import random
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import annotations
from .records import RecordTable, open_records

logger = logging.getLogger(__name__)

# Formats the tool reads, and those a streamed training stage can read back (`streaming.py`).
SHARD_FORMATS = ("captions", "retrieval", "qa", "egoclip")
SEGMENT_MARGIN_SECONDS = 1.0


class ShardError(ValueError):
    """The shards cannot be written (bad arguments, an existing output, nothing readable)."""


def read_records(data_format: str, source: str, media_root: str | None, **options) -> RecordTable:
    """The records of an annotation file as the readers of `annotations.py` give them, from the cached table
    (`records.py`; retrieval test files are read as captions: one sample per caption and video)."""
    if data_format in SHARD_FORMATS:
        kind = "captions" if data_format == "retrieval" else data_format
        return open_records(kind, source, media_root, **options)[kind]
    raise ShardError(
        f"--format {data_format!r}: shards are written from {', '.join(SHARD_FORMATS)} annotations "
        "(EgoMCQ and other evaluation sets are read from their files)"
    )


def cut_segment(path: str, start: float, end: float) -> tuple[bytes, float, float]:
    """The packets of `path` from the keyframe before `start` to `SEGMENT_MARGIN_SECONDS` past `end`, remuxed into
    an MP4 in memory (no re-encoding), and the segment's `(start, end)` inside it."""
    import av

    with av.open(path, metadata_errors="ignore") as source:
        stream = source.streams.video[0]
        time_base = stream.time_base
        origin = float(stream.start_time * time_base) if stream.start_time is not None else 0.0
        source.seek(int((origin + start) / time_base), stream=stream, backward=True, any_frame=False)
        buffer, first = io.BytesIO(), None
        with av.open(buffer, "w", format="mp4") as target:
            out = target.add_stream_from_template(stream)
            for packet in source.demux(stream):
                if packet.dts is None:  # the demuxer's final empty packet
                    continue
                if first is None:
                    first = float(packet.pts * time_base) - origin
                if float(packet.dts * time_base) - origin > end + SEGMENT_MARGIN_SECONDS:
                    break
                packet.stream = out
                target.mux(packet)
    if first is None:
        raise OSError(f"no packet of '{path}' lies in [{start}, {end}]")
    return buffer.getvalue(), start - first, end - first


def sample_media(record: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    """The video bytes of a record and the metadata the shard stores with them."""
    meta = {key: value for key, value in record.items() if key not in ("video", "start", "end")}
    meta["source"] = os.path.basename(record["video"])
    if "question_id" in meta:  # numbers in some files, strings in others: one type for every sample
        meta["question_id"], meta["question_type"] = json.dumps(meta["question_id"]), json.dumps(meta["question_type"])
    if record.get("start") is None and record.get("end") is None:
        with open(record["video"], "rb") as handle:
            return handle.read(), meta
    data, meta["start"], meta["end"] = cut_segment(record["video"], record["start"], record["end"])
    return data, meta


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    archive.addfile(info, io.BytesIO(data))


@dataclass
class ShardReport:
    shards: list[str]
    samples: int
    skipped: int
    pattern: str


def write_shards(
    records: Sequence[dict[str, Any]],
    output: str | os.PathLike,
    samples_per_shard: int = 1000,
    group_size: int = 1,
    seed: int | None = 0,
) -> ShardReport:
    """Write `records` (in groups of `group_size` consecutive records, shuffled with `seed` unless it is `None`) as
    tar shards of `samples_per_shard` samples into the new or empty folder `output`."""
    if samples_per_shard < 1 or group_size < 1:
        raise ShardError("--samples-per-shard and --group-size must be positive")
    if len(records) % group_size:
        raise ShardError(f"{len(records)} annotation entries cannot be split into groups of {group_size}")
    output = Path(output)
    if output.exists() and any(output.glob("*.tar")):
        raise ShardError(f"'{output}' already holds shards: choose a new folder (nothing is overwritten)")
    output.mkdir(parents=True, exist_ok=True)
    groups = list(range(0, len(records), group_size))  # first record of each group
    if seed is not None:
        random.Random(seed).shuffle(groups)
    num_shards = max(1, math.ceil(len(groups) / samples_per_shard))
    width = max(5, len(str(num_shards - 1)))
    shards, written, skipped = [], 0, 0
    archive, shard_path = None, None
    for position, first in enumerate(groups):
        group = [records[first + member] for member in range(group_size)]
        try:
            media = [sample_media(record) for record in group]
        except (OSError, ValueError, IndexError) as error:  # PyAV errors are OSErrors
            skipped += 1
            logger.warning(f"Skipping {[record['video'] for record in group]}: {error}")
            continue
        if archive is None or written % samples_per_shard == 0:
            if archive is not None:
                archive.close()
                os.replace(shard_path.with_suffix(".tar.tmp"), shard_path)
            shard_path = output / f"{len(shards):0{width}d}.tar"
            archive = tarfile.open(shard_path.with_suffix(".tar.tmp"), "w")
            shards.append(str(shard_path))
        key = f"{position:09d}"
        if group_size == 1:
            data, meta = media[0]
            _add(archive, f"{key}.mp4", data)
            if "caption" in meta:
                _add(archive, f"{key}.txt", meta["caption"].encode("utf-8"))
            _add(archive, f"{key}.json", json.dumps(meta).encode("utf-8"))
        else:
            for member, (data, _) in enumerate(media):
                _add(archive, f"{key}.{member}.mp4", data)
            _add(archive, f"{key}.json", json.dumps({"group": [meta for _, meta in media]}).encode("utf-8"))
        written += 1
    if archive is not None:
        archive.close()
        os.replace(shard_path.with_suffix(".tar.tmp"), shard_path)
    if not written:
        raise ShardError(f"none of the {len(groups)} samples could be read: wrong media root?")
    pattern = str(output / f"{{{0:0{width}d}..{len(shards) - 1:0{width}d}}}.tar")
    return ShardReport(shards, written, skipped, pattern)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=SHARD_FORMATS, help="the annotation format")
    parser.add_argument("--annotations", required=True, help="the annotation file")
    parser.add_argument("--media-root", help="the folder of the videos (default: the annotation file's folder)")
    parser.add_argument("--output", required=True, help="a new or empty folder for the shards")
    parser.add_argument("--samples-per-shard", type=int, default=1000)
    parser.add_argument("--group-size", type=int, default=1,
                        help="annotation entries per sample, kept together in a batch (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="shuffle the samples with this seed (default 0)")
    parser.add_argument("--no-shuffle", action="store_true", help="write the samples in annotation order")
    parser.add_argument("--match-by", default="video", choices=("video", "caption"), help="captions: as the recipe")
    parser.add_argument("--paragraphs", action="store_true", help="captions: join the captions of an entry")
    parser.add_argument("--path-template", default="{video_uid}.mp4", help="egoclip: the video file layout")
    parser.add_argument("--chunk-seconds", type=float, help="egoclip: length of Ego4D's chunked files (600)")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    options: dict[str, Any] = {}
    if args.format in ("captions", "retrieval"):
        options = dict(match_by=args.match_by, paragraphs=args.paragraphs)
    elif args.format == "egoclip":
        options = dict(path_template=args.path_template, chunk_seconds=args.chunk_seconds)
    started = time.perf_counter()
    try:
        records = read_records(args.format, args.annotations, args.media_root, **options)
        report = write_shards(records, args.output, args.samples_per_shard, args.group_size,
                              None if args.no_shuffle else args.seed)
    except (ShardError, annotations.AnnotationError, FileNotFoundError) as error:
        raise SystemExit(f"error: {error}") from None
    print(f"Wrote {report.samples} samples into {len(report.shards)} shards in {time.perf_counter() - started:.0f} s "
          f"({report.skipped} unreadable skipped). In a recipe:\n  data:\n    format: "
          f"{'captions' if args.format == 'retrieval' else args.format}\n    shards: {report.pattern}")


if __name__ == "__main__":
    main()
