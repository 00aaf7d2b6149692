"""Cut bookkeeping against hand-worked values: index validation, the config fields a cut rewrites, indices
recorded over repeated cuts, and GPT-2's inverse-layer scaling in the configurations the fast suite's
default tiny GPT-2 does not take (biases, unscaled attention, cross-attention)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from common import make_tiny_model
from prunescope.errors import UsageError
from prunescope.models.architectures import Architecture, get_layers
from prunescope.pruning import drop_layers
from prunescope.pruning.surgery import _config_changes, validate_layers

IDS = torch.tensor([[5, 17, 33, 2, 90, 41, 7, 66, 12, 3]])


@pytest.mark.parametrize("layers, flag, message", [
    ([True], "--layers", r"^--layers: True is not an integer layer index$"),
    ([1.0], "--cut", r"^--cut: 1\.0 is not an integer layer index$"),
    (["2"], "--layers", r"^--layers: '2' is not an integer layer index$"),
    ([6], "--layers", r"^--layers: layer 6 is out of range; indices are 0-based, from 0 to 5$"),
    ([0, -1], "--x", r"^--x: layer -1 is out of range; indices are 0-based, from 0 to 5$"),
    ([3, 1, 3, 1], "--layers", r"^--layers: layer 1 is listed more than once$"),
    ([5, 4, 3, 2, 1, 0], "--layers", r"^--layers: removing all 6 layers leaves no model; remove at most 5$"),
])
def test_bad_layer_lists_are_refused_with_the_flag_named(layers, flag, message):
    with pytest.raises(UsageError, match=message):
        validate_layers(layers, 6, flag=flag)


def test_the_default_flag_is_layers_and_good_lists_come_back_sorted():
    with pytest.raises(UsageError, match=r"^--layers: layer 6 is out of range"):
        validate_layers([6], 6)
    assert validate_layers((4, 0, 2), 6) == [0, 2, 4]
    assert validate_layers(iter([5, 0, 1, 2, 3]), 6) == [0, 1, 2, 3, 5]
    assert validate_layers([], 6) == []


def _arch(**kw):
    return Architecture(model_type="x", layers="model.layers", final_norm=None, embed=None, lm_head=None, **kw)


def test_config_changes_slice_lists_recount_thresholds_and_keep_both_layer_counts():
    types = ("a0", "a1", "a2", "a3", "a4", "a5")
    config = SimpleNamespace(n_layer=6, num_hidden_layers=6, layer_types=types, window=[1, 2, 3], max_window_layers=3,
                             first_dense=0)
    arch = _arch(num_layers_field="n_layer", per_layer_fields=("layer_types", "window", "absent"),
                 index_threshold_fields=("max_window_layers", "first_dense", "absent_too"))
    changes = _config_changes(config, arch, [1], 6)
    assert changes == {"n_layer": 5, "layer_types": ("a0", "a2", "a3", "a4", "a5"), "max_window_layers": 2,
                       "first_dense": 0, "num_hidden_layers": 5}
    assert _config_changes(config, arch, [0, 4], 6)["max_window_layers"] == 2  # blocks 1, 2 stay below 3
    assert _config_changes(config, arch, [5], 6)["max_window_layers"] == 3


def test_config_changes_touch_only_the_fields_the_config_has():
    arch = _arch(per_layer_fields=("layer_types",))
    assert _config_changes(SimpleNamespace(num_hidden_layers=4, layer_types=None), arch, [2], 4) == {
        "num_hidden_layers": 3}
    assert _config_changes(SimpleNamespace(num_hidden_layers=4), arch, [0, 3], 4) == {"num_hidden_layers": 2}
    other = _arch(num_layers_field="num_layers")
    assert _config_changes(SimpleNamespace(num_layers=4), other, [1], 4) == {"num_layers": 3}


def test_qwen2_window_threshold_is_recounted_on_a_real_config():
    model = make_tiny_model("qwen2", layers=6)
    model.config.max_window_layers = 4
    drop_layers(model, layers=[0, 5])
    assert model.config.max_window_layers == 3 and model.config.num_hidden_layers == 4


def test_repeated_cuts_map_later_indices_back_to_the_original_model():
    model = make_tiny_model("llama", layers=6)
    drop_layers(model, layers=[1])  # kept: 0 2 3 4 5
    drop_layers(model, layers=[4, 0])  # current 4 = original 5, current 0 = original 0
    assert model.config.prunescope_removed_layers == [0, 1, 5]
    drop_layers(model, layers=[2])  # kept now: 2 3 4 -> current 2 = original 4
    assert model.config.prunescope_removed_layers == [0, 1, 4, 5]
    assert model.config.num_hidden_layers == 2


def _bypass_logits(model, layers, **kw):
    """Logits with blocks ``layers`` returning their input (hooks; an independent reference for the cut)."""
    def passthrough(module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
    handles = [get_layers(model)[i].register_forward_hook(passthrough, with_kwargs=True) for i in layers]
    try:
        with torch.no_grad():
            return model(input_ids=IDS, use_cache=False, **kw).logits
    finally:
        for h in handles:
            h.remove()


def _gpt2(**config):
    model = make_tiny_model("gpt2")
    for k, v in config.items():
        setattr(model.config, k, v)
    fresh = type(model)(model.config).eval()  # rebuilt so each block computes its scaling from the config
    torch.manual_seed(1)
    with torch.no_grad():
        for p in fresh.parameters():  # random biases too: a query bias left unscaled must show
            p.normal_(0, 0.2)
    return fresh


@pytest.mark.parametrize("config", [
    dict(scale_attn_by_inverse_layer_idx=True),
    dict(scale_attn_by_inverse_layer_idx=True, scale_attn_weights=False),
    dict(scale_attn_by_inverse_layer_idx=True, add_cross_attention=True),
    dict(scale_attn_by_inverse_layer_idx=False, scale_attn_weights=False),
])
def test_gpt2_cut_equals_bypass_with_biases_unscaled_attention_and_cross_attention(config, tmp_path):
    model = _gpt2(**config)
    kw = {}
    if config.get("add_cross_attention"):
        kw["encoder_hidden_states"] = torch.randn(1, 4, model.config.n_embd, generator=torch.Generator().manual_seed(2))
    expected = _bypass_logits(model, [0, 2], **kw)
    drop_layers(model, layers=[0, 2])
    with torch.no_grad():
        got = model(input_ids=IDS, use_cache=False, **kw).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # the scaling a block computes from its index is rebuilt on reload: the cut must reload equal too
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        again = reloaded(input_ids=IDS, use_cache=False, **kw).logits
    torch.testing.assert_close(again, expected, atol=1e-5, rtol=1e-5)
