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


pytestmark = pytest.mark.usefixtures("one_thread")

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
    """A scorer that only drops when layer 2 is missing: every other candidate ties, so the seed paper's
    rule (ties to the later index) removes the last layer first; layer 2 is the last candidate and
    layer 0 is never a candidate (layer_pruner/script.py skips it)."""
    block2 = llama.model.layers[2]

    def scorer(model):
        return 1.0 if any(b is block2 for b in model.model.layers) else 0.1
    result = _score(llama, tokenizer, "greedy_task", task_scorer=scorer, num_layers=3)
    assert result["order"][:3] == [5, 4, 3]
    assert result["order"][-2:] == [2, 0]


def test_greedy_task_never_removes_layer_zero(llama, tokenizer):
    """Even when layer 0 is the only harmless block, the seed paper's loop never removes it."""
    block0 = llama.model.layers[0]

    def scorer(model):  # removing anything but layer 0 hurts; ties go to the later index
        return float(sum(b is not block0 for b in model.model.layers))
    result = _score(llama, tokenizer, "greedy_task", task_scorer=scorer, num_layers=LAYERS - 1)
    assert 0 not in result["order"][:LAYERS - 1] and result["order"][-1] == 0
    assert result["order"][:LAYERS - 1] == [5, 4, 3, 2, 1]


# Texts of different lengths: a re-implementation that averaged per-text means, or a scorer that
# ignored padding, would disagree with the token-weighted references below.
TEXTS = ["The quick brown fox jumps over the lazy dog near the river bank today.", "2 + 3 = 5",
         "def f(x):\n    return x * 2  # doubles", "Short one."]


def _token_weighted_loss(model, tokenizer, texts):
    """Sum over texts of the HF loss (labels = inputs) times its predicted tokens, over all tokens."""
    total, count = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt").input_ids
        total = total + model(ids, labels=ids).loss * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return total / count


def test_taylor_matches_an_autograd_reimplementation_of_the_reference():
    """anal_block_sensitivity_taylor.py: per weight tensor sum |W * dL/dW| (element-wise), per block the
    sum over its *weight tensors, then the "+" rule keeps blocks 0-3 and the last two out of the order."""
    from prunescope.models.architectures import get_layers
    model = make_tiny_model("llama", layers=8, seed=3)
    tok = __import__("common").make_tokenizer()
    result = score_layers(model, tok, "taylor", calib=TEXTS, progress=False)
    loss = _token_weighted_loss(model, tok, TEXTS)
    blocks = get_layers(model)
    params = [[p for n, p in b.named_parameters() if "weight" in n] for b in blocks]
    grads = torch.autograd.grad(loss, [p for ps in params for p in ps])
    expected, k = [], 0
    for ps in params:
        expected.append(sum(float((p.detach() * grads[k + j]).abs().sum()) for j, p in enumerate(ps)))
        k += len(ps)
    assert result["scores"] == pytest.approx(expected, rel=1e-4)
    middle = sorted([4, 5], key=lambda i: expected[i])
    assert result["order"][:2] == middle and set(result["order"][2:]) == {0, 1, 2, 3, 6, 7}
    assert result["config"]["plus_rule"] is True and result["config"]["protected"] == [0, 1, 2, 3, 6, 7]
    plain = score_layers(model, tok, "taylor", calib=TEXTS, plus_rule=False, progress=False)
    assert plain["order"] == sorted(range(8), key=lambda i: expected[i]) and plain["config"]["plus_rule"] is False


def test_angular_matches_last_token_hidden_states(llama, tokenizer):
    """PruneMe's compute_block_distances on transformers' hidden states, one text at a time (no padding),
    at the last token: arccos(cos) / pi between the inputs of blocks l and l + n."""
    n = 2
    result = score_layers(llama, tokenizer, "angular", calib=TEXTS, num_layers=n, progress=False)
    sums = torch.zeros(LAYERS - n + 1, dtype=torch.float64)
    for text in TEXTS:
        ids = tokenizer(text, return_tensors="pt").input_ids
        with torch.no_grad():
            hs = llama(ids, output_hidden_states=True).hidden_states  # hs[l] = input of block l, l < L
        for l in range(LAYERS - n):  # the last window needs the raw last-block output (hs[L] is normed)
            a, b = hs[l][0, -1].double(), hs[l + n][0, -1].double()
            cos = torch.dot(a, b) / (a.norm() * b.norm())
            sums[l] += torch.arccos(cos.clamp(-1, 1)) / math.pi
    expected = (sums / len(TEXTS)).tolist()[:LAYERS - n]
    assert result["config"]["distances"][:LAYERS - n] == pytest.approx(expected, abs=1e-5)
    assert result["config"]["angular_tokens"] == "last"
    everywhere = score_layers(llama, tokenizer, "angular", calib=TEXTS, num_layers=n, angular_tokens="all",
                              progress=False)
    assert everywhere["config"]["distances"][:LAYERS - n] != pytest.approx(expected, abs=1e-3)


