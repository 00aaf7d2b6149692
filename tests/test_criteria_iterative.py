"""The iterative criteria's pieces on their own: the greedy loop's tie and order rules with scripted
objectives, greedy_task's objectives per candidate against a loop written here on the model's own logits,
and the cross-step reuse (memory budget, validity of kept states, block work) against the naive scan."""
from __future__ import annotations

import contextlib

import pytest
import torch

from common import make_tiny_model
from prunescope.criteria.base import ScoringContext
from prunescope.criteria.iterative import _normalised, greedy
from prunescope.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")


class _Scripted:
    """``evaluate`` for ``greedy``: step k gives each allowed candidate ``tables[k][c]``; records the calls."""

    def __init__(self, tables):
        self.tables, self.calls = tables, []

    def __call__(self, removed, allowed, bar):
        self.calls.append((list(removed), list(allowed)))
        return {c: self.tables[len(self.calls) - 1][c] for c in allowed}


def _ctx(layers, **kw):
    return ScoringContext(model=make_tiny_model("llama", layers=layers, hidden=16), tokenizer=None, progress=False,
                          **kw)


STEP0 = {1: 0.5, 2: 0.9, 3: 0.9, 4: 0.1, 5: 0.7}
STEP1 = {1: 0.4, 2: 0.6, 3: 0.6, 4: 0.8, 5: 0.6}


@pytest.mark.parametrize("later, removed, rest", [
    # ties to the later index: 3 beats 2 at step 0; 5 before 2 among the remaining 0.6s
    (True, [3, 4], [5, 2, 1]),
    # ties to the earlier index (sleb): 2 beats 3; then 3 before 5
    (False, [2, 4], [3, 5, 1]),
])
def test_greedy_follows_the_objective_and_its_tie_rule(later, removed, rest):
    ctx = _ctx(6, num_layers=2)
    never_zero = lambda gone: [i for i in range(6) if i not in gone and i != 0]  # noqa: E731
    evaluate = _Scripted([STEP0, STEP1])
    result = greedy(ctx, "t", evaluate, never_zero, later_wins_ties=later)
    assert evaluate.calls == [([], [1, 2, 3, 4, 5]), ([removed[0]], [c for c in [1, 2, 3, 4, 5] if c != removed[0]])]
    order = removed + rest + [0]  # block 0 was never a candidate: it comes last
    assert result.order == order
    assert result.scores == [order.index(i) / 5 for i in range(6)]
    assert result.info == {"removals": 2, "steps": [{"removed": removed[0], "objective": 0.9},
                                                    {"removed": 4, "objective": 0.8}]}


def test_greedy_puts_blocks_that_were_never_candidates_last_in_index_order():
    ctx = _ctx(6, num_layers=1)
    middle = lambda gone: [i for i in range(6) if i not in gone][1:-1]  # noqa: E731
    result = greedy(ctx, "t", _Scripted([{1: 0.3, 2: 0.3, 3: 0.1, 4: 0.2}]), middle, later_wins_ties=False)
    assert result.order == [1, 2, 4, 3, 0, 5]
    assert result.info["steps"] == [{"removed": 1, "objective": 0.3}]


@pytest.mark.parametrize("layers, steps", [(3, 1), (7, 1), (8, 2), (13, 3)])
def test_greedy_removes_a_quarter_of_the_layers_by_default(layers, steps):
    tables = [{c: float(c) for c in range(layers)}] * steps
    result = greedy(_ctx(layers), "t", _Scripted(tables), lambda gone: [i for i in range(layers) if i not in gone],
                    later_wins_ties=True)
    assert result.info["removals"] == steps
    assert result.order == list(range(layers - 1, -1, -1))  # highest value first, then the rest by value


def test_greedy_refuses_when_no_block_may_go():
    ctx = _ctx(4, num_layers=2)
    only_one = lambda gone: [i for i in [2] if i not in gone]  # noqa: E731
    with pytest.raises(UsageError, match=r"^sleb: no block may be removed after \[2\]; ask for fewer layers$"):
        greedy(ctx, "sleb", _Scripted([{2: 1.0}, {}]), only_one, later_wins_ties=False)


