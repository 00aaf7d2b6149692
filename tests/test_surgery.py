"""Cutting blocks: a pruned model equals the original with those blocks bypassed, on every architecture."""
import contextlib

import pytest
import torch
from transformers import AutoModelForCausalLM

from common import ARCHS, make_tiny_model, make_tokenizer
from prunescope.errors import UsageError
from prunescope.models import get_architecture, get_layers
from prunescope.models.architectures import get_submodule
from prunescope.pruning import drop_layers, save_pruned, skip_layers

REMOVE = [1, 3]
IDS = torch.tensor([[5, 17, 33, 2, 90, 41, 7, 66, 12, 3], [8, 8, 100, 51, 6, 22, 9, 71, 14, 30]])


@contextlib.contextmanager
def bypass_with_hooks(model, layers):
    """Make blocks ``layers`` return their input unchanged (an independent reference for the cut)."""
    def passthrough(module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        if isinstance(output, tuple):
            return (hidden,) + tuple(output[1:])
        return hidden

    handles = [get_layers(model)[i].register_forward_hook(passthrough, with_kwargs=True) for i in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def logits(model, ids=IDS, **kw):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False, **kw).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_drop_equals_bypass(arch):
    model = make_tiny_model(arch)
    with bypass_with_hooks(model, REMOVE):
        expected = logits(model)
    assert not torch.allclose(expected, logits(model), atol=1e-3), "blocks should matter in the tiny model"
    with skip_layers(model, layers=REMOVE):
        virtual = logits(model)
    restored = logits(model)
    drop_layers(model, layers=REMOVE)
    torch.testing.assert_close(logits(model), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(virtual, expected, atol=1e-5, rtol=0)
    assert len(get_layers(model)) == 4
    assert restored.shape == expected.shape


@pytest.mark.parametrize("arch", ARCHS)
def test_config_and_indices_after_drop(arch):
    model = make_tiny_model(arch, layers=6)
    arch_info = get_architecture(model)
    before_types = list(getattr(model.config, "layer_types", None) or [])
    drop_layers(model, layers=[0, 4])
    assert getattr(model.config, arch_info.num_layers_field) == 4
    assert model.config.prunescope_removed_layers == [0, 4]
    if before_types:
        assert model.config.layer_types == [before_types[i] for i in (1, 2, 3, 5)]
    for new_idx, block in enumerate(get_layers(model)):
        for path in arch_info.layer_index_attrs:
            owner_path, _, attr = path.rpartition(".")
            owner = get_submodule(block, owner_path) if owner_path else block
            if owner is not None and hasattr(owner, attr) and getattr(owner, attr) is not None:
                assert getattr(owner, attr) == new_idx


def test_layer_types_sliced_by_index_not_truncated():
    model = make_tiny_model("gemma3_text", layers=6)  # pattern 2: sliding, full, sliding, full, ...
    types = list(model.config.layer_types)
    assert types[:2] == ["sliding_attention", "full_attention"]
    drop_layers(model, layers=[1])
    assert model.config.layer_types == [types[i] for i in (0, 2, 3, 4, 5)]
    assert model.config.layer_types != types[:5]


def test_repeated_drops_record_original_indices():
    model = make_tiny_model("llama", layers=6)
    drop_layers(model, layers=[1])  # original 1
    drop_layers(model, layers=[2])  # now index 2 = original 3
    assert model.config.prunescope_removed_layers == [1, 3]


@pytest.mark.parametrize("arch", ["llama", "gemma2", "qwen3", "gpt2", "opt", "gpt_neox", "phi3"])
def test_kv_cache_generation_matches_cache_free(arch):
    model = make_tiny_model(arch)
    drop_layers(model, layers=REMOVE)
    prompt = IDS[:1, :6]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, eos_token_id=None)
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kw)
        uncached = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen2", "gpt2", "gpt_neox", "opt"])
def test_save_reload_with_plain_transformers(arch, tmp_path):
    model = make_tiny_model(arch)
    drop_layers(model, layers=REMOVE)
    expected = logits(model)
    out = save_pruned(model, make_tokenizer(), tmp_path / "pruned", base="tiny-base", removed=REMOVE,
                      num_layers_before=6, criterion="manual")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(logits(reloaded), expected, atol=0, rtol=0)
    assert len(get_layers(reloaded)) == 4
    for name in ("config.json", "model.safetensors", "tokenizer.json", "prunescope.json", "README.md",
                 "mergekit.yaml"):
        assert (out / name).is_file(), name
    assert "chat_template" in (out / "tokenizer_config.json").read_text() or (out / "chat_template.jinja").is_file()


