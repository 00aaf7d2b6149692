import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from common import make_tokenizer, save_tiny  # noqa: E402

# Real datasets (GSM8K) are never copied into the repository. They are found at $PRUNESCOPE_SHARED_DATA,
# or by default in ``shared/data`` beside the checkout (``<checkout>/../shared/data``).
DEFAULT_SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SHARED_DATA = Path(os.environ.get("PRUNESCOPE_SHARED_DATA") or DEFAULT_SHARED_DATA)


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
        pytest.skip(f"needs a GSM8K copy (gsm8k/test.jsonl) and none is at {path}: set PRUNESCOPE_SHARED_DATA "
                    "to the folder holding gsm8k/ (default: ../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run hundreds of small matmuls; on a busy machine two threads wait on each other. Modules of
    such tests opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
