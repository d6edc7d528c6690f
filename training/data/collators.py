"""Batch the samples of `readers.py` into the inputs the SViTT heads take (field names: `modeling_svitt/INTERFACE.md`).

Texts are tokenized here, once per batch, with the release's settings ([`SViTTTokenizer`]: cleaned captions,
`[CLS] tokens` without `[SEP]`, padded to `max_length`). Samples that could not be read arrive as `None` (or with
`pixel_values=None` through `datasets`) and are dropped; a batch with no readable sample at all becomes `None`, which
training loops should skip.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

from modeling_svitt.processing_svitt import SViTTProcessor
from modeling_svitt.tokenization_svitt import SViTTTokenizer


def _readable(samples: list[dict[str, Any] | None]) -> list[dict[str, Any]]:
    return [sample for sample in samples if sample is not None and sample.get("pixel_values") is not None]


def _tokenizer(processor: SViTTProcessor | SViTTTokenizer) -> SViTTTokenizer:
    return processor.tokenizer if isinstance(processor, SViTTProcessor) else processor


class _CollatorBase(abc.ABC):
    """
    Args:
        processor ([`SViTTProcessor`] or [`SViTTTokenizer`]): supplies the tokenizer.
        max_length (`int`, *optional*): text length (defaults to the processor's `max_text_length`, else 32).
        return_index (`bool`, defaults to `False`): add `index` (dataset positions) to the batch, for evaluation code
            that must know which samples survived.
    """

    def __init__(
        self,
        processor: SViTTProcessor | SViTTTokenizer,
        max_length: int | None = None,
        return_index: bool = False,
    ):
        self.tokenizer = _tokenizer(processor)
        self.max_length = max_length or getattr(processor, "max_text_length", 32)
        self.return_index = return_index

    def tokenize(self, texts: list[str], max_length: int | None = None) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=max_length or self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def finish(self, batch: dict[str, Any], samples: list[dict[str, Any]]) -> dict[str, Any]:
        if self.return_index:
            batch["index"] = torch.tensor([sample["index"] for sample in samples], dtype=torch.long)
        return batch

    def __call__(self, samples):
        samples = _readable(samples)
        if not samples:
            return None
        return self.finish(self.collate(samples), samples)

    @abc.abstractmethod
    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """The batch of the readable samples; subclasses define it."""


class VideoTextCollator(_CollatorBase):
    """
    Video-caption batches (pretraining, retrieval fine-tuning, EgoClip): `pixel_values (B, T, 3, H, W)`,
    `input_ids`, `attention_mask (B, L)`, `match_ids (B,)`, `video_ids (B,)`, and `verb_tags`, `noun_tags`
    `(B, num_classes)` when the samples carry them (EgoNCE).
    """

    def collate(self, samples):
        batch = {"pixel_values": torch.stack([sample["pixel_values"] for sample in samples])}
        batch.update(self.tokenize([sample["text"] for sample in samples]))
        batch["match_ids"] = torch.tensor([sample["match_id"] for sample in samples], dtype=torch.long)
        batch["video_ids"] = torch.tensor([sample["video_id"] for sample in samples], dtype=torch.long)
        for key in ("verb_tags", "noun_tags"):
            if key in samples[0]:
                batch[key] = torch.stack([torch.as_tensor(sample[key], dtype=torch.float32) for sample in samples])
        return batch


class VideoCollator(_CollatorBase):
    """Videos only (retrieval evaluation): `pixel_values` and always `index` (which videos were readable)."""

    def __init__(self, processor=None, max_length=None, return_index: bool = True):
        self.return_index = return_index

    def collate(self, samples):
        return {"pixel_values": torch.stack([sample["pixel_values"] for sample in samples])}


class VideoQACollator(_CollatorBase):
    """
    Video QA batches: `pixel_values`, question `input_ids` / `attention_mask (B, Lq)`, and the ground-truth answers
    of all questions concatenated: `answer_input_ids`, `answer_attention_mask (A, La)`, `answer_weights (A,)`,
    `answers_per_question (B,)`. Answers are encoded as the release does (`"<answer> [SEP]"` →
    `[CLS] answer [SEP]`, `max_answer_length` tokens).

    Args:
        processor: as for the other collators.
        max_length (`int`, defaults to 25): question length (the release's `max_q_len`).
        max_answer_length (`int`, defaults to 5): answer length (`max_a_len`).
        return_index (`bool`): add `index`.
    """

    def __init__(self, processor, max_length: int = 25, max_answer_length: int = 5, return_index: bool = False):
        super().__init__(processor, max_length, return_index)
        self.max_answer_length = max_answer_length

    def encode_answers(self, answers: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer.encode_answers(answers, self.max_answer_length)
        return {"answer_input_ids": encoded["input_ids"], "answer_attention_mask": encoded["attention_mask"]}

    def collate(self, samples):
        batch = {"pixel_values": torch.stack([sample["pixel_values"] for sample in samples])}
        batch.update(self.tokenize([sample["question"] for sample in samples]))
        answers = [answer for sample in samples for answer in sample["answers"]]
        if answers:  # unlabelled evaluation sets have none
            batch.update(self.encode_answers(answers))
            batch["answer_weights"] = torch.tensor(
                [weight for sample in samples for weight in sample["answer_weights"]], dtype=torch.float32
            )
            batch["answers_per_question"] = torch.tensor(
                [len(sample["answers"]) for sample in samples], dtype=torch.long
            )
        return batch


class MultipleChoiceCollator(_CollatorBase):
    """
    EgoMCQ batches: `pixel_values (B, N, T, 3, H, W)`, `input_ids`, `attention_mask (B, L)`, `labels (B,)`;
    `question_types (B,)` (1 inter-video, 2 intra-video) when `return_types=True`, for per-type accuracy.
    """

    def __init__(
        self, processor, max_length: int | None = None, return_index: bool = False, return_types: bool = False
    ):
        super().__init__(processor, max_length, return_index)
        self.return_types = return_types

    def collate(self, samples):
        batch = {"pixel_values": torch.stack([sample["pixel_values"] for sample in samples])}
        batch.update(self.tokenize([sample["text"] for sample in samples]))
        batch["labels"] = torch.tensor([sample["label"] for sample in samples], dtype=torch.long)
        if self.return_types:
            batch["question_types"] = torch.tensor([sample["type"] for sample in samples], dtype=torch.long)
        return batch
