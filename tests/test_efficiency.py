"""Efficiency measurement on a tiny model: sane numbers, and a pruned model is faster than the base."""
import json

import pytest

from common import make_tiny_model, make_tokenizer
from prunescope.pruning import skip_layers
from prunescope.study.efficiency import flops_per_token, measure_efficiency, parameter_counts


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("llama", layers=8, hidden=64)


def test_parameter_counts_split(model):
    counts = parameter_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["blocks"] == 8 * counts["per_block"]
    assert counts["total"] == counts["blocks"] + counts["embedding"] + counts["lm_head"] + counts["other"]
    with skip_layers(model, layers=[0, 1, 2, 3]):
        assert parameter_counts(model)["blocks"] == counts["blocks"] // 2


def test_measurements_are_sane(model):
    r = measure_efficiency(model, make_tokenizer(), prompt_tokens=12, new_tokens=6, repeats=3, warmup=1)
    assert r["num_layers"] == 8 and r["parameters"]["total"] > 0
    assert r["prefill_ms"] > 0 and r["decode_tokens_per_s"] > 0
    assert len(r["prefill_ms_all"]) == 3 and len(r["decode_tokens_per_s_all"]) == 3
    assert r["memory"]["peak_bytes"] >= r["memory"]["weights_bytes"] > 0
    assert 0 < r["flops_per_token"]["block_share"] < 1
    json.dumps(r)  # serialisable as efficiency.json
    assert "speedup" not in r


def test_pruned_model_is_faster_and_ideal_accounts_for_the_head(model):
    tok = make_tokenizer()
    settings = dict(prompt_tokens=16, new_tokens=8, repeats=5, warmup=1)
    base = measure_efficiency(model, tok, **settings)
    with skip_layers(model, layers=[2, 3, 4, 5, 6, 7]):
        pruned = measure_efficiency(model, tok, baseline=base, **settings)
    s = pruned["speedup"]
    assert s["decode"] > 1.0 and s["prefill"] > 0  # 8 -> 2 layers (prefill of 16 tokens is too short to time reliably)
    assert s["layer_ratio"] == 4.0
    assert 1.0 < s["ideal"] < s["layer_ratio"]  # the embedding and head do not shrink
    share = base["flops_per_token"]["block_share"]
    assert s["ideal"] == pytest.approx(1 / ((1 - share) + share * 2 / 8), rel=0.02)
    assert pruned["parameters"]["total"] < base["parameters"]["total"]


def test_flops_grow_with_context(model):
    assert flops_per_token(model, 100)["blocks"] > flops_per_token(model, 10)["blocks"]


def test_prompt_is_clamped_to_the_position_table():
    model = make_tiny_model("gpt2", layers=2)  # n_positions = 128
    r = measure_efficiency(model, make_tokenizer(), prompt_tokens=200, new_tokens=8, repeats=1, warmup=0)
    assert r["settings"]["prompt_tokens"] == 120


def test_bench_cli(tiny_model_dir, tmp_path, capsys):
    from prunescope.cli import main
    out = tmp_path / "eff.json"
    assert main(["bench", "--model", str(tiny_model_dir), "--prompt-tokens", "8", "--new-tokens", "4", "--repeats",
                 "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "decode" in table and "tokens/s" in table
    pruned = tmp_path / "pruned.json"
    assert main(["bench", "--model", str(tiny_model_dir), "--layers", "0,1,2", "--prompt-tokens", "8",
                 "--new-tokens", "4", "--repeats", "2", "--baseline", str(out), "--out", str(pruned)]) == 0
    data = json.loads(pruned.read_text())
    assert data["num_layers"] == 3 and data["skipped_layers"] == [0, 1, 2] and "speedup" in data
    assert "decode speedup" in capsys.readouterr().out
    assert main(["bench", "--model", str(tiny_model_dir), "--repeats", "0"]) == 2
    assert main(["bench", "--model", str(tiny_model_dir), "--layers", "9"]) == 2
    assert "out of range" in capsys.readouterr().err
