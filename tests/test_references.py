"""Numbers checked against independent references: lm-evaluation-harness, transformers' own loss,
hand-worked values. Nothing here calls the code under test to produce an expected value."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from common import make_tiny_model, make_tokenizer
from prunescope.eval import engine


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model():
    return make_tiny_model("llama", layers=3, hidden=32, seed=3)


# ------------------------------------------------------------------ log-likelihood: lm-eval's HFLM

def test_loglikelihood_equals_lm_eval_hflm(model, tok):
    """Same requests through lm-eval's HF backend: its tokenization (trailing context whitespace moved
    to the continuation, continuation = tail of the joint encoding, empty context → prefix token) and
    its scoring are the reference."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    requests = [("12 + 35 =", " 47"), ("12 + 35 =", " 4"), ("( ( ) ( = ", ") )"), ("x", " yes"),
                ("a much longer context, so that rows are padded: 3 + 4 =", " 7"), ("", "zz"),
                ("ends with two spaces  ", "b")]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=3, device="cpu")
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=i) for i, r in enumerate(requests)]
    expected = [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    got = engine.loglikelihood(model, tok, requests, batch_size=2)
    assert got == pytest.approx(expected, abs=1e-4)
    # the grouped multiple-choice path gives the same numbers
    mc = engine.score_choices(model, tok, [("12 + 35 =", [" 47", " 4"])], batch_size=1)[0]
    assert mc == pytest.approx(expected[:2], abs=1e-4)


def _naive(model, ctx_ids, cont_ids):
    """Sum log-prob of ``cont_ids`` after ``ctx_ids``: one plain forward, no cache, no batching."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ctx_ids + cont_ids]), use_cache=False).logits[0].float(), -1)
    return sum(logp[len(ctx_ids) - 1 + j, t].item() for j, t in enumerate(cont_ids))


def test_long_context_keeps_its_tail_and_the_whole_continuation(model, tok):
    """Past the position table (128 here) the context loses its start; continuations are kept whole, and
    each choice keeps as much context as fits beside it: 128 + 1 tokens in all, the last only a target."""
    ctx = "".join(str(i % 10) for i in range(300)) + " ="
    choices = [" 47", " 4", ""]
    ids = tok(ctx, add_special_tokens=False).input_ids
    got = engine.score_choices(model, tok, [(ctx, choices)], batch_size=1)[0]
    conts = [tok(c, add_special_tokens=False).input_ids for c in choices[:2]]
    assert len(conts[0]) != len(conts[1])  # so the two choices keep different context tails
    expected = [_naive(model, ids[-(129 - len(c)):], c) for c in conts]
    assert got == pytest.approx(expected + [0.0], abs=1e-4)  # an empty continuation has log-probability 0
    short = engine.score_choices(model, tok, [("12 =", ["", " 3"])])[0]  # default batch size
    assert short == pytest.approx([0.0, _naive(model, tok("12 =").input_ids, tok(" 3").input_ids)], abs=1e-4)
    assert engine.loglikelihood(model, tok, [("12 =", " 3")]) == pytest.approx(short[1:], abs=1e-6)


def test_long_context_equals_lm_eval_hflm(model, tok):
    """Past the position table lm-eval truncates each request on its own, keeping the last
    max_length + 1 tokens of context + continuation (the final one is only a target)."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    ctx = "".join(str(i % 10) for i in range(300)) + " ="
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=2, device="cpu")
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, c), idx=i)
                 for i, c in enumerate([" 47", " 4"])]
    expected = [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    got = engine.loglikelihood(model, tok, [(ctx, " 47"), (ctx, " 4")], batch_size=2)
    assert got == pytest.approx(expected, abs=1e-4)


class _FixedScores:
    """A backend whose log-likelihoods are given by hand (per choice text)."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores

    def score_choices(self, items, **kw):
        return [[self.scores[c] for c in choices] for _, choices in items]


def test_length_normalisation_flips_the_answer(tok):
    """acc_norm divides each choice's log-likelihood by its length in characters (lm-eval's acc_norm,
    ``len(choice)``; per byte is lm-eval's separate acc_bytes)."""
    from prunescope.eval.runner import evaluate
    from prunescope.tasks.spec import Item, Task

    items = [
        # raw: -3 > -4 picks "zq"; per byte: -3/2 = -1.5 < -4/8 = -0.5 picks "abcdefgh" (gold)
        Item(id="0", prompt="q0", gold=1, target="abcdefgh", choices=["zq", "abcdefgh"]),
        # raw: -1 > -2 picks "x"; per byte: -2/4 = -0.5 > -1/1 = -1 picks "abcd" (gold)
        Item(id="1", prompt="q1", gold=0, target="abcd", choices=["abcd", "x"]),
        # equal lengths: both pick "yes" (gold)
        Item(id="2", prompt="q2", gold=0, target="yes", choices=["yes", "no!"]),
        # non-ASCII: "éé" is 2 characters but 4 UTF-8 bytes. raw: -3 > -4 picks "éé"; per character:
        # -3/2 = -1.5 < -4/3 = -1.33 picks "abc" (gold); per byte it would be -3/4 = -0.75, picking "éé".
        Item(id="3", prompt="q3", gold=1, target="abc", choices=["\u00e9\u00e9", "abc"]),
    ]
    scores = {"zq": -3.0, "abcdefgh": -4.0, "abcd": -2.0, "x": -1.0, "yes": -1.0, "no!": -2.0,
              "\u00e9\u00e9": -3.0, "abc": -4.0}
    task = Task(name="flip", kind="multiple_choice", description="hand-scored", chance=0.5,
                make_items=lambda n, seed, split: items[:n] if n else items)
    report = evaluate(None, tok, [task], backend=_FixedScores(scores), model_name="fixed", progress=False)
    m = report["tasks"]["flip"]
    assert m["n"] == 4 and m["correct"] == 1
    assert m["accuracy"] == pytest.approx(1 / 4)
    assert m["accuracy_length_normalized"] == pytest.approx(1.0)


# ------------------------------------------------------------------------- recovery: HF's own loss

def _chat_example(tok, user: str, answer: str):
    """(input ids, labels with -100 on exactly the prompt tokens), built from the chat template with the
    byte tokenizer (one token per byte), independently of prunescope's tokenization."""
    prompt = tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
                                   tokenize=False)
    assert full.startswith(prompt)
    ids = tok(full, add_special_tokens=False).input_ids
    assert len(ids) == len(full.encode())
    n_prompt = len(prompt.encode())
    return ids, [-100] * n_prompt + ids[n_prompt:]