def test_normalised_is_the_mean_of_score_over_baseline_with_zero_for_a_zero_baseline():
    assert _normalised([0.5, 0.3], [1.0, 0.6]) == pytest.approx((0.5 + 0.5) / 2)
    assert _normalised([0.2, 0.9], [0.4, 0.0]) == pytest.approx((0.5 + 0.0) / 2)
    assert _normalised([0.25], [0.5]) == pytest.approx(0.5)
    assert _normalised([0.3, 0.3, 0.6], [0.6, 1.2, 0.3]) == pytest.approx((0.5 + 0.25 + 2.0) / 3)


# --- greedy_task's teacher-forced objective, per candidate, against the model's own logits ---------------------

def _bos_tokenizer():
    """The byte tokenizer, putting <s> before a plain text (so whether a context gets it is visible)."""
    from tokenizers.processors import TemplateProcessing

    from common import make_tokenizer
    tok = make_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    assert tok("ab").input_ids == [1, *tok("ab", add_special_tokens=False).input_ids] and len(tok("ab").input_ids) == 3
    return tok


def _tiny(limit, layers=4, seed=5):
    """A tiny llama whose position table holds ``limit`` tokens."""
    from transformers import LlamaConfig

    from common import VOCAB, model_from_config
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=limit,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return model_from_config(config, seed=seed)


LONG_PROMPT = "Add the numbers and answer with digits only, please: 40 + 2 ="  # 60 bytes
LONG_TARGET = " the answer is forty-two, written out in full words"  # 51 bytes


def _items(rows):
    """``make_items`` for a Task: the calibration items are ``rows`` (prompt, answer), each prompt prefixed by
    the seed (so that a wrong seed shows)."""
    from prunescope.tasks import Item
    return lambda n, seed, split: [Item(id=f"i{k}", prompt=f"#{seed} {p}", gold=t, target=t) for k, (p, t) in
                                   enumerate(rows)][:n] if split == "calib" else []


@pytest.fixture
def two_tasks():
    """Two generate tasks with a few calibration items: one plain (an item with an empty answer, which
    has nothing to score, and one whose context is longer than the model holds), one rendered with the
    chat template (an answer longer than the model holds)."""
    from prunescope.tasks import Task
    plain = [("2 + 3 =", " 5"), ("7 + 1 =", " 8"), ("Nothing to say:", ""), (LONG_PROMPT, " 42"), ("9 - 4 =", "5")]  # one answer token
    chat = [("Close: ( [", " ] )"), ("Close: {", " }"), ("Copy:", LONG_TARGET)]
    tasks = {"iter_plain": Task("iter_plain", "generate", "test", _items(plain)),
             "iter_chat": Task("iter_chat", "generate", "test", _items(chat), use_chat_template=True)}
    yield from _registered(tasks)


def _registered(tasks):
    """Register ``tasks`` (name -> Task) for the duration of a fixture, yielding their names."""
    from prunescope.tasks import TASKS, register_task
    for name, task in tasks.items():
        register_task(name)(lambda task=task: task)
    try:
        yield list(tasks)
    finally:
        for name in tasks:
            TASKS._items.pop(name, None)


def _reference_rows(tok, task_names, limit, seed=3):
    """(ids, scored) per item as the model must see it: the rendered context (the tokenizer's BOS before a
    plain prompt; a chat-rendered one carries its own), then the answer; an answer keeps at most
    ``limit - 1`` tokens and the context fills the rest of ``limit`` from its end. Items with an empty
    answer are left out."""
    from prunescope.tasks import get_task
    out = []
    for g, name in enumerate(task_names):
        task = get_task(name)
        for item in task.items(32, seed=seed, split="calib"):
            text = task.render(item, tok)
            chat = text != item.prompt
            context = tok(text, add_special_tokens=not chat).input_ids
            answer = tok(item.target, add_special_tokens=False).input_ids[:limit - 1]
            if answer:
                ids = (context + answer)[-limit:]
                out.append((ids, [False] * (len(ids) - len(answer)) + [True] * len(answer), g))
    return out


