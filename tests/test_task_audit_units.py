"""The audit's parts, each against values worked out by hand: the length heuristics and the null model's
pick on items built so that every tie rule matters, the Wilson test at its boundary, the declared-chance
window, the pair-matching share, the table's exact text, and how a tokenizer is chosen."""
import math

import pytest

from common import make_tokenizer
from prunescope.errors import UsageError
from prunescope.tasks import TASKS, Item, Task
from prunescope.tasks import audit
from prunescope.tasks.audit import audit_task, format_rows, pair_match

Z = 1.959963984540054


def wilson_by_hand(k, n):
    """The 95% Wilson score interval, written out from its textbook formula."""
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z / (1 + Z * Z / n) * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return centre - half, centre + half


def _task(name, items, kind="multiple_choice", **kw):
    return Task(name=name, kind=kind, description="hand-made", make_items=lambda n, seed, split: items[:n], **kw)


def _mc(i, choices, gold):
    return Item(id=f"h{i}", prompt=f"q{i} =", gold=gold, target=choices[gold], choices=choices)


# With the byte tokenizer a continuation's token count is its byte count (the context ends without a space).
HAND = [_mc(0, [" a\n", " bb\n", " ccc\n"], 0),   # lengths 3 4 5: shortest and null right
        _mc(1, [" dd\n", " e\n", " f\n"], 2),     # 4 3 3: shortest tied (1/2); null takes the first tie, wrong
        _mc(2, [" gg\n", " hh\n", " iii\n"], 2),  # 4 4 5: longest right; shortest tied, wrong
        _mc(3, [" jj\n", " kk\n", " ll\n"], 1)]   # 4 4 4: both heuristics 1/3; null takes the first, wrong


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


def test_heuristics_and_chance_on_hand_made_items(tok):
    row = audit_task(_task("hand", HAND), tok, None, limit=10)
    # gold positions 0, 2, 2, 1: "always position 2" scores 2/4; each gold text is offered once and its item's
    # other three cost 1/3 each: (1 + 3 * 1/3) / 4 = 1/2; 1/k = 1/3. The tie goes to the first listed, position.
    assert row == {"task": "hand", "kind": "multiple_choice", "n": 4, "chance": 0.5, "strategy": "same position",
                   "problems": [], "null": 0.25, "longest": pytest.approx((0 + 0 + 1 + 1 / 3) / 4),
                   "shortest": pytest.approx((1 + 0.5 + 0 + 1 / 3) / 4), "position": 0.5, "answer": 0.5, "prefix": 0}
    assert audit_task(_task("hand", HAND), tok, None, limit=3)["n"] == 3


def test_the_null_model_picks_the_first_of_the_fewest_tokens_through_the_engine(tok):
    model = audit.null_model(tok)
    assert model.config.vocab_size == len(tok) == 259
    assert audit_task(_task("hand", HAND), tok, model, limit=10)["null"] == 0.25


def test_a_heuristic_beats_chance_when_its_whole_interval_is_above(tok):
    # All four golds shortest: the Wilson interval of 4/4 starts at 1 / (1 + z^2/4) = 0.5101.
    items = []
    for i, gold in enumerate([0, 1, 2, 0]):  # chance 0.5 as in HAND: positions 0 0 1 2, distinct gold texts
        choices = [f" {c}{c}\n" for c in "uvw"[i:] + "xyz"[:i]][:2]
        choices.insert(gold, f" {'abcd'[i]}\n")
        items.append(_mc(i, choices, gold))
    row = audit_task(_task("cue", items), tok, None, limit=10)
    lo = 1 / (1 + Z * Z / 4)
    assert row["chance"] == 0.5 and row["shortest"] == 1.0 and row["null"] == 1.0 and row["longest"] == 0.0
    assert row["problems"] == [f"the null heuristic scores 1.000 (95% CI from {lo:.3f}), above chance 0.500",
                               f"the shortest heuristic scores 1.000 (95% CI from {lo:.3f}), above chance 0.500"]
    assert audit._beats(1.0, 4, lo - 1e-9) and not audit._beats(1.0, 4, lo) and not audit._beats(1.0, 4, lo + 1e-9)
    assert audit._beats(0.75, 4, wilson_by_hand(3, 4)[0] - 1e-9) and not audit._beats(0.75, 4, wilson_by_hand(3, 4)[0])
    # strictly above: a chance whose margin lands exactly on the interval's end does not count as beaten
    from prunescope.eval.metrics import wilson_interval

    end = wilson_interval(4, 4)[0]
    chance = end - 1e-12
    while chance + 1e-12 != end:
        chance = math.nextafter(chance, 1.0 if chance + 1e-12 < end else 0.0)
    assert not audit._beats(1.0, 4, chance) and audit._beats(1.0, 4, math.nextafter(chance, 0.0))


