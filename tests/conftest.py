"""Test-session set-up: offline Hub, a private HF cache, small thread count, shared fixtures."""

import os
import tempfile
from pathlib import Path

# read by huggingface_hub / transformers at import time, so set before anything imports them
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="svitt-test-hf-home-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

ORIGINAL_FIXTURE_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "original_svitt_tiny"


@pytest.fixture(scope="session")
def original_fixture_dir() -> Path:
    if not ORIGINAL_FIXTURE_DIR.is_dir():
        message = f"the authors' reference fixture is not present at {ORIGINAL_FIXTURE_DIR}"
        if os.environ.get("CI"):  # CI always has shared/ beside the clone: parity must not silently vanish there
            pytest.fail(message)
        pytest.skip(message)
    return ORIGINAL_FIXTURE_DIR


@pytest.fixture(scope="module")
def pretraining_checkpoint(tmp_path_factory):
    """A saved tiny pretraining model, the starting point of the other heads: `(model, folder)`."""
    from tiny_configs import make_model

    from modeling_svitt.modeling_heads import SViTTForPreTraining

    folder = tmp_path_factory.mktemp("pretraining")
    model = make_model(SViTTForPreTraining, seed=13)
    model.save_pretrained(folder)
    return model, folder
