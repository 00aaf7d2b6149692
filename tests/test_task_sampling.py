"""Item sampling (tasks/sampling.py) against its documented rules, re-done in the test: the sha256 split, the
random stream names, the number of draws after which a pool counts as used up (counted with scripted draws),
balanced gold positions and the multiple-choice layout."""
import hashlib
import random

import pytest

from prunescope.tasks import sampling
from prunescope.tasks.sampling import (balanced_position, draw_shots, item_id, mc_item, partition_of, rng_for,
                                       sample_questions, synthetic_items)
from prunescope.tasks.spec import Item


def calib_by_hand(family, key):
    digest = hashlib.sha256(f"{family}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 4 == 0


def keys_in(family, split, n, start=0):
    out, i = [], start
    while len(out) < n:
        if calib_by_hand(family, f"k{i}") == (split == "calib"):
            out.append(f"k{i}")
        i += 1
    return out


class Script:
    """A draw function that returns a scripted sequence (then repeats its last value) and counts calls."""
    def __init__(self, seq):
        self.seq, self.calls = list(seq), 0

    def __call__(self, rng):
        self.calls += 1
        return self.seq[min(self.calls, len(self.seq)) - 1]


@pytest.fixture(autouse=True)
def fresh_notices(monkeypatch):
    monkeypatch.setattr(sampling, "_noticed", set())


def test_partition_is_the_documented_hash():
    keys = [f"q{i}" for i in range(400)]
    assert [partition_of("fam", k) for k in keys] == ["calib" if calib_by_hand("fam", k) else "eval" for k in keys]
    assert 70 < sum(calib_by_hand("fam", k) for k in keys) < 130


def test_random_streams_are_named_by_family_split_seed_and_extras():
    assert rng_for("f", 3, "eval").random() == random.Random("f|eval|3").random()
    assert rng_for("f", 3, "calib", "shots", 7).random() == random.Random("f|calib|3|shots|7").random()


def test_notice_prints_once(capsys):
    sampling.notice("hello")
    sampling.notice("hello")
    assert capsys.readouterr().err == "prunescope: hello\n"


def test_eval_pool_used_up_after_3000_fruitless_draws(capsys):
    a, b = keys_in("fam", "eval", 2)
    draw = Script([a] * 3000 + [b] + [a])
    # a (1 draw), 2999 repeats, b (the miss count restarts), then 3000 more repeats: 6001 draws
    got = sample_questions(draw, str, family="fam", n=5, seed=0, split="eval", task="my_task")
    assert got == [a, b] and draw.calls == 6001
    assert capsys.readouterr().err == "prunescope: my_task: only 2 distinct eval questions exist; n capped at 2 " \
                                      "(asked for 5)\n"
    draw = Script([a])
    assert sample_questions(draw, str, family="fam", n=2, seed=0, split="eval") == [a] and draw.calls == 3001
    assert "fam: only 1 distinct eval questions exist; n capped at 1 (asked for 2)" in capsys.readouterr().err


def test_calibration_pool_goes_on_with_repeats():
    (c,) = keys_in("fam", "calib", 1)
    draw = Script([c])
    assert sample_questions(draw, str, family="fam", n=3, seed=0, split="calib") == [c, c, c]
    assert draw.calls == 1 + 3000 + 2


def test_wrong_partition_excluded_and_repeated_keys_are_skipped():
    ev, ca = keys_in("fam", "eval", 3), keys_in("fam", "calib", 2)
    draw = Script([ca[0], ev[0], ev[0], ca[1], ev[1], ev[2]])
    assert sample_questions(draw, str, family="fam", n=2, seed=0, split="eval") == [ev[0], ev[1]]
    draw = Script([ev[0], ev[1], ev[2]])
    assert sample_questions(draw, str, family="fam", n=2, seed=0, split="eval", exclude={ev[0]}) == [ev[1], ev[2]]
    pool = keys_in("fam", "eval", 50)
    got = sample_questions(lambda rng: rng.choice(pool), str, family="fam", n=20, seed=4, split="eval")
    assert len(set(got)) == 20
    assert got == sample_questions(lambda rng: rng.choice(pool), str, family="fam", n=20, seed=4, split="eval")
    assert got != sample_questions(lambda rng: rng.choice(pool), str, family="fam", n=20, seed=5, split="eval")


def test_strata_put_one_of_each_class_in_every_block():
    pool = [(k, i % 3) for i, k in enumerate(keys_in("fam", "eval", 300))]
    got = sample_questions(lambda rng: rng.choice(pool), lambda q: q[0], family="fam", n=30, seed=1, split="eval",
                           stratum=lambda q: q[1], strata=3)
    assert len(got) == 30
    assert [q[1] for q in got] == [balanced_position("fam", 1, "eval", i, 3) for i in range(30)]
    for block in range(10):
        assert sorted(q[1] for q in got[3 * block:3 * block + 3]) == [0, 1, 2]


def test_balanced_position_is_a_shuffled_block():
    for i in range(12):
        order = [0, 1, 2, 3]
        random.Random(f"fam|eval|2|position|{i // 4}").shuffle(order)
        assert balanced_position("fam", 2, "eval", i, 4) == order[i % 4]


def test_shots_are_distinct_from_the_split_and_avoid_the_question():
    ev = keys_in("fam", "eval", 6)
    (ca,) = keys_in("fam", "calib", 1)
    draw = Script([ca, ev[0], ev[1], ev[1], ev[2], ev[3]])
    assert draw_shots(random.Random(0), draw, str, family="fam", split="eval", k=2, avoid=ev[0]) == [ev[1], ev[2]]
    # a pool of one: 200 refused repeats, then the repeat is taken (even the avoided question)
    draw = Script([ev[0]])
    assert draw_shots(random.Random(0), draw, str, family="fam", split="eval", k=2, avoid=ev[0]) == [ev[0], ev[0]]
    assert draw.calls == 202


def test_synthetic_items_streams_and_meta():
    pool = keys_in("fam", "eval", 120)
    seen = []

    def build(q, shots, rng, i):
        seen.append((q, tuple(shots), rng.random(), i))
        return Item(id=item_id("fam", "eval", 5, i), prompt=q, gold=0, target="", meta={"split": "mine"})

    def draw(rng):
        return rng.choice(pool)
    items = synthetic_items(family="fam", n=6, seed=5, split="eval", draw=draw, key=str, build=build, shots=3)
    assert [it.id for it in items] == [f"fam-eval-5-{i}" for i in range(6)]
    assert [it.meta for it in items] == [{"split": "mine", "key": it.prompt} for it in items]
    qs = sample_questions(draw, str, family="fam", n=6, seed=5, split="eval")
    for i, (q, shots, r, j) in enumerate(seen):
        assert q == qs[i] and j == i and len(shots) == 3
        assert list(shots) == draw_shots(random.Random(f"fam|eval|5|shots|{i}"), draw, str, family="fam",
                                         split="eval", k=3, avoid=q)
        assert r == random.Random(f"fam|eval|5|choices|{i}").random()
    seen.clear()
    more = synthetic_items(family="fam", n=None, seed=5, split="eval", draw=draw, key=str, build=build, shots=3,
                           default_n=9)
    assert len(more) == 9 and [it.prompt for it in more[:6]] == [it.prompt for it in items]

    def plain(q, shots, rng, i):
        return Item(id=str(i), prompt=q, gold=0, target="")
    assert [it.meta for it in synthetic_items(family="fam", n=2, seed=5, split="eval", draw=draw, key=str,
                                              build=plain, shots=1)] == [{"key": q, "split": "eval"} for q in qs[:2]]


def test_mc_item_layout():
    rng, ref = random.Random(3), random.Random(3)
    item = mc_item(id="i", prompt="p", gold_text="7", distractors=["1", "2", "3"], rng=rng, position=2,
                   meta={"m": 1})
    options = ["1", "2", "3"]
    ref.shuffle(options)
    options.insert(2, "7")
    assert item == Item(id="i", prompt="p", gold=2, target=" 7\n", choices=[f" {o}\n" for o in options], meta={"m": 1})
    rng, ref = random.Random(4), random.Random(4)
    item = mc_item(id="j", prompt="p", gold_text="7", distractors=["1", "2", "3"], rng=rng, fmt=lambda s: f"<{s}>")
    options = ["1", "2", "3"]
    ref.shuffle(options)
    pos = ref.randrange(4)
    options.insert(pos, "7")
    assert (item.gold, item.choices, item.target, item.meta) == (pos, [f"<{o}>" for o in options], "<7>", {})
    positions = {mc_item(id="k", prompt="", gold_text="g", distractors=["a", "b", "c"], rng=random.Random(s)).gold
                 for s in range(40)}
    assert positions == {0, 1, 2, 3}  # randrange(len + 1): the last position is reachable
    shared = {"m": 1}
    assert mc_item(id="k", prompt="", gold_text="g", distractors=["a"], rng=random.Random(0), meta=shared).meta \
        is not shared


def test_stream_and_fruitless_start_and_defaults(capsys):
    firsts = []

    def draw(rng):
        value = rng.randrange(10 ** 9)
        firsts.append(value)
        return f"k{value}"
    sample_questions(draw, str, family="fam", n=1, seed=4, split="calib")
    ref = random.Random("fam|calib|4")
    assert firsts[0] == ref.randrange(10 ** 9)  # the stream named family|split|seed
    (ca,) = keys_in("fam", "calib", 1)
    draw = Script([ca])
    assert sample_questions(draw, str, family="fam", n=1, seed=0, split="eval") == [] and draw.calls == 3000
    big = synthetic_items(family="fam", n=None, seed=0, split="eval", draw=lambda rng: f"q{rng.randrange(10 ** 6)}",
                          key=str, build=lambda q, s, r, i: Item(id=str(i), prompt=q, gold=0, target=""), shots=0)
    assert len(big) == 200


def test_synthetic_items_pass_strata_task_name_and_avoid_the_question(capsys):
    def build(q, shots, rng, i):
        return Item(id=str(i), prompt=q[0], gold=0, target="", meta={"shots": [s[0] for s in shots], "cls": q[1]})
    pool = [(k, i % 3) for i, k in enumerate(keys_in("fam", "eval", 300))]
    items = synthetic_items(family="fam", n=12, seed=1, split="eval", draw=lambda rng: rng.choice(pool),
                            key=lambda q: q[0], build=build, shots=1, stratum=lambda q: q[1], strata=3)
    assert [it.meta["cls"] for it in items] == [balanced_position("fam", 1, "eval", i, 3) for i in range(12)]
    two = keys_in("fam", "eval", 2)
    for seed in range(5):
        items = synthetic_items(family="fam", n=2, seed=seed, split="eval", draw=lambda rng: (rng.choice(two), 0),
                                key=lambda q: q[0], build=build, shots=1)
        assert all(it.meta["shots"] != [it.prompt] for it in items)
    only = keys_in("fam", "eval", 1)
    synthetic_items(family="fam", n=3, seed=0, split="eval", draw=lambda rng: (only[0], 0), key=lambda q: q[0],
                    build=build, shots=0)
    synthetic_items(family="fam", n=3, seed=0, split="eval", draw=lambda rng: (only[0], 0), key=lambda q: q[0],
                    build=build, shots=0, task="named")
    err = capsys.readouterr().err
    assert "prunescope: fam: only 1 distinct eval questions exist" in err and "prunescope: named: only 1" in err


def test_mc_item_puts_the_gold_where_asked():
    for pos in range(4):
        item = mc_item(id="i", prompt="", gold_text="g", distractors=["a", "b", "c"], rng=random.Random(pos), position=pos)
        assert item.gold == pos and item.choices[pos] == " g\n"
