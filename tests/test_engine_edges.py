"""The evaluation engine at its edges: BOS handling, the position table (lm-eval's truncation), the
plain fallback when a KV cache cannot be shared, and the GPU batch-size estimate, each against a
plain forward / HF generate / lm-eval / numbers worked out by hand."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from common import make_tiny_model, make_tokenizer
from prunescope.eval import engine, prefix


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("llama", layers=2, hidden=32, seed=1)  # 128 positions


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def _plain_logprob(model, ctx_ids, cont_ids):
    """One plain forward of context + continuation but its last token (a target only, as in lm-eval)."""
    with torch.no_grad():
        inp = torch.tensor([ctx_ids + cont_ids[:-1]])
        logp = torch.log_softmax(model(inp, use_cache=False).logits[0].float(), -1)
    return sum(logp[len(ctx_ids) - 1 + j, t].item() for j, t in enumerate(cont_ids))


def _hf_greedy_ids(model, ids, n):
    ids = torch.tensor([ids])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=0, eos_token_id=2)
    return out[0, ids.shape[1]:].tolist()


def _bos_tokenizer():
    """The byte tokenizer, but adding ``<s>`` (id 1) in front of every text, as Llama's does."""
    from tokenizers.processors import TemplateProcessing
    tok = make_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def test_encode_adds_bos_once():
    tok = _bos_tokenizer()
    abc = [ord(c) - 97 + 67 for c in "abc"]  # byte ids: "a" = 67 in the byte tokenizer
    assert tok("abc", add_special_tokens=False)["input_ids"] == abc
    assert engine.encode(tok, "abc") == [1] + abc
    # a rendered chat template already starts with BOS: not doubled
    assert engine.encode(tok, "<s>abc") == [1] + abc
    # empty context: the continuation is scored after BOS alone
    assert engine.encode_pair(tok, "", "abc") == ([1], [1] + abc)
    assert engine.encode_pair(tok, "ab", "c") == ([1, 67, 68], [69])
    no_bos = make_tokenizer()
    assert engine.encode(no_bos, "abc") == abc and engine.encode(no_bos, "<s>abc") == [1] + abc


def test_empty_context_without_bos_starts_from_eos():
    tok = make_tokenizer()
    tok.bos_token = None
    assert tok.bos_token_id is None
    assert engine.encode_pair(tok, "", "ab") == ([2], [67, 68])


def test_max_length_from_the_config():
    plain = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=77))
    gpt2 = SimpleNamespace(config=SimpleNamespace(n_positions=33))
    neither = SimpleNamespace(config=SimpleNamespace(hidden_size=8))

    class Multimodal:  # the text model's config is the one that counts
        max_position_embeddings = 5

        def get_text_config(self):
            return SimpleNamespace(max_position_embeddings=99)

    assert engine._max_length(plain) == 77 and engine._max_length(gpt2) == 33
    assert engine._max_length(neither) is None
    assert engine._max_length(SimpleNamespace(config=Multimodal())) == 99


def test_truncation_at_the_position_table_equals_lm_eval(model, tok):
    """Contexts around the 128-position table, each request truncated as lm-eval's HFLM does it: the last
    max_length + 1 tokens of context + continuation, the final one a target only (so exactly 129 tokens
    fit untouched, 130 lose one), and a 128-token continuation keeps one context token."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    digits = "".join(str(i % 10) for i in range(200))
    requests = [(digits[:127], "ab"),   # 129 tokens: fits
                (digits[:128], "ab"),   # 130: the first context token goes
                (digits[:126], "abc"),  # 129 with a longer continuation: fits
                (digits[:100], "x" * 128),  # the continuation fills the table: one context token is kept
                (digits[:60], "yz")]    # short
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2, device="cpu")
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(requests)]
    expected = [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    got = engine.loglikelihood(model, tok, requests, batch_size=2)
    assert got == pytest.approx(expected, abs=1e-4)
    # and the same by hand, without lm-eval: the kept context is the tail
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert got[1] == pytest.approx(_plain_logprob(model, ids(digits[1:128]), ids("ab")), abs=1e-4)
    assert got[3] == pytest.approx(_plain_logprob(model, ids(digits[99:100]), ids("x" * 128)), abs=1e-4)
    assert got[1] != pytest.approx(_plain_logprob(model, ids(digits[:128]), ids("ab")), abs=1e-4)


def test_generation_keeps_the_prompt_tail_that_fits(model, tok):
    """lm-eval's generate_until keeps the last max_length - max_gen_toks prompt tokens."""
    digits = "".join(str(i % 10) for i in range(200))
    prompts = [digits[:150], digits[:123], digits[:40] + " ="]
    out = engine.generate(model, tok, prompts, max_new_tokens=5, stop=[], batch_size=2)
    for p, o in zip(prompts, out):
        ids = tok(p, add_special_tokens=False)["input_ids"][-(128 - 5):]
        assert o == tok.decode(_hf_greedy_ids(model, ids, 5), skip_special_tokens=True)


