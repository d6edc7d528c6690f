"""Annotation readers, datasets, collators: formats, bad-sample policy, worker determinism, `datasets` interop."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from modeling_svitt.processing_svitt import SViTTProcessor, SViTTVideoProcessor
from modeling_svitt.tokenization_svitt import SViTTTokenizer
from helpers.bert_vocab import bert_vocab_dir
from test_video_io import decoded_identity, decoded_indices, write_index_video
from training.data import (
    AnnotationError,
    EgoClipDataset,
    EgoMCQDataset,
    MultipleChoiceCollator,
    RetrievalEvalDataset,
    TooManyBadSamplesError,
    VideoCaptionDataset,
    VideoCollator,
    VideoQACollator,
    VideoQADataset,
    VideoTextCollator,
    load_caption_annotations,
    load_retrieval_test_annotations,
    make_dataloader,
)
from training.data.annotations import EGOCLIP_COLUMNS, ego_video_path

NUMBERS = ["zero", "one", "two", "three", "four", "five"]


@pytest.fixture(scope="module")
def processor() -> SViTTProcessor:
    tokenizer = SViTTTokenizer.from_pretrained(bert_vocab_dir())
    return SViTTProcessor(SViTTVideoProcessor(size=16, num_frames=4), tokenizer, max_text_length=8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six readable videos (identity k, 30 index-coded frames), two missing and one corrupt file."""
    root = tmp_path_factory.mktemp("corpus")
    for k in range(6):
        write_index_video(root / f"v{k}.mp4", 30, identity=k, keyframe_interval=10)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x13" * 500)
    rows = [{"video": f"v{k}.mp4", "caption": f"clip number {NUMBERS[k]}"} for k in range(6)]
    rows.insert(2, {"video": "missing_a.mp4", "caption": "clip number missing a"})
    rows.insert(5, {"video": "corrupt.mp4", "caption": "clip number corrupt"})
    rows.append({"video": "missing_b.mp4", "caption": "clip number missing b"})
    (root / "captions.json").write_text(json.dumps(rows))
    return root


def pixels_to_uint8(pixel_values: torch.Tensor) -> torch.Tensor:
    """Undo the (0.5, 0.5) normalisation (flat index-coded frames survive resizing unchanged)."""
    return ((pixel_values * 0.5 + 0.5) * 255).round().clamp(0, 255).to(torch.uint8)


def caption_identity(text: str) -> int:
    return NUMBERS.index(text.split()[-1])


# ------------------------------------------------------------------------------------------------------------------
# Formats


def test_caption_match_ids_by_video_basename_or_by_caption():
    rows = [
        {"video": "a/x.mp4", "caption": "c1"},
        {"video": "b/x.mp4", "caption": "c2"},
        {"video": "y.mp4", "caption": "c1"},
        {"image": "z.jpg", "caption": "c3"},
    ]
    by_video = load_caption_annotations(rows, media_root="/data")
    assert [r["match_id"] for r in by_video] == [0, 0, 1, 2]  # same basename = same video, as in the release
    assert by_video[0]["video"] == "/data/a/x.mp4" and by_video[3]["video"] == "/data/z.jpg"
    by_caption = load_caption_annotations(rows, media_root="/data", match_by="caption")
    assert [r["match_id"] for r in by_caption] == [0, 1, 0, 2]  # SSv2: ids from the caption text


