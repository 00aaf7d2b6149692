import pytest
import torch

from common import make_tiny_model, make_tokenizer
from prunescope.eval import engine


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("llama", layers=2, hidden=32, seed=1)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def naive_loglikelihood(model, tok, context, continuation):
    """Full forward of context + continuation, no batching, no cache."""
    ctx, cont = engine.encode_pair(tok, context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))


def test_mc_scores_equal_naive_full_forward(model, tok):
    items = [("12 + 35 =", [" 47", " 48", " 57", " 4"]),
             ("a much longer context, so rows are padded: 3 + 4 =", [" 7", " 8", " 12", " 70"]),
             ("( ( ) ( =", [" ) )", " )", " ) ) )"]),
             ("x", [" yes", " no"])]
    got = engine.score_choices(model, tok, items, batch_size=5)  # batches split items unevenly
    for (ctx, choices), scores in zip(items, got):
        for choice, s in zip(choices, scores):
            assert s == pytest.approx(naive_loglikelihood(model, tok, ctx, choice), abs=1e-4)


def test_loglikelihood_groups_shared_contexts_and_keeps_order(model, tok):
    reqs = [("ab", " c"), ("hello there", " x"), ("ab", " dd"), ("", "zz"), ("ab ", "c")]
    got = engine.loglikelihood(model, tok, reqs, batch_size=2)
    for (ctx, cont), s in zip(reqs, got):
        if ctx:
            assert s == pytest.approx(naive_loglikelihood(model, tok, ctx, cont), abs=1e-4)
    # Trailing context whitespace moves to the continuation, as in lm-evaluation-harness.
    assert got[4] == pytest.approx(got[0], abs=1e-5)
    assert got[3] < 0


def hf_greedy(model, tok, prompt, max_new_tokens, stop):
    ids = torch.tensor([engine.encode(tok, prompt)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=0, eos_token_id=2)
    text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    return engine.truncate_at_stop(text, stop)[0]


PROMPTS = ["1 + 1 = 2\n3 + 4 =", "Copy: cat dog\nOutput:", "(", "a longer prompt that pads the others a lot =",
           "x y z", "7 * 8 ="]


def test_batched_generation_equals_per_item_generate(model, tok):
    stop = ["\n", "q"]
    got = engine.generate(model, tok, PROMPTS, max_new_tokens=10, stop=stop, batch_size=4)
    want = [hf_greedy(model, tok, p, 10, stop) for p in PROMPTS]
    assert got == want
    assert any(len(g) > 0 for g in got)


def test_kv_cache_generation_equals_cache_free(model, tok):
    with_cache = engine.generate(model, tok, PROMPTS, max_new_tokens=8, stop=[], batch_size=3)
    without = engine.generate(model, tok, PROMPTS, max_new_tokens=8, stop=[], batch_size=3, use_cache=False)
    assert with_cache == without


def test_stop_strings_cut_output_and_early_exit(model, tok):
    full = engine.generate(model, tok, PROMPTS, max_new_tokens=12, stop=[], batch_size=8)
    # Stop on the third character each output produced: the output must end right before it.
    for prompt, text in zip(PROMPTS, full):
        if len(text) < 4:
            continue
        stop = text[2:4]
        cut = engine.generate(model, tok, [prompt], max_new_tokens=12, stop=[stop], batch_size=1)[0]
        assert cut == text[:text.find(stop)]
        assert stop not in cut


def test_truncate_at_stop_picks_earliest():
    assert engine.truncate_at_stop("ab\ncdQ", ["Q", "\n"]) == ("ab", True)
    assert engine.truncate_at_stop("abc", ["z"]) == ("abc", False)


def test_auto_batch_size_fits_half_the_free_gpu_memory(model, monkeypatch):
    """On a (faked) GPU the batch's KV cache for 512 tokens fills at most half the free memory, and
    grows with it: tiny llama, 2 layers x 2 KV heads x head_dim 8, fp32 = 2*2*2*8*4 = 256 bytes of K and V
    per token, 131072 bytes per 512-token sequence before logits."""
    assert engine.resolve_batch_size(model, 3) == 3 and engine.resolve_batch_size(model, 0) == 1
    monkeypatch.setattr(engine, "model_device", lambda m: torch.device("cuda"))
    kv_per_seq = 512 * 2 * 2 * 2 * 8 * 4
    sizes = {}
    for free in (10 * 2**20, 20 * 2**20, 10 * 2**30):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device, free=free: (free, 2 * free))
        sizes[free] = engine.resolve_batch_size(model, "auto")
        assert 1 <= sizes[free] <= 256
        assert sizes[free] * kv_per_seq <= free / 2
    assert sizes[20 * 2**20] >= 2 * sizes[10 * 2**20] - 1  # linear in free memory
    assert sizes[10 * 2**30] == 256  # capped
    assert sizes[10 * 2**20] >= 10  # not needlessly small: the logits row is the only other cost


def test_other_architecture_gpt2_matches_naive(tok):
    gpt2 = make_tiny_model("gpt2", layers=2, seed=2)
    items = [("3 + 4 =", [" 7", " 8 9"]), ("short", [" a", " bb"])]
    got = engine.score_choices(gpt2, tok, items, batch_size=16)
    for (ctx, choices), scores in zip(items, got):
        for c, s in zip(choices, scores):
            assert s == pytest.approx(naive_loglikelihood(gpt2, tok, ctx, c), abs=1e-4)
    out = engine.generate(gpt2, tok, PROMPTS[:3], max_new_tokens=5, stop=[], batch_size=3)
    assert out == [hf_greedy(gpt2, tok, p, 5, []) for p in PROMPTS[:3]]


@pytest.mark.gpu
def test_vllm_backend_generates():  # pragma: no cover - needs a GPU and vllm
    pytest.importorskip("vllm")
    from prunescope.eval.vllm_backend import VllmBackend
    backend = VllmBackend("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert backend.generate(["1 + 1 ="], max_new_tokens=3, stop=["\n"])[0].strip()
