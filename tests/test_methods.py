"""Compression methods on tiny models: each checked against an independent computation."""
from __future__ import annotations

import copy
import os
import tempfile

import pytest
import torch

from common import make_tiny_model, make_tokenizer, span_io
from prunescope.cli import main
from prunescope.methods import METHODS, compress, make_draft, save_compressed

TEXTS = ["the cat sat on the mat and looked at the door", "12 + 35 = 47, and 47 - 12 = 35",
         "def f(x):\n    return (x + 1) * 2", "rain fell on the hills all night long",
         "a b c d e f g h i j k l m n o p", "she counted the coins twice before paying",
         "[(1, 2), (3, 4)] is a list of pairs", "the river rose after three days of rain"]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _reload(result, tok, tmp_path):
    from transformers import AutoModelForCausalLM
    out = save_compressed(result, tok, tmp_path / "out", base="tiny")
    return AutoModelForCausalLM.from_pretrained(out).eval(), out


pytestmark = pytest.mark.usefixtures("one_thread")


IDS = torch.tensor([[5, 70, 80, 90, 100, 33, 44, 120, 7, 9]])


def test_registry_lists_every_method_and_refuses_unknown_settings():
    from prunescope.errors import UsageError
    assert set(METHODS.names()) >= {"depth", "replace", "merge", "width", "quant", "speculative"}
    with pytest.raises(UsageError, match="did you mean 'merge'"):
        METHODS.get("merg")
    with pytest.raises(UsageError, match="threshold"):
        compress(make_tiny_model(), make_tokenizer(), "merge", ratio=0.3, settings={"treshold": 0.5})


def test_depth_equals_the_criterion_cut():
    from prunescope.criteria import score_layers
    from prunescope.pruning import skip_layers
    model, tok = make_tiny_model(layers=6), make_tokenizer()
    ref = copy.deepcopy(model)
    order = score_layers(ref, tok, "block_influence", calib=TEXTS, progress=False)["order"]
    with skip_layers(ref, layers=order[:2]):
        expected = _logits(ref, IDS)
    result = compress(model, tok, "depth", ratio=0.3, calib=TEXTS)
    assert result.record["removed_layers"] == sorted(order[:2])
    torch.testing.assert_close(_logits(result.model, IDS), expected)


def test_replace_trained_layer_beats_removing_the_span(tmp_path):
    model, tok = make_tiny_model(layers=6), make_tokenizer()
    original = copy.deepcopy(model)
    result = compress(model, tok, "replace", ratio=0.3, calib=TEXTS * 4,
                      settings={"steps": 60, "lr": 3e-3, "min_lr": 3e-4, "batch_tokens": 64})
    a, b = result.record["span"]
    assert b - a == 2 and result.model.config.num_hidden_layers == 4
    span_in, span_out = span_io(original, tok, a, b, TEXTS)
    _, replaced_out = span_io(result.model, tok, a, a, TEXTS)
    mse_remove = torch.mean((span_in - span_out) ** 2).item()
    mse_trained = torch.mean((replaced_out - span_out) ** 2).item()
    assert mse_trained < 0.8 * mse_remove, (mse_trained, mse_remove)
    reloaded, _ = _reload(result, tok, tmp_path)
    torch.testing.assert_close(_logits(reloaded, IDS), _logits(result.model, IDS))


def test_merge_matches_the_laco_formula(tmp_path):
    model, tok = make_tiny_model(layers=6), make_tokenizer()
    theta = {k: v.clone() for k, v in model.state_dict().items()}
    # threshold -1 accepts the first merge: blocks 2, 3, 4 (L - 1 - C = 2 with C = 3) collapse into 2.
    result = compress(model, tok, "merge", ratio=0.3, settings={"merge_layers": 3, "threshold": -1.0})
    assert result.record["merges"][0]["into"] == 2 and result.record["merges"][0]["merged"] == [3, 4]
    assert result.model.config.num_hidden_layers == 4
    merged = result.model.state_dict()
    for name in ("self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight"):
        t = lambda i: theta[f"model.layers.{i}.{name}"]  # noqa: E731
        torch.testing.assert_close(merged[f"model.layers.2.{name}"], t(2) + (t(3) - t(2)) + (t(4) - t(2)))
    torch.testing.assert_close(merged["model.layers.2.input_layernorm.weight"],
                               theta["model.layers.2.input_layernorm.weight"])  # norms are not merged
    torch.testing.assert_close(merged["model.layers.3.mlp.up_proj.weight"], theta["model.layers.5.mlp.up_proj.weight"])
    reloaded, _ = _reload(result, tok, tmp_path)
    torch.testing.assert_close(_logits(reloaded, IDS), _logits(result.model, IDS))


