"""Names that are neither a folder nor a usable Hub repo fail at once, saying how to get an SViTT checkpoint, once the
hint is installed (an opt-in: importing the model package changes nothing in transformers).

Runs offline (HF_HUB_OFFLINE=1, as the whole suite); the unreachable-Hub case (no retries) and the cached-repo case
are in `test_push_to_hub.py`, which has a Hub to stop.
"""

import time

import pytest
import transformers.utils.hub
from helpers.python_subprocess import run_python
from transformers import AutoModel, AutoModelForMultipleChoice, AutoProcessor

from modeling_svitt import SViTTForPreTraining, SViTTProcessor
from svitt_tools.checkpoint_names import install_checkpoint_name_hint, names_an_svitt_checkpoint


@pytest.fixture(autouse=True, scope="module")
def hint_installed():
    install_checkpoint_name_hint()


def test_importing_the_model_package_changes_nothing_in_transformers(tmp_path):
    script = """
        import transformers.processing_utils, transformers.utils.hub
        before = (transformers.utils.hub.cached_files, transformers.processing_utils.list_repo_templates)
        import modeling_svitt
        after = (transformers.utils.hub.cached_files, transformers.processing_utils.list_repo_templates)
        print("unchanged" if before == after else "patched")
        from svitt_tools.checkpoint_names import install_checkpoint_name_hint
        install_checkpoint_name_hint()
        print("opted in", transformers.utils.hub.cached_files._svitt_checkpoint_hint)
    """
    result = run_python(script, env={}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["unchanged", "opted in True"]


@pytest.mark.parametrize(
    "load",
    [
        AutoModel.from_pretrained,
        AutoModelForMultipleChoice.from_pretrained,
        AutoProcessor.from_pretrained,
        SViTTForPreTraining.from_pretrained,
        SViTTProcessor.from_pretrained,
    ],
)
def test_an_unknown_name_says_how_to_get_a_checkpoint(load, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(OSError) as error:
        load("svitt-ego")
    assert time.monotonic() - start < 5
    message = str(error.value)
    assert "'svitt-ego' is not a local folder, and HF_HUB_OFFLINE is set" in message
    assert "accelerate launch training/pretrain.py --recipe svitt-ego --output-dir svitt-ego" in message
    assert (
        "python -m modeling_svitt.convert_original_svitt --checkpoint ckpt.pth --output svitt-ego --model-card"
        in message
    )
    assert "give the id of a Hub repository" in message


def test_the_message_follows_the_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match="--recipe svitt --output-dir svitt`"):
        AutoModel.from_pretrained("svitt")
    with pytest.raises(
        OSError, match="'runs/../svitt-ego' is not a local folder, and it is not a valid Hub repository id"
    ):
        AutoModel.from_pretrained("runs/../svitt-ego")


def test_folders_are_left_to_transformers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "svitt-ego").mkdir()  # a folder without config.json: transformers' own error, no hint
    with pytest.raises(ValueError, match="Unrecognized model in svitt-ego") as error:
        AutoModel.from_pretrained("svitt-ego")
    assert "To get an SViTT checkpoint" not in str(error.value)


def test_the_hook_is_installed_once():
    wrapped = transformers.utils.hub.cached_files
    install_checkpoint_name_hint()
    assert transformers.utils.hub.cached_files is wrapped and wrapped._svitt_checkpoint_hint
    assert wrapped.__wrapped__.__module__ == "transformers.utils.hub"


def test_other_models_are_left_to_transformers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("bert-base-uncasd", "someone/egomcq-model"):
        with pytest.raises(OSError) as error:
            AutoModel.from_pretrained(name)
        assert "To get an SViTT checkpoint" not in str(error.value), name
    assert names_an_svitt_checkpoint("someone/SViTT-Ego") and names_an_svitt_checkpoint("svitt-ego/")
    assert not names_an_svitt_checkpoint("svitt-runs/bert")