def _naive_sleb(model, tokenizer, texts, steps):
    """sleb.py re-implemented: per phase, every alive block but the first and last is switched off in
    turn; the one whose removal gives the smallest summed NLL goes (strict <: ties to the earlier)."""
    alive, removal, losses = list(range(num_layers(model))), [], []
    for _ in range(steps):
        best, best_loss = None, float("inf")
        for j in range(1, len(alive) - 1):
            with torch.no_grad(), skip_layers(model, layers=sorted(removal + [alive[j]])):
                loss = float(_token_weighted_loss(model, tokenizer, texts))
            if loss < best_loss:
                best, best_loss = alive[j], loss
        removal.append(best)
        losses.append(best_loss)
        alive.remove(best)
    return removal, losses


def test_sleb_matches_a_reimplementation_of_the_reference_loop():
    model = make_tiny_model("llama", layers=6, seed=1)
    tok = __import__("common").make_tokenizer()
    removal, losses = _naive_sleb(model, tok, TEXTS, 3)
    result = score_layers(model, tok, "sleb", calib=TEXTS, num_layers=3, progress=False)
    assert result["order"][:3] == removal
    assert [-s["objective"] for s in result["config"]["steps"]] == pytest.approx(losses, abs=1e-5)
    # the barriers: the first and last alive blocks were never candidates
    assert 0 not in removal and 5 not in removal and result["order"][-2:] == [0, 5]


def _block_calls(model):
    """A list that grows by one per decoder-block call, and the hook handles to remove."""
    from prunescope.models.architectures import get_layers
    calls: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(get_layers(model))]
    return calls, handles


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_sleb_reuse_across_steps_matches_the_reference_loop(arch, tokenizer, monkeypatch):
    """sleb's fast path starts a candidate from the state its own run kept at the previous step's winner.
    Unequal-length texts in several padded batches; the orders and losses must be the reference loop's,
    with fewer block calls than the path that reuses only within a step (and equal to it)."""
    import random

    from prunescope.criteria import reuse
    rng = random.Random(0)
    words = ["the", "river", "bank", "2", "+", "=", "(", ")", "def", "return", "x", "over", "lazy", "dog"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) for _ in range(24)]  # < 128 tokens
    model = make_tiny_model(arch, layers=7, seed=4)
    removal, losses = _naive_sleb(model, tokenizer, texts, 3)
    calls, handles = _block_calls(model)
    try:
        result = score_layers(model, tokenizer, "sleb", calib=texts, num_layers=3, progress=False)
        reused = len(calls)
        calls.clear()
        monkeypatch.setattr(reuse, "REUSE_BYTES", 0)  # too little memory: reuse within a step only
        within = score_layers(model, tokenizer, "sleb", calib=texts, num_layers=3, progress=False)
        within_calls = len(calls)
    finally:
        for h in handles:
            h.remove()
    assert result["order"][:3] == removal == within["order"][:3]
    assert [-s["objective"] for s in result["config"]["steps"]] == pytest.approx(losses, rel=1e-5)
    assert [s["objective"] for s in within["config"]["steps"]] == pytest.approx(
        [s["objective"] for s in result["config"]["steps"]], rel=1e-5)
    assert result["order"] == within["order"]
    assert reused < within_calls


def test_ppl_matches_the_model_loss_with_each_block_skipped_and_protects_the_ends():
    model = make_tiny_model("llama", layers=8, seed=2)
    tok = __import__("common").make_tokenizer()
    result = score_layers(model, tok, "ppl", calib=TEXTS, progress=False)
    with torch.no_grad():
        base = float(_token_weighted_loss(model, tok, TEXTS))
        expected = []
        for i in range(8):
            with skip_layers(model, layers=[i]):
                expected.append(float(_token_weighted_loss(model, tok, TEXTS)) - base)
    assert result["scores"] == pytest.approx(expected, abs=1e-5)
    assert result["order"][:2] == sorted([4, 5], key=lambda i: expected[i])
    assert result["config"]["protected"] == [0, 1, 2, 3, 6, 7]


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


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "opt"])
def test_loss_on_scored_positions_equals_cross_entropy_on_full_logits(arch, tokenizer):
    """The fast path runs the output head only where a token is scored. Per sequence of a padded batch
    its sums must equal log-softmax of each unpadded text's full logits (gemma2 soft-caps them, opt
    projects out), over the scored tokens only."""
    from prunescope.criteria.activations import capture, sequence_stats
    from prunescope.criteria.calibration import pack
    model = make_tiny_model(arch, layers=3)
    rows = []
    for i, text in enumerate(["a much longer text with several words in it", "short", "2 + 3 = 5"]):
        ids = tokenizer(text).input_ids
        rows.append((ids, [False] + [bool(j % 2 or i == 0) for j in range(1, len(ids))], 0))
    (batch,) = pack(tokenizer, rows)
    expected = []
    with torch.no_grad():
        logits, _, _ = capture(model, batch, scored=True)
        stats = sequence_stats(logits, batch)
        for ids, scored, _ in sorted(rows, key=lambda r: -len(r[0])):  # pack's order
            logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), dim=-1)
            keep = torch.tensor(scored[1:])
            picked = logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])][keep]
            expected.append([float(picked.sum()), int(keep.sum())])
    assert batch.attention_mask.sum() < batch.attention_mask.numel()  # padded
    assert logits.dim() == 2 and logits.shape[0] == sum(n for _, n in expected)
    assert stats.flatten().tolist() == pytest.approx([v for row in expected for v in row], rel=1e-5)


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
    kw = dict(num_layers=2, progress=False, greedy_objective="teacher_forced")
    fast = compute_scores(model, tokenizer, "greedy_task", **kw)
    naive = compute_scores(model, tokenizer, "greedy_task", fast=False, **kw)
    assert fast["order"] == naive["order"]
    assert [s["objective"] for s in fast["config"]["steps"]] == pytest.approx(
        [s["objective"] for s in naive["config"]["steps"]], abs=1e-4)
    assert fast["config"]["baseline"] == pytest.approx(naive["config"]["baseline"], abs=1e-6)
    assert fast["config"]["tasks"] == ["arith_add_1d_gen", "brackets_gen"]
    assert fast["config"]["objective"] == "teacher_forced" and 0 not in fast["order"][:1]