def _batch_rows(batches):
    """(real ids, scored flags, group) of every sequence in ``batches``, checking the padding is on the right."""
    got = []
    for b in batches:
        for row in range(b.input_ids.shape[0]):
            real = b.attention_mask[row].bool()
            assert real.tolist() == sorted(real.tolist(), reverse=True)
            got.append((b.input_ids[row][real].tolist(), b.loss_mask[row][real].tolist(), int(b.groups[row])))
    return got


def test_task_batches_hold_each_item_once_with_only_its_answer_scored(two_tasks):
    from prunescope.criteria.iterative import _task_batches
    from prunescope.tasks import TASKS, Task
    tok = _bos_tokenizer()
    expected = _reference_rows(tok, two_tasks, 48)
    assert len(expected) == 7 and sorted(len(ids) for ids, _, _ in expected)[-2:] == [48, 48]  # both cut
    ctx = ScoringContext(model=_tiny(48, layers=2), tokenizer=tok, progress=False, seed=3)
    assert sorted(_batch_rows(_task_batches(ctx, two_tasks))) == sorted(expected)
    assert ctx._calib_info == {"calib": "tasks", "calib_items": 7}
    # a model holding more than MAX_ITEM_TOKENS = 1024: an item keeps 1024 tokens
    TASKS._items["iter_plain"] = lambda: Task("iter_plain", "generate", "test", _items([("x" * 1100 + " =", " 7")]))
    ctx = ScoringContext(model=_tiny(2048, layers=2), tokenizer=tok, progress=False, seed=3)
    expected = _reference_rows(tok, two_tasks, 1024)
    assert max(len(ids) for ids, _, _ in expected) == 1024
    assert sorted(_batch_rows(_task_batches(ctx, two_tasks))) == sorted(expected)
    assert ctx._calib_info == {"calib": "tasks", "calib_items": 4}


def test_task_batches_take_32_items_per_task_and_plain_prompts_without_a_chat_template(two_tasks):
    """A task with more calibration items gives 32; a tokenizer with no chat template at all (not even the
    attribute) gets every prompt plain, with its BOS."""
    from prunescope.criteria.iterative import _task_batches
    from prunescope.tasks import TASKS, Task

    class NoTemplate:  # the tokenizer's calls and ids, without a chat_template attribute
        def __init__(self, tok):
            self.tok, self.pad_token_id, self.eos_token_id = tok, tok.pad_token_id, tok.eos_token_id

        def __call__(self, *args, **kw):
            return self.tok(*args, **kw)
    many = [(f"{k} + 1 =", f" {k + 1}") for k in range(40)]
    TASKS._items["iter_plain"] = lambda: Task("iter_plain", "generate", "test", _items(many))
    tok = _bos_tokenizer()
    ctx = ScoringContext(model=_tiny(48, layers=2), tokenizer=NoTemplate(tok), progress=False, seed=3)
    got = _batch_rows(_task_batches(ctx, two_tasks))
    plain = [(ids, scored, g) for ids, scored, g in _reference_rows(tok, ["iter_plain"], 48)]
    chat = []
    for item in TASKS.get("iter_chat")().items(32, seed=3, split="calib"):
        context, answer = tok(item.prompt).input_ids, tok(item.target, add_special_tokens=False).input_ids[:47]
        ids = (context + answer)[-48:]
        chat.append((ids, [False] * (len(ids) - len(answer)) + [True] * len(answer), 1))
    assert len(plain) == 32 and sorted(got) == sorted(plain[:32] + chat)
    assert ctx._calib_info == {"calib": "tasks", "calib_items": 32 + 3}


def test_task_batches_refuse_tasks_without_any_answer(two_tasks):
    from prunescope.criteria.iterative import _task_batches
    from prunescope.tasks import TASKS, Task
    TASKS._items["iter_chat"] = lambda: Task("iter_chat", "generate", "test", _items([("a", ""), ("b", "")]))
    ctx = ScoringContext(model=_tiny(48, layers=2), tokenizer=_bos_tokenizer(), progress=False)
    with pytest.raises(UsageError, match=r"^greedy_task: no calibration items with a non-empty target for iter_chat$"):
        _task_batches(ctx, two_tasks)
    TASKS._items["iter_plain"] = TASKS._items["iter_chat"]
    with pytest.raises(UsageError, match=r"target for iter_plain, iter_chat$"):
        _task_batches(ctx, two_tasks)


