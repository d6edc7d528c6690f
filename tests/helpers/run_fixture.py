"""A tiny folder shaped like a `training/pretrain.py` run (and a `results.json` like `training/evaluate.py` writes).

The schemas are the shared ones (summary.json, results.json, model_index entries). The models are tiny and untrained,
and the metric values are made-up test values: they only have to travel from the files into the card unchanged.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import torch
from helpers.bert_vocab import bert_vocab_dir
from helpers.tiny_configs import tiny_config

from modeling_svitt import SViTTForPreTraining, SViTTProcessor, SViTTTokenizer, SViTTVideoProcessor

# the real uncased vocabulary, so the processor's ids fit the tiny models' embeddings
BERT_TOKEN_IDS = dict(vocab_size=30522, cls_token_id=101, sep_token_id=102, mask_token_id=103)
STAGES = (
    (2, 0.7, {"t2v_r1": 0.25, "t2v_r5": 0.5, "v2t_r1": 0.1875, "temporal_probe_accuracy": 0.625}),
    (4, 0.6, {"t2v_r1": 0.3125, "t2v_r5": 0.625, "v2t_r1": 0.25, "temporal_probe_accuracy": 0.6875}),
)


def write_png(path: Path, rgb: tuple[int, int, int] = (200, 40, 40), size: int = 8) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    )


def retrieval_entry(metric: str, name: str, value: float, dataset: str = "synthetic-temporal") -> dict:
    return dict(
        task_type="text-to-video-retrieval",
        task_name="Text-to-video retrieval",
        dataset_type=dataset,
        dataset_name="Synthetic temporal (test)",
        dataset_split="test",
        metric_type=metric,
        metric_name=name,
        metric_value=value,
        metric_config=None,
    )


def write_run(run_dir: Path, recipe: str = "synthetic", **config_overrides) -> Path:
    """Stage folders, the last stage also at the root, summary.json, metrics.jsonl, curriculum and token pictures."""
    tokenizer = SViTTTokenizer.from_pretrained(bert_vocab_dir())
    stages = []
    for index, (frames, keep, metrics) in enumerate(STAGES, start=1):
        config = tiny_config(
            vision=dict(num_frames=frames, token_keep_rate=keep), text=BERT_TOKEN_IDS, **config_overrides
        )
        torch.manual_seed(index)
        model = SViTTForPreTraining(config)
        processor = SViTTProcessor(SViTTVideoProcessor(size=32, num_frames=frames), tokenizer, max_text_length=8)
        name = f"stage-{index}-{frames}f"
        for folder in [run_dir / name] + ([run_dir] if index == len(STAGES) else []):
            model.save_pretrained(folder)
            processor.save_pretrained(folder)
        write_png(run_dir / "token_selection" / f"{name}.png", rgb=(40, 40 * index, 200))
        stages.append(
            dict(
                name=name,
                num_frames=frames,
                token_keep_rate=keep,
                checkpoint=name,
                train_seconds=12.5 * index,
                clips_per_second=30.0 / index,
                metrics=metrics,
            )
        )
    summary = dict(
        recipe=recipe,
        num_test_videos=16,
        stages=stages,
        model_index=[
            retrieval_entry("recall", "R@1 (text-to-video)", 31.25),
            retrieval_entry("accuracy", "Temporal probe accuracy", 68.75),
        ],
    )
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": step, "loss": 5.0 - step}) + "\n" for step in range(3))
    )
    write_png(run_dir / "curriculum.png")
    return run_dir


def write_results(path: Path, model: str) -> Path:
    results = dict(
        task="retrieval",
        model=model,
        dataset=dict(name="synthetic", split="test", annotations=["ret_test.json"], media_root=None),
        num_frames=8,
        clip_length=4,
        num_clips=2,
        clip_aggregation="lse",
        sparsity=dict(
            use_sparse_attention=True,
            attention_block_size=8,
            num_local_blocks=1,
            num_random_blocks=1,
            token_keep_rate=0.6,
            token_drop_layers=[0, 1],
            fusion_token_keep_rate=1.0,
        ),
        metrics=dict(t2v_r1=0.375, t2v_r5=0.75, t2v_medr=2.0),
        versions=dict(svitt="0.1.0"),
        model_index=[retrieval_entry("recall", "R@1 (text-to-video, 2 clips)", 37.5)],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path
