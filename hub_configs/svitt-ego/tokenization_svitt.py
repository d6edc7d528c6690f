"""Tokenizer of SViTT: the ALBEF variant of the uncased BERT WordPiece tokenizer.

Two behaviours of the authors' release differ from a stock `BertTokenizer` and are reproduced here:

* a single text is encoded as `[CLS] tokens` **without** the trailing `[SEP]` (so `truncation=True` keeps up to
  `max_length - 1` word pieces); a text pair keeps the BERT layout `[CLS] A [SEP] B [SEP]`;
* every caption, question and answer first goes through `pre_text` (lower-casing, punctuation removal,
  whitespace clean-up), which the release applies in its datasets before tokenizing.
"""

from __future__ import annotations

import re

from tokenizers import processors
from transformers.models.bert.tokenization_bert import BertTokenizer

# Characters the release deletes from captions before tokenizing.
_DELETED_CHARACTERS = re.compile(r"[,.'!?\"()*#:;~]")
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def pre_text(text: str, max_words: int | None = None) -> str:
    """
    Clean a caption the way the SViTT release does before tokenizing it.

    Lower-cases, deletes `, . ' ! ? " ( ) * # : ; ~`, turns `-` and `/` into spaces, maps `<person>` (an Ego4D
    narration placeholder) to `person`, collapses runs of whitespace and strips the ends.

    Args:
        text (`str`): the raw caption.
        max_words (`int`, *optional*): keep only the first `max_words` space-separated words.

    Returns:
        `str`: the cleaned caption.
    """
    text = _DELETED_CHARACTERS.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = _WHITESPACE_RUN.sub(" ", text).strip()
    if max_words is not None:
        text = " ".join(text.split(" ")[:max_words])
    return text


class SViTTTokenizer(BertTokenizer):
    r"""
    Uncased BERT WordPiece tokenizer with the behaviour of the SViTT (ALBEF) release.

    Compared with [`BertTokenizer`]: a single sequence becomes `[CLS] tokens` with no `[SEP]`; captions are cleaned
    with [`pre_text`] first (special tokens written in the text, such as the `[SEP]` the VQA answers end with, are
    kept verbatim); and the model inputs are `input_ids` and `attention_mask` only.

    Args:
        vocab (`str` or `dict[str, int]`, *optional*): the WordPiece vocabulary (bert-base-uncased for the released
            checkpoints).
        clean_captions (`bool`, *optional*, defaults to `True`): apply [`pre_text`] to every text before tokenizing.
            Turn off to tokenize text that was cleaned already or must stay verbatim.
        **kwargs: forwarded to [`BertTokenizer`] (`do_lower_case`, special tokens, ...).

    Example:

    ```python
    >>> tokenizer = SViTTTokenizer.from_pretrained("path/to/svitt")
    >>> tokenizer("A dog runs!", padding="max_length", max_length=6).input_ids
    [101, 1037, 3899, 3216, 0, 0]
    ```
    """

    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab: str | dict[str, int] | None = None, clean_captions: bool = True, **kwargs):
        self.clean_captions = clean_captions
        super().__init__(vocab=vocab, clean_captions=clean_captions, **kwargs)
        # `BertTokenizer.__init__` installs the `[CLS] A [SEP]` template after loading; replace it.
        self.update_post_processor()

    def update_post_processor(self) -> None:
        """Install the ALBEF template: `[CLS] A` for one text, `[CLS] A [SEP] B [SEP]` for a pair."""
        cls_token, sep_token = str(self.cls_token), str(self.sep_token)
        self._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0",
            pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
            special_tokens=[(cls_token, self.cls_token_id), (sep_token, self.sep_token_id)],
        )

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        if token_ids_1 is None:
            return [self.cls_token_id] + token_ids_0
        return [self.cls_token_id] + token_ids_0 + [self.sep_token_id] + token_ids_1 + [self.sep_token_id]

    def clean_text(self, text: str) -> str:
        """[`pre_text`] applied around the special tokens, which must survive lower-casing to stay special."""
        special = sorted({str(token) for token in self.all_special_tokens}, key=len, reverse=True)
        if not special:
            return pre_text(text)
        pattern = "(" + "|".join(re.escape(token) for token in special) + ")"
        pieces = [piece if piece in special else pre_text(piece) for piece in re.split(pattern, text)]
        return " ".join(piece for piece in pieces if piece)

    def _clean(self, text):
        if isinstance(text, str):
            return self.clean_text(text)
        if isinstance(text, (list, tuple)) and all(isinstance(item, str) for item in text):
            return [self.clean_text(item) for item in text]
        return text

    def encode_answers(self, answers: str | list[str], max_length: int = 5, return_tensors: str | None = "pt"):
        """
        Answers for the video-QA answer decoder, encoded as the release does: `"<answer> [SEP]"` becomes
        `[CLS] answer [SEP] [PAD]...` of `max_length` tokens (the `[SEP]` is cut off for answers longer than
        `max_length - 2` word pieces, as in the release). Returns the tokenizer's `input_ids` / `attention_mask`.
        """
        answers = [answers] if isinstance(answers, str) else list(answers)
        return self(
            [f"{answer} {self.sep_token}" for answer in answers],
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors=return_tensors,
        )

    def _encode_plus(self, text, text_pair=None, *args, is_split_into_words: bool = False, **kwargs):
        # Every public entry point (`__call__`, `encode`, `tokenize`, batch calls) funnels through here.
        if self.clean_captions and not is_split_into_words:
            text, text_pair = self._clean(text), self._clean(text_pair)
        return super()._encode_plus(text, text_pair, *args, is_split_into_words=is_split_into_words, **kwargs)


__all__ = ["SViTTTokenizer", "pre_text"]
