"""Shared-prefix KV reuse: scores and greedy outputs equal a plain full forward on four architectures,
including sliding-window attention whose window is shorter than the shared prefix."""
import pytest
import torch

from common import make_tiny_model, make_tokenizer, model_from_config
from prunescope.eval import engine, prefix
from prunescope.eval.batching import BatchSizer

SHOTS = "".join(f"Q: {a} + {b} = ?\nA: {a + b}\n\n" for a, b in ((3, 4), (12, 9), (5, 5)))
QUESTIONS = ["Q: 2 + 2 = ?\nA:", "Q: 14 + 3 = ?\nA:", "Q: 7 + 1 = ?\nA:", "Q: 30 + 12 = ?\nA:",
             "Q: 9 + 9 = ?\nA:", "Q: 1 + 0 = ?\nA:", "Q: 11 + 22 = ?\nA:"]
CHOICES = [" 4", " 17 ", " 80", " 42\n"]


def tiny(arch):
    if arch != "qwen2_sliding":
        return make_tiny_model(arch, layers=2, hidden=32, seed=3)
    config = make_tiny_model("qwen2", layers=2).config
    config.use_sliding_window, config.sliding_window = True, 4
    config.layer_types = ["sliding_attention", "full_attention"]
    return model_from_config(config, seed=3)


ARCHS = ["llama", "qwen2_sliding", "gemma2", "gpt2"]


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def naive_loglikelihood(model, tok, context, continuation):
    """One unbatched, cache-free forward of context + continuation."""
    ctx, cont = engine.encode_pair(tok, context, continuation)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
    return sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))


