"""Layer-scoring criteria on tiny random models: valid scores and orders, determinism, and the fast
activation-reusing path against the naive skip-and-rerun loop."""
from __future__ import annotations

import json
import math

import pytest
import torch

from common import make_tiny_model
from prunescope.criteria import CRITERIA, CriterionResult, load_scores, register_criterion, save_scores, score_layers
from prunescope.criteria.base import compute_scores
from prunescope.criteria.calibration import load_calibration_texts
from prunescope.errors import UsageError
from prunescope.models import num_layers
from prunescope.pruning import skip_layers


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run hundreds of small matmuls; on a busy machine two threads wait on each other."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

LAYERS = 6
TOKENS = 300  # calibration tokens: enough to rank layers, small enough to keep the file fast
ALL = ["angular", "block_influence", "greedy_task", "ppl", "random", "reverse", "sleb", "taylor"]


def _scorer(tokenizer):
    """A task scorer for greedy_task that needs no task package: minus the loss on two fixed sentences."""
    ids = tokenizer(["The cat sat on the mat.", "2 + 3 = 5 and 4 + 4 = 8"], return_tensors="pt",
                    padding=True)

    def score(model):
        with torch.no_grad():
            out = model(**ids, labels=ids.input_ids.masked_fill(ids.attention_mask == 0, -100))
        return float(torch.exp(-out.loss))
    return score


@pytest.fixture(scope="module")
def llama():
    return make_tiny_model("llama", layers=LAYERS)


def _score(model, tokenizer, criterion, **kw):
    if criterion == "greedy_task" and "task_scorer" not in kw:
        kw["task_scorer"] = _scorer(tokenizer)
    return score_layers(model, tokenizer, criterion, max_calib_tokens=TOKENS, progress=False, **kw)


def test_registry_lists_every_published_criterion():
    assert set(ALL) <= set(CRITERIA.names())
    with pytest.raises(UsageError, match="did you mean 'block_influence'"):
        CRITERIA.get("block_influense")


@pytest.mark.parametrize("criterion", ALL)
def test_criterion_gives_finite_scores_and_a_permutation_deterministically(llama, tokenizer, criterion):
    before = llama(torch.tensor([[5, 6, 7, 8]])).logits
    result = _score(llama, tokenizer, criterion)
    assert result["criterion"] == criterion and result["num_layers"] == LAYERS
    assert len(result["scores"]) == LAYERS and all(math.isfinite(s) for s in result["scores"])
    assert sorted(result["order"]) == list(range(LAYERS))
    assert _strip(_score(llama, tokenizer, criterion)) == _strip(result)
    # scoring leaves the model as it was
    assert num_layers(llama) == LAYERS
    assert torch.equal(llama(torch.tensor([[5, 6, 7, 8]])).logits, before)
    assert all(p.grad is None for p in llama.parameters())


def _strip(result):
    return {**result, "config": {k: v for k, v in result["config"].items() if k != "seconds"}}


def test_orders_follow_scores_for_single_pass_criteria(llama, tokenizer):
    for criterion in ("block_influence", "ppl", "taylor"):
        r = _score(llama, tokenizer, criterion)
        ordered = [r["scores"][i] for i in r["order"]]
        assert ordered == sorted(ordered), criterion


def test_random_depends_on_seed_and_reverse_removes_last_first(llama, tokenizer):
    orders = {tuple(_score(llama, tokenizer, "random", seed=s)["order"]) for s in range(4)}
    assert len(orders) > 1
    assert _score(llama, tokenizer, "reverse")["order"][:2] == [LAYERS - 1, LAYERS - 2]


def test_block_influence_matches_hidden_states(llama, tokenizer):
    """Independent check with transformers' own hidden states (all but the last entry are block inputs)."""
    texts = ["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x * 2"]
    result = score_layers(llama, tokenizer, "block_influence", calib=texts, progress=False)
    cos_sum, count = torch.zeros(LAYERS - 1, dtype=torch.float64), 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        hs = llama(ids, output_hidden_states=True).hidden_states
        for layer in range(LAYERS - 1):
            cos_sum[layer] += torch.nn.functional.cosine_similarity(hs[layer][0], hs[layer + 1][0], dim=-1).sum()
        count += ids.shape[1]
    expected = (1 - cos_sum / count).tolist()
    assert result["scores"][:-1] == pytest.approx(expected, abs=1e-5)


def test_angular_cuts_the_closest_contiguous_block(llama, tokenizer):
    result = _score(llama, tokenizer, "angular", num_layers=2)
    dist = result["config"]["distances"]
    assert len(dist) == LAYERS - 1
    start = min(range(len(dist)), key=dist.__getitem__)
    assert result["order"][:2] == [start, start + 1]
    assert result["scores"][start] == pytest.approx(dist[start])
    assert all(s >= dist[start] - 1e-12 for s in result["scores"])


def test_iterative_criteria_remove_the_requested_number_of_layers(llama, tokenizer):
    result = _score(llama, tokenizer, "sleb", num_layers=3)
    steps = result["config"]["steps"]
    assert [s["removed"] for s in steps] == result["order"][:3]
    # the first removal is the layer whose single skip costs least, as ppl measures it
    ppl = _score(llama, tokenizer, "ppl")
    assert steps[0]["removed"] == ppl["order"][0]
    assert result["scores"][result["order"][0]] < result["scores"][result["order"][-1]]
    greedy = _score(llama, tokenizer, "greedy_task", num_layers=2)
    assert len(greedy["config"]["steps"]) == 2
    with pytest.raises(UsageError, match="--num-layers"):
        _score(llama, tokenizer, "sleb", num_layers=LAYERS)


