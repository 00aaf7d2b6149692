"""The rules for honest multiple choice, each with a planted violation that must be caught: a prefix
distractor, a length cue, a wrong declared chance, an unmatched pair; chance computed by hand."""
import json

import pytest

from common import make_tokenizer
from prunescope.cli import main
from prunescope.errors import UsageError
from prunescope.tasks import TASKS, Item, Task, get_task, task_names
from prunescope.tasks.audit import audit_task, null_model, pair_match
from prunescope.tasks.chance import chance_of, gen_strategies, mc_strategies
from prunescope.tasks.rules import token_prefix_problems


def _task(name, items, kind="multiple_choice", **kw):
    return Task(name=name, kind=kind, description="planted", make_items=lambda n, seed, split: items[:n], **kw)


def _balanced_items(n=200, cue=None):
    """4-way items with the gold at each position in turn; ``cue="short"`` makes the gold the shortest."""
    items = []
    for i in range(n):
        gold = i % 4
        value = 10 + i % 80
        if cue == "short":  # gold 2 digits, distractors 3 digits: no prefix (terminator), but a length cue
            others = [f"{value + 100 * j}" for j in (1, 2, 3)]
        else:
            others = [f"{value + j}" for j in (1, 2, 3)]
        texts = others[:gold] + [str(value)] + others[gold:]
        choices = [f" {t}\n" for t in texts]
        items.append(Item(id=f"p-{i}", prompt=f"{i} + 0 =", gold=gold, target=choices[gold], choices=choices))
    return items


@pytest.fixture(scope="module")
def tok_model():
    tok = make_tokenizer()
    return tok, null_model(tok)


def test_null_model_is_uniform(tok_model):
    import math

    import torch

    tok, model = tok_model
    logp = torch.log_softmax(model(torch.tensor([[5, 6, 7]])).logits, -1)
    assert torch.allclose(logp, torch.full_like(logp, -math.log(len(tok))))


def test_planted_prefix_distractor_is_refused_when_items_are_built():
    item = Item(id="q7", prompt="3 + 4 =", gold=0, target=" 7", choices=[" 7", " 72", " 8", " 6"])
    with pytest.raises(UsageError, match=r"task planted_prefix, item q7: choice ' 7' is a prefix of choice ' 72'"):
        _task("planted_prefix", [item]).items(1)


def test_planted_token_prefix_is_caught(tok_model):
    tok, _ = tok_model
    # No string prefix, but the context's trailing space moves into each continuation: ' 7' vs ' 7 2'.
    item = Item(id="t1", prompt="3 + 4 = ", gold=0, target="7", choices=["7", "7 2"])
    task = _task("planted_tokens", [item])
    with pytest.raises(UsageError, match="prefix"):
        task.items(1)
    item2 = Item(id="t2", prompt="x =", gold=0, target=" a\n", choices=[" a\n", " b\n"])
    assert token_prefix_problems(task, [item2], tok) == []
    assert token_prefix_problems(task, [Item(id="t3", prompt="x =", gold=0, target=" a", choices=[" a", " ab"])],
                                 tok)  # bypassing the item check, the tokens still give it away


def test_planted_length_cue_fails_the_audit(tok_model):
    tok, model = tok_model
    row = audit_task(_task("planted_length", _balanced_items(cue="short")), tok, model, limit=200)
    assert row["null"] == 1.0 and row["shortest"] == 1.0 and row["longest"] == 0.0
    assert any("null heuristic" in p for p in row["problems"]) and any("shortest" in p for p in row["problems"])
    clean = audit_task(_task("clean", _balanced_items()), tok, model, limit=200)
    assert clean["problems"] == [] and clean["chance"] >= 0.25 and clean["null"] == 0.25


def test_planted_wrong_declared_chance_fails_the_audit(tok_model):
    tok, model = tok_model
    row = audit_task(_task("planted_chance", _balanced_items(), chance=0.1), tok, None, limit=200)
    assert any("declared chance 0.100" in p for p in row["problems"])
    ok = audit_task(_task("right_chance", _balanced_items(), chance=0.25), tok, None, limit=200)
    assert ok["problems"] == []


