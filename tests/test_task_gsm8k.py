"""GSM8K against independent references: lm-evaluation-harness's own gsm8k task (its answer filters, its
exact-match metric, its prompt format and shot count), prompts and splits written out by hand on a small
data folder, and the multiple-choice distractors worked out by hand."""
import hashlib
import json
import random
import re
from pathlib import Path

import pytest

from prunescope.tasks import get_task, gsm8k

lm_eval = pytest.importorskip("lm_eval")
from lm_eval.api.metrics import exact_match_hf_evaluate  # noqa: E402
from lm_eval.filters.extraction import RegexFilter  # noqa: E402

LM_EVAL_YAML = Path(lm_eval.__file__).parent / "tasks" / "gsm8k" / "gsm8k.yaml"


def _lm_eval_config():
    import yaml

    return yaml.safe_load(LM_EVAL_YAML.read_text())


def lm_eval_correct(output, answer, filter_name):
    """Whether lm-eval's gsm8k task scores ``output`` right for the reference ``answer`` under one filter."""
    cfg = _lm_eval_config()
    regex = next(f for f in cfg["filter_list"] if f["name"] == filter_name)["filter"][0]
    filt = RegexFilter(regex_pattern=regex["regex_pattern"], group_select=regex.get("group_select", 0))
    extracted = list(filt.apply([[output]], [{}]))[0][0]
    metric = cfg["metric_list"][0]
    return exact_match_hf_evaluate([extracted], [answer], regexes_to_ignore=metric["regexes_to_ignore"],
                                   ignore_case=True)["exact_match"] == 1.0


ANSWER = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 18"
BIG = "Total 1,000 + 234 = <<1000+234=1234>>1,234\n#### 1,234"
NEG = "It drops to 2 - 7 = <<2-7=-5>>-5\n#### -5"
OUTPUTS = ["16 - 3 - 4 = 9, 9 * 2 = 18\n#### 18", "#### 17", "The answer is 18.", "#### 18\nThen add 2: 20",
           "We get $18.", "It costs $1,200.50 then 18.", "no number at all", "#### 1,234", "so 1,234 in all",
           "#### 1234 apples and 5 pears", "It is -5 degrees", "#### -5", "12 and 18 and 7", "Answer: 18"]


@pytest.mark.parametrize("answer", [ANSWER, BIG, NEG])
def test_strict_and_flexible_scores_equal_lm_evals(answer):
    gold = gsm8k.gold_number(answer)
    for out in OUTPUTS:
        assert (gsm8k.strict_answer(out) == gold) == lm_eval_correct(out, answer, "strict-match"), out
        assert (gsm8k.flexible_answer(out) == gold) == lm_eval_correct(out, answer, "flexible-extract"), out


def test_where_prunescope_is_more_lenient_than_lm_eval():
    # Worked by hand: the same number written with cents, a dollar sign or two spaces after ####.
    assert gsm8k.strict_answer("#### $18") == "18" and not lm_eval_correct("#### $18", ANSWER, "strict-match")
    assert gsm8k.strict_answer("####  18") == "18" and gsm8k.strict_answer("####18") == "18"
    assert gsm8k.strict_answer("#### 18...") == "18" and not lm_eval_correct("#### 18...", ANSWER, "strict-match")
    assert gsm8k.flexible_answer("It is 18.00") == "18" and not lm_eval_correct("It is 18.00", ANSWER,
                                                                                  "flexible-extract")


def test_number_normalisation_by_hand():
    cases = {"$1,234.00": "1234", "18": "18", " 7 ": "7", "12.": "12", "-3": "-3", "0.5": "0.5", "1.25": "1.25",
             "-0.75": "-0.75", "$5": "5", "3.0": "3", "abc": None, "": None, "1.2.3": None}
    assert {t: gsm8k.normalise_number(t) for t in cases} == cases
    assert gsm8k.normalise_number(None) is None
    assert gsm8k.strict_answer("so #### 3,000.") == "3000" and gsm8k.strict_answer("4 + 4 = 8") is None
    assert gsm8k.flexible_answer("from 3 to 4.5") == "4.5" and gsm8k.flexible_answer("-2 or -7") == "-7"
    assert gsm8k.flexible_answer("x") is None


def test_gold_and_clean_solution_by_hand():
    assert gsm8k.gold_number(ANSWER) == "18" and gsm8k.gold_number(BIG) == "1234" and gsm8k.gold_number(NEG) == "-5"
    assert gsm8k.gold_number("first 5 then 7 ") == "7"  # no ####: the last number
    assert gsm8k.gold_number(" no number ") == "no number"
    assert gsm8k.clean_solution("4*2=<<4*2=8>>8 and <<8+1=9>>9") == "4*2=8 and 9"
    assert gsm8k.clean_solution("a <b> c >> d") == "a <b> c >> d"