def test_length_pick_shares_ties():
    assert audit._length_pick([2, 5, 5, 1], 1, True) == 0.5 and audit._length_pick([2, 5, 5, 1], 0, True) == 0
    assert audit._length_pick([2, 1, 5, 1], 3, False) == 0.5 and audit._length_pick([3, 3, 3], 2, False) == 1 / 3


def test_declared_chance_window_is_the_computed_chances_interval(tok):
    lo, hi = wilson_by_hand(2, 4)  # computed chance 0.5 over 4 items
    for declared, ok in ((lo, True), (hi, True), (lo - 1e-9, False), (hi + 1e-9, False), (0.5, True)):
        row = audit_task(_task("declared", HAND, chance=declared), tok, None, limit=10)
        assert row["declared_chance"] == declared
        assert (row["problems"] == []) == ok, (declared, row["problems"])
    row = audit_task(_task("declared", HAND, chance=0.05), tok, None, limit=10)
    assert row["problems"] == [f"declared chance 0.050 is outside the computed chance 0.500 [{lo:.3f}, {hi:.3f}] "
                               "(same position)"]
    assert "declared_chance" not in audit_task(_task("plain", HAND), tok, None, limit=10)
    # both ends are inclusive, with a margin of 1e-12 for rounding: a declared chance exactly at the margin passes
    from prunescope.eval.metrics import wilson_interval

    lo, hi = wilson_interval(2, 4)
    for end, margin in ((lo, -1e-12), (hi, 1e-12)):
        declared = end + margin
        while not end + margin == declared:
            declared = math.nextafter(declared, end + margin)
        assert audit_task(_task("edge", HAND, chance=declared), tok, None, limit=10)["problems"] == []


def test_generate_and_empty_tasks_have_no_choice_measures(tok):
    gen = [Item(id=f"g{i}", prompt="x", gold=g, target=str(g)) for i, g in enumerate([7, 7, 7, 9])]
    row = audit_task(_task("g", gen, kind="generate"), tok, None, limit=10)
    assert row == {"task": "g", "kind": "generate", "n": 4, "chance": 0.75, "strategy": "same answer", "problems": []}
    empty = audit_task(_task("e", []), tok, None, limit=10)
    assert empty == {"task": "e", "kind": "multiple_choice", "n": 0, "chance": 0.0, "strategy": "none", "problems": []}


def test_broken_items_fail_the_row_and_missing_data_skips_it(tok):
    bad = _task("bad", [_mc(0, [" 7", " 72"], 0)])
    row = audit_task(bad, tok, None, limit=10)
    assert set(row) == {"task", "kind", "problems"} and len(row["problems"]) == 1
    assert row["problems"][0].startswith("task bad, item h0: choice ' 7' is a prefix of choice ' 72'")

    def absent(n, seed, split):
        raise UsageError("no data here; pass --data")
    assert audit_task(Task(name="d", kind="generate", description="", make_items=absent), tok, None) == \
        {"task": "d", "kind": "generate", "skipped": "no data here; pass --data"}
    run_elsewhere = Task(name="lmeval:x", kind="multiple_choice", description="", make_items=absent,
                         evaluate_fn=lambda *a, **k: ({}, []))
    assert audit_task(run_elsewhere, tok, None) == {"task": "lmeval:x", "kind": "multiple_choice",
                                                    "skipped": "run by lm-eval, which owns its items"}


