"""Annotation records held as memory-mapped Arrow tables, converted once per annotation file and cached.

A corpus of millions of clips read into Python dicts costs gigabytes in every process, and DataLoader workers copy
the pages they touch (reference counts write to every object they read). Here the readers of `annotations.py` run
once per file, streaming their records into an Arrow file (`datasets.Dataset`), and every later run, rank and worker
memory-maps that file: the pages are the operating system's page cache, shared by all processes of the machine.

**Where the conversion is cached**: in `.svitt-cache/` beside the annotation file when its folder is writable, else
in SViTT's cache folder (`$SVITT_CACHE_DIR/annotations`, else `~/.cache/svitt/annotations`). **What it is keyed by**: the reader and its options (format, media root, path template, ...), the
source of the readers (a changed reader converts again), and the file's identity: its size, its modification time
(nanoseconds) and a hash of its first and last MiB. A full hash would cost seconds per launch and per process on a
file of gigabytes; size + mtime + head/tail catches every ordinary change (an edit, an append, a replacement, a copy
from elsewhere) at constant cost. An edit that keeps the size and the modification time (e.g. set back with `touch
-d`) is not seen: delete the `.svitt-cache` folder after such an edit. Processes converting the same file wait on a
file lock, so ranks of one machine convert once; conversions of earlier versions of the file are removed.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa

from . import annotations

CACHE_FOLDER = ".svitt-cache"
_HEAD_TAIL_BYTES = 1 << 20
_WRITE_BATCH = 20_000

_CLIP = {"video": datasets.Value("string"), "start": datasets.Value("float64"), "end": datasets.Value("float64")}
# The columns of each kind of record table. Values of mixed types (QA ids and types may be numbers or strings) are
# stored as JSON text and decoded when read (`JSON_COLUMNS`).
RECORD_FEATURES = {
    "captions": datasets.Features(
        index=datasets.Value("int64"), video=datasets.Value("string"), caption=datasets.Value("string"),
        match_id=datasets.Value("int64"), video_id=datasets.Value("int64"),
    ),
    "egoclip": datasets.Features(
        index=datasets.Value("int64"), video=datasets.Value("string"), start=datasets.Value("float64"),
        end=datasets.Value("float64"), caption=datasets.Value("string"), video_uid=datasets.Value("string"),
        video_id=datasets.Value("int64"), match_id=datasets.Value("int64"),
        verb_tags=datasets.List(datasets.Value("int64")), noun_tags=datasets.List(datasets.Value("int64")),
    ),
    "qa": datasets.Features(
        index=datasets.Value("int64"), video=datasets.Value("string"), question=datasets.Value("string"),
        question_id=datasets.Value("string"), answers=datasets.List(datasets.Value("string")),
        answer_weights=datasets.List(datasets.Value("float64")), question_type=datasets.Value("string"),
    ),
    "egomcq": datasets.Features(
        index=datasets.Value("int64"), query=datasets.Value("string"), choices=datasets.List(_CLIP),
        answer=datasets.Value("int64"), type=datasets.Value("int64"),
    ),
    "retrieval_videos": datasets.Features(
        index=datasets.Value("int64"), video=datasets.Value("string"), distractor=datasets.Value("string"),
    ),
    "retrieval_texts": datasets.Features(
        text=datasets.Value("string"), videos=datasets.List(datasets.Value("int64")),
    ),
}
JSON_COLUMNS = {"qa": ("question_id", "question_type")}


class RecordTable:
    """
    Read-only records of one annotation file backed by a `datasets.Dataset` (memory-mapped when converted from a
    file). Indexing returns a plain dict, as the record lists of `annotations.py` do; `table` is the Arrow dataset
    (columns without decoding: `table["video"]`, `table.data.table` for `pyarrow.compute`).
    """

    def __init__(self, table: datasets.Dataset, kind: str):
        self.table = table
        self.kind = kind
        self._json_columns = JSON_COLUMNS.get(kind, ())

    def __len__(self) -> int:
        return len(self.table)

    def _decode(self, row: dict[str, Any]) -> dict[str, Any]:
        for column in self._json_columns:
            row[column] = json.loads(row[column])
        return row

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of a table of {len(self)}")
        return self._decode(self.table[int(index)])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for row in self.table:
            yield self._decode(row)

    def column(self, name: str) -> list:
        """One column as a Python list (decoded); meant for evaluation-sized tables."""
        values = self.table[name]
        return [json.loads(value) for value in values] if name in self._json_columns else list(values)

    def __eq__(self, other) -> bool:
        if isinstance(other, RecordTable):
            return self.kind == other.kind and self.table.data.table.equals(other.table.data.table)
        return NotImplemented

    __hash__ = None


def encode_record(kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """A record of `annotations.py` in the column types of `RECORD_FEATURES[kind]`."""
    record = dict(record)
    for column in JSON_COLUMNS.get(kind, ()):
        record[column] = json.dumps(record[column])
    return record


def _write_table(rows: Iterable[Mapping[str, Any]], kind: str, path: str) -> int:
    """Stream `rows` into an Arrow file that `datasets.Dataset.from_file` memory-maps (the features in its schema)."""
    schema = RECORD_FEATURES[kind].arrow_schema
    names, count = schema.names, 0
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        batch: list[Mapping[str, Any]] = []
        for row in itertools.chain(rows, [None]):
            if row is not None:
                batch.append(encode_record(kind, row))
            if len(batch) == _WRITE_BATCH or (row is None and batch):
                columns = [[item[name] for item in batch] for name in names]
                writer.write_batch(pa.RecordBatch.from_arrays(
                    [pa.array(column, type=field.type) for column, field in zip(columns, schema)], schema=schema
                ))
                count += len(batch)
                batch.clear()
    return count


def in_memory_table(rows: Iterable[Mapping[str, Any]], kind: str) -> RecordTable:
    """Records of in-memory annotations (nothing to cache) as a `RecordTable`."""
    encoded = [encode_record(kind, row) for row in rows]
    features = RECORD_FEATURES[kind]
    columns = {name: [row[name] for row in encoded] for name in features}
    return RecordTable(datasets.Dataset.from_dict(columns, features=features), kind)


# ----------------------------------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------------------------------


def file_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What the cache key takes from a file: size, modification time (ns) and a hash of its first and last MiB."""
    stat = os.stat(path)
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        digest.update(handle.read(_HEAD_TAIL_BYTES))
        if stat.st_size > _HEAD_TAIL_BYTES:
            handle.seek(max(_HEAD_TAIL_BYTES, stat.st_size - _HEAD_TAIL_BYTES))
            digest.update(handle.read(_HEAD_TAIL_BYTES))
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "head_tail_blake2b": digest.hexdigest()}