def test_a_cache_that_cannot_be_shared_falls_back_to_the_plain_path(model, tok, monkeypatch):
    def unshareable(model, ids):
        raise prefix.Unshareable("TestCache")

    monkeypatch.setattr(prefix, "run_prefix", unshareable)
    shots = "1 + 1 = 2\n2 + 2 = 4\n"
    items = [(shots + "3 + 4 =", [" 7", " 8", " 12"]), (shots + "5 + 1 =", [" 6", " 66"]), ("x", [" y", " zz"])]
    got = engine.score_choices(model, tok, items, batch_size=2)
    for (ctx, choices), scores in zip(items, got):
        for c, s in zip(choices, scores):
            ctx_ids, cont_ids = engine.encode_pair(tok, ctx, c)
            assert s == pytest.approx(_plain_logprob(model, ctx_ids, cont_ids), abs=1e-4)
    prompts = [shots + "3 + 4 =", shots + "2 + 5 =", "(", "x y z"]
    out = engine.generate(model, tok, prompts, max_new_tokens=4, stop=["\n"], batch_size=3)
    for p, o in zip(prompts, out):
        expected = tok.decode(_hf_greedy_ids(model, engine.encode(tok, p), 4), skip_special_tokens=True)
        assert o == engine.truncate_at_stop(expected, ["\n"])[0]


def test_truncate_at_stop_edges():
    assert engine.truncate_at_stop("abc", []) == ("abc", False)
    assert engine.truncate_at_stop("abc", [""]) == ("abc", False)  # an empty stop string is ignored
    assert engine.truncate_at_stop("abc", ["c"]) == ("ab", True)
    assert engine.truncate_at_stop("\nabc", ["\n"]) == ("", True)


def test_eos_ids_from_generation_config_and_tokenizer(tok):
    gen = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[7, 9]))
    assert engine._eos_ids(gen, tok) == {7, 9, 2}
    assert engine._eos_ids(SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=5)), tok) == {5, 2}
    assert engine._eos_ids(SimpleNamespace(), tok) == {2}


def test_gpu_batch_estimate_by_hand(model, monkeypatch):
    """Per 512-token sequence: K and V (2 x layers x KV heads x head_dim x bytes), 4 hidden-size activations
    and half a row of fp32 logits per token; half the free memory divided by that, between 1 and 256.
    Tiny llama: 2 layers, 2 KV heads, head_dim 8, hidden 32, vocab 259, fp32:
    512 x (2*2*2*8*4 + 4*32*4) + 512*259*4//8 = 393216 + 66304 = 459520 bytes."""
    monkeypatch.setattr(engine, "model_device", lambda m: torch.device("cuda"))

    def free(n):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (n, 2 * n))

    free(10 * 2**20)
    assert engine.auto_batch_size(model) == 11  # 5242880 // 459520
    assert engine.resolve_batch_size(model, "auto") == 11 and engine.resolve_batch_size(model, None) == 11
    # 256 tokens: 256 x 768 + 256*259*4//8 = 229760 -> 22
    assert engine.resolve_batch_size(model, "auto", tokens_per_sequence=256) == 22
    free(20 * 2**20)
    assert engine.auto_batch_size(model) == 22
    free(2**30)
    assert engine.auto_batch_size(model) == 256  # 1168 capped
    free(1000)
    assert engine.auto_batch_size(model) == 1
    # a config without KV heads / head_dim: attention heads and hidden / heads; bf16 would halve the bytes
    fake = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=3, num_attention_heads=4, hidden_size=64,
                                                  vocab_size=100),
                           parameters=lambda: iter([torch.zeros(1)]))
    free(100 * 2**20)
    # 512 x (2*3*4*16*4 + 4*64*4) + 512*100*4//8 = 1310720 + 25600 = 1336320 -> 52428800 // 1336320 = 39
    assert engine.auto_batch_size(fake) == 39
    # nothing but the hidden size: 32 layers, 32 heads (head_dim 2), vocab 32000:
    # 512 x (2*32*32*2*4 + 4*64*4) + 512*32000*4//8 = 8912896 + 8192000 = 17104896 -> 2**29 // that = 31
    bare = SimpleNamespace(config=SimpleNamespace(hidden_size=64), parameters=lambda: iter([torch.zeros(1)]))
    free(2**30)
    assert engine.auto_batch_size(bare) == 31
    half = SimpleNamespace(config=fake.config, parameters=lambda: iter([torch.zeros(1, dtype=torch.bfloat16)]))
    free(100 * 2**20)
    # bf16: 512 x (1536/2 + 1024/2) + 25600 = 680960 -> 76
    assert engine.auto_batch_size(half) == 76


def test_fixed_batch_sizes(model):
    assert engine.resolve_batch_size(model, 3) == 3 and engine.resolve_batch_size(model, "5") == 5
    assert engine.resolve_batch_size(model, 0) == 1
    assert engine.auto_batch_size(model) == engine.CPU_BATCH == 16  # on a CPU: the starting size


@pytest.mark.parametrize("share_prefix", [True, False])
def test_absolute_positions_with_choices_of_different_lengths_past_the_table(tok, share_prefix):
    """gpt2 has a table of 128 learned positions: a one-token choice keeps 128 context tokens, a 6-token
    choice 123, batched together; padding must not reach past the table."""
    gpt2 = make_tiny_model("gpt2", layers=2, seed=2)
    assert gpt2.config.n_positions == 128
    ctx = "".join(str(i % 10) for i in range(200))
    items = [(ctx, [" a", " bcdef"]), (ctx[:50] + " =", [" 1", " 12345"])]
    got = engine.score_choices(gpt2, tok, items, batch_size=4, share_prefix=share_prefix)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    for (context, choices), scores in zip(items, got):
        for c, s in zip(choices, scores):
            cont = ids(c)
            kept = ids(context)[-(129 - len(cont)):]
            assert s == pytest.approx(_plain_logprob(gpt2, kept, cont), abs=1e-4)
