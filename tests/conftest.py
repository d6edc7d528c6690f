"""Test-session set-up: offline Hub, one private scratch folder removed at the end, small thread count, fixtures.

Everything a test run writes (the Hugging Face home with its remote-code module cache, torch's compile cache,
pytest's `tmp_path` folders) goes under one temporary folder that is deleted when the session ends, so the suite
leaves nothing behind in the system temp folder or the home cache.
"""

import os
import shutil
import tempfile
from pathlib import Path

# read by huggingface_hub / transformers / torch at import time, so set before anything imports them
SCRATCH = Path(tempfile.mkdtemp(prefix="svitt-tests-"))
os.environ["HF_HUB_OFFLINE"] = "1"
# not the user's caches, even when their environment names them: nothing from a test run may stay there
os.environ["HF_HOME"] = str(SCRATCH / "hf_home")
os.environ.pop("HF_MODULES_CACHE", None)  # follows HF_HOME (also in subprocesses that set their own)
os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(SCRATCH / "torchinductor")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

ORIGINAL_FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "original_svitt_tiny"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.option.basetemp is None:  # an explicit --basetemp is the caller's to keep
        config.option.basetemp = str(SCRATCH / "pytest")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def original_fixture_dir() -> Path:
    """The reference tensors produced by the authors' code (see `fixtures/original_svitt_tiny/README.md`)."""
    return ORIGINAL_FIXTURE_DIR


@pytest.fixture(scope="module")
def pretraining_checkpoint(tmp_path_factory):
    """A saved tiny pretraining model, the starting point of the other heads: `(model, folder)`."""
    from helpers.tiny_configs import make_model

    from modeling_svitt.modeling_heads import SViTTForPreTraining

    folder = tmp_path_factory.mktemp("pretraining")
    model = make_model(SViTTForPreTraining, seed=13)
    model.save_pretrained(folder)
    return model, folder