def test_planted_unmatched_pair_fails_the_audit(tok_model, monkeypatch):
    tok, model = tok_model
    items = _balanced_items(40)
    gen_items = [Item(id=it.id, prompt=it.prompt, gold=it.gold, target=it.target) for it in items]
    shifted = [Item(id=it.id, prompt="Q: " + it.prompt, gold=it.gold, target=it.target) for it in items]
    monkeypatch.setitem(TASKS._items, "pp_gen", lambda: _task("pp_gen", gen_items, kind="generate", pair="pp_mc"))
    monkeypatch.setitem(TASKS._items, "pp_mc", lambda: _task("pp_mc", items, pair="pp_gen"))
    monkeypatch.setitem(TASKS._items, "pq_gen", lambda: _task("pq_gen", shifted, kind="generate", pair="pp_mc"))
    assert pair_match(get_task("pp_mc"), tok, limit=40) == 1.0
    row = audit_task(get_task("pq_gen"), tok, model, limit=40)
    assert any("share id and rendered context" in p for p in row["problems"]), row
    unmatched = _task("pu_gen", gen_items, kind="generate", pair="pp_mc", matched=False)
    assert audit_task(unmatched, tok, model, limit=40)["pair"] == "pp_mc (not matched)"


def test_chance_by_hand():
    def item(choices, gold):
        return Item(id="x", prompt="", gold=gold, target=choices[gold], choices=choices)

    items = [item(list("abcd"), 0), item(list("aefg"), 1), item(list("hijk"), 0), item(list("lmno"), 2)]
    s = mc_strategies(items)
    # 1/k = 1/4; gold positions 0,1,0,2 -> always position 0 is right twice = 0.5;
    # always 'e' when offered: right in item 2, guesses (1/4) in items 1, 3, 4 -> 1.75 / 4.
    assert s == {"1/k": 0.25, "same position": 0.5, "same answer": pytest.approx(1.75 / 4)}
    assert chance_of("multiple_choice", items) == (0.5, "same position")
    digits = [item([f" {d}" for d in range(10)], g) for g in (1, 1, 1, 2, 3)]
    assert chance_of("multiple_choice", digits)[0] == pytest.approx(3 / 5)  # the majority first digit
    gen = [Item(id="g", prompt="", gold=g, target="") for g in (3, 3, 5, 7)]
    assert gen_strategies(gen) == {"same answer": 0.5}


MC_BUILTIN = [n for n in task_names() if not n.startswith(("gsm8k", "humaneval")) and get_task(n).kind == "multiple_choice"]


def test_null_model_through_the_engine_equals_its_closed_form(tok_model):
    tok, model = tok_model
    for name in ("arith_add_1d_mc", "arith_mixed_first_digit", "brackets_mc"):
        task = get_task(name)
        assert audit_task(task, tok, model, limit=40) == audit_task(task, tok, None, limit=40)


def test_every_builtin_task_passes_the_audit(tok_model):
    tok, _ = tok_model  # the null model in closed form (checked against the engine above), for speed
    from prunescope.tasks.spec import TASKS

    # built-in = registered by prunescope itself (other test modules register tasks of their own)
    builtin = [n for n in task_names() if TASKS.get(n).__module__.startswith("prunescope.")]
    rows = [audit_task(get_task(n), tok, None, limit=200) for n in builtin if not n.startswith(("gsm8k", "humaneval"))]
    assert {r["task"] for r in rows if r["kind"] == "multiple_choice"} == set(MC_BUILTIN)
    for r in rows:
        assert r["problems"] == [], r
        if r["task"] in MC_BUILTIN:
            assert r["prefix"] == 0 and r["null"] <= r["chance"] + 1e-9, r