def test_teacher_forced_objective_without_the_tasks_package_says_what_to_pass(monkeypatch, tokenizer):
    import sys

    from prunescope.criteria.iterative import _task_batches
    monkeypatch.setitem(sys.modules, "prunescope.tasks", None)  # importing it now fails
    ctx = ScoringContext(model=_tiny(48, layers=2), tokenizer=tokenizer, progress=False)
    with pytest.raises(UsageError, match=r"^greedy_task needs the prunescope\.tasks package for its default scorer; "
                                         r"pass task_scorer=fn\(model\) -> float instead$"):
        _task_batches(ctx, ["iter_plain"])


def _answer_probability(model, rows, removed, groups):
    """Per task: mean over items of exp(mean log p(answer token)), from the model's own full logits, one
    unpadded item at a time, with blocks ``removed`` skipped."""
    from prunescope.pruning import skip_layers
    per_task = [[] for _ in range(groups)]
    with torch.no_grad(), skip_layers(model, layers=sorted(removed)) if removed else _nothing():
        for ids, scored, g in rows:
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), dim=-1)
            picked = [float(logp[t - 1, ids[t]]) for t in range(1, len(ids)) if scored[t]]
            per_task[g].append(torch.tensor(picked).mean().exp().item())
    return [sum(v) / len(v) for v in per_task]


def _nothing():
    import contextlib
    return contextlib.nullcontext()


@pytest.fixture
def spy_greedy(monkeypatch):
    """Every ``evaluate`` call greedy makes: (removed so far, {candidate: objective})."""
    from prunescope.criteria import iterative
    seen, real = [], iterative.greedy

    def spy(ctx, name, evaluate, candidates, **kw):
        def recording(removed, allowed, bar):
            values = evaluate(removed, allowed, bar)
            seen.append((list(removed), dict(values)))
            return values
        return real(ctx, name, recording, candidates, **kw)
    monkeypatch.setattr(iterative, "greedy", spy)
    return seen


@pytest.mark.parametrize("fast", [True, False])
def test_greedy_task_teacher_forced_objective_per_candidate(two_tasks, spy_greedy, fast):
    """Each candidate's objective is the seed paper's normalised score (per task: this model's answer
    probability over the unpruned model's; averaged over tasks); the winner is the best, never block 0."""
    from prunescope.criteria.base import compute_scores
    tok, model = _bos_tokenizer(), _tiny(48, layers=5)
    rows = _reference_rows(tok, two_tasks, 48)
    base = _answer_probability(model, rows, [], 2)
    result = compute_scores(model, tok, "greedy_task", tasks=two_tasks, num_layers=3, fast=fast, seed=3,
                            greedy_objective="teacher_forced", progress=False)
    assert result["config"]["baseline"] == pytest.approx(base, rel=1e-5)
    removed = []
    for gone, values in spy_greedy:
        assert gone == removed and sorted(values) == [c for c in range(1, 5) if c not in removed]
        for c, value in values.items():
            scores = _answer_probability(model, rows, removed + [c], 2)
            assert value == pytest.approx(sum(s / b for s, b in zip(scores, base)) / 2, rel=1e-5), (removed, c)
        removed.append(max(values, key=lambda c: (values[c], c)))
    assert len(spy_greedy) == 3
    last = spy_greedy[-1][1]
    assert result["order"] == removed + sorted((c for c in last if c not in removed), key=lambda c: -last[c]) + [0]
    assert [s["removed"] for s in result["config"]["steps"]] == removed
    assert [s["objective"] for s in result["config"]["steps"]] == [v[r] for (_, v), r in zip(spy_greedy, removed)]
    config = result["config"]
    assert (config["tasks"], config["items_per_task"], config["objective"], config["scorer"]) == (
        two_tasks, 32, "teacher_forced", "answer_probability")
    assert (config["calib"], config["calib_items"]) == ("tasks", 7)