def test_greedy_task_with_a_custom_scorer_prefers_the_harmless_layer(llama, tokenizer):
    """A scorer that only drops when layer 2 is missing: greedy_task must never remove layer 2 first."""
    block2 = llama.model.layers[2]

    def scorer(model):
        return 1.0 if any(b is block2 for b in model.model.layers) else 0.1
    result = _score(llama, tokenizer, "greedy_task", task_scorer=scorer, num_layers=1)
    assert result["order"][0] != 2 and result["order"][-1] == 2


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3_text", "gpt2", "opt"])
def test_fast_path_equals_naive_loop(arch, tokenizer):
    model = make_tiny_model(arch, layers=5)
    kw = dict(max_calib_tokens=200, progress=False)
    fast = compute_scores(model, tokenizer, "ppl", **kw)
    naive = compute_scores(model, tokenizer, "ppl", fast=False, **kw)
    assert fast["scores"] == pytest.approx(naive["scores"], abs=1e-4)
    fast = compute_scores(model, tokenizer, "sleb", num_layers=2, **kw)
    naive = compute_scores(model, tokenizer, "sleb", num_layers=2, fast=False, **kw)
    assert fast["order"] == naive["order"]
    for a, b in zip(fast["config"]["steps"], naive["config"]["steps"]):
        assert a["objective"] == pytest.approx(b["objective"], abs=1e-4)


def test_ppl_equals_loss_with_the_layer_physically_skipped(llama, tokenizer):
    """The ppl score of a layer is the loss increase measured with the model's own loss."""
    text = "Water boils at 100 degrees Celsius at sea level."
    result = score_layers(llama, tokenizer, "ppl", calib=[text], progress=False)
    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.no_grad():
        base = float(llama(ids, labels=ids).loss)
    with torch.no_grad(), skip_layers(llama, layers=[3]):
        skipped = float(llama(ids, labels=ids).loss)
    assert result["scores"][3] == pytest.approx(skipped - base, abs=1e-4)


def test_greedy_task_default_scorer_fast_equals_naive(tokenizer):
    pytest.importorskip("prunescope.tasks")
    from prunescope import tasks
    if not hasattr(tasks, "get_task"):
        pytest.skip("prunescope.tasks has no get_task yet")
    model = make_tiny_model("llama", layers=4)
    fast = compute_scores(model, tokenizer, "greedy_task", num_layers=1, progress=False)
    naive = compute_scores(model, tokenizer, "greedy_task", num_layers=1, progress=False, fast=False)
    assert fast["order"] == naive["order"]
    assert fast["config"]["steps"][0]["objective"] == pytest.approx(naive["config"]["steps"][0]["objective"], abs=1e-4)
    assert fast["config"]["tasks"] == ["arith_add_1d_gen", "brackets_gen"]


def test_new_criterion_is_one_decorated_function(llama, tokenizer):
    name = "test_middle_first"
    try:
        @register_criterion(name)
        def middle_first(ctx):
            total = ctx.total_layers
            return CriterionResult(scores=[abs(i - total / 2) for i in range(total)])
        result = score_layers(llama, tokenizer, name, progress=False)
        assert result["order"][0] == LAYERS // 2
        with pytest.raises(ValueError, match="already registered"):
            register_criterion(name)(middle_first)
    finally:
        CRITERIA._items.pop(name, None)


def test_calibration_sources(tmp_path, llama, tokenizer):
    builtin = load_calibration_texts(None)
    assert 30 <= len(builtin) <= 60
    good = tmp_path / "calib.jsonl"
    good.write_text(json.dumps({"text": "one two three"}) + "\n\n" + json.dumps({"text": "four five"}) + "\n")
    assert load_calibration_texts(str(good)) == ["one two three", "four five"]
    result = score_layers(llama, tokenizer, "block_influence", calib=str(good), progress=False)
    assert result["config"]["calib_texts"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "fine"}) + "\n{not json\n")
    with pytest.raises(UsageError, match=r"bad.jsonl line 2"):
        load_calibration_texts(str(bad))
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"content": "x"}) + "\n")
    with pytest.raises(UsageError, match=r"line 1.*'text'"):
        load_calibration_texts(str(wrong))
    with pytest.raises(UsageError, match="no such file"):
        load_calibration_texts(str(tmp_path / "missing.jsonl"))


def test_hub_dataset_offline_explains_the_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytest.importorskip("datasets")
    with pytest.raises(UsageError, match=r"--calib FILE\.jsonl"):
        load_calibration_texts("no-such-org/no-such-dataset")


def test_max_calib_tokens_caps_the_calibration_set(llama, tokenizer):
    result = score_layers(llama, tokenizer, "block_influence", max_calib_tokens=50, progress=False)
    assert result["config"]["calib_tokens"] == 50


def test_scores_roundtrip_and_validation(tmp_path, llama, tokenizer):
    result = _score(llama, tokenizer, "block_influence")
    path = save_scores(result, tmp_path / "scores.json")
    assert load_scores(path) == json.loads(json.dumps(result))
    broken = {**result, "order": result["order"][:-1]}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    with pytest.raises(UsageError, match="broken.json: order"):
        load_scores(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(UsageError, match="missing"):
        load_scores(tmp_path / "other.json")


@pytest.mark.slow
def test_default_model_scores_and_fast_path():
    from prunescope.models import load_model
    model, tok = load_model("smollm2-135m", dtype="float32", device="cpu")
    result = score_layers(model, tok, "block_influence", max_calib_tokens=256, progress=False)
    assert result["num_layers"] == 30 and all(math.isfinite(s) for s in result["scores"])
    fast = compute_scores(model, tok, "ppl", max_calib_tokens=64, progress=False)
    naive = compute_scores(model, tok, "ppl", max_calib_tokens=64, progress=False, fast=False)
    assert fast["scores"] == pytest.approx(naive["scores"], abs=1e-4)
