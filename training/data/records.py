"""Annotation records held as memory-mapped Arrow tables, converted once per annotation file and cached.

A corpus of millions of clips read into Python dicts costs gigabytes in every process, and DataLoader workers copy
the pages they touch (reference counts write to every object they read). Here the readers of `annotations.py` run
once per file, streaming their records into an Arrow file (`datasets.Dataset`), and every later run, rank and worker
memory-maps that file: the pages are the operating system's page cache, shared by all processes of the machine.

**Where the conversion is cached**: in `.svitt-cache/` beside the annotation file when its folder is writable, else
in SViTT's cache folder (`$SVITT_CACHE_DIR/annotations`, else `~/.cache/svitt/annotations`). **What it is keyed
by**: the reader and its options (format, media root, path template, ...), the source of the readers (a changed
reader converts again), and the file's identity: its size, its modification time (nanoseconds) and a hash of its
first and last MiB. A full hash would cost seconds per launch and per process on a file of gigabytes; size + mtime
+ head/tail catches every ordinary change (an edit, an append, a replacement, a copy from elsewhere) at constant
cost. An edit that keeps the size and the modification time (e.g. set back with `touch -d`) is not seen: delete the
`.svitt-cache` folder after such an edit. Processes converting the same file wait on a
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
_INT, _ID_LIST = datasets.Value("int32"), datasets.List(datasets.Value("int32"))
# The stored columns of each kind of record table. Rows are read at random, and the kernel maps 64 KiB of the file
# around every page a read touches: the smaller the columns, the fewer pages a process maps. So columns that equal the
# row's position are not stored (`POSITIONAL_COLUMNS`), strings repeated over many rows are stored as int32 codes into
# a list of their distinct values (`INTERNED_COLUMNS`: EgoClip's few thousand videos for 3.8M clips), ids and tags
# are int32, and values of mixed types (QA ids may be numbers or strings) are JSON text (`JSON_COLUMNS`).
RECORD_FEATURES = {
    "captions": datasets.Features(
        video=datasets.Value("string"), caption=datasets.Value("string"), match_id=_INT, video_id=_INT,
    ),
    "egoclip": datasets.Features(
        video=_INT, start=datasets.Value("float64"), end=datasets.Value("float64"), caption=datasets.Value("string"),
        video_uid=_INT, video_id=_INT, verb_tags=_ID_LIST, noun_tags=_ID_LIST,
    ),
    "qa": datasets.Features(
        video=datasets.Value("string"), question=datasets.Value("string"), question_id=datasets.Value("string"),
        answers=datasets.List(datasets.Value("string")), answer_weights=datasets.List(datasets.Value("float64")),
        question_type=datasets.Value("string"),
    ),
    "egomcq": datasets.Features(
        query=datasets.Value("string"), choices=datasets.List(_CLIP), answer=_INT, type=_INT,
    ),
    "retrieval_videos": datasets.Features(video=datasets.Value("string"), distractor=datasets.Value("string")),
    "retrieval_texts": datasets.Features(text=datasets.Value("string"), videos=datasets.List(datasets.Value("int64"))),
}
POSITIONAL_COLUMNS = {
    "captions": ("index",), "qa": ("index",), "egoclip": ("index", "match_id"), "egomcq": ("index",),
    "retrieval_videos": ("index",),
}
INTERNED_COLUMNS = {"egoclip": ("video", "video_uid")}
JSON_COLUMNS = {"qa": ("question_id", "question_type")}


class RecordTable:
    """
    Read-only records of one annotation file backed by a `datasets.Dataset` (memory-mapped when converted from a
    file). Indexing returns a plain dict, as the record lists of `annotations.py` do. `table` holds the stored columns
    (see `RECORD_FEATURES`); `to_hf_dataset()` gives every column of the records.
    """

    def __init__(self, table: datasets.Dataset, kind: str, interned: Mapping[str, list[str]] | None = None):
        self.table = table
        self.kind = kind
        self.interned = dict(interned or {})
        self._json_columns = JSON_COLUMNS.get(kind, ())
        self._positional = POSITIONAL_COLUMNS.get(kind, ())

    def __len__(self) -> int:
        return len(self.table)

    def _decode(self, row: dict[str, Any], position: int) -> dict[str, Any]:
        for column in self._positional:
            row[column] = position
        for column, values in self.interned.items():
            row[column] = values[row[column]]
        for column in self._json_columns:
            row[column] = json.loads(row[column])
        return row

    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[position] for position in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} of a table of {len(self)}")
        position = int(index) % len(self)
        return self._decode(self.table[position], position)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for position, row in enumerate(self.table):
            yield self._decode(row, position)

    def column(self, name: str) -> list:
        """One column as a Python list (decoded); meant for evaluation-sized tables."""
        if name in self._positional:
            return list(range(len(self)))
        values = self.table[name]
        if name in self.interned:
            return [self.interned[name][code] for code in values]
        return [json.loads(value) for value in values] if name in self._json_columns else list(values)

    def to_hf_dataset(self) -> datasets.Dataset:
        """Every column of the records as a new `datasets.Dataset` (positional and interned columns written out)."""
        table = self.table.with_format(None)
        for name in self._positional + tuple(self.interned):
            values = self.column(name)
            table = table.remove_columns(name) if name in table.column_names else table
            table = table.add_column(name, values)
        return table

    def __eq__(self, other) -> bool:
        if isinstance(other, RecordTable):
            return (self.kind == other.kind and self.interned == other.interned
                    and self.table.data.table.equals(other.table.data.table))
        return NotImplemented

    __hash__ = None


class _Encoder:
    """Records of `annotations.py` -> the stored columns of `RECORD_FEATURES[kind]` (interning as it goes)."""

    def __init__(self, kind: str):
        self.kind = kind
        self.interned: dict[str, dict[str, int]] = {column: {} for column in INTERNED_COLUMNS.get(kind, ())}
        self.position = 0

    def __call__(self, record: Mapping[str, Any]) -> dict[str, Any]:
        record = dict(record)
        for column in POSITIONAL_COLUMNS.get(self.kind, ()):
            if record.pop(column) != self.position:
                raise RuntimeError(f"{self.kind} records: {column} {record} differs from the row position")
        for column, codes in self.interned.items():
            record[column] = codes.setdefault(record[column], len(codes))
        for column in JSON_COLUMNS.get(self.kind, ()):
            record[column] = json.dumps(record[column])
        self.position += 1
        return record

    def interned_values(self) -> dict[str, list[str]]:
        return {column: list(codes) for column, codes in self.interned.items()}


def _write_table(rows: Iterable[Mapping[str, Any]], kind: str, path: str) -> dict[str, list[str]]:
    """Stream `rows` into an Arrow file that `datasets.Dataset.from_file` memory-maps (the features in its schema).
    Returns the values of the interned columns."""
    schema = RECORD_FEATURES[kind].arrow_schema
    names, encode = schema.names, _Encoder(kind)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
        batch: list[Mapping[str, Any]] = []
        for row in itertools.chain(rows, [None]):
            if row is not None:
                batch.append(encode(row))
            if len(batch) == _WRITE_BATCH or (row is None and batch):
                columns = [[item[name] for item in batch] for name in names]
                writer.write_batch(pa.RecordBatch.from_arrays(
                    [pa.array(column, type=field.type) for column, field in zip(columns, schema)], schema=schema
                ))
                batch.clear()
    return encode.interned_values()


def in_memory_table(rows: Iterable[Mapping[str, Any]], kind: str) -> RecordTable:
    """Records of in-memory annotations (nothing to cache) as a `RecordTable`."""
    encode = _Encoder(kind)
    encoded = [encode(row) for row in rows]
    features = RECORD_FEATURES[kind]
    columns = {name: [row[name] for row in encoded] for name in features}
    return RecordTable(datasets.Dataset.from_dict(columns, features=features), kind, encode.interned_values())


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
            Path(f"{folder}.lock").unlink(missing_ok=True)


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
            umask = os.umask(0)
            os.umask(umask)
            temporary.chmod(0o777 & ~umask)  # as a plain folder would be (mkdtemp makes it private to its user)
            try:
                interned = {name: _write_table(rows, name, str(temporary / f"{name}.arrow"))
                            for name, rows in convert().items()}
                meta = {**identity, "kind": kind, "options": dict(options), "tables": list(interned)}
                (temporary / "interned.json").write_text(json.dumps(interned), encoding="utf-8")
                (temporary / "meta.json").write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(temporary, folder)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
            _remove_stale(root, stem, identity, folder)
        names = json.loads((folder / "meta.json").read_text(encoding="utf-8"))["tables"]
        interned = json.loads((folder / "interned.json").read_text(encoding="utf-8"))
    return {name: RecordTable(datasets.Dataset.from_file(str(folder / f"{name}.arrow")), name, interned[name])
            for name in names}


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


def open_records(
    kind: str, source: Any, media_root: str | os.PathLike | None = None, **options
) -> dict[str, RecordTable]:
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
