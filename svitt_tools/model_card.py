"""Hub model cards for SViTT checkpoints, written from a configuration and from what the caller measured.

One renderer serves the three places that write cards: a trained run pushed with `training/push_to_hub.py`, a
checkpoint of the authors' release converted with `convert_original_svitt --model-card`, and the paper settings in
`hub_configs/`. The caller supplies what differs (the title, where the weights come from, the training recipe, the
`model-index` entries, the pictures); everything derived from the configuration (architecture, sparsity settings,
their analytic cost at 4 / 8 / 16 frames) is computed here, never typed.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from modeling_svitt.configuration_svitt import SViTTConfig

from .compute_cost import video_tower_gmacs

SVITT_CITATION = """@inproceedings{li2023svitt,
  title     = {{SViTT}: Temporal Learning of Sparse Video-Text Transformers},
  author    = {Li, Yi and Min, Kyle and Tripathi, Subarna and Vasconcelos, Nuno},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages     = {18919--18929},
  year      = {2023}
}"""
SVITT_EGO_CITATION = """@article{valdez2024svittego,
  title   = {{SViTT-Ego}: A Sparse Video-Text Transformer for Egocentric Video},
  author  = {Valdez, Hector A. and Min, Kyle and Tripathi, Subarna},
  journal = {arXiv preprint arXiv:2406.09462},
  year    = {2024}
}"""

# Numbers the authors published, with where they were read. Cards show them as reported, never as measured.
REPORTED_RESULTS = {
    "svitt": [
        dict(
            task_type="video-question-answering",
            task_name="Video question answering",
            dataset_type="agqa",
            dataset_name="AGQA 2.0 (balanced)",
            dataset_split="test",
            metric_type="accuracy",
            metric_name="Average accuracy",
            metric_value=52.7,
            source_name="Papers with Code (SViTT)",
            source_url="https://paperswithcode.com/paper/svitt-temporal-learning-of-sparse-video-text",
        ),
    ],
    "svitt-ego": [
        dict(
            task_type="multiple-choice",
            task_name="EgoMCQ",
            dataset_type="egomcq",
            dataset_name="EgoMCQ",
            dataset_split="validation",
            metric_type="accuracy",
            metric_name=f"{setting.capitalize()}-video accuracy",
            metric_value=value,
            metric_config=setting,
            source_name="EVA02-AT (arXiv 2506.14356), Table II",
            source_url="https://arxiv.org/abs/2506.14356",
        )
        for setting, value in (("inter", 92.9), ("intra", 65.9))
    ],
}
FAMILY_SUMMARY = {
    "svitt": (
        "SViTT (Sparse Video-Text Transformer; Li, Min, Tripathi and Vasconcelos, CVPR 2023) is a video-text model: "
        "a BEiT video tower with a 3-D relative position bias, and a BERT text tower whose last layers cross-attend "
        "to the video tokens. Its video tower is sparse in two ways: *edge sparsity* (each patch query attends only "
        "to its own block of tokens, a few random blocks and the [CLS] token) and *node sparsity* (after some layers "
        "only the patch tokens the [CLS] token attends to most are kept). It learns with video-text contrastive "
        "(ITC), video-text matching (ITM, with hard negatives) and masked language modelling (MLM) losses, through a "
        "curriculum that lengthens the clips while raising the sparsity."
    ),
    "svitt-ego": (
        "SViTT-Ego (Valdez, Min and Tripathi, CVPR 2024 EgoVis workshop) is SViTT for egocentric video: the same "
        "sparse video-text transformer (BEiT video tower with edge and node sparsity, BERT text tower with "
        "cross-attention fusion layers), which the paper pretrains on EgoClip narrations with the EgoNCE contrastive "
        "loss (action-aware positives, scene-aware negatives) in place of InfoNCE, on 4-frame clips keeping 70% of "
        "the tokens. Its EgoMCQ accuracies follow the dataset's `types`: 1 is inter-video (candidates from five "
        "videos), 2 is intra-video (five moments of one video); EgoVLP's evaluation logs print these two numbers "
        "under each other's names."
    ),
}
_AUTO_CLASSES = (
    ("AutoModel", "SViTTModel", "dual encoder: video / text embeddings and their similarities"),
    ("AutoModelForPreTraining", "SViTTForPreTraining", "ITC + ITM + MLM (or EgoNCE) pretraining"),
    ("AutoModelForVisualQuestionAnswering", "SViTTForVideoQuestionAnswering", "answer ranking for video QA"),
    ("AutoModelForMultipleChoice", "SViTTForMultipleChoice", "one text, N clips (EgoMCQ)"),
)


def model_family(config: SViTTConfig) -> str:
    """`"svitt-ego"` for EgoNCE checkpoints, `"svitt"` otherwise."""
    return "svitt-ego" if config.contrastive_loss == "egonce" else "svitt"


@dataclass
class CardContent:
    """What a card says beyond what the configuration determines.

    Args:
        title: the card's heading and `model-index` name.
        load_name: the repo id or folder name the usage examples load.
        origin: where the weights come from (markdown).
        training: the training data and recipe (markdown).
        eval_results: `model-index` entries, each the keyword arguments of `huggingface_hub.EvalResult`; only
            numbers measured on these weights (or, for a card without weights, numbers with a `source_name`).
        evaluation_note: shown under the evaluation table, or instead of it when there are no entries.
        pictures: `(path in the repo, caption)` of pictures the repo holds.
        show_reported: add the numbers the authors published (as reported, not reproduced).
        base_model: Hub ids of the checkpoints the weights were initialised from.
    """

    title: str
    load_name: str
    origin: str
    training: str
    eval_results: list[dict] = field(default_factory=list)
    evaluation_note: str = ""
    pictures: list[tuple[str, str]] = field(default_factory=list)
    show_reported: bool = False
    base_model: list[str] = field(default_factory=list)


def num_parameters(config: SViTTConfig) -> int:
    """Parameters of the configuration's architecture (tied weights once), counted on the meta device (no memory,
    and the weights are tied as on a real model: built uninitialised, the tied MLM decoder would count twice)."""
    from modeling_svitt import modeling_heads, modeling_svitt, modeling_video_qa

    name = (config.architectures or ["SViTTModel"])[0]
    modules = (modeling_heads, modeling_svitt, modeling_video_qa)
    model_class = next(
        (getattr(module, name) for module in modules if hasattr(module, name)), modeling_svitt.SViTTModel
    )
    with torch.device("meta"):
        return model_class(config).num_parameters()


_RANK_WORDS = frozenset({"rank", "medr", "mnr"})


def is_rank_metric(name: str) -> bool:
    """A rank (1 is best, no upper bound): a name with the word `rank`, `MedR` or `MnR` (`t2v_median_rank`)."""
    return bool(_RANK_WORDS & set(re.split(r"[^a-z0-9]+", name.lower())))


def format_metric(name: str, value: Any) -> str:
    """How every table of this project (cards, evaluation and sweep reports) prints a metric.

    A rank (a name with the word `rank`, `MedR` or `MnR`, e.g. `t2v_median_rank`) as a number with one decimal; a
    count (`num_*`) as an integer; any other number in [0, 1] is a fraction, printed as a percentage with one
    decimal (`t2v_r1` 0.5 -> `50.0%`), and one outside [0, 1] as a number with one decimal (a score already in
    percent stays readable). Anything else (a missing value's `-`) as it is.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if name.startswith("num_"):
        return f"{value:.0f}"
    if is_rank_metric(name) or not 0 <= value <= 1:
        return f"{value:.1f}"
    return f"{100 * value:.1f}%"


def _gmacs(value: float) -> str:
    return f"{value:.4g}"


def sparsity_cost_table(config: SViTTConfig, frame_counts: tuple[int, ...] = (4, 8, 16)) -> str:
    """Markdown table: analytic GMACs of the video tower per clip, dense vs this configuration's sparsity."""
    vision = config.vision_config
    rows = [
        "| frames | dense | edge sparsity only | node sparsity only | edge + node (this checkpoint) | dense / this |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for frames in frame_counts:
        dense = video_tower_gmacs(vision, frames, use_sparse_attention=False, token_keep_rate=1.0)
        edge = video_tower_gmacs(vision, frames, token_keep_rate=1.0)
        node = video_tower_gmacs(vision, frames, use_sparse_attention=False)
        both = video_tower_gmacs(vision, frames)
        marker = " *(trained length)*" if frames == vision.num_frames else ""
        rows.append(
            f"| {frames}{marker} | {_gmacs(dense)} | {_gmacs(edge)} | {_gmacs(node)} | {_gmacs(both)} | "
            f"{dense / both:.2f}x |"
        )
    return "\n".join(rows)


def _architecture(config: SViTTConfig) -> str:
    vision, text = config.vision_config, config.text_config
    return "\n".join(
        [
            "| part | setting |",
            "| --- | --- |",
            f"| video tower | BEiT-style, {vision.num_hidden_layers} layers, width {vision.hidden_size}, "
            f"{vision.num_attention_heads} heads, {vision.patch_size}x{vision.patch_size} patches of "
            f"{vision.image_size}x{vision.image_size} frames, {vision.num_frames} frames per clip |",
            f"| text tower | BERT-style, {text.fusion_layer} text layer(s) + {text.num_fusion_layers} fusion layer(s) "
            f"(cross-attention to the video tokens), width {text.hidden_size}, vocabulary {text.vocab_size} |",
            f"| joint embedding | {config.embed_dim} dimensions, contrastive loss `{config.contrastive_loss}` |",
            f"| saved head | `{(config.architectures or ['SViTTModel'])[0]}` |",
            f"| parameters | {num_parameters(config) / 1e6:.1f} M |",
        ]
    )


def _sparsity_settings(config: SViTTConfig) -> str:
    vision, text = config.vision_config, config.text_config
    edge = (
        f"blocks of {vision.attention_block_size} tokens; each patch query block sees {vision.num_local_blocks} "
        f"local + {vision.num_random_blocks} random blocks and the {vision.num_global_tokens} global token(s)"
        if vision.use_sparse_attention
        else "off (dense attention)"
    )
    node = (
        f"keep {vision.token_keep_rate:g} of the patch tokens (`{vision.token_keep_strategy}`) after layers "
        f"{', '.join(str(layer) for layer in vision.token_drop_layers)} (0-based)"
        if vision.prunes_tokens
        else "off (every token kept)"
    )
    fusion = (
        f"keep {text.fusion_token_keep_rate:g} of the video tokens (`{text.fusion_token_keep_strategy}`)"
        if text.fusion_token_keep_rate < 1.0
        else "off (as in the authors' release; can be switched on at inference)"
    )
    return "\n".join(
        [
            f"- **Edge sparsity** (`use_sparse_attention`, `attention_block_size`, `num_local_blocks`, "
            f"`num_random_blocks`): {edge}.",
            f"- **Node sparsity** (`token_keep_rate`, `token_drop_layers`): {node}.",
            f"- **Text-guided selection in the fusion layers** (`fusion_token_keep_rate`): {fusion}.",
            "- Evaluation draws its random blocks from a fixed seed "
            f"(`deterministic_eval={vision.deterministic_eval}`, `random_block_seed={vision.random_block_seed}`); "
            "training draws fresh ones every step.",
        ]
    )


def _results_table(entries: list[dict]) -> str:
    with_source = any(entry.get("source_name") for entry in entries)
    header = "| task | dataset | split | metric | value |" + (" source |" if with_source else "")
    rows = [header, "| --- " * (6 if with_source else 5) + "|"]
    for entry in entries:
        row = (
            f"| {entry.get('task_name') or entry['task_type']} | {entry['dataset_name']} | "
            f"{entry.get('dataset_split') or ''} | {entry.get('metric_name') or entry['metric_type']} | "
            f"{entry['metric_value']:g} |"
        )
        if with_source:
            row += f" [{entry.get('source_name')}]({entry.get('source_url')}) |"
        rows.append(row)
    return "\n".join(rows)


def _usage(load_name: str) -> str:
    heads = "\n".join(f"| `{auto}` | `{head}` | {what} |" for auto, head, what in _AUTO_CLASSES)
    return f"""With the `svitt` package installed (`pip install svitt`):

```python
import torch
import modeling_svitt  # registers SViTT with the Auto classes
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{load_name}").eval()
processor = AutoProcessor.from_pretrained("{load_name}")
inputs = processor(text=["a person cuts an onion", "a dog runs"], videos=["clip.mp4"])
with torch.no_grad():
    similarity = model(**inputs).logits_per_video  # (videos, texts)
```

Without it, the model code in this repository runs as remote code:

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{load_name}", trust_remote_code=True)
processor = AutoProcessor.from_pretrained("{load_name}", trust_remote_code=True)
```

The checkpoint loads into every task head:

| Auto class | class | use |
| --- | --- | --- |
{heads}

Retrieval (ITC for every pair, ITM re-ranking of the top candidates, several clips per video) has no Auto class:
load `modeling_svitt.SViTTForVideoTextRetrieval.from_pretrained("{load_name}")`, or, without the package,
`transformers.dynamic_module_utils.get_class_from_dynamic_module("modeling_heads.SViTTForVideoTextRetrieval",
"{load_name}")`."""


def render_model_card(config: SViTTConfig, content: CardContent) -> ModelCard:
    """The model card (YAML metadata with `model-index`, and the markdown body) of an SViTT checkpoint."""
    family = model_family(config)
    reported = REPORTED_RESULTS[family] if content.show_reported else []
    tags = ["svitt", "video-text", "video-text-retrieval", "sparse-attention", "custom_code"]
    if family == "svitt-ego":
        tags.append("egocentric")
    data = ModelCardData(
        model_name=content.title,
        license="mit",
        library_name="transformers",
        pipeline_tag="feature-extraction",
        language=["en"],
        tags=tags,
        base_model=content.base_model or None,
        eval_results=[EvalResult(**entry) for entry in content.eval_results] or None,
    )
    evaluation = _results_table(content.eval_results) if content.eval_results else ""
    sections = [
        f"# {content.title}",
        FAMILY_SUMMARY[family],
        f"## Where the weights come from\n\n{content.origin}",
        f"## Model details\n\n{_architecture(config)}",
        "## Intended uses and limitations\n\n"
        "- Zero-shot text-to-video and video-to-text retrieval (ITC similarities, optionally re-ranked by ITM), and a "
        "starting point for fine-tuning retrieval, video question answering and multiple choice (EgoMCQ): the "
        "checkpoint loads into every task head.\n"
        "- English, uncased text (BERT WordPiece vocabulary); captions are cleaned as the authors' release does.\n"
        f"- Short clips: {config.vision_config.num_frames} frames per clip. Longer videos are scored as several clips "
        "(`num_clips`, log-sum-exp / mean / max ensembling); other clip lengths need the relative position bias "
        "resampled (`from_pretrained(..., num_frames=T)`), which changes accuracy in ways not measured here.\n"
        "- The model inherits the biases of its training data. It is not meant for identifying or tracking people.",
        f"## How to use\n\n{_usage(content.load_name)}",
        "## Sparsity and its cost\n\n" + _sparsity_settings(config) + "\n\n"
        "Analytic cost of the video tower per clip, in GMACs (multiply-accumulates of its matrix products, computed "
        "by `svitt_tools.compute_cost` from this configuration; patch embedding, norms, softmax and the text tower "
        f"are left out), with this checkpoint's settings at other clip lengths:\n\n{sparsity_cost_table(config)}",
        f"## Training\n\n{content.training}",
        "## Evaluation\n\n" + "\n\n".join(part for part in (evaluation, content.evaluation_note) if part),
    ]
    if reported:
        sections.append(
            "### Reported by the authors (not reproduced here)\n\n"
            "Published numbers of the original model, for reference; they were not measured on these weights.\n\n"
            + _results_table(reported)
        )
    if content.pictures:
        pictures = [f"![{caption}]({path})\n\n*{caption}*" for path, caption in content.pictures]
        sections.append("## Pictures from the run\n\n" + "\n\n".join(pictures))
    sections += [
        f"## Citation\n\n```bibtex\n{SVITT_CITATION}\n\n{SVITT_EGO_CITATION}\n```",
        "## Licence\n\nMIT, like the code of this package and of the authors' release "
        "([JerryYLi/svitt](https://github.com/JerryYLi/svitt)). The training data keep their own terms (WebVid and "
        "Ego4D / EgoClip come with licence agreements of their own), which may restrict what the weights can be used "
        "for.",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_converted_extras(
    folder: str | Path, config: SViTTConfig, checkpoint: str | Path, tokenizer: str, max_text_length: int = 32
) -> None:
    """Make a converted checkpoint folder push-ready: its processor and a card saying where the weights come from.

    Args:
        folder: the converter's output folder (weights, config and model source already there).
        config: the converted model's configuration.
        checkpoint: the release checkpoint file the weights were read from.
        tokenizer: the vocabulary: a `vocab.txt` file, a tokenizer folder or a Hub id (the release used
            `bert-base-uncased`'s).
        max_text_length: the processor's text length (32, the release's pretraining length).
    """
    from modeling_svitt.processing_svitt import SViTTProcessor, SViTTVideoProcessor
    from modeling_svitt.tokenization_svitt import SViTTTokenizer

    folder, checkpoint = Path(folder), Path(checkpoint)
    vision = config.vision_config
    text_tokenizer = (
        SViTTTokenizer(vocab=tokenizer) if tokenizer.endswith(".txt") else SViTTTokenizer.from_pretrained(tokenizer)
    )
    video_processor = SViTTVideoProcessor(size=vision.image_size, num_frames=vision.num_frames)
    SViTTProcessor(video_processor, text_tokenizer, max_text_length=max_text_length).save_pretrained(folder)
    head = (config.architectures or ["SViTTModel"])[0]
    content = CardContent(
        title=folder.name,
        load_name=folder.name,
        origin=(
            "Converted from a checkpoint of the authors' release "
            f"([JerryYLi/svitt](https://github.com/JerryYLi/svitt)): `{checkpoint.name}` "
            f"(SHA-256 `{_sha256(checkpoint)}`), read as a `{head}` checkpoint by "
            "`python -m modeling_svitt.convert_original_svitt`. Architecture and clip length come from the tensor "
            "shapes, sparsity from the checkpoint's own training configuration or the release's defaults; the "
            "configuration reproduces the release's behaviour (padded keys left in the softmax, pruning after the "
            "feed-forward, text-guided selection off)."
        ),
        training="Trained by the authors with their release; the papers cited below describe the data and the recipe.",
        evaluation_note=(
            "Not evaluated here, so this card carries no evaluation numbers. Evaluate the converted weights with "
            "`training/evaluate.py` and push them with `training/push_to_hub.py` to add a `model-index` of measured "
            "numbers."
        ),
    )
    render_model_card(config, content).save(folder / "README.md")


__all__ = [
    "CardContent",
    "REPORTED_RESULTS",
    "format_metric",
    "is_rank_metric",
    "model_family",
    "num_parameters",
    "render_model_card",
    "sparsity_cost_table",
    "write_converted_extras",
]