def test_merge_rejects_when_similarity_falls_below_threshold():
    result = compress(make_tiny_model(layers=6), make_tokenizer(), "merge", ratio=0.3, settings={"threshold": 1.01})
    assert result.record["merges"] == [] and result.model.config.num_hidden_layers == 6
    assert all(not t["accepted"] for t in result.record["trials"])


@pytest.mark.parametrize("heads", [0.0, 0.5])
def test_width_matches_the_depth_budget_and_reloads(tmp_path, heads):
    model, tok = make_tiny_model(layers=6, hidden=32), make_tokenizer()
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    per_block = sum(p.numel() for p in model.model.layers[0].parameters())
    target = n(model) - 2 * per_block  # the size after removing 2 of 6 blocks (ratio 0.3)
    result = compress(model, tok, "width", ratio=0.3, calib=TEXTS, settings={"heads": heads})
    got = n(result.model)
    assert target - 6 * 3 * 32 < got <= target  # at most one MLP channel per layer below the depth cut's size
    if heads:
        assert result.model.config.num_key_value_heads == 1 and result.model.config.num_attention_heads == 2
    reloaded, out = _reload(result, tok, tmp_path)
    assert n(reloaded) == got
    torch.testing.assert_close(_logits(reloaded, IDS), _logits(result.model, IDS))


def test_width_keeps_the_most_active_channels():
    """A channel whose activations are zeroed (by zeroing its up_proj row) is the first one pruned."""
    model, tok = make_tiny_model(layers=2, hidden=32), make_tokenizer()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[17] = 0
    result = compress(model, tok, "width", ratio=0.4, calib=TEXTS)
    assert 17 not in result.record["kept_channels"][0]


def test_quant_int8_reduces_weight_memory_as_stated(tmp_path):
    pytest.importorskip("torchao")
    model, tok = make_tiny_model(layers=4, hidden=64), make_tokenizer()
    linear = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"]
    fp32_total = sum(t.numel() * 4 for t in [*model.parameters(), *model.buffers()])
    linear_w = sum(m.weight.numel() for m in linear)
    # int8 weights: one byte per weight plus one fp32 scale per output row (per-channel symmetric)
    expected = fp32_total - 4 * linear_w + linear_w + sum(4 * m.weight.shape[0] for m in linear)
    result = compress(model, tok, "quant", settings={"scheme": "int8"})
    measured = result.record["weights_bytes_after"]
    assert result.record["weights_bytes_before"] == fp32_total
    assert abs(measured - expected) <= 0.02 * expected, (measured, expected)
    _, out = _reload(result, tok, tmp_path)
    on_disk = os.path.getsize(out / "model.safetensors")
    assert on_disk < 0.5 * fp32_total
    # the quantized model still tracks the original closely
    top = _logits(result.model, IDS).argmax(-1)
    assert (top == _logits(make_tiny_model(layers=4, hidden=64), IDS).argmax(-1)).float().mean() >= 0.8


def _linear_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"}