def test_token_prefixes_are_counted_and_three_are_shown(tok):
    items = [_mc(i, [" 1", " 12", " 3"], 0) for i in range(5)]
    task = _task("pre", items)
    task.items = lambda n, seed=0, split="eval": items[:n]  # planted: bypass the item check
    row = audit_task(task, tok, None, limit=10)
    assert row["prefix"] == 5 and len(row["problems"]) == 3
    assert row["problems"][0].startswith("task pre, item h0: the tokens of choice ' 1' are a prefix of those of ' 12'")


def _seeded(name, n_items, prefix="", **kw):
    """A task whose item ids and prompts depend on the seed, so a lost seed changes them."""
    def make(n, seed, split):
        return [Item(id=f"{seed}-{i}", prompt=f"{prefix}{seed}+{i} =", gold=0, target=" a\n", choices=[" a\n", " b\n"])
                for i in range(n_items)][:n]
    return Task(name=name, kind=kw.pop("kind", "multiple_choice"), description="", make_items=make, **kw)


def test_pair_share_counts_by_the_larger_side_and_needs_95_percent(tok, monkeypatch):
    def partner(data=None):  # 20 items; with data="shift", item 0 renders differently, with "late" item 15
        def make(n, seed, split):
            moved = {"shift": 0, "late": 15}.get(data)
            return [Item(id=f"{seed}-{i}", prompt=("Q: " if i == moved else "") + f"{seed}+{i} =",
                         gold=0, target=" a\n") for i in range(20)][:n]
        return Task(name="pm_gen", kind="generate", description="", make_items=make, pair="pm_mc")
    monkeypatch.setitem(TASKS._items, "pm_gen", partner)
    mine = _seeded("pm_mc", 20, pair="pm_gen")
    assert pair_match(mine, tok, limit=20, seed=3) == 1.0
    assert pair_match(mine, tok, limit=20, seed=3, data="shift") == 19 / 20
    assert audit_task(mine, tok, None, limit=20, seed=3, data="shift")["problems"] == []  # 95% is enough
    assert audit_task(mine, tok, None, limit=20, seed=3, data="shift")["pair"] == "pm_gen 95%"
    assert audit_task(mine, tok, None, limit=10, seed=3, data="late")["pair"] == "pm_gen 100%"  # the first 10 only
    assert pair_match(_seeded("pm_mc", 10, pair="pm_gen"), tok, limit=20, seed=3) == 10 / 20
    short = audit_task(_seeded("pm_mc", 10, pair="pm_gen"), tok, None, limit=20, seed=3)
    assert short["pair"] == "pm_gen 50%"
    assert short["problems"] == ["only 50% of items share id and rendered context with pm_gen (a matched pair needs 95%)"]
    assert pair_match(_seeded("pm_mc", 40, pair="pm_gen"), tok, limit=40, seed=3) == 20 / 40  # mine is the larger
    assert pair_match(_seeded("pm_mc", 0, pair="pm_gen"), tok, limit=0, seed=3) == 0.0  # nothing on either side
    assert pair_match(_seeded("pm_mc", 20), tok, limit=20) is None
    assert "pair" not in audit_task(_seeded("pm_mc", 20), tok, None, limit=20)


def test_defaults_are_seed_0_and_200_items(tok, monkeypatch):
    def partner():  # its ids ignore the seed: they match the task's at seed 0 only
        return Task(name="pd_gen", kind="generate", description="", pair="pd_mc",
                    make_items=lambda n, seed, split: [Item(id=f"0-{i}", prompt=f"0+{i} =", gold=0, target="")
                                                       for i in range(300)][:n])
    monkeypatch.setitem(TASKS._items, "pd_gen", partner)
    mine = _seeded("pd_mc", 300, pair="pd_gen")
    assert pair_match(mine, tok, limit=30) == 1.0
    row = audit_task(mine, tok, None)
    assert row["n"] == 200 and row["pair"] == "pd_gen 100%"
    assert audit_task(mine, tok, None, limit=5, seed=3)["pair"] == "pd_gen 0%"  # the seed reaches the pair check