def naive_greedy(model, tok, prompt, max_new_tokens, stop):
    """Greedy decoding by repeated full forwards (no cache, no batch)."""
    ids = engine.encode(tok, prompt)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            t = model(torch.tensor([ids + new])).logits[0, -1].argmax().item()
            if t == tok.eos_token_id:
                break
            new.append(t)
            text, stopped = engine.truncate_at_stop(tok.decode(new, skip_special_tokens=True), stop)
            if stopped:
                return text
    return engine.truncate_at_stop(tok.decode(new, skip_special_tokens=True), stop)[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prefix_scores_equal_full_forward(arch, tok):
    model = tiny(arch)
    # Both batch layouts are exercised: hole-free rows for windowed attention, two passes otherwise.
    assert prefix.windowed_attention(model) == (arch in ("qwen2_sliding", "gemma2"))
    items = [(SHOTS + q, CHOICES) for q in QUESTIONS]
    clusters = prefix.find_clusters([engine.encode(tok, c) for c, _ in items])
    assert len(clusters[0].prefix) > 40 and len(clusters[0].members) == len(items)  # the shots are shared
    shared = engine.score_choices(model, tok, items, batch_size=3)  # the prefix cache serves three batches
    plain = engine.score_choices(model, tok, items, batch_size=3, share_prefix=False)
    for (ctx, choices), s, p in zip(items, shared, plain):
        for c, a, b in zip(choices, s, p):
            assert a == pytest.approx(naive_loglikelihood(model, tok, ctx, c), abs=1e-4)
            assert a == pytest.approx(b, abs=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_shared_prefix_generation_equals_full_forward_greedy(arch, tok):
    model = tiny(arch)
    prompts = [SHOTS + q for q in QUESTIONS]
    shared = engine.generate(model, tok, prompts, max_new_tokens=6, stop=["\n"], batch_size=4)
    plain = engine.generate(model, tok, prompts, max_new_tokens=6, stop=["\n"], batch_size=4, share_prefix=False)
    assert shared == plain == [naive_greedy(model, tok, p, 6, ["\n"]) for p in prompts]
    assert any(shared)


def merging_tokenizer():
    """The byte tokenizer plus one merge, newline + 'a', which crosses the few-shot block's end."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = make_tokenizer()
    vocab = dict(base.get_vocab())
    vocab["Ċa"] = len(vocab)
    t = Tokenizer(models.BPE(vocab=vocab, merges=[("Ċ", "a")], unk_token=None))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def test_merge_across_the_prefix_boundary_falls_back():
    tok = merging_tokenizer()
    model = make_tiny_model("llama", layers=2, hidden=32, seed=4)
    model.resize_token_embeddings(len(tok))  # room for the merged token
    block = "shots: 1 2 3\n"
    contexts = [block + f"{c} =" for c in "bcdefghijklmnopqrstuvwxyzBCDEF"] + [block + "a =", "unrelated"]
    encoded = [engine.encode(tok, c) for c in contexts]
    # The merge really crosses the boundary: the block's own tokens are not a prefix of the a-context.
    own = engine.encode(tok, block)
    assert encoded[0][:len(own)] == own and encoded[30][:len(own)] != own
    clusters = prefix.find_clusters(encoded)
    shared = next(c for c in clusters if c.prefix)
    assert shared.prefix == own and 30 not in shared.members  # the a-context is left out of the group
    assert any(30 in c.members and not c.prefix for c in clusters)  # ... and runs without a prefix
    items = [(c, [" x", " yz"]) for c in contexts]
    got = engine.score_choices(model, tok, items, batch_size=8)
    for (ctx, choices), scores in zip(items, got):
        for c, s in zip(choices, scores):
            assert s == pytest.approx(naive_loglikelihood(model, tok, ctx, c), abs=1e-4)
    outs = engine.generate(model, tok, contexts[28:], max_new_tokens=4, batch_size=8)
    assert outs == [naive_greedy(model, tok, p, 4, []) for p in contexts[28:]]


def test_expand_cache_shares_storage_and_leaves_prefix_intact(tok):
    model = make_tiny_model("llama", layers=2, hidden=32, seed=5)
    cache = prefix.run_prefix(model, engine.encode(tok, SHOTS))
    before = cache.layers[0].keys.clone()
    wide = prefix.expand_cache(cache, 8)
    assert wide.layers[0].keys.shape[0] == 8 and wide.layers[0].keys.stride(0) == 0
    assert wide.layers[0].keys.data_ptr() == cache.layers[0].keys.data_ptr()
    prefix.score_batch(model, cache, cache.get_seq_length(), [(engine.encode(tok, SHOTS + "Q: 1"), [[5, 6]])], 0)
    assert torch.equal(cache.layers[0].keys, before) and cache.get_seq_length() == before.shape[2]


def test_auto_batch_size_on_cpu_doubles_while_throughput_grows(monkeypatch):
    from prunescope.eval import batching
    monkeypatch.setattr(batching, "_chosen", {})  # sizes are remembered per process: start from none, every run
    model = make_tiny_model("llama", layers=1, hidden=16, seed=6)
    sizer = BatchSizer(model, "auto", kind="test-doubling", gpu_estimate=lambda: 99)
    # Hand-made timings: tokens/s 100, 180, 300, 310 at sizes 4, 8, 16, 32 -> 32 adds < 10%: keep 16... no, best.
    for size, rate in ((4, 100), (8, 180), (16, 300), (32, 310)):
        assert sizer.size == size and not sizer.settled
        sizer.record(real_tokens=rate, seconds=1.0, used=size)
    assert sizer.settled and sizer.size == 32  # the best measured, even though it gained too little to go on
    again = BatchSizer(model, "auto", kind="test-doubling", gpu_estimate=lambda: 99)
    assert again.settled and again.size == 32  # remembered for the next call
    fixed = BatchSizer(model, 5, kind="test-doubling", gpu_estimate=lambda: 99)
    assert fixed.size == 5 and fixed.settled


def test_auto_batch_size_changes_between_batches_without_changing_scores(tok):
    """``auto`` on a CPU starts at 4 and doubles between batches; every batch reuses one prefix cache."""
    model = make_tiny_model("llama", layers=2, hidden=32, seed=7)
    items = [(SHOTS + f"Q: {i} + {i % 7} = ?\nA:", CHOICES) for i in range(40)]
    auto = engine.score_choices(model, tok, items, batch_size="auto")
    fixed = engine.score_choices(model, tok, items, batch_size=40, share_prefix=False)
    assert sum(auto, []) == pytest.approx(sum(fixed, []), abs=1e-4)
    outs = engine.generate(model, tok, [c for c, _ in items[:12]], max_new_tokens=3, batch_size="auto")
    assert outs == engine.generate(model, tok, [c for c, _ in items[:12]], max_new_tokens=3, batch_size=12,
                                   share_prefix=False)


def test_empty_prompt_starts_from_bos(tok):
    model = make_tiny_model("llama", layers=2, hidden=32, seed=8)
    got = engine.generate(model, tok, ["", SHOTS + "Q: 1"], max_new_tokens=3)
    assert got[0] == naive_greedy(model, tok, tok.bos_token, 3, [])