def test_first_digit_and_fixed_set_chance_are_the_majority_answer():
    from collections import Counter

    items = get_task("arith_mixed_first_digit").items(200)
    majority = Counter(it.gold for it in items).most_common(1)[0][1] / len(items)
    assert chance_of("multiple_choice", items)[0] == pytest.approx(majority) and majority > 0.2
    assert chance_of("multiple_choice", get_task("brackets_mc").items(150))[0] == pytest.approx(1 / 3)


@pytest.mark.parametrize("name", ["arith_add_1d", "arith_mixed", "brackets", "brackets4", "arith_mul_2d"])
def test_matched_pairs_share_ids_and_contexts(name):
    gen, mc = get_task(f"{name}_gen"), get_task(f"{name}_mc")
    assert gen.pair == mc.name and mc.pair == gen.name and gen.matched and mc.matched
    g, m = gen.items(60, seed=2), mc.items(60, seed=2)
    assert [i.id for i in g] == [i.id for i in m] and [i.prompt for i in g] == [i.prompt for i in m]
    for gi, mi in zip(g, m):
        assert gen.check(gi, mi.choices[mi.gold])  # the gold choice is what generation must write


def test_gsm8k_pair_is_declared_not_matched():
    gen, mc = get_task("gsm8k"), get_task("gsm8k_mc")
    assert gen.pair == "gsm8k_mc" and not gen.matched and not mc.matched


def test_pools_hold_no_duplicates_and_cap_with_a_notice(capsys, monkeypatch):
    from prunescope.tasks import sampling

    monkeypatch.setattr(sampling, "_noticed", set())  # the notice is printed once per process
    items = get_task("arith_sub_1d_gen").items(500, seed=5)
    keys = [i.meta["key"] for i in items]
    # a >= b, both 0..9: 55 questions, about three in four of them in the eval partition
    assert len(keys) == len(set(keys)) and 30 <= len(keys) <= 55
    assert f"n capped at {len(keys)} (asked for 500)" in capsys.readouterr().err
    assert get_task("arith_sub_1d_gen").items(10, seed=5) == items[:10]
    # calibration and training prompts may repeat a question (with other shots): recovery asks for 48
    calib = get_task("arith_add_1d_gen").items(48, split="calib")
    assert len(calib) == 48 and len({i.meta["key"] for i in calib}) < 48
    for name in ("arith_add_2d_mc", "brackets4_gen", "brackets_balanced_mc"):
        keys = [i.meta["key"] for i in get_task(name).items(200)]
        assert len(keys) == len(set(keys)) == 200


def test_balanced_positions_and_same_length_distractors():
    from collections import Counter

    for name in ("arith_add_2d_mc", "arith_sub_3d_mc", "brackets4_mc"):
        items = get_task(name).items(200)
        assert set(Counter(i.gold for i in items).values()) == {50}
        assert all(len({len(c) for c in i.choices}) == 1 for i in items), name
        assert all(c.endswith("\n") for i in items for c in i.choices)


def test_cli_check_passes_builtin_and_fails_a_planted_user_task(tmp_path, capsys):
    assert main(["tasks", "--check", "arith_add_2d_mc", "brackets_mc", "--limit", "40", "--tokenizer", "bytes"]) == 0
    out = capsys.readouterr().out
    assert "arith_add_2d_mc" in out and "brackets_mc" in out and "FAIL" not in out
    rows = []
    for i in range(1, 120):  # the gold (i * 10) is always the shortest option, at every position in turn
        options = [str(i * 10 + 1000), str(i * 10 + 2000)]
        options.insert(i % 3, str(i * 10))
        rows.append({"q": f"{i} times ten", "options": options, "answer": i % 3})
    (tmp_path / "cue.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "cue.yaml").write_text("name: cue\nkind: multiple_choice\ndata: cue.jsonl\nprompt: '{q} ='\n"
                                       "choices: options\ngold: answer\n")
    assert main(["tasks", "--check", str(tmp_path / "cue.yaml"), "--tokenizer", "bytes"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "shortest heuristic" in out and "same position" in out