def test_mergekit_yaml_keeps_exactly_the_kept_blocks():
    import yaml
    from prunescope.pruning.save import mergekit_yaml
    spec = yaml.safe_load(mergekit_yaml("base/model", [1, 3, 4], 8))
    kept = [i for s in spec["slices"] for a, b in [s["sources"][0]["layer_range"]] for i in range(a, b)]
    assert kept == [0, 2, 5, 6, 7]
    assert spec["merge_method"] == "passthrough"


@pytest.mark.parametrize("bad, message", [
    ([6], "out of range"), ([-1], "out of range"), ([2, 2], "more than once"),
    ([0, 1, 2, 3, 4, 5], "removing all"),
])
def test_bad_indices(bad, message):
    model = make_tiny_model("llama")
    with pytest.raises(UsageError, match=message):
        drop_layers(model, layers=bad)
    assert len(get_layers(model)) == 6, "a refused cut must leave the model untouched"


def test_save_refuses_non_empty_out(tmp_path):
    model = make_tiny_model("llama")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="--overwrite"):
        save_pruned(model, None, tmp_path / "out", base="b", removed=[], num_layers_before=6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no temp folder left behind"


def test_gpt2_inverse_layer_scaling_is_baked_in_so_the_cut_reloads_equal(tmp_path):
    """GPT-2 with scale_attn_by_inverse_layer_idx divides attention by (index + 1), fixed at build time;
    a block renumbered by the cut would reload with another divisor unless the cut bakes it in."""
    model = make_tiny_model("gpt2")
    model.config.scale_attn_by_inverse_layer_idx = True
    fresh = type(model)(model.config).eval()  # rebuilt so every block computes its scaling from the flag
    fresh.load_state_dict(model.state_dict())
    with bypass_with_hooks(fresh, REMOVE):
        expected = logits(fresh)
    drop_layers(fresh, layers=REMOVE)
    torch.testing.assert_close(logits(fresh), expected, atol=1e-5, rtol=1e-5)
    out = save_pruned(fresh, make_tokenizer(), tmp_path / "pruned", base="tiny-base", removed=REMOVE,
                      num_layers_before=6)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert reloaded.config.scale_attn_by_inverse_layer_idx
    torch.testing.assert_close(logits(reloaded), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(reloaded), logits(fresh), atol=0, rtol=0)


@pytest.mark.parametrize("base, name, hub, note", [
    ("smollm2-135m", "HuggingFaceTB/SmolLM2-135M-Instruct", True, "Q4_1"),
    ("org/some-model", "org/some-model", True, None),
    ("TINYDIR", "TINYDIR", False, "local folder"),
    ("weights/model.gguf", "GGUF_FOLDER", False, "cannot read"),
])
def test_mergekit_yaml_and_card_name_a_base_mergekit_can_load(tmp_path, base, name, hub, note):
    import yaml
    folder = tmp_path / "base-folder"
    folder.mkdir()
    base = str(folder) if base == "TINYDIR" else base
    name = {"TINYDIR": str(folder.resolve()),
            "GGUF_FOLDER": str((__import__("pathlib").Path(base).resolve()).with_suffix(""))}.get(name, name)
    model = make_tiny_model("llama")
    drop_layers(model, layers=[2])
    out = save_pruned(model, None, tmp_path / "cut", base=base, removed=[2], num_layers_before=6)
    text = (out / "mergekit.yaml").read_text()
    spec = yaml.safe_load(text)
    assert {s["sources"][0]["model"] for s in spec["slices"]} == {name}
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front.get("base_model") == (name if hub else None)
    if note:
        assert note in text and note in card
    else:
        assert "# Note" not in text


def test_an_auto_detected_family_whose_cut_would_not_reload_equal_is_not_saved(tmp_path, monkeypatch):
    """For families outside the table prunescope reloads the saved cut and compares; a behaviour the
    config does not carry (here: a block whose attention scaling was changed in memory) is refused."""
    import dataclasses
    import prunescope.models.architectures as archs
    model = make_tiny_model("llama")
    drop_layers(model, layers=[2])
    real = archs.get_architecture
    monkeypatch.setattr(archs, "get_architecture", lambda m: dataclasses.replace(real(m), detected=True))
    out = save_pruned(model, None, tmp_path / "same", base="tiny", removed=[2], num_layers_before=6)
    assert (out / "config.json").is_file()  # an unchanged cut reloads equal and is saved
    get_layers(model)[1].self_attn.scaling *= 1.5
    with pytest.raises(UsageError, match="reloads with different logits"):
        save_pruned(model, None, tmp_path / "changed", base="tiny", removed=[2], num_layers_before=6)
    assert not (tmp_path / "changed").exists()
