"""The converter as users run it: a release-style `.pth` file in, an HF folder out."""

import argparse
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from helpers.original_fixture import fixture_overrides

from modeling_svitt import SViTTForPreTraining
from modeling_svitt.convert_original_svitt import load_original_checkpoint
from modeling_svitt.sparse_attention import load_random_block_patterns


@pytest.fixture(scope="module")
def release_checkpoint(original_fixture_dir, tmp_path_factory):
    """The fixture's weights saved the way the release saves them: `{"model": ..., "config": ...}`."""
    meta = json.loads((original_fixture_dir / "meta.json").read_text())
    original_config, text_overrides = fixture_overrides(meta, "sparse")
    path = tmp_path_factory.mktemp("release") / "ckpt_00.pth"
    state_dict = load_file(original_fixture_dir / "state_dict.safetensors")
    torch.save({"model": state_dict, "config": original_config, "epoch": 0, "global_step": 10}, path)
    return path, text_overrides


def test_cli_writes_a_folder_that_reproduces_the_release(release_checkpoint, original_fixture_dir, tmp_path):
    path, text_overrides = release_checkpoint
    output = tmp_path / "converted"
    command = [sys.executable, "-m", "modeling_svitt.convert_original_svitt", "--checkpoint", str(path), "--output", str(output)]
    command += [arg for key, value in text_overrides.items() for arg in ("--text", f"{key}={value}")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "SViTTForPreTraining" in result.stdout and "block-sparse" in result.stdout

    model = SViTTForPreTraining.from_pretrained(output).eval()
    vision = model.config.vision_config
    assert (vision.num_frames, vision.attention_block_size, vision.num_random_blocks) == (4, 8, 2)
    assert (vision.token_keep_rate, vision.token_drop_layers, vision.mask_padded_keys) == (0.7, [1, 2], False)
    inputs = load_file(original_fixture_dir / "inputs.safetensors")
    expected = load_file(original_fixture_dir / "outputs.safetensors")
    with torch.no_grad():
        video = model.svitt.encode_video(
            inputs["pixel_values"], random_blocks=load_random_block_patterns(original_fixture_dir / "patterns.safetensors")
        )
    torch.testing.assert_close(video.tokens, expected["vision_last_hidden_state"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(video.embeds, expected["vision_embeds_itc"], atol=1e-5, rtol=1e-5)


def test_pickled_configs_need_explicit_trust(original_fixture_dir, tmp_path):
    state_dict = load_file(original_fixture_dir / "state_dict.safetensors")
    path = tmp_path / "pickled.pth"
    torch.save({"model": state_dict, "config": argparse.Namespace(num_frames=4)}, path)
    with pytest.raises(ValueError, match="allow-pickle"):
        load_original_checkpoint(path)
    weights, config = load_original_checkpoint(path, allow_pickle=True)
    assert config == {"num_frames": 4} and torch.equal(weights["temp"], state_dict["temp"])


def test_unreadable_and_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        load_original_checkpoint(tmp_path / "nothing.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pth"):
        load_original_checkpoint(broken)


@pytest.mark.parametrize(
    ("option", "item", "message"),
    [
        ("--vision", "num_hidden_layer=2", "--vision: `num_hidden_layer` is not a field of SViTTVisionConfig; did you "
                                           "mean `num_hidden_layers`?"),
        ("--text", "fusion_layr=9", "--text: `fusion_layr` is not a field of SViTTTextConfig; did you mean "
                                    "`fusion_layer`?"),
        ("--decoder", "num_hiden_layers=2", "did you mean `num_hidden_layers`?"),
        ("--vision", "num_frames", "--vision 'num_frames': expected KEY=VALUE"),
    ],
)
def test_override_keys_that_configure_nothing_are_refused(tmp_path, capsys, option, item, message):
    from svitt_tools.convert import main

    # refused before the checkpoint is read: it does not even exist
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", str(tmp_path / "absent.pth"), "--output", str(tmp_path / "out"), option, item])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_card_makes_a_push_ready_folder_that_loads_by_name(release_checkpoint, tmp_path, monkeypatch):
    import hashlib

    from huggingface_hub import ModelCard
    from helpers.bert_vocab import bert_vocab_dir
    from transformers import AutoModel, AutoModelForPreTraining, AutoProcessor

    from svitt_tools.convert import main

    path, text_overrides = release_checkpoint
    monkeypatch.chdir(tmp_path)
    arguments = ["--checkpoint", str(path), "--output", "svitt-ego", "--model-card", "--tokenizer", bert_vocab_dir()]
    main(arguments + [arg for key, value in text_overrides.items() for arg in ("--text", f"{key}={value}")])
    assert type(AutoModelForPreTraining.from_pretrained("svitt-ego")).__name__ == "SViTTForPreTraining"
    assert type(AutoModel.from_pretrained("svitt-ego")).__name__ == "SViTTModel"
    processor = AutoProcessor.from_pretrained("svitt-ego")
    assert processor.video_processor.num_frames == 4 and processor.tokenizer("a dog").input_ids == [101, 1037, 3899]

    card = ModelCard.load(tmp_path / "svitt-ego" / "README.md")
    assert card.data.eval_results is None and "model-index" not in card.data.to_dict()  # it measured nothing
    assert "Reported by the authors" not in card.content and "92.9" not in card.content
    assert f"`{path.name}` (SHA-256 `{hashlib.sha256(path.read_bytes()).hexdigest()}`)" in card.content
    assert "JerryYLi/svitt" in card.content and "read as a `SViTTForPreTraining` checkpoint" in card.content