# --- StepReuse: values, kept states and block work, against the model's own logits ----------------------------

REUSE_TEXTS = ["The quick brown fox jumps over the lazy dog.", "2 + 3 = 5", "def f(x): return x", "Short.",
               "A river bank by the sea, with boats", "( [ ] )"]


@pytest.fixture(scope="module")
def reuse_setup():
    """A 7-block llama (blocks 0..6) and the texts in two right-padded batches of 2 x 44 and 4 x 18 tokens."""
    from common import make_tokenizer
    from prunescope.criteria.calibration import pack
    tok = make_tokenizer()
    rows = [(ids, [False] + [True] * (len(ids) - 1), 0) for ids in (tok(t).input_ids for t in REUSE_TEXTS)]
    batches = pack(tok, rows, batch_tokens=100)
    assert [tuple(b.input_ids.shape) for b in batches] == [(2, 44), (4, 18)]
    return make_tiny_model("llama", layers=7, seed=0), batches


def _reference_stats(model, batches, removed):
    """Per sequence (sum of log p of its scored tokens, their number) with ``removed`` skipped, from the
    model's own full logits."""
    from prunescope.pruning import skip_layers
    out = []
    with torch.no_grad(), skip_layers(model, layers=sorted(removed)):
        for b in batches:
            logp = torch.log_softmax(model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.double(), -1)
            picked = logp[:, :-1].gather(-1, b.input_ids[:, 1:, None])[..., 0]
            mask = b.loss_mask[:, 1:]
            out.append(torch.stack([(picked * mask).sum(1), mask.sum(1).double()], 1))
    return torch.cat(out)


class _Planned:
    """``value(stats)`` for StepReuse that recognises whose stats it gets (the candidate whose reference stats
    they equal) and returns the value planned for that candidate: the test chooses the ranking and the ties,
    and stats that match no candidate (a stale kept state) fail the test."""

    def __init__(self, model, batches):
        self.model, self.batches = model, batches

    def plan(self, removed, planned):
        self.reference = {c: _reference_stats(self.model, self.batches, removed + [c]) for c in planned}
        self.planned = planned

    def __call__(self, stats):
        match = [c for c, ref in self.reference.items() if torch.allclose(stats.double(), ref, rtol=1e-5, atol=1e-4)]
        assert len(match) == 1, "stats of no candidate (or of several)"
        return self.planned[match[0]]


class _Count:
    """A progress bar that counts its updates."""
    n = 0

    def update(self, k):
        self.n += k


@contextlib.contextmanager
def _block_calls(model):
    """A list that grows by the block's index per decoder-block call (-1 per output-head call) while inside."""
    from prunescope.models.architectures import get_layers
    calls: list[int] = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(get_layers(model))]
    handles.append(model.get_output_embeddings().register_forward_hook(lambda m, a, o: calls.append(-1)))
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _run(reuse, value, removed, planned, calls):
    """One call of ``reuse`` with ``planned`` values; returns the blocks run per batch and the progress bar's
    count, after checking the values and that the head ran once per candidate and batch (never for the capture)."""
    value.plan(removed, planned)
    bar = _Count()
    calls.clear()
    values = reuse(removed, sorted(planned), bar)
    assert values == planned
    assert calls.count(-1) == 2 * len(planned)
    return (len(calls) - calls.count(-1)) / 2, bar.n