def test_greedy_task_default_objective_is_generation_accuracy(tokenizer, monkeypatch):
    """The default objective generates on each task's calib items and scores them with the task's
    check: here a check that accepts only one of the items, so accuracy is exactly 1 / n."""
    pytest.importorskip("prunescope.tasks")
    from prunescope.tasks import get_task
    task = get_task("arith_add_1d_gen")
    items = task.items(32, seed=0, split="calib")
    lucky = items[0].id
    calls = []

    def check(item, output):
        calls.append(output)
        return item.id == lucky
    monkeypatch.setattr(task, "check", check)
    monkeypatch.setattr(task, "check_all", None)
    monkeypatch.setattr("prunescope.tasks.get_task", lambda name, **kw: task)
    model = make_tiny_model("llama", layers=3)
    result = score_layers(model, tokenizer, "greedy_task", tasks=["arith_add_1d_gen"], num_layers=1, progress=False)
    assert result["config"]["objective"] == "generate"
    assert result["config"]["baseline"] == [pytest.approx(1 / len(items))]
    assert len(calls) == len(items) * 3  # the base model, then candidates 1 and 2 (never 0)
    assert result["order"][0] == 2  # every candidate keeps the same accuracy: the later one goes


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


def test_default_calibration_is_seeded_random_windows_of_the_shipped_corpus(llama, tokenizer):
    """At least 64 x 512 tokens; the tiny model's 128-token context gets 4x as many 128-token windows."""
    from prunescope.criteria.calibration import calibration_batches
    batches, info = calibration_batches(llama, tokenizer, None, seed=0)
    assert info["calib_mode"] == "random_windows" and info["calib"].startswith("builtin:")
    assert info["calib_seq_len"] == 128 and info["calib_samples"] == 256 and info["calib_tokens"] == 64 * 512
    assert sum(int(b.attention_mask.sum()) for b in batches) == 64 * 512
    corpus = tokenizer(load_calibration_texts(None)[0], add_special_tokens=False).input_ids
    assert info["calib_corpus_tokens"] == len(corpus) > 100_000
    first = batches[0].input_ids[0].tolist()
    assert any(corpus[i:i + 128] == first for i in range(len(corpus) - 127))  # a real window of the corpus
    again, _ = calibration_batches(llama, tokenizer, None, seed=0)
    other, _ = calibration_batches(llama, tokenizer, None, seed=1)
    assert torch.equal(again[0].input_ids, batches[0].input_ids)
    assert not torch.equal(other[0].input_ids, batches[0].input_ids)
    small, info = calibration_batches(llama, tokenizer, None, samples=3, seq_len=40, seed=0)
    assert info["calib_samples"] == 3 and info["calib_tokens"] == 120


def test_calibration_sources(tmp_path, llama, tokenizer):
    good = tmp_path / "calib.jsonl"
    good.write_text(json.dumps({"text": "one two three"}) + "\n\n" + json.dumps({"text": "four five"}) + "\n")
    assert load_calibration_texts(str(good)) == ["one two three", "four five"]
    result = score_layers(llama, tokenizer, "block_influence", calib=str(good), progress=False)
    assert result["config"]["calib_texts"] == 2 and result["config"]["calib_mode"] == "texts"
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"Line {i} of a longer corpus."}) + "\n" for i in range(40)))
    result = score_layers(llama, tokenizer, "block_influence", calib=str(corpus), calib_samples=5,
                          calib_seq_len=32, seed=3, progress=False)
    assert result["config"]["calib_mode"] == "random_windows" and result["config"]["calib_tokens"] == 160
    assert result["config"]["calib_seed"] == 3
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
    with pytest.raises(UsageError, match=r"cannot read this hub dataset \(.*'no-such-org/no-such-dataset'.*\); "
                                         r"pass a local file instead: --calib FILE\.jsonl"):
        load_calibration_texts("no-such-org/no-such-dataset")
    with pytest.raises(UsageError, match=r"wikitext:wikitext-2-raw-v1"):
        load_calibration_texts("wikitext-2")


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
