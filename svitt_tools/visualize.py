"""Pictures of what node sparsity keeps: the sampled frames in a row, and below them, after every drop layer of the
video tower, the same frames with the patches [CLS]-attention pruning dropped greyed out; optionally one more row for
the text-guided selection of the fusion layers for a caption.

    python -m svitt_tools.visualize MODEL VIDEO --output tokens.png
    python -m svitt_tools.visualize MODEL VIDEO --output tokens.png --caption "a dog runs" --fusion-keep-rate 0.5

MODEL is any SViTT folder or Hub id with its processor; VIDEO a video file. The picture is drawn with Pillow (which
comes with matplotlib in the package's `training` extra); nothing the models import depends on this module.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modeling_svitt.configuration_svitt import SViTTConfig
from modeling_svitt.modeling_svitt import SViTTModel
from modeling_svitt.processing_svitt import SViTTProcessor

from .checkpoint_names import install_checkpoint_name_hint

LABEL_WIDTH = 230  # pixels left of the frames for the row labels
HEADER_HEIGHT = 26  # pixels above the first row for the title
GAP = 4  # pixels between frames and between rows
MIN_FRAME_SIDE = 96  # small frames are enlarged (by an integer factor) to at least this many pixels
BACKGROUND = (255, 255, 255)


@dataclass
class TokenSelection:
    """What the model kept of one clip.

    frames (`(T, H, W, 3)` uint8): the clip as the model sees it (resized, normalisation undone).
    patch_size (`int`): side of a patch in pixels.
    rows (`list[tuple[str, torch.Tensor]]`): per selection step, a label and the kept patches `(T, H/p, W/p)` bool:
        one entry per drop layer of the video tower, then one per selecting fusion layer when a caption was given.
    """

    frames: torch.Tensor
    patch_size: int
    rows: list[tuple[str, torch.Tensor]] = field(default_factory=list)


def load_saved_model(name: str):
    """The model of an SViTT folder or Hub id as the head it was saved as (every weight read, nothing reported as
    unexpected), in eval mode; `token_selection` uses its `svitt`."""
    from modeling_svitt import modeling_heads, modeling_video_qa

    architecture = (SViTTConfig.from_pretrained(name).architectures or ["SViTTModel"])[0]
    modules = (modeling_heads, modeling_video_qa)
    classes = [getattr(module, architecture) for module in modules if hasattr(module, architecture)]
    model_class = classes[0] if classes else SViTTModel
    return model_class.from_pretrained(name).eval()


def dual_encoder(model) -> SViTTModel:
    """The [`SViTTModel`] of a head (its `svitt`), or the model itself."""
    return model if isinstance(model, SViTTModel) else model.svitt


def _kept_mask(positions: torch.Tensor, num_frames: int, patches_per_side: int) -> torch.Tensor:
    mask = torch.zeros(num_frames * patches_per_side * patches_per_side, dtype=torch.bool)
    mask[positions.cpu()] = True
    return mask.reshape(num_frames, patches_per_side, patches_per_side)


@torch.no_grad()
def token_selection(
    model,
    pixel_values: torch.Tensor,
    image_mean=(0.5, 0.5, 0.5),
    image_std=(0.5, 0.5, 0.5),
    input_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    fusion_keep_rate: float | None = None,
) -> TokenSelection:
    """Run one clip `(T, 3, H, W)` through the video tower of `model` (an [`SViTTModel`] or any head holding one as
    `svitt`, in eval mode) and read which patches every drop layer kept (`kept_token_indices`). With `input_ids`
    (one caption, `(1, L)`), the fusion layers also select video tokens by the caption's cross-attention, keeping
    `fusion_keep_rate` of them (default: the model's `fusion_token_keep_rate`), after the layers of
    `fusion_token_drop_layers`."""
    svitt = dual_encoder(model)
    vision = svitt.config.vision_config
    side = vision.patches_per_side
    device = next(svitt.parameters()).device
    video = svitt.encode_video(pixel_values[None].to(device, svitt.dtype))
    total = vision.num_patch_tokens
    drop_layers = sorted(layer for layer in vision.token_drop_layers if layer < vision.num_hidden_layers)
    rows = []
    positions = torch.arange(total)
    for layer, kept in zip(drop_layers, video.vision_output.kept_token_indices):
        positions = kept[0].cpu()
        label = f"after layer {layer}: {positions.numel()}/{total} kept"
        rows.append((label, _kept_mask(positions, vision.num_frames, side)))
    if input_ids is not None:
        text = svitt.encode_text(input_ids.to(device), None if attention_mask is None else attention_mask.to(device))
        text_config = svitt.config.text_config
        keep_rate = text_config.fusion_token_keep_rate if fusion_keep_rate is None else fusion_keep_rate
        with svitt.sparsity_overrides(fusion_token_keep_rate=keep_rate):
            fusion = svitt.fuse(text.hidden_states, text.attention_mask, video.tokens, video.token_mask)
            selecting = sorted(text_config.fusion_token_drop_layers) if keep_rate < 1.0 else []
        for layer, kept in zip(selecting, fusion.kept_video_token_indices or ()):
            positions = positions[kept[0].cpu()]  # indices among the tokens the fusion layer received
            label = f"text-guided, fusion layer {layer}: {positions.numel()}/{total} kept"
            rows.append((label, _kept_mask(positions, vision.num_frames, side)))
    mean = torch.tensor(image_mean, dtype=torch.float32).reshape(1, 3, 1, 1)
    std = torch.tensor(image_std, dtype=torch.float32).reshape(1, 3, 1, 1)
    frames = (pixel_values.float().cpu() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8)
    return TokenSelection(frames.permute(0, 2, 3, 1).contiguous(), vision.patch_size, rows)


def greyed(pixels: torch.Tensor) -> torch.Tensor:
    """Dropped patches: their luminance, faded towards light grey, the same in every channel."""
    luminance = pixels.float() @ torch.tensor([0.299, 0.587, 0.114])
    value = (110 + 0.35 * luminance).round().to(torch.uint8)
    return value[..., None].expand(*value.shape, 3)


@dataclass
class TokenSelectionPicture:
    """A drawn [`TokenSelection`]: `image` (`(height, width, 3)` uint8), the enlargement factor `scale` and, per row
    (the input frames first, then every selection step) and frame, the top-left pixel of the frame."""

    image: torch.Tensor
    scale: int
    origins: list[list[tuple[int, int]]]


def draw_token_selection(selection: TokenSelection) -> TokenSelectionPicture:
    """The frames in a row, then one row per selection step with the dropped patches greyed (exact pixels: every
    patch is `scale * patch_size` pixels, nothing resampled but by whole-pixel enlargement)."""
    frames = selection.frames
    num_frames, height, width, _ = frames.shape
    scale = max(1, math.ceil(MIN_FRAME_SIDE / min(height, width)))
    patch = selection.patch_size * scale
    big = frames.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    panel_height, panel_width = height * scale, width * scale
    masks = [None] + [mask for _, mask in selection.rows]
    canvas = torch.tensor(BACKGROUND, dtype=torch.uint8).expand(
        HEADER_HEIGHT + len(masks) * (panel_height + GAP), LABEL_WIDTH + num_frames * (panel_width + GAP), 3
    ).clone()
    origins = []
    for row, mask in enumerate(masks):
        top = HEADER_HEIGHT + row * (panel_height + GAP)
        origins.append([])
        for frame in range(num_frames):
            left = LABEL_WIDTH + frame * (panel_width + GAP)
            panel = big[frame].clone()
            if mask is not None:
                dropped = ~mask[frame].repeat_interleave(patch, dim=0).repeat_interleave(patch, dim=1)
                dropped = dropped[:panel_height, :panel_width]
                panel[dropped] = greyed(panel[dropped])
            canvas[top : top + panel_height, left : left + panel_width] = panel
            origins[-1].append((left, top))
    return TokenSelectionPicture(canvas, scale, origins)


def save_token_selection_png(
    selection: TokenSelection, path: str | Path, title: str = ""
) -> TokenSelectionPicture:
    """Draw `selection` with its row labels and `title` and write it as a PNG (needs Pillow)."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as error:  # the core package does not depend on Pillow
        raise ImportError(
            "Token-selection pictures are drawn with Pillow: `pip install pillow` (or the package's `training` extra)."
        ) from error
    picture = draw_token_selection(selection)
    font = ImageFont.load_default(size=13)
    image = Image.fromarray(picture.image.numpy())
    title_width = math.ceil(font.getlength(title)) + 12
    if title_width > image.width:  # widen to the right: the frames keep their pixel positions
        wider = Image.new("RGB", (title_width, image.height), BACKGROUND)
        wider.paste(image, (0, 0))
        image = wider
    draw = ImageDraw.Draw(image)
    draw.text((6, 6), title, fill=(0, 0, 0), font=font)
    labels = ["input frames"] + [label for label, _ in selection.rows]
    for label, row in zip(labels, picture.origins):
        top = row[0][1]
        panel_height = selection.frames.shape[1] * picture.scale
        draw.multiline_text((6, top + panel_height // 2 - 8), label.replace(": ", ":\n"), fill=(0, 0, 0), font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return picture


def token_selection_picture(
    model,
    processor: SViTTProcessor,
    pixel_values: torch.Tensor,
    path: str | Path,
    caption: str | None = None,
    fusion_keep_rate: float | None = None,
    title: str = "",
) -> TokenSelectionPicture:
    """[`token_selection`] of a processed clip `(T, 3, H, W)` (and a caption) drawn into the PNG `path`."""
    text = {}
    if caption is not None:
        encoded = processor.tokenizer(
            [caption], padding="max_length", truncation=True, max_length=processor.max_text_length, return_tensors="pt"
        )
        text = dict(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"])
    video_processor = processor.video_processor
    selection = token_selection(
        model, pixel_values, video_processor.image_mean, video_processor.image_std, fusion_keep_rate=fusion_keep_rate,
        **text,
    )
    if caption is not None and not title:
        title = f'caption: "{caption}"'
    return save_token_selection_png(selection, path, title)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="an SViTT folder or Hub id (with its processor)")
    parser.add_argument("video", help="a video file")
    parser.add_argument("--output", "-o", default="token_selection.png", help="the PNG to write")
    parser.add_argument("--caption", help="also show the text-guided selection of the fusion layers for this caption")
    parser.add_argument("--fusion-keep-rate", type=float,
                        help="share of video tokens the fusion layers keep for --caption (default: the model's, "
                             "or 0.5 when the model keeps all)")
    parser.add_argument("--num-frames", type=int, help="frames to sample (default: the model's clip length)")
    args = parser.parse_args(argv)
    if args.fusion_keep_rate is not None and not 0 < args.fusion_keep_rate <= 1:
        parser.error("--fusion-keep-rate must be in (0, 1]")
    install_checkpoint_name_hint()  # the model is named by the user: a mistyped SViTT name says how to get one
    if not Path(args.video).is_file():
        parser.error(f"no video file {args.video}")
    model = load_saved_model(args.model)
    processor = SViTTProcessor.from_pretrained(args.model)
    num_frames = args.num_frames or model.config.vision_config.num_frames
    if num_frames != model.config.vision_config.num_frames:
        dual_encoder(model).vision_model.resize_num_frames(num_frames)
    pixel_values = processor(videos=[args.video], num_frames=num_frames)["pixel_values"][0]
    keep_rate = args.fusion_keep_rate
    if args.caption is not None and keep_rate is None and model.config.text_config.fusion_token_keep_rate == 1.0:
        keep_rate = 0.5
    title = f"{Path(args.video).name}, {num_frames} frames, {args.model}"
    if args.caption is not None:
        title += f', caption: "{args.caption}"'
    token_selection_picture(model, processor, pixel_values, args.output, args.caption, keep_rate, title)
    print(f"Wrote {args.output}")


if __name__ == "__main__":
    main()