# Blocks run per batch, worked out from the rule in reuse.py's docstring (blocks 0..6, candidates evaluated from
# the last to the first, each keeping the input of the best block evaluated before it):
# call 1, removed []: the capture runs 7 blocks; candidate c runs c+1..6: 1 + 2 + 3 + 4 + 5 = 15 -> 22.
#   Ties go to the later block: winner 3. Kept: 4 at block 5 (best after 4 is 5), 3 at 5, 2 at 3, 1 at 3.
# call 2, removed [3]: capture 6. 5 runs 6 (1); 4's state at 5 is stale (3 < 5 went since): runs 5, 6 (2);
#   2's state at 3 is its own input: runs 4, 5, 6 (3); 1 starts at 3's input: runs 4, 5, 6 (3, not 2, 4, 5, 6)
#   -> 15. Winner 4 (tie with 1 -> the later). Kept: 2 and 1 at block 4.
# call 3, removed [3, 4], candidates 1 and 2 only: capture 5 (no candidate needs it, which is no reason to
#   fall back); 2 and 1 start at block 4's input: run 5, 6 (2 each) -> 9.
# call 4, removed [1]: a different first removal, so no kept state holds: capture 6; 0: 2..6 (5); 2: 3..6 (4);
#   3: 4..6 (3); 4: 5, 6 (2); 5: 6 (1) -> 21.
CALLS = [([], {1: 0.3, 2: 0.9, 3: 0.9, 4: 0.1, 5: 0.2}, 22),
         ([3], {1: 0.5, 2: 0.4, 4: 0.5, 5: 0.1}, 15),
         ([3, 4], {1: 0.2, 2: 0.2}, 9),
         ([1], {0: 0.4, 2: 0.7, 3: 0.1, 4: 0.2, 5: 0.3}, 21)]


def test_step_reuse_keeps_the_states_its_docstring_promises_and_gives_the_reference_values(reuse_setup):
    from prunescope.criteria.reuse import StepReuse
    model, batches = reuse_setup
    value = _Planned(model, batches)
    reuse = StepReuse(model, batches, value, later_wins_ties=True)
    with _block_calls(model) as calls:
        for removed, planned, blocks in CALLS:
            assert _run(reuse, value, removed, planned, calls) == (blocks, len(planned) * 2), removed
    assert not reuse.fallback


def test_step_reuse_keeps_no_state_for_a_block_its_run_skipped(reuse_setup):
    """call 1: winner 4; 1, 2 and 3 keep block 4's input. call 2, removed [4]: 1 starts there while the best
    block evaluated before it is 3, which its run skips: 1 keeps its block-4 state, which call 3 (removed
    [4, 3]) must not use (3 went before block 4): 1 runs 2, 5, 6 again.
    Blocks per batch: call 2: capture 6; 5: 1; 3: 5, 6 (2); 2 and 1 from block 4's input: 2 each -> 13.
    call 3: capture 5; 5: 1; 2: 5, 6 (2); 1: 2, 5, 6 (3) -> 11."""
    from prunescope.criteria.reuse import StepReuse
    model, batches = reuse_setup
    value = _Planned(model, batches)
    reuse = StepReuse(model, batches, value, later_wins_ties=True)
    with _block_calls(model) as calls:
        assert _run(reuse, value, [], {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.9, 5: 0.5}, calls) == (22, 10)
        assert _run(reuse, value, [4], {1: 0.1, 2: 0.2, 3: 0.9, 5: 0.5}, calls) == (13, 8)
        assert _run(reuse, value, [4, 3], {1: 0.5, 2: 0.5, 5: 0.5}, calls) == (11, 6)


def test_step_reuse_budget_with_a_single_sequence_in_the_first_batch(reuse_setup):
    """The same texts in batches of 1 x 44, 1 x 35, 3 x 18 and 1 x 6 tokens: the budget reads a block input's
    size from the first batch, which holds one sequence."""
    from common import make_tokenizer
    from prunescope.criteria.calibration import pack
    from prunescope.criteria.reuse import StepReuse
    model, _ = reuse_setup
    tok = make_tokenizer()
    rows = [(ids, [False] + [True] * (len(ids) - 1), 0) for ids in (tok(t).input_ids for t in REUSE_TEXTS)]
    batches = pack(tok, rows, batch_tokens=60)
    tokens = sum(b.input_ids.numel() for b in batches)
    assert batches[0].input_ids.shape[0] == 1 and len(batches) > 2
    for budget, fallback in [(7 * tokens * 32 * 4, False), (7 * tokens * 32 * 4 - 1, True)]:
        value = _Planned(model, batches)
        value.plan([], CALLS[0][1])
        reuse = StepReuse(model, batches, value, later_wins_ties=True, budget=budget)
        assert reuse([], [1, 2, 3, 4, 5], None) == CALLS[0][1] and reuse.fallback is fallback


