"""User task files (tasks/user.py): the items a YAML file and its JSONL rows must give, written out by hand
(shots, prompts, choices, ids, the hash split re-done here), the three answer matchers on hand-made outputs,
and one exact error message per malformed file."""
import hashlib
import json

import pytest

from prunescope.errors import UsageError
from prunescope.tasks import get_task
from prunescope.tasks.user import load_user_task


def in_calib(name, prompt):
    """The documented split: one prompt in four (sha256 of "user:<name>\\0<prompt>") is calibration."""
    digest = hashlib.sha256(f"user:{name}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 4 == 0


def _files(tmp_path, yaml_text, rows, data="rows.jsonl"):
    (tmp_path / data).write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "task.yaml"
    path.write_text(yaml_text)
    return path


CAPS = [{"c": f"Land{i}", "opts": [f"City{i}", f"Town{i}", " Village "], "ans": i % 3 if i % 2 else
         [f"City{i}", f"Town{i}", " Village "][i % 3]} for i in range(24)]


def test_multiple_choice_items_by_hand(tmp_path):
    path = _files(tmp_path, "name: caps\nkind: multiple_choice\ndata: rows.jsonl\nprompt: 'Capital of {c}?'\n"
                            "choices: opts\ngold: ans\nfewshot: 2\n", CAPS)
    task = get_task(str(path))
    shots = "Capital of Land0? City0\n\nCapital of Land1? Town1\n\n"  # gold by text (row 0), by index (row 1)
    for split in ("eval", "calib"):
        want = [(f"caps-{i - 2}", f"Capital of Land{i}?", i % 3) for i in range(2, 24)
                if in_calib("caps", f"Capital of Land{i}?") == (split == "calib")]
        items = task.items(None, split=split)
        assert [(it.id, it.prompt, it.gold) for it in items] == [(id_, shots + p, g) for id_, p, g in want]
        for it in items:
            i = int(it.id.split("-")[1]) + 2
            assert it.choices == [f" City{i}\n", f" Town{i}\n", " Village\n"] and it.target == it.choices[it.gold]
    assert len(task.items(None)) + len(task.items(None, split="calib")) == 22
    assert [it.id for it in task.items(3)] == [it.id for it in task.items(None)[:3]]
    assert (task.kind, task.name, task.family, task.chance) == ("multiple_choice", "caps", "user:caps", None)
    assert task.description == "user task from task.yaml" and task.use_chat_template is False
    assert task.stop == ["\n"] and task.max_new_tokens == 32


def test_generate_items_options_and_matchers(tmp_path):
    rows = [{"w": f"w{i}", "r": f"{i}, or {i + 1}"} for i in range(12)] + [{"w": "zz"}]
    path = _files(tmp_path, "name: g\nkind: generate\ndata: rows.jsonl\nprompt: 'Say {w}:'\nanswer: r\n"
                            "match: number\nstop: ['.', '!']\nmax_new_tokens: 7\nchat_template: true\n"
                            "description: words\nchance: 0.25\nfewshot: 1\n", rows)
    task = get_task(str(path))
    assert task.stop == [".", "!"] and task.max_new_tokens == 7 and task.use_chat_template is True
    assert task.description == "words" and task.chance == 0.25 and isinstance(task.chance, float)
    everything = task.items(None) + task.items(None, split="calib")
    by_word = {it.prompt.rsplit("\n", 1)[-1]: it for it in everything}
    assert set(by_word) == {f"Say w{i}:" for i in range(1, 12)} | {"Say zz:"}
    it = by_word["Say w3:"]
    assert it.prompt == "Say w0: 0, or 1\n\nSay w3:" and it.gold == "3, or 4" and it.target == " 3, or 4"
    assert by_word["Say zz:"].gold == "" and by_word["Say zz:"].id == "g-11"
    # number: the first number of the output against the first of the answer (commas dropped)
    assert task.check(it, " 3") and task.check(it, "it is 3 then 9") and not task.check(it, " 4, or 3")
    assert not task.check(it, "three")
    big = type(it)(id="x", prompt="", gold="1,234.5 kg", target="")
    assert task.check(big, "about 1234.5") and not task.check(big, "1234")
    assert not task.check(type(it)(id="y", prompt="", gold="none", target=""), "none")


@pytest.mark.parametrize("match, output, ok", [
    ("exact", "  Paris \n", True), ("exact", "Paris, TX", False), ("exact", "New  York", False),
    ("exact", "paris", False), ("contains", "I think Paris.", True), ("contains", "Pari", False),
    ("contains", "New York", False), (None, " Paris ", True), (None, "Paris!", False)])
def test_exact_and_contains_matchers(tmp_path, match, output, ok):
    rows = [{"q": f"q{i}", "a": " Paris "} for i in range(8)]
    text = "name: m\nkind: generate\ndata: rows.jsonl\nprompt: '{q}'\nanswer: a\n" + (f"match: {match}\n" if match else "")
    task = load_user_task(_files(tmp_path, text, rows))
    item = task.items(1)[0]
    assert task.check(item, output) is ok
    if output == "New  York":
        assert task.check(type(item)(id="x", prompt="", gold="New York", target=""), output)


def test_user_task_limit_counts_items_not_rows(tmp_path):
    rows = [{"q": f"question {i}", "a": "x"} for i in range(40)]
    task = load_user_task(_files(tmp_path, "name: n\nkind: generate\ndata: rows.jsonl\nprompt: '{q}'\nanswer: a\n",
                                 rows))
    want = [f"question {i}" for i in range(40) if not in_calib("n", f"question {i}")]
    assert [it.prompt for it in task.items(5)] == want[:5]
    assert [it.prompt for it in task.items(1)] == want[:1]


BASE = "name: t\nkind: multiple_choice\ndata: rows.jsonl\nprompt: '{c}'\nchoices: opts\ngold: ans\n"


@pytest.mark.parametrize("yaml_text, rows, message", [
    ("- a\n- b\n", None, "{p}: expected a mapping of task keys"),
    (BASE + "zeta: 1\nalpha: 2\n", None,
     "{p}: unknown key(s) alpha, zeta; allowed: answer, chance, chat_template, choices, data, description, "
     "fewshot, gold, hub, kind, match, max_new_tokens, name, prompt, stop"),
    (BASE.replace("multiple_choice", "ranking"), None, "{p}: 'kind' must be multiple_choice or generate, got 'ranking'"),
    (BASE.replace("kind: multiple_choice\n", ""), None, "{p}: 'kind' must be multiple_choice or generate, got None"),
    (BASE.replace("name: t\n", ""), None, "{p}: missing key 'name'"),
    (BASE.replace("prompt: '{c}'\n", ""), None, "{p}: missing key 'prompt'"),
    (BASE.replace("choices: opts\n", ""), None, "{p}: missing key 'choices'"),
    (BASE.replace("gold: ans\n", ""), None, "{p}: missing key 'gold'"),
    ("name: t\nkind: generate\ndata: rows.jsonl\nprompt: '{c}'\n", None, "{p}: missing key 'answer'"),
    (BASE.replace("data: rows.jsonl\n", ""), None,
     "{p}: give exactly one of 'data' (a JSONL file) or 'hub' ({{path, name, split}})"),
    (BASE + "hub: {path: a/b}\n", None, "{p}: give exactly one of 'data' (a JSONL file) or 'hub' ({{path, name, split}})"),
    (BASE + "match: fuzzy\n", None, "{p}: 'match' must be exact, contains or number, got 'fuzzy'"),
    (BASE + "chance: high\n", None, "{p}: 'chance' must be a number, got 'high'"),
    (BASE.replace("'{c}'", "'{country}'"), None,
     "{p} row 1: the template uses {{country}} but the row has no such field (fields: c, opts, ans)"),
    (BASE, [{"c": "x", "opts": "ab", "ans": 0}], "{p}: row 1: field 'opts' must be a list of at least 2 choices"),
    (BASE, [{"c": "x", "opts": ["a"], "ans": 0}], "{p}: row 1: field 'opts' must be a list of at least 2 choices"),
    (BASE, [{"c": "x", "opts": ["a", "b"], "ans": 2}], "{p}: row 1: gold 2 is neither an index into nor one of the choices"),
    (BASE, [{"c": "x", "opts": ["a", "b"], "ans": -1}], "{p}: row 1: gold -1 is neither an index into nor one of the choices"),
    (BASE, [{"c": "x", "opts": ["a", "b"], "ans": "c"}], "{p}: row 1: gold 'c' is neither an index into nor one of the choices"),
    (BASE + "fewshot: 1\n", [{"c": "s", "opts": ["a", "b"], "ans": 0}, {"c": "x", "opts": ["a", "b"], "ans": 5}],
     "{p}: row 2: gold 5 is neither an index into nor one of the choices"),
    (BASE.replace("'{c}'", "'{nope}'") + "fewshot: 1\n", None,
     "{p}: the template uses {{nope}} but the row has no such field (fields: c, opts, ans)"),
])
def test_malformed_files_name_the_problem(tmp_path, yaml_text, rows, message):
    if rows is None:
        rows = [{"c": "kept", "opts": ["a", "b"], "ans": 0}] * 3
    path = _files(tmp_path, yaml_text, rows)
    if rows[0]["c"] == "x":  # make the row land in the eval split so that it is built at load
        assert not in_calib("t", "x")
    with pytest.raises(UsageError) as err:
        load_user_task(path)
    assert str(err.value) == message.format(p=path)


def test_row_numbers_count_the_shots_and_the_rows_before(tmp_path):
    calib = next(f"c{i}" for i in range(100) if in_calib("t", f"c{i}"))  # skipped when building eval items
    shot = {"c": "s", "opts": ["a", "b"], "ans": 0}
    rows = [shot, {"c": calib, "opts": ["a", "b"], "ans": 0}, {"c": "x", "opts": ["a", "b"], "ans": 9}]
    assert not in_calib("t", "x")
    with pytest.raises(UsageError) as err:
        load_user_task(_files(tmp_path, BASE + "fewshot: 1\n", rows))
    assert str(err.value) == f"{tmp_path / 'task.yaml'}: row 3: gold 9 is neither an index into nor one of the choices"
    rows[2] = {"opts": ["a", "b"], "ans": 0}
    with pytest.raises(UsageError) as err:
        load_user_task(_files(tmp_path, BASE + "fewshot: 1\n", rows))
    assert str(err.value) == (f"{tmp_path / 'task.yaml'} row 3: the template uses {{c}} but the row has no such field "
                              "(fields: opts, ans)")


def test_missing_files(tmp_path):
    with pytest.raises(UsageError) as err:
        load_user_task(tmp_path / "none.yaml")
    assert str(err.value) == f"--tasks {tmp_path / 'none.yaml'}: task file not found"
    path = tmp_path / "t.yaml"
    path.write_text(BASE.replace("rows.jsonl", "sub/missing.jsonl"))
    with pytest.raises(UsageError, match=rf"^{path}: data {tmp_path / 'sub' / 'missing.jsonl'}: no such file"):
        load_user_task(path)


def test_hub_task_offline_says_how_to_use_a_local_file(tmp_path):
    path = tmp_path / "h.yaml"
    path.write_text(BASE.replace("data: rows.jsonl\n", "hub: {path: no-org/no-set, name: cfg}\n"))
    with pytest.raises(UsageError) as err:
        load_user_task(path)
    assert str(err.value).startswith("dataset no-org/no-set (test) is not reachable (")
    assert str(err.value).endswith(f"; point 'data:' in {path} at a local JSONL file")
    path.write_text(BASE.replace("data: rows.jsonl\n", "hub: {path: no-org/no-set, split: validation}\n"))
    with pytest.raises(UsageError, match=r"^dataset no-org/no-set \(validation\) is not reachable"):
        load_user_task(path)
