"""Make every saved folder loadable with `trust_remote_code=True` where this package is not installed.

transformers' own mechanism writes one `auto_map` entry (the saved class) and copies one module with its
relative imports. A SViTT folder should answer every Auto class (a pretraining checkpoint is also a
QA / multiple-choice starting point), so it carries the full map and the whole model source; a folder of one tower
(`SViTTVisionModel`, `SViTTTextModel`) maps to that tower and its own config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# the package initialiser, the CLI converter, the Hub packaging helpers and the pictures are not model code
_NOT_MODEL_SOURCE = {
    "__init__.py",
    "checkpoint_names.py",
    "convert_original_svitt.py",
    "model_card.py",
    "visualize.py",
}

# A folder of the composite model or of a head answers every Auto class; a folder of one tower rebuilds that tower.
_AUTO_MAPS = {
    "svitt": {
        "AutoConfig": "configuration_svitt.SViTTConfig",
        "AutoModel": "modeling_svitt.SViTTModel",
        "AutoModelForPreTraining": "modeling_heads.SViTTForPreTraining",
        "AutoModelForVisualQuestionAnswering": "modeling_video_qa.SViTTForVideoQuestionAnswering",
        "AutoModelForMultipleChoice": "modeling_heads.SViTTForMultipleChoice",
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
    """Copy the package's model modules (relative imports only) next to the weights."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for source in sorted(PACKAGE_DIR.glob("*.py")):
        if source.name in _NOT_MODEL_SOURCE:
            continue
        target = folder / source.name
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        copied.append(target)
    return copied


__all__ = ["copy_model_sources", "model_auto_map"]