def _reader_version() -> str:
    # The readers' own source is part of the key: a reader that parses or checks differently converts again.
    return hashlib.blake2b(inspect.getsource(annotations).encode(), digest_size=8).hexdigest()


def _cache_root(annotation_path: str) -> Path:
    beside = Path(annotation_path).resolve().parent / CACHE_FOLDER
    try:
        beside.mkdir(exist_ok=True)
        if os.access(beside, os.W_OK):
            return beside
    except OSError:
        pass
    from .synthetic import default_cache_dir  # (synthetic.py imports the readers, which import this module)

    return default_cache_dir() / "annotations"


def _remove_stale(root: Path, stem: str, identity: dict[str, Any], keep: Path) -> None:
    """Remove conversions of earlier versions of the same annotation file (never those of its current version)."""
    for folder in root.glob(f"{stem}-*"):
        meta = folder / "meta.json"
        if folder == keep or not meta.is_file():
            continue
        try:
            recorded = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if recorded.get("source") == identity["source"] and recorded.get("identity") != identity["identity"]:
            shutil.rmtree(folder, ignore_errors=True)


def cached_tables(
    path: str | os.PathLike,
    kind: str,
    options: Mapping[str, Any],
    convert: Callable[[], Mapping[str, Iterable[Mapping[str, Any]]]],
) -> dict[str, RecordTable]:
    """
    The record tables of annotation file `path`, converted by `convert()` (a mapping of table kind to records, e.g.
    `{"egoclip": iter_egoclip_annotations(...)}`) on first use and memory-mapped from the cache afterwards.

    `options` are the reading options that change the records (media root, path template, ...): part of the key.
    Errors of the readers (`AnnotationError`, `FileNotFoundError`) propagate, and nothing is cached then.
    """
    from filelock import FileLock

    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Annotation file '{path}' does not exist.")
    identity = {"source": path, "identity": file_identity(path)}
    key_material = json.dumps(
        {**identity, "kind": kind, "options": dict(options), "reader": _reader_version()}, sort_keys=True, default=str
    )
    key = hashlib.blake2b(key_material.encode(), digest_size=10).hexdigest()
    root = _cache_root(path)
    root.mkdir(parents=True, exist_ok=True)
    stem = Path(path).name
    folder = root / f"{stem}-{key}"
    with FileLock(str(root / f"{stem}-{key}.lock")):
        if not (folder / "meta.json").is_file():
            temporary = Path(tempfile.mkdtemp(prefix=f".{stem}-{key}-", dir=root))
            try:
                counts = {name: _write_table(rows, name, str(temporary / f"{name}.arrow"))
                          for name, rows in convert().items()}
                meta = {**identity, "kind": kind, "options": dict(options), "num_rows": counts}
                (temporary / "meta.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(temporary, folder)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
            _remove_stale(root, stem, identity, folder)
        names = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["num_rows"]
    return {name: RecordTable(datasets.Dataset.from_file(str(folder / f"{name}.arrow")), name) for name in names}


def record_tables(
    source: Any,
    kind: str,
    options: Mapping[str, Any],
    convert: Callable[[], Mapping[str, Iterable[Mapping[str, Any]]]],
) -> dict[str, RecordTable]:
    """`cached_tables` for an annotation file; an in-memory table for in-memory rows (a list of dicts, a
    `datasets.Dataset`), which have no file to key a cache by."""
    if isinstance(source, (str, os.PathLike)):
        return cached_tables(source, kind, options, convert)
    return {name: in_memory_table(rows, name) for name, rows in convert().items()}


# ----------------------------------------------------------------------------------------------------------------------
# The readers of `annotations.py` as cached tables
# ----------------------------------------------------------------------------------------------------------------------


def _retrieval_rows(source, media_root, is_paragraph_retrieval: bool, has_multi_vision_gt: bool):
    table = annotations.load_retrieval_test_annotations(source, media_root, is_paragraph_retrieval, has_multi_vision_gt)
    videos = ({"index": i, "video": video, "distractor": distractor}
              for i, (video, distractor) in enumerate(zip(table["videos"], table["distractors"])))
    texts = ({"text": text, "videos": targets} for text, targets in zip(table["texts"], table["text_to_videos"]))
    return {"retrieval_videos": videos, "retrieval_texts": texts}


def open_records(kind: str, source: Any, media_root: str | os.PathLike | None = None, **options) -> dict[str, RecordTable]:
    """
    The records of an annotation source read by the reader of `kind` (`captions`, `qa`, `egoclip`, `egomcq`,
    `retrieval`) with its `options` (e.g. `match_by`, `path_template`), as record tables: cached and memory-mapped for
    a file, in memory for in-memory rows. Returns `{kind: table}` (`retrieval`: `retrieval_videos` and
    `retrieval_texts`). Raises what the reader raises (`AnnotationError`, `FileNotFoundError`).
    """
    readers = {
        "captions": lambda: {"captions": annotations.iter_caption_annotations(source, media_root, **options)},
        "qa": lambda: {"qa": annotations.iter_qa_annotations(source, media_root, **options)},
        "egoclip": lambda: {"egoclip": annotations.iter_egoclip_annotations(source, media_root, **options)},
        "egomcq": lambda: {"egomcq": annotations.iter_egomcq_annotations(source, media_root, **options)},
        "retrieval": lambda: _retrieval_rows(source, media_root, **options),
    }
    if kind not in readers:
        raise ValueError(f"Unknown annotation kind {kind!r}; expected one of {sorted(readers)}.")
    base_dir = annotations._base_dir(source, media_root)
    key_options = {**options, "base_dir": os.path.abspath(base_dir) if base_dir else None}
    return record_tables(source, kind, key_options, readers[kind])


__all__ = ["RECORD_FEATURES", "RecordTable", "cached_tables", "file_identity", "open_records", "record_tables"]
