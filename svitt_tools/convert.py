"""Command line of the converter of the authors' SViTT release (`modeling_svitt.convert_original_svitt`).

    python -m modeling_svitt.convert_original_svitt --checkpoint ckpt_best.pth --output svitt-msrvtt [--model-card]

(`python -m svitt_tools.convert` is the same command.) The conversion itself is `convert_checkpoint` in the model
package; `--model-card` adds what makes the folder push-ready, a processor and a model card, which is tooling.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from modeling_svitt.configuration_svitt import SViTTTextConfig, SViTTVisionConfig, unknown_config_fields
from modeling_svitt.convert_original_svitt import __doc__ as CONVERTER_DOC
from modeling_svitt.convert_original_svitt import convert_checkpoint

from .model_card import write_converted_extras


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _parse_overrides(parser: argparse.ArgumentParser, option: str, items: list[str], config_class) -> dict[str, Any]:
    """`KEY=VALUE` items of one option (values as JSON, else strings); keys `config_class` lacks are refused with
    the closest valid field (the config would store them and use them nowhere)."""
    malformed = [item for item in items if "=" not in item]
    if malformed:
        parser.error(f"{option} {malformed[0]!r}: expected KEY=VALUE, e.g. {option} num_frames=8")
    overrides = {key: _parse_value(value) for key, value in (item.split("=", 1) for item in items)}
    problems = unknown_config_fields(config_class, overrides)
    if problems:
        parser.error(f"{option}: " + "; ".join(problems))
    return overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=CONVERTER_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="release checkpoint (.pth / .pt / .safetensors)")
    parser.add_argument("--output", required=True, help="folder to write the converted model to")
    parser.add_argument("--original-config", help="the release's YAML/JSON training config, if not in the checkpoint")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="read checkpoints with pickled configs (trusted files)"
    )
    parser.add_argument(
        "--vision", action="append", default=[], metavar="KEY=VALUE", help="override a SViTTVisionConfig field"
    )
    parser.add_argument(
        "--text", action="append", default=[], metavar="KEY=VALUE", help="override a SViTTTextConfig field"
    )
    parser.add_argument(
        "--decoder", action="append", default=[], metavar="KEY=VALUE", help="override a field of the QA answer decoder"
    )
    parser.add_argument(
        "--model-card",
        action="store_true",
        help="make the output push-ready: also write the processor and a model card saying where the weights come from",
    )
    parser.add_argument(
        "--tokenizer",
        default="google-bert/bert-base-uncased",
        help="vocabulary of the processor written with --model-card: a vocab.txt, a tokenizer folder or a Hub id",
    )
    args = parser.parse_args(argv)

    original_config = None
    if args.original_config:
        text = Path(args.original_config).read_text()
        if args.original_config.endswith((".yaml", ".yml")):
            import yaml

            original_config = yaml.safe_load(text)
        else:
            original_config = json.loads(text)
    vision_overrides = _parse_overrides(parser, "--vision", args.vision, SViTTVisionConfig)
    text_overrides = _parse_overrides(parser, "--text", args.text, SViTTTextConfig)
    decoder_overrides = _parse_overrides(parser, "--decoder", args.decoder, SViTTTextConfig)
    model = convert_checkpoint(
        args.checkpoint,
        args.output,
        original_config,
        vision_overrides,
        text_overrides,
        args.allow_pickle,
        decoder_overrides=decoder_overrides,
    )
    if args.model_card:
        write_converted_extras(args.output, model.config, args.checkpoint, args.tokenizer)
    vision = model.config.vision_config
    print(
        f"Wrote {type(model).__name__} to {args.output}: {vision.num_frames} frames, "
        f"{'block-sparse' if vision.use_sparse_attention else 'dense'} attention, keep rate {vision.token_keep_rate}."
    )


if __name__ == "__main__":
    main()
