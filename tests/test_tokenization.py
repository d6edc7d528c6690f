"""The ALBEF tokenizer behaviour: `[CLS] tokens` without `[SEP]`, truncation to max_len - 1 pieces, caption cleaning."""

from __future__ import annotations

import pytest
from helpers.bert_vocab import bert_vocab_dir

from modeling_svitt.tokenization_svitt import SViTTTokenizer, pre_text

CLS, SEP, PAD = 101, 102, 0


@pytest.fixture(scope="module")
def tokenizer() -> SViTTTokenizer:
    return SViTTTokenizer.from_pretrained(bert_vocab_dir())


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("A man's dog (running) - fast/slow <person>!", "a mans dog running fast slow person"),
        ('  "Hello,   World?"  ', "hello world"),
        ("#C C picks up a knife; then: cuts~*", "c c picks up a knife then cuts"),
    ],
)
def test_pre_text(raw, cleaned):
    assert pre_text(raw) == cleaned


def test_pre_text_max_words():
    assert pre_text("One two, three four", max_words=2) == "one two"


def test_single_text_has_cls_and_no_sep(tokenizer):
    ids = tokenizer("A dog runs!").input_ids
    # "a dog runs" -> [CLS] a dog runs; a stock BERT tokenizer would add 102 at the end
    assert ids == [CLS, 1037, 3899, 3216]
    assert SEP not in ids
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    assert "token_type_ids" not in tokenizer("A dog runs!")


def test_padding_and_truncation_keep_max_length_minus_one_pieces(tokenizer):
    padded = tokenizer("a dog", padding="max_length", max_length=6)
    assert padded.input_ids == [CLS, 1037, 3899, PAD, PAD, PAD]
    assert padded.attention_mask == [1, 1, 1, 0, 0, 0]
    truncated = tokenizer("a b c d e f g h", truncation=True, max_length=4).input_ids
    assert truncated == [CLS, 1037, 1038, 1039]  # max_length - 1 = 3 word pieces, no [SEP]
    batch = tokenizer(["a b c d e f", "x"], padding="max_length", truncation=True, max_length=5).input_ids
    assert all(len(row) == 5 and row[0] == CLS and SEP not in row for row in batch)


def test_pair_keeps_the_bert_layout(tokenizer):
    assert tokenizer("q", "a").input_ids == [CLS, 1053, SEP, 1037, SEP]


def test_cleaning_applies_everywhere_and_spares_special_tokens(tokenizer):
    assert tokenizer.tokenize("Hello, World!") == ["hello", "world"]
    assert tokenizer("Hello, World!").input_ids == tokenizer("hello world").input_ids
    # VQA answers are encoded as "<answer> [SEP]": the [SEP] written in the text must stay a special token
    assert tokenizer("Yes! [SEP]").input_ids == [CLS, 2748, SEP]
    raw = SViTTTokenizer.from_pretrained(bert_vocab_dir(), clean_captions=False)
    assert raw("Hello, World!").input_ids == [CLS, 7592, 1010, 2088, 999]


def test_matches_bert_except_for_the_trailing_sep(tokenizer):
    from transformers.models.bert.tokenization_bert import BertTokenizer

    bert = BertTokenizer.from_pretrained(bert_vocab_dir())
    text = "a person slices an onion on the kitchen counter"
    assert bert(text).input_ids == tokenizer(text).input_ids + [SEP]


def test_save_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = SViTTTokenizer.from_pretrained(tmp_path)
    assert type(reloaded) is SViTTTokenizer and reloaded.clean_captions
    assert reloaded("A dog runs!", padding="max_length", max_length=8).input_ids == tokenizer(
        "A dog runs!", padding="max_length", max_length=8
    ).input_ids
    off = SViTTTokenizer.from_pretrained(bert_vocab_dir(), clean_captions=False)
    off.save_pretrained(tmp_path / "off")
    assert not SViTTTokenizer.from_pretrained(tmp_path / "off").clean_captions


def test_auto_tokenizer_after_registration(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    from modeling_svitt.processing_svitt import register_processing_auto_classes

    register_processing_auto_classes()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded).__name__ == "SViTTTokenizer"
    assert SEP not in loaded("a dog").input_ids