def test_the_seed_reaches_the_items(tok):
    def make(n, seed, split):  # at seed 3 the gold is always second: chance 1
        golds = [1 if seed == 3 else i % 2 for i in range(8)]
        return [Item(id=str(i), prompt=f"{i} =", gold=g, target=[" a\n", " b\n"][g], choices=[" a\n", " b\n"])
                for i, g in enumerate(golds)][:n]
    task = Task(name="s", kind="multiple_choice", description="", make_items=make)
    assert audit_task(task, tok, None, limit=8, seed=3)["chance"] == 1.0
    assert audit_task(task, tok, None, limit=8)["chance"] == 0.5


def test_pair_renders_through_the_chat_template_on_both_sides(tok, monkeypatch):
    def partner():
        return _seeded("pc_gen", 4, kind="generate", pair="pc_mc", use_chat_template=True)
    monkeypatch.setitem(TASKS._items, "pc_gen", partner)
    assert pair_match(_seeded("pc_mc", 4, pair="pc_gen", use_chat_template=True), tok, limit=4) == 1.0
    assert pair_match(_seeded("pc_mc", 4, pair="pc_gen"), tok, limit=4) == 0.0  # plain vs chat-wrapped
    assert audit_task(_seeded("pc_mc", 4, pair="pc_gen"), tok, None, limit=4)["pair"] == "pc_gen 0%"


def test_format_rows_exact_text():
    rows = [{"task": "t_mc", "kind": "multiple_choice", "n": 4, "chance": 0.5, "strategy": "same position",
             "problems": [], "null": 0.25, "longest": 1 / 3, "shortest": 11 / 24, "position": 0.5, "answer": 0.5,
             "prefix": 0},
            {"task": "t_gen", "kind": "generate", "n": 10, "chance": 0.3, "strategy": "same answer",
             "problems": ["bad thing", "worse thing"], "pair": "t_mc (not matched)"},
            {"task": "lmeval:x", "kind": "multiple_choice", "skipped": "run by lm-eval"}]
    assert format_rows(rows).split("\n") == [
        "task      kind  n   chance                null  longest  shortest  position  answer  prefix  pair"
        "                verdict",
        "t_mc      mc    4   0.50 (same position)  0.25  0.33     0.46      0.50      0.50    0       -"
        "                   ok",
        "t_gen     gen   10  0.30 (same answer)    -     -        -         -         -       -       t_mc (not matched)"
        "  FAIL",
        "lmeval:x  mc    -   -                     -     -        -         -         -       -       -"
        "                   skipped",
        "  t_gen: bad thing",
        "  t_gen: worse thing",
        "  lmeval:x: skipped (run by lm-eval)"]


def test_byte_tokenizer_is_one_token_per_byte():
    tok = audit.byte_tokenizer()
    text = "a é\n€"  # 1 + 1 + 2 + 1 + 3 bytes
    ids = tok(text)["input_ids"]
    assert len(ids) == len(text.encode("utf-8")) == 8 and min(ids) >= 3
    assert tok.decode(ids) == text and len(tok) == 259
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(set(tok(bytes(range(32, 127)).decode())["input_ids"])) == 95  # distinct bytes, distinct ids


def test_resolve_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNESCOPE_CACHE", str(tmp_path / "cache"))
    tok, what = audit.resolve_tokenizer("bytes")
    assert what == "byte-level" and len(tok("ab")["input_ids"]) == 2
    tok, what = audit.resolve_tokenizer("auto")
    assert what == "byte-level (the default model is not cached yet)" and len(tok("ab")["input_ids"]) == 2
    saved = make_tokenizer()
    saved.add_tokens(["ab"])  # so that the cached tokenizer is told apart from the byte-level fallback
    saved.save_pretrained(tmp_path / "cache" / "smollm2-135m")
    tok, what = audit.resolve_tokenizer()
    assert what == "smollm2-135m (cached)" and len(tok("ab")["input_ids"]) == 1
    tok, what = audit.resolve_tokenizer(str(tmp_path / "cache" / "smollm2-135m"))
    assert what == str(tmp_path / "cache" / "smollm2-135m") and len(tok("ab")["input_ids"]) == 1
    with pytest.raises(UsageError, match=r"^--tokenizer /nonexistent/tok: cannot load a tokenizer \(OSError\); pass a "
                                         r"model folder, or auto / bytes$"):
        audit.resolve_tokenizer("/nonexistent/tok")
