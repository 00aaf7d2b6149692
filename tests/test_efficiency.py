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


# The tiny llama of this module, by hand: hidden 64, 4 heads of 16, 2 KV heads, MLP 64, vocab 259.
# One block: q 64*64 + k 64*32 + v 64*32 + o 64*64 + gate/up/down 3*64*64 + 2 norms of 64 = 24704 parameters.
PER_BLOCK = 4096 + 2048 + 2048 + 4096 + 3 * 4096 + 2 * 64
TOTAL = 8 * PER_BLOCK + 2 * 259 * 64 + 64  # blocks, embedding and untied head, final norm


def test_measurements_from_a_fake_clock(model, monkeypatch):
    """With the timer replaced by known (prefill s, decode s) rounds, every reported number follows."""
    from prunescope.study import efficiency

    rounds = iter([(0.5, 0.5), (0.010, 0.5), (0.030, 0.25), (0.020, 1.0)])  # one warm-up round, then three
    monkeypatch.setattr(efficiency, "_one_round", lambda *a, **k: next(rounds))
    r = measure_efficiency(model, make_tokenizer(), prompt_tokens=12, new_tokens=6, repeats=3, warmup=1)
    assert r["num_layers"] == 8 and r["parameters"]["total"] == TOTAL
    assert r["prefill_ms_all"] == pytest.approx([10.0, 30.0, 20.0]) and r["prefill_ms"] == pytest.approx(20.0)
    assert r["decode_tokens_per_s_all"] == pytest.approx([12.0, 24.0, 6.0])  # 6 tokens / decode seconds
    assert r["decode_tokens_per_s"] == pytest.approx(12.0) and r["time_per_token_ms"] == pytest.approx(1000 / 12)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert r["memory"]["weights_bytes"] == 4 * TOTAL + buffers  # fp32
    assert r["memory"]["peak_bytes"] >= r["memory"]["weights_bytes"]
    # FLOPs at the mean decode context, 12 + 6 // 2 = 15 tokens: 8 * (2 * 24704 + 4 * 15 * 64) + 2 * 259 * 64
    assert r["flops_per_token"]["blocks"] == 8 * (2 * PER_BLOCK + 4 * 15 * 64)
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


def test_flops_per_token_by_hand(model):
    """2 FLOPs per weight per token, plus q.k and attention-weighted values: 4 * context * heads * head_dim."""
    head = 2 * 259 * 64
    for context in (10, 100):
        blocks = 8 * (2 * PER_BLOCK + 4 * context * 4 * 16)
        f = flops_per_token(model, context)
        assert (f["blocks"], f["head"], f["total"]) == (blocks, head, blocks + head)
        assert f["block_share"] == pytest.approx(blocks / (blocks + head))


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
    assert data["speedup"]["decode_interval"]["paired"] and len(data["base_rounds"]["decode_tokens_per_s_all"]) == 2
    assert "decode speedup" in capsys.readouterr().out
    assert main(["bench", "--model", str(tiny_model_dir), "--repeats", "0"]) == 2
    assert main(["bench", "--model", str(tiny_model_dir), "--layers", "9"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_base_timed_alongside_gives_a_paired_interval(model, monkeypatch):
    """The base is timed in the same call, rounds alternating; the interval comes from those rounds (by hand:
    3 against 3, the ends are min cell / max base and max cell / min base)."""
    from prunescope.speed import speed_verdict
    from prunescope.study import efficiency

    seen, clocks = [], {8: iter([(0.02, 1.0), (0.02, 1.0), (0.02, 1.1), (0.02, 1.2)]),
                        2: iter([(0.01, 0.5), (0.01, 0.5), (0.01, 0.55), (0.01, 0.6)])}

    def fake(m, *a, **k):
        layers = m.config.num_hidden_layers
        seen.append("base" if layers == 8 else "cell")
        return next(clocks[layers])

    monkeypatch.setattr(efficiency, "_one_round", fake)
    r = measure_efficiency(lambda: skip_layers(model, layers=[2, 3, 4, 5, 6, 7]), make_tokenizer(), prompt_tokens=12,
                           new_tokens=6, repeats=3, warmup=1, base=model)
    assert seen == ["cell", "base", "cell", "base", "base", "cell", "cell", "base"]  # warm-up, then alternating
    assert len(model.model.layers) == 8 and r["num_layers"] == 2  # the skip was undone after each round
    assert r["base_rounds"]["decode_tokens_per_s_all"] == pytest.approx([6.0, 6 / 1.1, 5.0])
    iv = r["speedup"]["decode_interval"]
    assert iv["paired"] and (iv["lo"], iv["hi"]) == pytest.approx((10.0 / 6.0, 12.0 / 5.0))
    assert r["speedup"]["decode"] == pytest.approx((6 / 0.55) / (6 / 1.1)) and speed_verdict(iv) == "faster"
    assert r["speedup"]["layer_ratio"] == 4.0 and r["speedup"]["prefill_interval"]["lo"] == pytest.approx(2.0)
    json.dumps(r)


def test_baseline_from_another_call_gives_no_claim(model, monkeypatch):
    from prunescope.speed import speed_verdict
    from prunescope.study import efficiency

    rounds = iter([(0.01, 1.0)] * 3 + [(0.01, 0.1)] * 3)
    monkeypatch.setattr(efficiency, "_one_round", lambda *a, **k: next(rounds))
    base = measure_efficiency(model, make_tokenizer(), prompt_tokens=12, new_tokens=6, repeats=3, warmup=0)
    with skip_layers(model, layers=[0, 1]):
        cell = measure_efficiency(model, make_tokenizer(), prompt_tokens=12, new_tokens=6, repeats=3, warmup=0,
                                  baseline=base)
    iv = cell["speedup"]["decode_interval"]
    assert iv["lo"] == pytest.approx(10.0) and not iv["paired"]  # ten times faster, but timed apart
    assert speed_verdict(iv) == "not distinguishable"