def test_quant_int4_on_cpu_is_4_bit_round_to_nearest_per_group(tmp_path):
    pytest.importorskip("torchao")
    model, tok = make_tiny_model(layers=4, hidden=64), make_tokenizer()
    # the 4-bit kernels compute in bf16: the weights are quantized from their bf16 values
    original = {name: m.weight.detach().to(torch.bfloat16).float() for name, m in _linear_layers(model).items()}
    bf16_total = sum(t.numel() * 2 for t in [*model.parameters(), *model.buffers()])
    result = compress(model, tok, "quant", settings={"scheme": "int4"})
    assert result.record["compute_dtype"] == "bfloat16"
    group = result.record["group_size"]
    assert group == 64  # the largest of 128/64/32 dividing every input width (64 and 128 here)
    layers = _linear_layers(result.model)
    assert set(layers) == set(original)
    for name, module in layers.items():
        w = original[name]
        with torch.no_grad():  # the weight the kernel really multiplies by: the layer applied to the identity
            effective = module(torch.eye(w.shape[1], dtype=torch.bfloat16)).T.float()
        wg, eg = w.reshape(w.shape[0], -1, group), effective.reshape(w.shape[0], -1, group)
        step = (wg.amax(-1) - wg.amin(-1)) / 15  # 16 levels spanning each group's range
        # every group holds at most 16 distinct values, each within half a step of the original weight
        assert max(len(torch.unique(eg[i, j])) for i in range(eg.shape[0]) for j in range(eg.shape[1])) <= 16, name
        # (bf16 scales, zero points and outputs add up to about a tenth of a step; coarser levels, e.g. 3 bits,
        # would miss by a whole step)
        assert ((eg - wg).abs() <= step[..., None] * 0.65).all(), name
    # two weights per byte, plus a scale and a zero point (bf16) per group
    linear_w = sum(w.numel() for w in original.values())
    expected = bf16_total - 2 * linear_w + linear_w // 2 + (linear_w // group) * 2 * 2
    assert abs(result.record["weights_bytes_after"] - expected) <= 0.02 * expected
    # transformers cannot save torchao's CPU int4 layout: refused with one line, nothing written
    from prunescope.errors import UsageError
    with pytest.raises(UsageError, match="cannot be saved"):
        save_compressed(result, tok, tmp_path / "q4", base="tiny")
    assert not (tmp_path / "q4").exists()


@pytest.mark.parametrize("asked, needle", [("48", "does not divide"), ("many", "whole number")])
def test_quant_int4_refuses_a_group_size_that_leaves_layers_unquantized(asked, needle):
    pytest.importorskip("torchao")
    from prunescope.errors import UsageError
    with pytest.raises(UsageError, match=needle):
        compress(make_tiny_model(layers=2, hidden=64), make_tokenizer(), "quant",
                 settings={"scheme": "int4", "group_size": asked})


def test_speculative_output_is_the_full_models_greedy_output():
    model, tok = make_tiny_model(layers=6), make_tokenizer()
    ptrs = {p.data_ptr() for p in model.parameters()}
    result = compress(model, tok, "speculative", ratio=0.3, calib=TEXTS)
    draft = result.draft
    assert {p.data_ptr() for p in draft.parameters()} <= ptrs  # no second copy of any weight
    assert draft.config.num_hidden_layers == 4 and model.config.num_hidden_layers == 6
    from prunescope.methods.speculative import acceptance, generate_both
    gen = torch.Generator().manual_seed(1)
    accepted = []
    for i in range(20):
        ids = torch.randint(3, 250, (1, 3 + i % 5), generator=gen)
        plain, _ = generate_both(model, draft, ids, max_new_tokens=12, assisted=False)
        with torch.no_grad():  # the full model's greedy tokens, by hand, without the cache
            ref = ids
            for _ in range(12):
                ref = torch.cat([ref, model(input_ids=ref, use_cache=False).logits[:, -1:].argmax(-1)], 1)
        assert plain[0].tolist() == ref[0, ids.shape[1]:].tolist()
        spec, stats = generate_both(model, draft, ids, max_new_tokens=12, assisted=True)
        assert spec[0].tolist() == plain[0].tolist(), i
        assert stats["draft_calls"] > 0
        accepted.append(acceptance(12, stats))
    assert 0 <= sum(accepted) / 20 <= 1
    # A draft without blocks 0 and 2 renumbers the others while it runs; the full model's indices stay put.
    other = make_draft(model, removed=[0, 2])
    for i in range(3):
        ids = torch.randint(3, 250, (1, 4), generator=gen)
        plain, _ = generate_both(model, other, ids, max_new_tokens=8, assisted=False)
        spec, _ = generate_both(model, other, ids, max_new_tokens=8, assisted=True)
        assert spec[0].tolist() == plain[0].tolist()
    assert [b.self_attn.layer_idx for b in model.model.layers] == list(range(6))


