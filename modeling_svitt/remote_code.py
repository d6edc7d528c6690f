"""Make every saved folder loadable with `trust_remote_code=True` where this package is not installed.

transformers' own mechanism writes one `auto_map` entry (the saved class) and copies one module with its
relative imports. A SViTT folder should answer every Auto class (a pretraining checkpoint is also a
QA / multiple-choice starting point), so it carries the full map and every file those classes need (`MODEL_SOURCES`);
a folder of one tower (`SViTTVisionModel`, `SViTTTextModel`) maps to that tower and its own config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# What a saved folder ships for `trust_remote_code=True`: the modules of every class in the `auto_map`s below
# (configuration, towers, heads, processor, tokenizer) and everything they import. `tests/test_package_imports.py`
# checks that the list is closed under relative imports; the converters (`convert_original_svitt.py`,
# `pretrained_init.py`) and the initialiser are not shipped.
MODEL_SOURCES = (
    "answer_ranking.py",
    "block_sparse_kernel.py",
    "clip_ensemble.py",
    "configuration_svitt.py",
    "hash_random.py",
    "losses.py",
    "modeling_common.py",
    "modeling_heads.py",
    "modeling_multiple_choice.py",
    "modeling_svitt.py",
    "modeling_svitt_text.py",
    "modeling_svitt_vision.py",
    "modeling_video_qa.py",
    "processing_svitt.py",
    "relative_position.py",
    "remote_code.py",
    "retrieval_ranking.py",
    "scaled_linear.py",
    "sparse_attention.py",
    "token_selection.py",
    "tokenization_svitt.py",
    "video_container.py",
    "video_io.py",
    "video_seeking.py",
)

# A folder of the composite model or of a head answers every Auto class; a folder of one tower rebuilds that tower.
_AUTO_MAPS = {
    "svitt": {
        "AutoConfig": "configuration_svitt.SViTTConfig",
        "AutoModel": "modeling_svitt.SViTTModel",
        "AutoModelForPreTraining": "modeling_heads.SViTTForPreTraining",
        "AutoModelForVisualQuestionAnswering": "modeling_video_qa.SViTTForVideoQuestionAnswering",
        "AutoModelForMultipleChoice": "modeling_multiple_choice.SViTTForMultipleChoice",
    },
    "svitt_vision_model": {
        "AutoConfig": "configuration_svitt.SViTTVisionConfig",
        "AutoModel": "modeling_svitt_vision.SViTTVisionModel",
    },
    "svitt_text_model": {
        "AutoConfig": "configuration_svitt.SViTTTextConfig",
        "AutoModel": "modeling_svitt_text.SViTTTextModel",
    },
}


def model_auto_map(model_type: str = "svitt") -> dict[str, str]:
    """`auto_map` entries of a saved folder whose config has `model_type`, for every class shipped with this package."""
    if model_type not in _AUTO_MAPS:
        raise ValueError(f"No remote-code map for model type {model_type!r}; known: {sorted(_AUTO_MAPS)}.")
    return {
        auto_class: reference
        for auto_class, reference in _AUTO_MAPS[model_type].items()
        if (PACKAGE_DIR / f"{reference.split('.')[0]}.py").is_file()
    }


def copy_model_sources(folder: str | Path) -> list[Path]:
    """Copy the files of `MODEL_SOURCES` (relative imports only) next to the weights.

    Run from remote code, the module folder holds only what transformers fetched for the loaded class; the files it
    has are copied, and `model_auto_map` names only the classes they define.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in MODEL_SOURCES:
        source = PACKAGE_DIR / name
        if not source.is_file():
            continue
        target = folder / source.name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        copied.append(target)
    return copied


__all__ = ["MODEL_SOURCES", "copy_model_sources", "model_auto_map"]