def test_gold_numbers_of_the_real_test_split_equal_lm_evals_reference(gsm8k_dir):
    metric = _lm_eval_config()["metric_list"][0]
    rows = [json.loads(line) for line in (gsm8k_dir / "test.jsonl").open()]
    refs = []
    for r in rows:  # lm-eval's reference: the answer after its regexes_to_ignore
        text = r["answer"]
        for pattern in metric["regexes_to_ignore"]:
            text = re.sub(pattern, "", text)
        refs.append(text)
    assert len(rows) == 1319
    assert [gsm8k.gold_number(r["answer"]) for r in rows] == refs


def _write(folder, train, test):
    folder.mkdir()
    for name, rows in (("train", train), ("test", test)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def _row(q, n):
    return {"question": q, "answer": f"{q} gives <<{n}={n}>>{n}\n#### {n}"}


@pytest.fixture
def small(tmp_path):
    train = [_row(f"Train question {i}?", 10 + i) for i in range(12)] + [_row("Test question 1?", 51)]
    test = [_row(f"Test question {i}?", 50 + i) for i in range(4)]
    gsm8k.load_rows.cache_clear()
    yield _write(tmp_path / "g", train, test), train, test
    gsm8k.load_rows.cache_clear()


def test_generate_items_and_prompt_follow_lm_evals_format(small):
    folder, train, test = small
    cfg = _lm_eval_config()
    assert gsm8k.SHOTS == cfg["num_fewshot"] == 5
    task = get_task("gsm8k", data=folder)
    items = task.items(3)
    shots = "".join(cfg["doc_to_text"].replace("{{question}}", r["question"]) + " " + r["answer"].replace(
        f"<<{10 + i}={10 + i}>>", "") + "\n\n" for i, r in enumerate(train[:5]))
    assert [it.prompt for it in items] == [shots + cfg["doc_to_text"].replace("{{question}}", r["question"])
                                           for r in test[:3]]
    assert [it.id for it in items] == ["gsm8k-eval-0", "gsm8k-eval-1", "gsm8k-eval-2"]
    assert [it.gold for it in items] == ["50", "51", "52"]
    assert items[1].target == " Test question 1? gives 51\n#### 51"
    assert items[0].meta["question"] == "Test question 0?"
    assert items[0].meta["messages"] == sum(([{"role": "user", "content": f"Train question {i}?"},
                                              {"role": "assistant", "content": f"Train question {i}? gives {10 + i}\n"
                                                                               f"#### {10 + i}"}] for i in range(5)),
                                            []) + [{"role": "user", "content": "Test question 0?"}]
    assert len(task.items(None)) == 4 and len(task.items(10)) == 4
    assert "Question:" in cfg["generation_kwargs"]["until"] and task.stop[0] == "Question:"
    assert task.max_new_tokens == 256 and task.use_chat_template and task.kind == "generate"
    assert (task.name, task.pair, task.matched, task.family) == ("gsm8k", "gsm8k_mc", False, "gsm8k")


def test_calibration_is_train_minus_shots_and_test_questions_shuffled_by_seed(small):
    folder, train, test = small
    task = get_task("gsm8k", data=folder)
    expected = [r["question"] for r in train[5:12]]  # the 13th train row repeats a test question
    for seed in (0, 1):
        shuffled = list(expected)
        random.Random(f"gsm8k|calib|{seed}").shuffle(shuffled)  # the documented shuffle, re-done here
        assert [it.meta["question"] for it in task.items(None, seed=seed, split="calib")] == shuffled
        assert [it.id for it in task.items(None, seed=seed, split="calib")] == [f"gsm8k-calib-{i}" for i in range(7)]
    orders = {tuple(it.meta["question"] for it in task.items(None, seed=s, split="calib")) for s in range(4)}
    assert len(orders) > 1  # the seed shuffles
    assert task.items(3, seed=2, split="calib") == task.items(None, seed=2, split="calib")[:3]


def test_data_comes_from_the_environment_variable(small, monkeypatch):
    folder, _, test = small
    monkeypatch.setenv(gsm8k.ENV_VAR, str(folder))
    assert [it.meta["question"] for it in get_task("gsm8k").items(2)] == [r["question"] for r in test[:2]]
    assert [it.meta["question"] for it in get_task("gsm8k_mc").items(2)] == [r["question"] for r in test[:2]]


def test_multiple_choice_shares_the_splits_and_the_seed(small):
    folder, _, _ = small
    gen, mc = get_task("gsm8k", data=folder), get_task("gsm8k_mc", data=folder)
    assert len(mc.items(2)) == 2
    for seed in (0, 1, 2):
        assert [it.meta["question"] for it in mc.items(None, seed=seed, split="calib")] == \
            [it.meta["question"] for it in gen.items(None, seed=seed, split="calib")]
    golds = {tuple(it.gold for it in mc.items(None, seed=s, split="calib")) for s in range(6)}
    assert len(golds) > 1  # gold positions follow the seed


def test_single_file_split_is_the_question_hash(tmp_path):
    rows = [_row(f"What is {i} + 1?", i + 1) for i in range(40)]
    path = tmp_path / "one.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def calib(q):  # one question in four, by sha256 of "gsm8k\0<question>"
        return int.from_bytes(hashlib.sha256(f"gsm8k\x00{q}".encode()).digest()[:8], "big") % 4 == 0
    gsm8k.load_rows.cache_clear()
    assert [r["question"] for r in gsm8k.load_rows("test", str(path))] == [r["question"] for r in rows
                                                                          if not calib(r["question"])]
    assert [r["question"] for r in gsm8k.load_rows("train", str(path))] == [r["question"] for r in rows
                                                                           if calib(r["question"])]
    extra = {"question": "What is 1 + 1?", "answer": "#### 2", "note": "ignored"}
    path.write_text(json.dumps(extra) + "\n")
    gsm8k.load_rows.cache_clear()
    assert gsm8k.load_rows("test", str(path)) + gsm8k.load_rows("train", str(path)) == \
        ({"question": "What is 1 + 1?", "answer": "#### 2"},)
    gsm8k.load_rows.cache_clear()


def test_multiple_choice_items_by_hand(tmp_path):
    train = [_row(f"T{i}?", 10 + i) for i in range(5)]
    test = [_row("A?", 47), {"question": "B?", "answer": "#### -5"}, {"question": "C?", "answer": "#### 2.5"},
            _row("D?", 0)] + [_row(f"E{i}?", 300 + i) for i in range(4)]
    folder = _write(tmp_path / "g", train, test)
    gsm8k.load_rows.cache_clear()
    task = get_task("gsm8k_mc", data=folder)
    items = task.items(None)
    context = "".join(f"Question: T{i}?\nAnswer: The answer is {10 + i}.\n\n" for i in range(5))
    assert items[0].prompt == context + "Question: A?\nAnswer: The answer is"
    assert [it.id for it in items[:2]] == ["gsm8k_mc-eval-0", "gsm8k_mc-eval-1"]
    assert items[0].meta == {"question": "A?"}
    for it, gold in zip(items, ["47", "-5", "2.5", "0", "300", "301", "302", "303"]):
        assert it.choices[it.gold] == it.target == f" {gold}." and len(set(it.choices)) == 4
        assert all(c.startswith(" ") and c.endswith(".") for c in it.choices)
    for it in items[:1] + items[3:]:  # whole non-negative answers: distractors with as many digits
        gold = it.choices[it.gold][1:-1]
        assert all(len(c) == len(gold) + 2 and c[1:-1].isdigit() for c in it.choices), it.choices
    # negative and fractional answers: off by one, minus one and plus ten, written like the gold
    assert sorted(items[1].choices) == sorted([" -5.", " -4.", " -6.", " 5."])
    assert sorted(items[2].choices) == sorted([" 2.5.", " 3.5.", " 1.5.", " 12.5."])
    assert sorted(it.gold for it in items) == [0, 0, 1, 1, 2, 2, 3, 3]  # every block of 4 uses each position
    assert {it.gold for it in items[:4]} == {0, 1, 2, 3}
    again = get_task("gsm8k_mc", data=folder)
    assert [it.choices for it in again.items(None)] == [it.choices for it in items]
    assert any(a.choices != b.choices for a, b in zip(task.items(None, seed=1), items))
    assert (task.name, task.kind, task.pair, task.matched, task.family) == ("gsm8k_mc", "multiple_choice", "gsm8k",
                                                                           False, "gsm8k")
    gsm8k.load_rows.cache_clear()


def test_check_and_extra_metrics(small):
    folder, _, _ = small
    task = get_task("gsm8k", data=folder)
    items = task.items(3)  # golds 50, 51, 52
    outputs = ["#### 50", "so 51 in all", "#### 52\nor 53"]
    assert [task.check(it, o) for it, o in zip(items, outputs)] == [True, True, False]
    extra = task.extra_metrics(items, outputs)
    assert extra["strict_accuracy"]["correct"] == 2 and extra["strict_accuracy"]["n"] == 3
    assert extra["flexible_accuracy"]["correct"] == 2 and extra["flexible_accuracy"]["accuracy"] == pytest.approx(2 / 3)
    assert set(extra) == {"strict_accuracy", "flexible_accuracy"}