def test_assisted_generation_leaves_no_library_warnings(capsys, caplog):
    from transformers.utils import logging as hf_logging
    from prunescope.methods.speculative import generate_both
    model, tok = make_tiny_model(layers=4), make_tokenizer()
    draft = make_draft(model, removed=[1])
    before = hf_logging.get_verbosity()
    hf_logging.enable_propagation()  # so caplog sees what transformers would print
    try:
        generate_both(model, draft, torch.tensor([[5, 6, 7]]), max_new_tokens=6, assisted=True)
    finally:
        hf_logging.disable_propagation()
    assert "generation_config" not in caplog.text and "logits processor" not in caplog.text
    assert "generation_config" not in capsys.readouterr().err
    assert hf_logging.get_verbosity() == before  # restored


def test_compress_cli_writes_a_loadable_checkpoint(tiny_model_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM
    from prunescope.io import read_json
    out = tmp_path / "merged"
    rc = main(["compress", "--model", str(tiny_model_dir), "--method", "merge", "--ratio", "0.3",
               "--settings", "merge_layers=3,threshold=-1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    meta = read_json(out / "prunescope.json")
    assert meta["method"] == "merge" and meta["settings"]["merge_layers"] == 3 and meta["removed_layers"] == [3, 4]
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 4
    assert "merge" in (out / "README.md").read_text()


@pytest.mark.parametrize("argv, needle", [
    (["--method", "shrink", "--ratio", "0.3"], "unknown compression method 'shrink'"),
    (["--method", "merge"], "needs --ratio"),
    (["--method", "merge", "--ratio", "0.3", "--settings", "size=3"], "has no setting 'size'"),
    (["--method", "merge", "--ratio", "0.3", "--settings", "merge_layers=x"], "expected a int"),
    (["--method", "depth", "--ratio", "1.5"], "strictly between 0 and 1"),
])
def test_compress_bad_input_is_one_line_exit_2(tiny_model_dir, tmp_path, capsys, argv, needle):
    rc = main(["compress", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("prunescope: error:") and needle in err[-1], err
    assert not (tmp_path / "o").exists()


def test_compress_int4_on_cpu_is_refused_before_writing(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("torchao")
    rc = main(["compress", "--model", str(tiny_model_dir), "--out", str(tmp_path / "o"), "--method", "quant",
               "--settings", "scheme=int4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("prunescope: error:") and "cannot be saved" in err[-1], err
    assert not (tmp_path / "o").exists() and "Traceback" not in "\n".join(err)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme, bits", [("nf4", 4), ("int4", 4)])
def test_quant_4bit_on_gpu_reduces_weight_memory(scheme, bits):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    model = make_tiny_model(layers=4, hidden=256).to(torch.bfloat16).cuda()
    linear_w = sum(m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head")
    result = compress(model, make_tokenizer(), "quant", settings={"scheme": scheme, "group_size": 64})
    saved = result.record["weights_bytes_before"] - result.record["weights_bytes_after"]
    # bf16 -> 4 bits saves 1.5 bytes per weight, less the scales (at most one per 64 weights, 4 bytes)
    assert saved >= linear_w * (1.5 - 4 / 64), (saved, linear_w)


def test_int4_group_size_auto_prefers_128_and_refuses_when_none_divides():
    from prunescope.errors import UsageError
    from prunescope.methods.quant import choose_group_size
    layers = lambda *widths: torch.nn.ModuleDict({f"l{i}": torch.nn.Linear(w, 8) for i, w in enumerate(widths)})  # noqa: E731
    assert choose_group_size(layers(4096, 14336), "auto") == 128  # Llama-3-8B's widths: torchao's default
    assert choose_group_size(layers(576, 1536), "auto") == 64  # SmolLM2-135M's
    assert choose_group_size(layers(96, 1536), "auto") == 32
    with pytest.raises(UsageError, match="no group size of 128, 64, 32"):
        choose_group_size(layers(48, 128), "auto")
    lm_head_only_odd = torch.nn.ModuleDict({"up": torch.nn.Linear(128, 8), "lm_head": torch.nn.Linear(40, 8)})
    assert choose_group_size(lm_head_only_odd, "auto") == 128  # the LM head stays unquantized
