"""What a saved cut records (prunescope.json, the model card, mergekit.yaml) against hand-worked values and
the libraries' own metadata, and the reload check for auto-detected families at its tolerances."""
from __future__ import annotations

import dataclasses
import datetime as dt
import importlib.metadata as md
import json
import math

import pytest
import torch

from common import make_tiny_model, make_tokenizer
from prunescope.errors import UsageError
from prunescope.models.architectures import get_layers
from prunescope.pruning import drop_layers, save_pruned
from prunescope.pruning.save import library_versions, mergekit_yaml, model_card

LIBRARIES = ("prunescope", "torch", "transformers", "peft", "accelerate", "safetensors")


def test_library_versions_are_the_installed_ones():
    expected = {}
    for name in LIBRARIES:
        try:
            expected[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    assert library_versions() == expected
    assert {"torch", "transformers"} <= set(expected)


def test_mergekit_yaml_text():
    assert mergekit_yaml("org/base", [1, 2, 5], 7) == """\
# Reproduces this cut with mergekit: mergekit-yaml mergekit.yaml OUT_DIR
slices:
  - sources:
      - model: org/base
        layer_range: [0, 1]
  - sources:
      - model: org/base
        layer_range: [3, 5]
  - sources:
      - model: org/base
        layer_range: [6, 7]
merge_method: passthrough
dtype: bfloat16
"""
    noted = mergekit_yaml("/m", [0], 3, "float32", note="read me")
    assert noted.splitlines()[:3] == ["# Reproduces this cut with mergekit: mergekit-yaml mergekit.yaml OUT_DIR",
                                      "# Note: read me", "slices:"]
    assert noted.endswith("layer_range: [1, 3]\nmerge_method: passthrough\ndtype: float32\n")


META = {"base_model": "smollm2-135m", "base_model_resolved": "Org/Model", "base_model_is_hub_id": True,
        "base_model_note": "weights were dequantized", "removed_layers": [3, 7], "num_layers_before": 30,
        "num_layers_after": 28, "criterion": "angular", "parameters": 1234567}


def test_model_card_text():
    card = model_card(META)
    assert card.startswith("---\nbase_model: Org/Model\nlibrary_name: transformers\n"
                           "tags: [prunescope, layer-pruning, depth-pruning]\n---\n"
                           "# Org/Model with 2 of 30 decoder layers removed\n\n"
                           "Note on the base model: weights were dequantized.\n\n"
                           "Made with prunescope: removed layers (0-based) [3, 7], chosen by `angular`.\n"
                           "Layers before → after: 30 → 28.\nParameters: 1,234,567.\n")
    assert 'AutoModelForCausalLM.from_pretrained("PATH_TO_THIS_FOLDER")' in card


def test_model_card_without_the_optional_fields():
    meta = {"base_model": "./here", "base_model_resolved": None, "removed_layers": [0], "num_layers_before": 4,
            "num_layers_after": 3, "criterion": None, "base_model_note": None}
    card = model_card(meta)
    assert card.startswith("---\nlibrary_name: transformers\ntags: [prunescope, layer-pruning, depth-pruning]\n---\n"
                           "# ./here with 1 of 4 decoder layers removed\n\n"
                           "Made with prunescope: removed layers (0-based) [0], chosen by `explicit list`.\n"
                           "Layers before → after: 4 → 3.\nParameters: n/a.\n")


def _safetensors_numel(folder):
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def test_prunescope_json_records_the_cut(tmp_path):
    model = make_tiny_model("llama")
    drop_layers(model, layers=[4, 1])
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    out = save_pruned(model, None, tmp_path / "cut", base="org/tiny", removed=[4, 1], num_layers_before=6,
                      criterion="ppl", scores={"order": [4, 1]}, dtype="float32")
    meta = json.loads((out / "prunescope.json").read_text())
    created = dt.datetime.fromisoformat(meta.pop("created"))
    assert created.utcoffset() == dt.timedelta(0) and before <= created <= dt.datetime.now(dt.timezone.utc)
    assert meta == {"base_model": "org/tiny", "base_model_resolved": "org/tiny", "base_model_is_hub_id": True,
                    "base_model_note": None, "removed_layers": [1, 4], "num_layers_before": 6,
                    "num_layers_after": 4, "criterion": "ppl", "scores": {"order": [4, 1]},
                    "parameters": _safetensors_numel(out), "dtype": "float32", "dtype_from": "asked for with --dtype",
                    "versions": library_versions()}
    assert meta["versions"]["torch"] == torch.__version__
    card = (out / "README.md").read_text()
    assert "# org/tiny with 2 of 6 decoder layers removed" in card and "chosen by `ppl`" in card
    assert "dtype: float32" in (out / "mergekit.yaml").read_text()


def test_dtype_is_recorded_as_written(tmp_path):
    model = make_tiny_model("llama")
    drop_layers(model, layers=[0])
    out = save_pruned(model, None, tmp_path / "cut", base="org/tiny", removed=[0], num_layers_before=6,
                      dtype="bfloat16")
    assert json.loads((out / "prunescope.json").read_text())["dtype"] == "bfloat16"
    assert (out / "mergekit.yaml").read_text().endswith("dtype: bfloat16\n")


def test_overwrite_replaces_an_existing_cut(tmp_path):
    model = make_tiny_model("llama")
    drop_layers(model, layers=[0])
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "old.txt").write_text("x")
    out = save_pruned(model, None, tmp_path / "cut", base="b", removed=[0], num_layers_before=6, overwrite=True,
                      dtype="float32")
    assert not (out / "old.txt").exists() and (out / "prunescope.json").is_file()


@pytest.fixture
def detected(monkeypatch):
    """Pretend llama was only auto-detected, so saving reloads the cut and compares logits."""
    import prunescope.models.architectures as archs
    real = archs.get_architecture
    monkeypatch.setattr(archs, "get_architecture", lambda m: dataclasses.replace(real(m), detected=True))


@pytest.mark.parametrize("dtype, factor, saved", [
    ("float32", 1.0, True),
    ("float32", 1.01, False),  # logits move ~2e-2: above float32's 1e-4
    ("bfloat16", 1.0, True),  # compared with the model cast to bfloat16 (float32 logits differ by ~0.1)
    ("bfloat16", 1.5, False),
])
def test_reload_check_of_a_detected_family(tmp_path, detected, dtype, factor, saved):
    model = make_tiny_model("llama")
    drop_layers(model, layers=[2])
    get_layers(model)[1].self_attn.scaling *= factor
    kw = dict(base="tiny", removed=[2], num_layers_before=6, dtype=dtype)
    if saved:
        out = save_pruned(model, make_tokenizer(), tmp_path / "cut", **kw)
        assert json.loads((out / "prunescope.json").read_text())["dtype"] == dtype
    else:
        with pytest.raises(UsageError, match=r"^refusing to save: model_type 'llama' .* \(max difference "):
            save_pruned(model, None, tmp_path / "cut", **kw)
        assert not (tmp_path / "cut").exists()
    assert next(model.parameters()).dtype == torch.float32, "the model in memory keeps its dtype"