def test_retrieval_test_formats():
    msrvtt = load_retrieval_test_annotations(
        [{"video": "a.mp4", "caption": ["x", "y"]}, {"video": "b.mp4", "caption": "z"}], media_root="/m"
    )
    assert msrvtt["videos"] == ["/m/a.mp4", "/m/b.mp4"] and msrvtt["texts"] == ["x", "y", "z"]
    assert msrvtt["text_to_videos"] == [[0], [0], [1]] and msrvtt["video_to_texts"] == [[0, 1], [2]]
    didemo = load_retrieval_test_annotations(
        [{"video": "a.mp4", "caption": ["first part.", "second part."]}], media_root="/m", is_paragraph_retrieval=True
    )
    assert didemo["texts"] == ["first part. second part."]
    ssv2 = load_retrieval_test_annotations(
        [{"caption": "pushing", "video": ["a.mp4", "b.mp4"]}, {"caption": "pulling", "video": "b.mp4"}],
        media_root="/m",
        has_multi_vision_gt=True,
    )
    assert ssv2["videos"] == ["/m/a.mp4", "/m/b.mp4"]
    assert ssv2["text_to_videos"] == [[0, 1], [1]] and ssv2["video_to_texts"] == [[0], [0, 1]]


def test_qa_answers_weights_and_collator(corpus, processor, tmp_path):
    rows = [
        {"video": "v0.mp4", "question": "What moves?", "answer": ["a dog", "a dog", "cat"], "question_id": 7},
        {"video": "v1.mp4", "question": "Which way?", "answer": "left"},
    ]
    (tmp_path / "answers.json").write_text(json.dumps(["a dog", "cat", "left", "right"]))
    dataset = VideoQADataset(rows, processor, answer_list=tmp_path / "answers.json", media_root=corpus)
    assert dataset.answer_list == ["a dog", "cat", "left", "right"]
    item = dataset[0]
    assert item["answers"] == ["a dog", "cat"] and item["answer_weights"] == pytest.approx([2 / 3, 1 / 3])
    assert item["question_id"] == 7 and dataset[1]["question_id"] == 1
    batch = VideoQACollator(processor)([dataset[0], None, dataset[1]])
    assert batch["pixel_values"].shape == (2, 4, 3, 16, 16) and batch["input_ids"].shape == (2, 25)
    assert batch["answers_per_question"].tolist() == [2, 1]
    assert batch["answer_weights"].tolist() == pytest.approx([2 / 3, 1 / 3, 1.0])
    cls, sep = processor.tokenizer.cls_token_id, processor.tokenizer.sep_token_id
    assert batch["answer_input_ids"].tolist() == [
        [cls, 1037, 3899, sep, 0],  # "a dog [SEP]"
        [cls, 4937, sep, 0, 0],  # "cat [SEP]"
        [cls, 2187, sep, 0, 0],  # "left [SEP]"
    ]