def test_tokenized_example_masks_exactly_the_prompt(tok):
    from prunescope.recovery.data import Prompt, tokenize_example

    ids, labels = _chat_example(tok, "What is 2 + 3?", "5")
    ex = tokenize_example(Prompt(id="a", messages=[{"role": "user", "content": "What is 2 + 3?"}]), "5", tok, 512)
    assert ex["input_ids"] == ids
    assert ex["labels"] == labels


def test_sft_loss_equals_transformers_loss(model, tok):
    from prunescope.recovery.losses import recovery_loss_sum

    ids, labels = _chat_example(tok, "Add 12 and 30.", "The sum is 42.")
    ids_t, labels_t = torch.tensor([ids]), torch.tensor([labels])
    with torch.no_grad():
        hf = model(input_ids=ids_t, labels=labels_t).loss  # shifts internally, ignores -100
        logits = model(input_ids=ids_t).logits
    n_scored = sum(1 for t in labels[1:] if t != -100)
    got = recovery_loss_sum("sft", logits, labels_t)
    assert got.item() / n_scored == pytest.approx(hf.item(), rel=1e-5)


def test_training_step_loss_is_the_token_weighted_transformers_loss(tmp_path, tok):
    """The loss logged for an optimizer step (computed before the update) over two examples of different
    lengths equals transformers' loss on the padded batch (mean over every response token of the batch)."""
    from prunescope.recovery.config import RecoverConfig
    from prunescope.recovery.data import Prompt, tokenize_example
    from prunescope.recovery.loop import train

    student = make_tiny_model("llama", layers=2, seed=5)
    pairs = [("Add 12 and 30.", "The sum is 42, since 12 + 30 = 42."), ("Hi", "Hello!")]
    examples = [tokenize_example(Prompt(id=str(i), messages=[{"role": "user", "content": u}]), a, tok, 512)
                for i, (u, a) in enumerate(pairs)]
    refs = [_chat_example(tok, u, a) for u, a in pairs]
    width = max(len(i) for i, _ in refs)
    ids = torch.tensor([i + [0] * (width - len(i)) for i, _ in refs])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in refs])
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in refs])
    with torch.no_grad():
        expected = student(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    config = RecoverConfig(lr=1e-3, max_steps=1, batch_size=2, save_every=0, max_grad_norm=0.0)
    summary = train(student, tok, examples, config=config, out=tmp_path / "out", resume=False)
    assert summary["final_loss"] == pytest.approx(expected, rel=1e-5)


def _hand_kl(student, teacher, labels, temperature, topk=0):
    """sum over response positions of KL(teacher || student) at temperature T, times T², by loops."""
    total = 0.0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[b, t + 1] == -100:
                continue
            s = [x / temperature for x in student[b, t].tolist()]
            q = [x / temperature for x in teacher[b, t].tolist()]
            keep = sorted(range(len(q)), key=lambda j: -q[j])[:topk] if topk else range(len(q))
            zs = math.log(sum(math.exp(x) for x in s))
            zq = math.log(sum(math.exp(q[j]) for j in keep))
            for j in keep:
                p = math.exp(q[j] - zq)
                total += p * ((q[j] - zq) - (s[j] - zs))
    return total * temperature ** 2


@pytest.mark.parametrize("temperature,topk", [(2.0, 0), (2.0, 3), (0.5, 0)])
def test_kd_loss_equals_hand_computed_kl(temperature, topk):
    from prunescope.recovery.losses import recovery_loss_sum

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 7, generator=g) * 2, torch.randn(2, 5, 7, generator=g) * 2
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    expected = _hand_kl(student, teacher, labels, temperature, topk)
    got = recovery_loss_sum("kd", student, labels, teacher, temperature=temperature, topk=topk)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # mix = w * kd + (1 - w) * summed cross-entropy of the shifted response tokens
    ce = -sum(torch.log_softmax(student[b, t], -1)[labels[b, t + 1]].item()
              for b in range(2) for t in range(4) if labels[b, t + 1] != -100)
    mix = recovery_loss_sum("mix", student, labels, teacher, kd_weight=0.25, temperature=temperature, topk=topk)
    assert mix.item() == pytest.approx(0.25 * expected + 0.75 * ce, rel=1e-5)


