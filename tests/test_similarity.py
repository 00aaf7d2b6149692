"""block_influence and angular against a re-implementation on transformers' hidden states, one unpadded
text at a time (the criteria see the same texts padded into one batch)."""
from __future__ import annotations

import math

import pytest
import torch

from common import make_tiny_model
from prunescope.criteria import score_layers
from prunescope.models.architectures import get_layers

pytestmark = pytest.mark.usefixtures("one_thread")

LAYERS = 5
TEXTS = ["The quick brown fox jumps over the lazy dog near the river.", "2 + 3 = 5", "def f(x): return x",
         "Short."]


@pytest.fixture(scope="module")
def model():
    model = make_tiny_model("llama", layers=LAYERS, seed=5)
    with torch.no_grad():  # block 2 adds nothing to its input: its influence and distance are exactly 0
        get_layers(model)[2].self_attn.o_proj.weight.zero_()
        get_layers(model)[2].mlp.down_proj.weight.zero_()
    return model


def _states(model, tokenizer, text):
    """h[0..L]: the inputs of blocks 0..L-1 (transformers' hidden_states) and the last block's raw output."""
    ids = tokenizer(text, return_tensors="pt").input_ids
    last = []
    handle = get_layers(model)[-1].register_forward_hook(lambda m, a, out: last.append(out))
    try:
        with torch.no_grad():
            hs = model(ids, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    out = last[0][0] if isinstance(last[0], tuple) else last[0]
    return [h[0].double() for h in hs[:LAYERS]] + [out[0].double()]


def _cos(a, b):
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def _reference(model, tokenizer, pairs, last_token, texts=TEXTS):
    """Mean of cos and of arccos(cos) / pi over every token (or each text's last token)."""
    cos_sum, angle_sum, count = [0.0] * len(pairs), [0.0] * len(pairs), 0
    for text in texts:
        h = _states(model, tokenizer, text)
        rows = slice(-1, None) if last_token else slice(None)
        for k, (a, b) in enumerate(pairs):
            cos = _cos(h[a][rows], h[b][rows]).clamp(-1, 1)
            cos_sum[k] += float(cos.sum())
            angle_sum[k] += float((torch.arccos(cos) / math.pi).sum())
        count += len(h[0][rows])
    return [c / count for c in cos_sum], [a / count for a in angle_sum]


def test_block_influence_is_one_minus_the_token_mean_cosine_including_the_last_block(model, tokenizer):
    result = score_layers(model, tokenizer, "block_influence", calib=TEXTS, progress=False)
    cos, _ = _reference(model, tokenizer, [(i, i + 1) for i in range(LAYERS)], last_token=False)
    assert result["scores"] == pytest.approx([1 - c for c in cos], abs=1e-5)
    assert result["scores"][2] == pytest.approx(0, abs=1e-6)
    assert result["order"][0] == 2


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("tokens", ["last", "all"])
def test_angular_distances_window_scores_and_cut(model, tokenizer, n, tokens):
    result = score_layers(model, tokenizer, "angular", calib=TEXTS, num_layers=n, angular_tokens=tokens,
                          progress=False)
    _, dist = _reference(model, tokenizer, [(l, l + n) for l in range(LAYERS - n + 1)], last_token=tokens == "last")
    info = result["config"]
    # arccos is steep near cos = 1: float32 cosines of the identity block's equal states give up to ~1e-4
    assert info["distances"] == pytest.approx(dist, abs=2e-4)
    assert all(not math.isnan(d) for d in info["distances"])
    # each layer scores the smallest distance of any n-block window that contains it
    expected = [math.inf] * LAYERS
    for start, d in enumerate(dist):
        for layer in range(start, start + n):
            expected[layer] = min(expected[layer], d)
    assert result["scores"] == pytest.approx(expected, abs=2e-4)
    best = dist.index(min(dist))
    assert (info["cut_start"], info["block_size"], info["angular_tokens"]) == (best, n, tokens)
    rest = sorted(set(range(LAYERS)) - set(range(best, best + n)), key=lambda i: (expected[i], i))
    assert result["order"] == list(range(best, best + n)) + rest


def test_angular_identity_block_has_distance_zero(model, tokenizer):
    result = score_layers(model, tokenizer, "angular", calib=TEXTS, angular_tokens="all", progress=False)
    assert result["config"]["distances"][2] == pytest.approx(0, abs=1e-3)
    assert result["config"]["cut_start"] == 2 and result["order"][0] == 2


def test_means_run_over_every_batch(model, tokenizer):
    """Texts enough for several padded batches: every batch adds to the sums and the token count."""
    import random
    rng = random.Random(1)
    words = ["river", "bank", "2", "+", "=", "def", "return", "lazy", "dog", "over"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(15, 25))) for _ in range(24)]
    from prunescope.criteria.calibration import make_batches
    assert len(make_batches(tokenizer, texts)) > 1
    result = score_layers(model, tokenizer, "block_influence", calib=texts, progress=False)
    cos, _ = _reference(model, tokenizer, [(i, i + 1) for i in range(LAYERS)], last_token=False, texts=texts)
    assert result["scores"] == pytest.approx([1 - c for c in cos], abs=1e-5)
    result = score_layers(model, tokenizer, "angular", calib=texts, progress=False)
    _, dist = _reference(model, tokenizer, [(i, i + 1) for i in range(LAYERS)], last_token=True, texts=texts)
    assert result["config"]["distances"] == pytest.approx(dist, abs=2e-4)


def test_one_forward_per_batch_stops_before_the_output_head(model, tokenizer):
    """The similarity criteria need only the block states: the final norm and head never run."""
    calls = []
    handle = model.lm_head.register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        score_layers(model, tokenizer, "block_influence", calib=TEXTS, progress=False)
        score_layers(model, tokenizer, "angular", calib=TEXTS, progress=False)
    finally:
        handle.remove()
    assert calls == []