def test_egoclip_segments_and_tags(corpus, processor, tmp_path):
    header = "\t".join(EGOCLIP_COLUMNS) + "\n"
    lines = [
        "0\tv3\t3.0\tnarration_pass_1\t0\t1.5\t1.0\t2.0\t#C C opens a door\t[1, 3]\t[0]\n",
        "1\tv3\t3.0\tnarration_pass_1\t1\t2.5\t2.2\t2.8\t#C C closes a door\t[2]\t[4, 1]\n",
        "2\tv4\t3.0\tnarration_pass_1\t0\t0.5\t0.0\t1.0\t#C C waves\t[0]\t[]\n",
    ]
    (tmp_path / "egoclip.tsv").write_text(header + "".join(lines))
    dataset = EgoClipDataset(
        tmp_path / "egoclip.tsv", processor, media_root=corpus, num_verbs=5, num_nouns=6, train=True
    )
    items = [dataset[i] for i in range(3)]
    frames = [decoded_indices(pixels_to_uint8(item["pixel_values"])) for item in items]
    assert all(10 <= i < 20 for i in frames[0])  # [1.0 s, 2.0 s] at 10 fps
    assert all(22 <= i < 28 for i in frames[1]) and all(i < 10 for i in frames[2])
    batch = VideoTextCollator(processor)(items)
    assert batch["video_ids"].tolist() == [0, 0, 1]  # same source video: EgoNCE's same-video negatives
    assert batch["match_ids"].tolist() == [0, 1, 2]
    assert batch["verb_tags"].tolist() == [[0, 1, 0, 1, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert batch["noun_tags"].tolist() == [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 1, 0], [0] * 6]
    with pytest.raises(ValueError, match="noun_tags"):
        EgoClipDataset(tmp_path / "egoclip.tsv", processor, media_root=corpus, num_verbs=5, num_nouns=3)


def test_egoclip_clip_past_the_end_of_its_video_is_a_bad_sample(corpus, processor, tmp_path, caplog):
    # an annotation whose segment starts after the (3 s) file ends: skipped, counted and named, not a crash of the run
    header = "\t".join(EGOCLIP_COLUMNS) + "\n"
    lines = [
        "0\tv3\t3.0\tnarration_pass_1\t0\t1.5\t1.0\t2.0\t#C C opens a door\t[1]\t[0]\n",
        "1\tv4\t9.0\tnarration_pass_1\t1\t7.5\t7.0\t8.0\t#C C closes a door\t[2]\t[1]\n",
    ]
    (tmp_path / "egoclip.tsv").write_text(header + "".join(lines))
    dataset = EgoClipDataset(
        tmp_path / "egoclip.tsv", processor, media_root=corpus, num_verbs=5, num_nouns=6, max_bad_fraction=0.5
    )
    assert dataset[0] is not None
    with caplog.at_level(logging.WARNING, logger="training.data.readers"):
        assert dataset[1] is None
    assert dataset.num_bad_samples == 1 and "v4.mp4" in caplog.text and "starts after the end" in caplog.text


def test_ego_video_chunks():
    # EgoVLP's 600 s chunks: a clip at 1250-1252 s lives in chunk 2, at 50-52 s of it
    in_chunk = ego_video_path("/ego", "abc", 1250.0, 1252.0, "{video_uid}/{chunk}.mp4", 600)
    assert in_chunk == ("/ego/abc/2.mp4", 50.0, 52.0)
    assert ego_video_path("/ego", "abc", 599.0, 601.0, "{video_uid}/{chunk}.mp4", 600)[2] == 600.0


def _clip(uid, start, end, text="#C C does something"):
    return {
        "video_uid": uid, "clip_start": start, "clip_end": end, "clip_text": text, "tag_verb": "[0]", "tag_noun": "[0]"
    }


def test_egomcq_items(corpus, processor):
    inter = {
        "query": _clip("v1", 1.0, 2.0, "#C C moves"),
        "choices": {str(k): _clip(f"v{k}", 1.0, 2.0) for k in range(5)},
        "answer": 1,
        "types": 1,  # inter-video
    }
    intra = {
        "query": _clip("v2", 0.0, 0.5),
        "choices": {str(k): _clip("v2", k * 0.6, k * 0.6 + 0.5) for k in range(5)},
        "answer": 0,
        "types": 2,  # intra-video
    }
    broken = dict(intra, choices={**intra["choices"], "4": _clip("missing_a", 0.0, 1.0)})
    rows = {"0": inter, "1": intra, "2": broken}.values()
    dataset = EgoMCQDataset(rows, processor, media_root=corpus, max_bad_fraction=0.5)
    assert dataset.types == [1, 2, 2]
    item = dataset[0]
    assert item["pixel_values"].shape == (5, 4, 3, 16, 16) and item["label"] == 1 and item["type"] == 1
    assert [decoded_identity(pixels_to_uint8(clip)) for clip in item["pixel_values"]] == [0, 1, 2, 3, 4]
    intra_item = dataset[1]
    for k, clip in enumerate(intra_item["pixel_values"]):
        assert all(6 * k <= i < 6 * k + 5 for i in decoded_indices(pixels_to_uint8(clip)))
    assert dataset[2] is None and dataset.num_bad_samples == 1  # one unreadable choice skips the whole item
    # the loaded JSON object itself (keyed by stringified index, as egomcq.json) is accepted as well
    keyed = {"10": broken, "2": intra, "1": inter}
    assert EgoMCQDataset(keyed, processor, media_root=corpus).types == [1, 2, 2]
    batch = MultipleChoiceCollator(processor, return_types=True)([dataset[0], dataset[1], dataset[2]])
    assert batch["pixel_values"].shape == (2, 5, 4, 3, 16, 16)
    assert batch["labels"].tolist() == [1, 0] and batch["question_types"].tolist() == [1, 2]


def test_retrieval_eval_multi_clip(corpus, processor):
    rows = [{"video": f"v{k}.mp4", "caption": [f"a {k}", f"b {k}"]} for k in range(3)]
    dataset = RetrievalEvalDataset(rows, processor, media_root=corpus, num_frames=2, num_clips=3)
    batch = VideoCollator()([dataset[0], dataset[2]])
    assert batch["pixel_values"].shape == (2, 3, 2, 3, 16, 16) and batch["index"].tolist() == [0, 2]
    # 6 middle frames of 30 in 3 consecutive clips of 2: 2 7 | 12 17 | 22 27
    clips = [decoded_indices(pixels_to_uint8(clip)) for clip in batch["pixel_values"][0]]
    assert clips == [[2, 7], [12, 17], [22, 27]]
    assert dataset.texts[:2] == ["a 0", "b 0"] and dataset.video_to_texts[2] == [4, 5]


# ------------------------------------------------------------------------------------------------------------------
# Bad samples


def test_bad_samples_are_skipped_counted_and_never_mismatched(corpus, processor, caplog):
    dataset = VideoCaptionDataset(corpus / "captions.json", processor, train=True, max_bad_fraction=0.5)
    loader = make_dataloader(dataset, 4, VideoTextCollator(processor, max_length=8), num_workers=2, shuffle=True)
    seen = []
    for batch in loader:
        texts = processor.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True)
        for text, pixels in zip(texts, batch["pixel_values"]):
            # the caption always comes with its own video
            assert caption_identity(text) == decoded_identity(pixels_to_uint8(pixels))
            seen.append(caption_identity(text))
    assert sorted(seen) == list(range(6))
    assert dataset.num_bad_samples == 3  # counted across both workers
    assert dataset.bad_samples.bad_indices == [2, 5, 8]
    with caplog.at_level(logging.WARNING, logger="training.data.readers"):
        assert dataset[5] is None
    assert "corrupt.mp4" in caplog.text and dataset.num_bad_samples == 3  # a sample counts once


