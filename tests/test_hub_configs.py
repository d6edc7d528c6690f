"""`hub_configs/`: what differs per paper checkpoint (config, processor files, card), kept identical to what the
package writes; with the package's sources it makes a folder that loads as remote code."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import EvalResult, ModelCard
from helpers.python_subprocess import run_python
from helpers.tiny_configs import tiny_config
from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoProcessor

from modeling_svitt.remote_code import MODEL_SOURCES, copy_model_sources, model_auto_map
from svitt_tools.compute_cost import video_tower_gmacs
from training.hub_configs import VARIANTS, write_hub_config

ROOT = Path(__file__).resolve().parents[1]
REFRESH = "python training/hub_configs.py"


def _comparable(path: Path):
    if path.suffix == ".json":  # the library version that wrote a file is not part of what it says
        data = json.loads(path.read_text())
        data.pop("transformers_version", None)
        return data
    return path.read_bytes()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_committed_folder_is_what_the_package_writes(variant, tmp_path):
    committed, fresh = ROOT / "hub_configs" / variant, write_hub_config(variant, tmp_path / variant)
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in fresh.iterdir()), (
        f"hub_configs/{variant} holds other files than the package writes; refresh it with `{REFRESH}`"
    )
    for path in sorted(fresh.iterdir()):
        assert _comparable(committed / path.name) == _comparable(path), (
            f"hub_configs/{variant}/{path.name} drifted from what modeling_svitt/ writes; refresh it with `{REFRESH}`"
        )


def test_no_source_is_copied_into_the_folders():
    for variant in VARIANTS:
        folder = ROOT / "hub_configs" / variant
        assert sorted(path.name for path in folder.iterdir()) == [
            "README.md",
            "config.json",
            "processor_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]


LOAD_WITHOUT_THE_PACKAGE = """
    import numpy as np, torch
    from transformers import AutoConfig, AutoModel, AutoModelForPreTraining, AutoProcessor
    folder = sys.argv[1]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    with torch.device("meta"):  # the paper's size: build the architecture without allocating it
        model = AutoModel.from_config(config, trust_remote_code=True)
        head = AutoModelForPreTraining.from_config(config, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    frames = np.zeros((config.vision_config.num_frames, 40, 48, 3), np.uint8)
    inputs = processor(text=["a person cuts an onion"], videos=[frames])
    print(type(config).__name__, type(model).__name__, type(head).__name__, type(processor).__name__)
    print(type(model).__module__.split(".")[0], head.num_parameters(), tuple(inputs["pixel_values"].shape))
"""


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_folder_with_the_package_sources_loads_as_remote_code_without_the_package(variant, tmp_path):
    """What a push of that checkpoint uploads, less the weights: the folder, plus the sources copied at upload time."""
    assembled = tmp_path / "elsewhere" / variant
    shutil.copytree(ROOT / "hub_configs" / variant, assembled)
    assert sorted(path.name for path in copy_model_sources(assembled)) == sorted(MODEL_SOURCES)
    env = dict(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"))
    result = run_python(LOAD_WITHOUT_THE_PACKAGE, str(assembled), env=env, cwd=tmp_path, with_package=False)
    assert result.returncode == 0, result.stderr[-3000:]
    names, details = result.stdout.strip().splitlines()[-2:]
    assert names == "SViTTConfig SViTTModel SViTTForPreTraining SViTTProcessor"
    config = AutoConfig.from_pretrained(ROOT / "hub_configs" / variant)
    with torch.device("meta"):  # the same architecture as the package's own class
        parameters = AutoModelForPreTraining.from_config(config).num_parameters()
    frames = config.vision_config.num_frames
    assert details == f"transformers_modules {parameters} (1, {frames}, 3, 224, 224)"


def test_configs_hold_the_papers_settings():
    svitt = AutoConfig.from_pretrained(ROOT / "hub_configs" / "svitt")
    ego = AutoConfig.from_pretrained(ROOT / "hub_configs" / "svitt-ego")
    for config in (svitt, ego):
        vision, text = config.vision_config, config.text_config
        beit_b16 = (vision.hidden_size, vision.num_hidden_layers, vision.patch_size, vision.image_size)
        bert_base = (text.hidden_size, text.num_hidden_layers, text.num_fusion_layers, text.vocab_size)
        assert beit_b16 == (768, 12, 16, 224) and bert_base == (768, 12, 3, 30522)
        assert (vision.attention_block_size, vision.num_local_blocks, vision.num_random_blocks) == (56, 1, 3)
        assert vision.use_sparse_attention and vision.token_drop_layers == [3, 6, 9]
        assert config.auto_map == model_auto_map() and {"AutoConfig", "AutoModel"} <= set(config.auto_map)
    svitt_stage = (svitt.vision_config.num_frames, svitt.vision_config.token_keep_rate, svitt.contrastive_loss)
    assert svitt_stage == (16, 0.5, "infonce")
    assert (ego.vision_config.num_frames, ego.vision_config.token_keep_rate, ego.contrastive_loss) == (4, 0.7, "egonce")


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_model_built_from_the_folder_runs_a_forward_pass(variant):
    folder = ROOT / "hub_configs" / variant
    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()  # random weights: the folder has none
    processor = AutoProcessor.from_pretrained(folder)
    frames = np.random.default_rng(0).integers(0, 256, (config.vision_config.num_frames, 40, 48, 3), dtype=np.uint8)
    inputs = processor(text=["a person cuts an onion", "a dog runs"], videos=[frames])
    assert inputs["pixel_values"].shape == (1, config.vision_config.num_frames, 3, 224, 224)
    with torch.no_grad():
        output = model(**inputs)
    assert output.logits_per_video.shape == (1, 2) and torch.isfinite(output.logits_per_video).all()
    vision = config.vision_config
    kept = vision.num_patch_tokens
    for _ in vision.token_drop_layers:
        kept = int(np.ceil(vision.token_keep_rate * kept))
    assert output.vision_model_output.last_hidden_state.shape[1] == kept + vision.num_global_tokens


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_card_field_parses_back(variant):
    path = ROOT / "hub_configs" / variant / "README.md"
    front_matter = yaml.safe_load(path.read_text().split("---\n")[1])
    card = ModelCard.load(path)
    loaded = card.data.to_dict()
    for key, value in front_matter.items():
        assert loaded[key] == value, key
    metrics = [metric for result in front_matter["model-index"][0]["results"] for metric in result["metrics"]]
    assert len(card.data.eval_results) == len(metrics) > 0
    for result in card.data.eval_results:
        assert isinstance(result, EvalResult) and result.source_url and result.source_name  # reported, with source
    assert card.data.license == "mit" and "custom_code" in card.data.tags


def test_cards_show_computed_costs_citations_and_reported_numbers():
    svitt = (ROOT / "hub_configs" / "svitt" / "README.md").read_text()
    ego = (ROOT / "hub_configs" / "svitt-ego" / "README.md").read_text()
    config = AutoConfig.from_pretrained(ROOT / "hub_configs" / "svitt").vision_config
    for frames in (4, 8, 16):
        dense = video_tower_gmacs(config, frames, use_sparse_attention=False, token_keep_rate=1.0)
        sparse = video_tower_gmacs(config, frames)
        assert f"| {dense:.4g} |" in svitt and f"| {sparse:.4g} |" in svitt and f"{dense / sparse:.2f}x" in svitt
    for card in (svitt, ego):
        assert "li2023svitt" in card and "valdez2024svittego" in card and "## Licence" in card
        assert "trust_remote_code=True" in card and "## Intended uses and limitations" in card
    assert "52.7" in svitt and "paperswithcode.com" in svitt
    assert "92.9" in ego and "65.9" in ego and "EVA02-AT" in ego and "EgoClip" in ego


@pytest.mark.parametrize("architecture", ["SViTTModel", "SViTTForPreTraining", "SViTTForVideoQuestionAnswering"])
def test_cards_count_each_tied_parameter_once(architecture):
    import modeling_svitt
    from svitt_tools.model_card import num_parameters

    config = tiny_config()
    config.architectures = [architecture]
    assert num_parameters(config) == getattr(modeling_svitt, architecture)(config).num_parameters()