def test_step_reuse_with_ties_to_the_earlier_block(reuse_setup):
    """sleb's rule: of two equal values the earlier block wins, and the candidates before it keep its input.
    call 1: winner 3 (tie with 4); 1 keeps block 3's input (the best after 1 is 3), 2 keeps its own input.
    call 2, removed [3]: capture 6; 5: 1; 4: 2; 2: 3 (4, 5, 6); 1 from block 3's input: 3 (4, 5, 6) -> 15."""
    from prunescope.criteria.reuse import StepReuse
    model, batches = reuse_setup
    value = _Planned(model, batches)
    reuse = StepReuse(model, batches, value, later_wins_ties=False)
    with _block_calls(model) as calls:
        assert _run(reuse, value, [], {1: 0.3, 2: 0.1, 3: 0.9, 4: 0.9, 5: 0.2}, calls) == (22, 10)
        assert _run(reuse, value, [3], {1: 0.3, 2: 0.1, 4: 0.9, 5: 0.2}, calls) == (15, 8)


def test_step_reuse_falls_back_to_within_step_reuse_above_its_memory_budget(reuse_setup):
    """The budget covers (candidates + 2) block inputs of every calibration token: 7 x (88 + 72) padded tokens
    x 32 floats x 4 bytes. One byte less and the scan falls back, for good, to reusing within a step only,
    with the same values; the first batch's capture (7 blocks) is then run twice."""
    from prunescope.criteria.reuse import StepReuse
    model, batches = reuse_setup
    need = 7 * (88 + 72) * 32 * 4
    with _block_calls(model) as calls:
        for budget, fallback, blocks in [(need, False, [22, 15]), (need - 1, True, [22 + 7 / 2, 16])]:
            value = _Planned(model, batches)
            reuse = StepReuse(model, batches, value, later_wins_ties=True, budget=budget)
            assert _run(reuse, value, [], CALLS[0][1], calls) == (blocks[0], 10)
            assert reuse.fallback is fallback and (reuse.saved == {}) is fallback
            # within a step only, call 2 (removed [3]) runs the capture (6) and 4 + 3 + 2 + 1 blocks
            assert _run(reuse, value, [3], CALLS[1][1], calls) == (blocks[1], 8)
            assert reuse.fallback is fallback


# --- greedy_task's default objective (generation accuracy) and a custom scorer ---------------------------------

CHOICES = [" cat", " dog", " sun", " map"]
LUCKY = 1  # the one generate item whose check passes


@pytest.fixture
def accuracy_tasks():
    """A multiple-choice task rendered with the chat template and a generate task whose check accepts one item
    only, both with calibration items that depend on the seed (item ids and prompts carry it)."""
    from prunescope.tasks import Item, Task

    def mc_items(n, seed, split):
        return [Item(id=f"s{seed}-{k}", prompt=f"Item {seed}.{k}: which word comes next after {'abcdefgh'[k]}?",
                     gold=(k + 2) % 4, target=CHOICES[(k + 2) % 4], choices=list(CHOICES)) for k in range(8)][:n]

    def gen_items(n, seed, split):
        return [Item(id=f"s{seed}-{k}", prompt=f"{seed} + {k} =", gold=str(seed + k), target=f" {seed + k}")
                for k in range(4)][:n]

    tasks = {"iter_mc": Task("iter_mc", "multiple_choice", "test", mc_items, use_chat_template=True),
             "iter_gen": Task("iter_gen", "generate", "test", gen_items, max_new_tokens=4,
                              check=lambda item, output: item.id == f"s3-{LUCKY}")}
    yield from _registered(tasks)


def _mc_accuracy(model, tok, removed, seed):
    """Share of iter_mc items whose gold choice has the highest log-likelihood after the chat-rendered
    context, from the model's own logits (the byte tokenizer adds no special tokens)."""
    from prunescope.pruning import skip_layers
    from prunescope.tasks import get_task
    task, right = get_task("iter_mc"), []
    items = task.items(32, seed=seed, split="calib")
    with torch.no_grad(), skip_layers(model, layers=sorted(removed)) if removed else _nothing():
        for item in items:
            context = tok(task.render(item, tok)).input_ids
            ids = torch.tensor([context + tok(choice).input_ids for choice in item.choices])  # equal lengths
            logp = torch.log_softmax(model(ids).logits[:, :-1].double(), -1)
            picked = logp.gather(-1, ids[:, 1:, None])[:, len(context) - 1:, 0]
            scores = picked.sum(1).tolist()
            right.append(max(range(len(scores)), key=scores.__getitem__) == item.gold)
    return sum(right) / len(right)