def test_too_many_bad_samples_abort_with_a_clear_message(corpus, processor):
    dataset = VideoCaptionDataset(corpus / "captions.json", processor, max_bad_fraction=0.2)  # 9 samples: 1.8 allowed
    assert dataset[2] is None
    with pytest.raises(TooManyBadSamplesError, match=r"2 of the 9 samples .* could not be read.*corrupt\.mp4"):
        dataset[5]
    strict = VideoCaptionDataset(corpus / "captions.json", processor, max_bad_fraction=0.0)
    # (single process: torch takes 10 s to shut workers down after any worker exception; the count itself is shared
    # across workers, see the test above)
    with pytest.raises(TooManyBadSamplesError, match="missing_a.mp4"):
        list(make_dataloader(strict, 3, VideoTextCollator(processor)))


def test_nothing_readable_aborts_early_on_a_large_dataset():
    from training.data.readers import BadSampleTracker

    error = OSError("no such file: wrong_root/video.mp4")
    tracker = BadSampleTracker(100, max_bad_fraction=0.5, name="big")  # the fraction alone would allow 50 failures
    for index in range(31):
        tracker.record(index, error)
    with pytest.raises(TooManyBadSamplesError, match=r"first 32 samples of big .* none could.*wrong_root"):
        tracker.record(31, error)

    partly_readable = BadSampleTracker(100, max_bad_fraction=0.5, name="big")
    partly_readable.record_success(99)
    for index in range(50):
        partly_readable.record(index, error)
    with pytest.raises(TooManyBadSamplesError, match="51 of the 100 samples"):
        partly_readable.record(50, error)

    tolerant = BadSampleTracker(100, max_bad_fraction=1.0, name="big")
    for index in range(100):
        tolerant.record(index, error)
    assert tolerant.num_bad == 100