# ----------------------------------------------------- ppl / sleb: calibration loss, token-weighted

def _hf_mean_loss(model, tok, texts):
    """Mean next-token loss over every scored token of ``texts`` (token-weighted), from transformers' loss."""
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text).input_ids])
            n = ids.shape[1] - 1
            total += model(input_ids=ids, labels=ids, use_cache=False).loss.item() * n
            count += n
    return total / count


def _without_block(model, layer):
    clone = copy.deepcopy(model)
    del clone.model.layers[layer]
    clone.config.num_hidden_layers -= 1
    return clone


@pytest.mark.parametrize("fast", [True, False])
def test_calibration_loss_is_token_weighted_hf_loss(model, tok, fast):
    """The loss behind ppl and sleb, with each block skipped, on texts of very different lengths: a
    per-sequence average would weigh the 6-token text like the long one."""
    from prunescope.criteria.activations import mean_loss, skip_scan
    from prunescope.criteria.calibration import make_batches

    texts = ["short.", "A much longer calibration text, so that the per-token and per-sequence means differ.",
             "Middle length text here."]
    batches = make_batches(tok, texts)
    base, skipped = skip_scan(model, batches, fast=fast)
    assert mean_loss(base) == pytest.approx(_hf_mean_loss(model, tok, texts), rel=1e-5)
    for layer in range(3):
        expected = _hf_mean_loss(_without_block(model, layer), tok, texts)
        assert mean_loss(skipped[layer]) == pytest.approx(expected, rel=1e-5)


# --------------------------------------------------------------------------- ratio -> layer count