def test_greedy_task_generation_accuracy_objective_per_candidate(accuracy_tasks, spy_greedy, tokenizer):
    from prunescope.criteria.base import compute_scores
    model = make_tiny_model("llama", layers=4, seed=2)  # its choices differ between candidates
    base = [_mc_accuracy(model, tokenizer, [], 3), 1 / 4]
    result = compute_scores(model, tokenizer, "greedy_task", tasks=accuracy_tasks, num_layers=1, seed=3,
                            progress=False)
    assert result["config"]["baseline"] == pytest.approx(base)
    assert base[0] > 0
    ((gone, values),) = spy_greedy
    assert gone == [] and sorted(values) == [1, 2, 3]
    expected = {c: (_mc_accuracy(model, tokenizer, [c], 3) / base[0] + 1) / 2 for c in (1, 2, 3)}
    assert values == pytest.approx(expected)
    assert len(set(expected.values())) > 1  # the candidates differ: the objective decides
    assert result["order"] == sorted((1, 2, 3), key=lambda c: (-expected[c], -c)) + [0]
    config = result["config"]
    assert (config["objective"], config["scorer"], config["tasks"], config["items_per_task"]) == (
        "generate", "generation_accuracy", accuracy_tasks, 32)
    assert (config["calib"], config["calib_items"]) == ("tasks", 8 + 4)  # the items there are, not 2 x 32


def test_greedy_task_generation_accuracy_refuses_tasks_without_calibration_items(accuracy_tasks, tokenizer):
    from prunescope.criteria.base import compute_scores
    from prunescope.tasks import TASKS, Task
    model = make_tiny_model("llama", layers=3)
    TASKS._items["iter_gen"] = lambda: Task("iter_gen", "generate", "test", lambda n, seed, split: [])
    with pytest.raises(UsageError, match=r"^greedy_task: iter_gen has no calibration items$"):
        compute_scores(model, tokenizer, "greedy_task", tasks=accuracy_tasks, num_layers=1, progress=False)
    TASKS._items["iter_gen"] = lambda: Task("iter_gen", "generate", "test", lambda n, seed, split: [],
                                            evaluate_fn=lambda *a, **k: ({}, []))
    with pytest.raises(UsageError, match=r"^greedy_task: iter_gen runs in another harness and has no calibration "
                                         r"items; choose built-in tasks with --tasks$"):
        compute_scores(model, tokenizer, "greedy_task", tasks=accuracy_tasks, num_layers=1, progress=False)


def test_greedy_task_with_a_custom_scorer_records_it():
    from prunescope.criteria.base import compute_scores
    model = make_tiny_model("llama", layers=4, hidden=16)
    block2 = model.model.layers[2]

    def keeps_block_2(m):
        return 0.8 if any(b is block2 for b in m.model.layers) else 0.2

    class Scorer:  # a callable without a __name__
        def __call__(self, m):
            return keeps_block_2(m)
    for scorer, name in [(keeps_block_2, "keeps_block_2"), (Scorer(), "custom")]:
        result = compute_scores(model, None, "greedy_task", task_scorer=scorer, num_layers=2, progress=False)
        # objective: score / baseline; removing 2 costs 0.2 / 0.8; ties go to the later block
        assert result["config"]["steps"] == [{"removed": 3, "objective": 1.0}, {"removed": 1, "objective": 1.0}]
        assert result["order"] == [3, 1, 2, 0]
        assert {k: result["config"][k] for k in ("scorer", "baseline", "objective")} == {
            "scorer": name, "baseline": [0.8], "objective": "custom"}
        assert not {"tasks", "items_per_task", "calib", "calib_items"} & set(result["config"])