# ------------------------------------------------------------------------------------------------------------------
# Loaders


def _batches(dataset, processor, num_workers, seed=0):
    loader = make_dataloader(dataset, 3, VideoTextCollator(processor), shuffle=True, num_workers=num_workers, seed=seed)
    return list(loader)


def _assert_same(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        if a is None or b is None:  # a batch of unreadable samples only
            assert a is b
            continue
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_two_workers_give_deterministic_batches(corpus, processor):
    rows = [{"video": f"v{k}.mp4", "caption": f"clip number {NUMBERS[k]}"} for k in range(6)]
    dataset = VideoCaptionDataset(rows, processor, media_root=corpus, train=True, seed=11)
    first = _batches(dataset, processor, num_workers=2)
    _assert_same(first, _batches(dataset, processor, num_workers=2))
    _assert_same(first, _batches(dataset, processor, num_workers=0))  # independent of the worker count
    dataset.set_epoch(1)
    other_epoch = _batches(dataset, processor, num_workers=2)
    assert any(not torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(first, other_epoch))
    # persistent workers see the new epoch too (it lives in shared memory)
    dataset.set_epoch(0)
    persistent = make_dataloader(
        dataset, 3, VideoTextCollator(processor), shuffle=True, num_workers=2, persistent_workers=True
    )
    _assert_same(first, list(persistent))
    dataset.set_epoch(1)
    second_pass = list(persistent)
    # the shuffling order moves on with the loader's generator; the samples follow the dataset's epoch
    by_index = {int(i): pixels for b in other_epoch for i, pixels in zip(b["match_ids"], b["pixel_values"])}
    pairs = [(int(i), pixels) for b in second_pass for i, pixels in zip(b["match_ids"], b["pixel_values"])]
    assert len(pairs) == 6 and all(torch.equal(by_index[i], pixels) for i, pixels in pairs)


def test_datasets_interop(corpus, processor):
    import datasets

    dataset = VideoCaptionDataset(corpus / "captions.json", processor, max_bad_fraction=0.5)
    collator = VideoTextCollator(processor)
    hf = dataset.to_hf_dataset()
    assert isinstance(hf, datasets.Dataset) and hf.num_rows == 9
    assert {"video", "caption", "match_id"} <= set(hf.column_names)
    hf.set_transform(dataset.hf_transform)
    assert hf[2]["pixel_values"] is None  # the missing video comes through as a skippable row
    native = list(make_dataloader(dataset, 4, collator))
    through_hf = list(make_dataloader(hf, 4, collator))
    _assert_same(native, through_hf)
    assert native[-1] is None  # the last batch holds only the missing_b sample
    # rows of a `datasets.Dataset` are accepted as annotations too
    raw = datasets.Dataset.from_list(json.loads((corpus / "captions.json").read_text()))
    from_rows = VideoCaptionDataset(raw, processor, media_root=corpus)
    assert from_rows.records == dataset.records


GOOD_CLIP = {"video_uid": "v1", "clip_start": 1.0, "clip_end": 2.0, "clip_text": "#C C waves"}


def _mcq_item(**choice_2):
    choices = {str(k): dict(GOOD_CLIP, **(choice_2 if k == 2 else {})) for k in range(5)}
    return {"query": GOOD_CLIP, "choices": choices, "answer": 0, "types": 1}


@pytest.mark.parametrize(
    ("loader", "entry", "field", "problem"),
    [
        ("captions", {"video": "b.mp4", "caption": None}, "caption", "got null"),
        ("captions", {"video": "b.mp4", "caption": 7}, "caption", "got int 7"),
        ("captions", {"video": "b.mp4", "caption": {"a dog": 1}}, "caption", "got dict"),  # its keys were captions
        ("captions", {"video": "b.mp4", "caption": []}, "caption", "non-empty list"),
        ("captions", {"video": None, "caption": "a dog"}, "video", "got null"),
        ("retrieval", {"video": "b.mp4", "caption": {"a dog": 1}}, "caption", "got dict"),
        ("retrieval", {"video": "b.mp4", "caption": "a", "distractor_caption": 3}, "distractor_caption", "int"),
        ("qa", {"video": "b.mp4", "question": None, "answer": "yes"}, "question", "got null"),
        ("qa", {"video": ["b.mp4"], "question": "why?", "answer": "yes"}, "video", "must be a string"),
        ("qa", {"video": "b.mp4", "question": "why?", "answer": {"yes": 2}}, "answer", "got dict"),
        ("egoclip", dict(GOOD_CLIP, clip_start="abc"), "clip_start", "number of seconds, got str 'abc'"),
        ("egoclip", dict(GOOD_CLIP, clip_start=3.0), "clip_end", "2 is before clip_start 3"),
        ("egoclip", dict(GOOD_CLIP, clip_start=-1.0), "clip_start", "must be >= 0"),
        ("egoclip", dict(GOOD_CLIP, clip_text=None), "clip_text", "got null"),
        ("egomcq", _mcq_item(clip_end=0.5), "choices.2.clip_end", "before clip_start"),
        ("egomcq", _mcq_item(clip_start="nan"), "choices.2.clip_start", "number of seconds"),
    ],
)
def test_malformed_entries_fail_when_read_naming_file_entry_and_field(tmp_path, loader, entry, field, problem):
    from training.data.annotations import (
        AnnotationError,
        load_egoclip_annotations,
        load_egomcq_annotations,
        load_qa_annotations,
    )

    loaders = {
        "captions": load_caption_annotations, "retrieval": load_retrieval_test_annotations,
        "qa": load_qa_annotations, "egoclip": load_egoclip_annotations, "egomcq": load_egomcq_annotations,
    }
    good = {"captions": {"video": "a.mp4", "caption": "a cat"}, "retrieval": {"video": "a.mp4", "caption": "a cat"},
            "qa": {"video": "a.mp4", "question": "what?", "answer": "cat"}, "egoclip": GOOD_CLIP,
            "egomcq": _mcq_item()}[loader]
    path = tmp_path / f"{loader}.json"
    rows = [good, entry]
    path.write_text(json.dumps({str(k): row for k, row in enumerate(rows)} if loader == "egomcq" else rows))
    with pytest.raises(AnnotationError) as error:
        loaders[loader](path)
    message = str(error.value)
    assert f"Entry 1 of '{path}', field '{field}'" in message and problem in message
    loaders[loader]([good])  # the good entry alone reads


def test_annotation_files_not_in_utf8_are_named(tmp_path):
    from training.data.annotations import AnnotationError, load_egoclip_annotations

    latin1 = tmp_path / "captions.json"
    latin1.write_bytes('[{"video": "a.mp4", "caption": "un caf\u00e9"}]'.encode("latin-1"))
    with pytest.raises(AnnotationError, match=rf"'{latin1}' is not UTF-8 text \(byte 0xe9"):
        load_caption_annotations(latin1)
    tsv = tmp_path / "egoclip.tsv"
    row = "0\tv1\t3\tn\t0\t1\t1\t2\t#C C caf\u00e9\t[0]\t[0]\n"
    tsv.write_bytes(("\t".join(EGOCLIP_COLUMNS) + "\n" + row).encode("latin-1"))
    with pytest.raises(AnnotationError, match=rf"'{tsv}' is not UTF-8 text"):
        load_egoclip_annotations(tsv)
# ------------------------------------------------------------------------------------------------------------------
# Annotation records: converted once, cached, memory-mapped


def _cached(folder):
    return sorted(path.name for path in (folder / ".svitt-cache").glob("*.json-*") if path.is_dir())


def test_annotations_are_converted_once_and_memory_mapped(tmp_path, monkeypatch):
    from training.data import annotations

    rows = [{"video": f"v{k}.mp4", "caption": f"clip {k}"} for k in range(5)]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(rows))
    first = VideoCaptionDataset(path)
    assert first.records.table.cache_files  # read from the cached Arrow file, not held as Python objects
    assert len(_cached(tmp_path)) == 1
    assert [first.records[k] for k in range(5)] == load_caption_annotations(path)

    def reader_must_not_run(*args, **kwargs):
        raise AssertionError("the annotation file was read again")

    monkeypatch.setattr(annotations, "iter_caption_annotations", reader_must_not_run)
    second = VideoCaptionDataset(path)
    assert second.records == first.records and second.records[3]["caption"] == "clip 3"
    monkeypatch.undo()

    VideoCaptionDataset(path, match_by="caption")  # other reading options: a conversion of their own
    VideoCaptionDataset(path, media_root=tmp_path / "elsewhere")
    assert len(_cached(tmp_path)) == 3
    rows.append({"video": "v5.mp4", "caption": "clip 5"})
    path.write_text(json.dumps(rows))  # a changed file converts again; the earlier version's conversions go
    assert len(VideoCaptionDataset(path)) == 6 and len(_cached(tmp_path)) == 1