@pytest.mark.parametrize("ratio,total,count", [
    (0.3, 30, 9),
    (0.29, 100, 29),   # 0.29 * 100 = 28.999999999999996 in floating point
    (0.25, 6, 2),      # 1.5 -> 2
    (0.3, 6, 2),       # 1.8 -> 2 (floor would give 1)
    (0.2, 6, 1),       # 1.2 -> 1
    (0.4, 32, 13),     # 12.8 -> 13
    (0.35, 32, 11),    # 11.2 -> 11
    (0.125, 32, 4),    # exact
    (0.01, 30, 1),     # at least one layer
    (0.9, 6, 5),       # 5.4 -> 5
])
def test_count_for_ratio_rounds_to_nearest(ratio, total, count):
    from prunescope.pruning.selection import count_for_ratio
    assert count_for_ratio(ratio, total) == count


@pytest.mark.parametrize("ratio,total,message", [(0.95, 6, "^--ratio 0.95 would remove all 6 layers"),
                                                 (0.0, 6, "^--ratio 0.0 must be strictly between"),
                                                 (1.0, 6, "^--ratio 1.0 must be strictly between"),
                                                 (-0.1, 6, "^--ratio -0.1 must be strictly between")])
def test_count_for_ratio_refuses(ratio, total, message):
    from prunescope.errors import UsageError
    from prunescope.pruning.selection import count_for_ratio
    with pytest.raises(UsageError, match=message):
        count_for_ratio(ratio, total)


def test_loss_defaults_are_plain_kl_and_an_even_mix():
    """Defaults: temperature 1, the whole vocabulary, and mix = (kd + sft) / 2."""
    from prunescope.recovery.losses import kd_loss_sum, recovery_loss_sum

    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(1, 4, 6, generator=g), torch.randn(1, 4, 6, generator=g)
    labels = torch.tensor([[-100, 2, 3, 4]])
    kl = _hand_kl(student, teacher, labels, 1.0)
    ce = -sum(torch.log_softmax(student[0, t], -1)[labels[0, t + 1]].item() for t in range(3))
    assert kd_loss_sum(student, teacher, labels).item() == pytest.approx(kl, rel=1e-5)
    assert recovery_loss_sum("kd", student, labels, teacher).item() == pytest.approx(kl, rel=1e-5)
    assert recovery_loss_sum("mix", student, labels, teacher).item() == pytest.approx(0.5 * kl + 0.5 * ce, rel=1e-5)
    assert recovery_loss_sum("sft", student, labels).item() == pytest.approx(ce, rel=1e-5)


# ------------------------------------------------------------------ generation: transformers' generate

def _hf_tokens(model, ids, max_new_tokens, eos):
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0, eos_token_id=eos)
    return out[0, len(ids):].tolist()


def test_generation_stops_at_the_models_own_eos(tok):
    """The model's generation_config may name an end token the tokenizer does not: it ends the output too."""
    gen_model = make_tiny_model("llama", layers=2, seed=7)
    prompt = "7 * 8 ="
    ids = tok(prompt).input_ids
    free = _hf_tokens(gen_model, ids, 6, eos=[])  # what greedy decoding writes with no end token
    stop_token = free[2]
    first = free.index(stop_token)
    gen_model.generation_config.eos_token_id = [stop_token]
    got = engine.generate(gen_model, tok, [prompt], max_new_tokens=6)  # default batch size and cache
    assert got == [tok.decode(free[:first])]
    gen_model.generation_config.eos_token_id = stop_token  # a bare int works the same
    assert engine.generate(gen_model, tok, [prompt], max_new_tokens=6, batch_size=1) == got


def test_long_prompt_keeps_its_tail_for_generation(model, tok):
    """A prompt past the position table (128) keeps its last 128 - max_new_tokens tokens."""
    prompt = "".join(str(i % 7) for i in range(200))
    ids = tok(prompt).input_ids
    want = tok.decode(_hf_tokens(model, ids[-(128 - 5):], 5, eos=2), skip_special_tokens=True)
    assert engine.generate(model, tok, [prompt, "short"], max_new_tokens=5, batch_size=2)[0] == want


def test_truncate_at_stop_cuts_at_the_first_occurrence():
    assert engine.truncate_at_stop("a\nb\nc", ["\n"]) == ("a", True)
    assert engine.truncate_at_stop("xQyQ", ["Q", ""]) == ("x", True)
    assert engine.truncate_at_stop("plain", []) == ("plain", False)
