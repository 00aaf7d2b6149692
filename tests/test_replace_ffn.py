"""``replace`` with ``replacement=ffn``: LLM-Streamline's FFN variant, saved as a standard decoder block whose
attention output projection is zero. Checked on tiny models against hidden states recorded independently."""
from __future__ import annotations

import copy

import pytest
import torch
from common import make_tiny_model, make_tokenizer, span_io

from prunescope.methods import compress, save_compressed
from prunescope.models import get_architecture, get_layers
from prunescope.models.architectures import get_submodule

TEXTS = ["the cat sat on the mat and looked at the door", "12 + 35 = 47, and 47 - 12 = 35",
         "def f(x):\n    return (x + 1) * 2", "rain fell on the hills all night long",
         "a b c d e f g h i j k l m n o p", "she counted the coins twice before paying",
         "[(1, 2), (3, 4)] is a list of pairs", "the river rose after three days of rain"]
IDS = torch.tensor([[5, 70, 80, 90, 100, 33, 44, 120, 7, 9]])
FAST = {"steps": 2, "batch_tokens": 64, "replacement": "ffn"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_trained_ffn_beats_removing_the_span_and_reloads_equal(tmp_path):
    from transformers import AutoModelForCausalLM

    model, tok = make_tiny_model(layers=6), make_tokenizer()
    original = copy.deepcopy(model)
    result = compress(model, tok, "replace", ratio=0.3, calib=TEXTS * 4,
                      settings={"steps": 80, "lr": 3e-3, "min_lr": 3e-4, "batch_tokens": 64, "replacement": "ffn"})
    a, b = result.record["span"]
    assert b - a == 2 and result.model.config.num_hidden_layers == 4 and result.record["replacement"] == "ffn"
    span_in, span_out = span_io(original, tok, a, b, TEXTS)
    replaced_in, replaced = span_io(result.model, tok, a, a, TEXTS)
    torch.testing.assert_close(replaced_in, span_in)  # earlier blocks untouched
    mse_remove = torch.mean((span_in - span_out) ** 2).item()
    mse_ffn = torch.mean((replaced - span_out) ** 2).item()
    assert mse_ffn < 0.8 * mse_remove, (mse_ffn, mse_remove)
    # the block is h + mlp(post_attention_layernorm(h)), written out here for Llama
    block = get_layers(result.model)[a]
    with torch.no_grad():
        by_hand = span_in + block.mlp(block.post_attention_layernorm(span_in))
    torch.testing.assert_close(replaced, by_hand, rtol=1e-5, atol=1e-5)
    out = save_compressed(result, tok, tmp_path / "out", base="tiny")
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.count_nonzero(get_layers(reloaded)[a].self_attn.o_proj.weight) == 0
    torch.testing.assert_close(_logits(reloaded), _logits(result.model))


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma2", "phi3", "gpt2"])
def test_ffn_block_depends_only_on_its_ffn_branch(arch):
    """Randomising every other weight of the replacing block leaves the logits alone (attention is off);
    zeroing the FFN branch makes the block an identity (the logits of the model with it skipped)."""
    from prunescope.pruning import skip_layers

    model, tok = make_tiny_model(arch, layers=4), make_tokenizer()
    result = compress(model, tok, "replace", ratio=0.3, calib=TEXTS, settings=FAST)
    a = result.record["span"][0]
    block = get_layers(result.model)[a]
    branch = {id(p) for name in get_architecture(result.model).ffn for p in get_submodule(block, name).parameters()}
    expected = _logits(result.model)
    with torch.no_grad():
        for p in block.parameters():
            if id(p) not in branch and p.dim() >= 2 and torch.count_nonzero(p):
                p.normal_(0, 0.5)
    torch.testing.assert_close(_logits(result.model), expected)
    with torch.no_grad():
        for p in block.parameters():
            if id(p) in branch:
                p.zero_()
    with skip_layers(result.model, layers=[a]):
        skipped = _logits(result.model)
    torch.testing.assert_close(_logits(result.model), skipped)


def test_unknown_replacement_is_a_usage_error():
    from prunescope.errors import UsageError
    with pytest.raises(UsageError, match="replacement=mlp: choose one of layer, ffn"):
        compress(make_tiny_model(layers=4), make_tokenizer(), "replace", ratio=0.3, calib=TEXTS,
                 settings={"replacement": "mlp"})


def test_compress_command_with_replacement_ffn(tmp_path, tiny_model_dir):
    import json

    from transformers import AutoModelForCausalLM

    from prunescope.cli import main
    out = tmp_path / "ffn"
    assert main(["compress", "--model", str(tiny_model_dir), "--method", "replace", "--ratio", "0.3",
                 "--settings", "replacement=ffn,steps=2,batch_tokens=64,max_calib_tokens=512", "--out", str(out)]) == 0
    record = json.loads((out / "prunescope.json").read_text())
    assert record["settings"]["replacement"] == record["replacement"] == "ffn"
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert torch.count_nonzero(get_layers(reloaded)[record["span"][0]].self_attn.o_proj.weight) == 0