def test_a_bad_file_caches_nothing_and_an_unwritable_folder_uses_the_svitt_cache(tmp_path, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"video": "a.mp4", "caption": "fine"}, {"video": "b.mp4"}]))
    with pytest.raises(AnnotationError, match="Entry 1 .* lacks \\['caption'\\]"):
        VideoCaptionDataset(bad)
    left = [path.name for path in (tmp_path / ".svitt-cache").iterdir() if path.suffix != ".lock"]
    assert not left  # no conversion, no temporary folder
    folder = tmp_path / "read-only"
    folder.mkdir()
    (folder / ".svitt-cache").write_text("not a folder: the conversion cannot be cached beside the file")
    (folder / "captions.json").write_text(json.dumps([{"video": "a.mp4", "caption": "a"}]))
    monkeypatch.setenv("SVITT_CACHE_DIR", str(tmp_path / "svitt"))
    assert VideoCaptionDataset(folder / "captions.json").records[0]["caption"] == "a"
    assert len([p for p in (tmp_path / "svitt" / "annotations").glob("captions.json-*") if p.is_dir()]) == 1


def test_egoclip_table_gives_the_records_of_the_reader(tmp_path):
    from training.data import load_egoclip_annotations

    lines = ["\t".join(EGOCLIP_COLUMNS)]
    for k in range(7):
        lines.append(f"{k}\tvid{k % 3}\t1300.0\tnarration_pass_1\t{k}\t{610.0 * k}\t{610.0 * k}\t{610.0 * k + 2}\t"
                     f"#C C does {k}\t[{k % 4}]\t[{k % 5}, {k % 2}]")
    path = tmp_path / "egoclip.tsv"
    path.write_text("\n".join(lines) + "\n")
    options = dict(path_template="{video_uid}/{chunk}.mp4", chunk_seconds=600.0)
    dataset = EgoClipDataset(path, media_root=tmp_path, num_verbs=4, num_nouns=5, **options)
    expected = load_egoclip_annotations(path, tmp_path, **options)
    assert [dataset.records[k] for k in range(7)] == expected
    assert dataset.records[4]["video"] == str(tmp_path / "vid1" / "4.mp4")  # 2440 s: the fifth 600 s chunk
    with pytest.raises(ValueError, match="Clip 4 of .* has noun_tags \\[4, 0\\] outside 0..3"):
        EgoClipDataset(path, media_root=tmp_path, num_verbs=4, num_nouns=4, **options)
