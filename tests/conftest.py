import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from common import make_tokenizer, save_tiny  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny llama saved to disk with the byte tokenizer and a chat template."""
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama", layers=6)


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture
def gsm8k_dir():
    path = SHARED_DATA / "gsm8k"
    if not (path / "test.jsonl").is_file():
        pytest.skip(f"GSM8K copy not found at {path} (only present beside the project checkout)")
    return path
