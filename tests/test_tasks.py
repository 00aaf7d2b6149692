import json
import random

import pytest

from prunescope.errors import UsageError
from prunescope.tasks import get_task, task_names
from prunescope.tasks import arithmetic, brackets, gsm8k
from prunescope.tasks.chance import chance_of
from prunescope.tasks.sampling import partition_of

REQUIRED = ["arith_add_1d_gen", "arith_add_1d_mc", "arith_add_2d_gen", "arith_add_2d_mc", "arith_sub_2d_gen",
            "arith_sub_2d_mc", "arith_mul_1d_gen", "arith_mul_1d_mc", "arith_add_3d_gen", "arith_add_3d_mc",
            "arith_add_4d_gen", "arith_add_4d_mc", "arith_mixed_gen", "arith_mixed_mc", "arith_mixed_first_digit",
            "brackets_gen", "brackets4_gen", "brackets4_mc", "brackets_balanced_mc", "copy_words_gen", "gsm8k",
            "gsm8k_mc"]
SYNTHETIC = [n for n in REQUIRED if not n.startswith("gsm8k")]


def test_required_names_and_full_arithmetic_grid():
    names = set(task_names())
    assert set(REQUIRED) <= names
    for op in ("add", "sub", "mul"):
        for d in (1, 2, 3, 4):
            assert {f"arith_{op}_{d}d_gen", f"arith_{op}_{d}d_mc"} <= names


def test_unknown_task_suggests_near_name():
    with pytest.raises(UsageError, match="did you mean 'arith_add_2d_mc'"):
        get_task("arith_add_2d_mcq")


@pytest.mark.parametrize("name", SYNTHETIC)
def test_items_are_deterministic_and_well_formed(name):
    task = get_task(name)
    a, b = task.items(30, seed=3), task.items(30, seed=3)
    assert [(i.prompt, i.choices, i.gold) for i in a] == [(i.prompt, i.choices, i.gold) for i in b]
    assert [i.prompt for i in task.items(30, seed=4)] != [i.prompt for i in a]
    for item in a:
        if task.kind == "multiple_choice":
            assert len(set(item.choices)) == len(item.choices) >= 2
            assert item.choices[item.gold] == item.target
            assert chance_of(task.kind, a)[0] >= 1 / len(item.choices)
        else:
            assert task.check(item, item.target), (item.prompt, item.target)
            assert not task.check(item, item.target + " 1" if "copy" in name else " 99999 )")


@pytest.mark.parametrize("name", SYNTHETIC)
def test_calibration_items_never_overlap_evaluation_items(name):
    task = get_task(name)
    for seed in (0, 1):
        ev = {i.meta["key"] for i in task.items(150, seed=seed, split="eval")}
        ca = {i.meta["key"] for i in task.items(60, seed=seed, split="calib")}
        assert ev and ca and not ev & ca
    # Explicitly: no calibration prompt contains an evaluation question as its final query either.
    def query(item):  # the last prompt line that holds the question
        return [line for line in item.prompt.splitlines() if line != "Output:"][-1]
    calib_queries = {query(i) for i in task.items(60, seed=7, split="calib")}
    eval_queries = {query(i) for i in task.items(150, seed=0, split="eval")}
    assert not calib_queries & eval_queries


def test_shots_come_from_the_items_own_partition():
    task = get_task("arith_add_1d_gen")
    for item in task.items(40, seed=0, split="calib"):
        for line in item.prompt.splitlines()[:-1]:
            assert partition_of("arith_add_1d", line.split(" =")[0]) == "calib"


def test_arithmetic_answers_and_distractors():
    for item in get_task("arith_sub_3d_mc").items(50):
        a, b = map(int, item.meta["expression"].split(" - "))
        assert a >= b and int(item.target) == a - b
    for item in get_task("arith_mixed_gen").items(50):
        assert item.gold == eval(item.meta["expression"]) >= 0
    rng = random.Random(0)
    d = arithmetic.distractors(47, rng, a=28, b=19)
    assert len(set(d)) == 3 and 47 not in d and all(x >= 0 for x in d)
    assert 37 in arithmetic.distractors(47, random.Random(1), a=28, b=19, k=10)  # the dropped carry
    assert arithmetic.first_int(" 1,024 apples") == 1024 and arithmetic.first_int(" no") is None


def test_first_digit_probe_is_ten_way_with_chance_the_majority_digit():
    task = get_task("arith_mixed_first_digit")
    items = task.items(200)
    ones = sum(i.gold == 1 for i in items) / len(items)  # the commonest first digit (Benford-like)
    assert task.kind == "multiple_choice" and chance_of(task.kind, items)[0] == pytest.approx(ones) and ones > 0.25
    for item in task.items(20):
        assert item.choices == [f" {d}" for d in range(10)]
        assert item.gold == int(str(item.meta["value"])[0])


def test_brackets_helpers():
    seq = "( [ { } <".split()
    assert brackets.closing(seq) == [">", "]", ")"]
    assert brackets.is_balanced("( [ ] ) < >".split()) and not brackets.is_balanced("( ] [ )".split())
    for item in get_task("brackets_gen").items(50):
        query = item.prompt.rsplit("\n", 1)[-1][:-2].split()
        assert brackets.is_balanced(query + item.gold.split())
        assert set(query) <= {"(", ")"} and len(item.gold.split()) <= 3
    balanced = [i.gold == 0 for i in get_task("brackets_balanced_mc").items(200)]
    assert 60 < sum(balanced) < 140
    for item in get_task("brackets_balanced_mc").items(50):
        query = item.prompt.rsplit("\n", 1)[-1].replace(" balanced:", "").split()
        assert brackets.is_balanced(query) == (item.gold == 0)


def test_gsm8k_extraction():
    assert gsm8k.strict_answer("so 3 + 4 = 7\n#### 7") == "7"
    assert gsm8k.strict_answer("The answer is 7.") is None
    assert gsm8k.flexible_answer("It costs $1,200.50 then 18.") == "18"
    assert gsm8k.flexible_answer("We get $1,200.") == "1200"
    assert gsm8k.flexible_answer("no number") is None
    assert gsm8k.gold_number("He pays 3*4=<<3*4=12>>12 dollars.\n#### 12") == "12"
    assert gsm8k.normalise_number("18.00") == "18" and gsm8k.normalise_number("0.5") == "0.5"
    assert gsm8k.clean_solution("3*4=<<3*4=12>>12") == "3*4=12"


def test_gsm8k_items_from_data_folder(gsm8k_dir):
    task = get_task("gsm8k", data=gsm8k_dir)
    items = task.items(5)
    assert items[0].gold == "18" and items[0].prompt.endswith("Answer:")
    assert items[0].meta["messages"][-1]["content"] == items[0].meta["question"]
    calib = task.items(50, seed=0, split="calib")
    eval_q = {i.meta["question"] for i in task.items(None)}
    assert not {i.meta["question"] for i in calib} & eval_q
    assert task.check(items[0], "so she makes 18 dollars") and not task.check(items[0], "#### 17")
    extra = task.extra_metrics(items[:2], ["#### 18", "the answer is 3"])
    assert extra["strict_accuracy"]["correct"] == 1
    mc = get_task("gsm8k_mc", data=gsm8k_dir).items(3)
    # each choice ends with "." so that no number is a prefix of another (" 18." vs " 180.")
    assert all(len(set(i.choices)) == 4 and i.choices[i.gold] == " " + gsm8k.gold_number(r) + "." for i, r in
               zip(mc, [json.loads(line)["answer"] for line in (gsm8k_dir / "test.jsonl").open()][:3]))


def test_gsm8k_single_file_is_split_by_hash(tmp_path):
    rows = [{"question": f"What is {i} + 1?", "answer": f"{i}+1={i + 1}\n#### {i + 1}"} for i in range(80)]
    path = tmp_path / "math.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = get_task("gsm8k", data=path)
    ev = {i.meta["question"] for i in task.items(None)}
    ca = {i.meta["question"] for i in task.items(None, split="calib")}
    assert ev and ca and not ev & ca and len(ev) + len(ca) + gsm8k.SHOTS == 80


def test_gsm8k_malformed_file_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(UsageError, match=r"bad.jsonl line 2"):
        get_task("gsm8k", data=path).items(1)
    path.write_text('{"question": "q"}\n')
    with pytest.raises(UsageError, match=r"line 1: missing key\(s\) 'answer'"):
        get_task("gsm8k", data=path).items(1)


def test_gsm8k_offline_without_data_says_how_to_pass_it(monkeypatch):
    monkeypatch.delenv(gsm8k.ENV_VAR, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gsm8k.load_rows.cache_clear()
    with pytest.raises(UsageError, match="--data"):
        get_task("gsm8k").items(1)


def test_user_yaml_tasks(tmp_path):
    rows = [{"country": c, "options": ["Paris", "Rome", "Berlin"], "answer": a}
            for c, a in [("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin")] * 10]
    for i, r in enumerate(rows):
        r["country"] += f" {i}"
    (tmp_path / "caps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "caps.yaml").write_text(
        "name: capitals\nkind: multiple_choice\ndata: caps.jsonl\nprompt: 'Capital of {country}?'\n"
        "choices: options\ngold: answer\nfewshot: 2\n")
    task = get_task(str(tmp_path / "caps.yaml"))
    assert task.kind == "multiple_choice" and task.chance is None
    ev, ca = task.items(None), task.items(None, split="calib")
    assert len(ev) + len(ca) == 28 and not {i.prompt for i in ev} & {i.prompt for i in ca}
    assert ev[0].prompt.startswith("Capital of France 0? Paris\n\n")
    assert ev[0].choices[ev[0].gold] == " " + rows[int(ev[0].prompt.rsplit(" ", 1)[-1][:-1])]["answer"] + "\n"

    (tmp_path / "gen.yaml").write_text("name: g\nkind: generate\ndata: caps.jsonl\nprompt: '{country}:'\n"
                                       "answer: answer\nmatch: contains\n")
    gen = get_task(str(tmp_path / "gen.yaml"))
    item = gen.items(1)[0]
    assert gen.check(item, f" it is {item.gold}!") and not gen.check(item, " Madrid")

    (tmp_path / "bad.yaml").write_text("name: b\nkind: multiple_choice\ndata: caps.jsonl\nprompt: '{nope}'\n"
                                       "choices: options\ngold: answer\n")
    with pytest.raises(UsageError, match="nope"):
        get_task(str(tmp_path / "bad.yaml"))
    with pytest.raises(UsageError, match="task file not found"):
        get_task(str(tmp_path / "missing.yaml"))


def test_lmeval_bridge_maps_results(monkeypatch):
    import sys
    import types

    from prunescope.tasks.lmeval import map_results

    calls = {}

    class FakeHFLM:
        def __init__(self, pretrained, tokenizer, batch_size):
            calls["hflm"] = (pretrained, tokenizer, batch_size)

    def simple_evaluate(model, tasks, limit, **kw):
        calls["tasks"], calls["limit"] = tasks, limit
        return {"results": {"piqa": {"alias": "piqa", "acc,none": 0.6, "acc_stderr,none": 0.05, "acc_norm,none": 0.62}},
                "n-samples": {"piqa": {"original": 1838, "effective": 10}},
                "configs": {"piqa": {"output_type": "multiple_choice"}},
                # six two-way items and four four-way items: 1/k = (6 * 1/2 + 4 * 1/4) / 10 = 0.4; the golds
                # spread over positions (3, 3, 2, 2 of 10), so no fixed position beats it
                "samples": {"piqa": [{"doc_id": i, "target": i % 2 if i % 5 < 3 else 2 + i % 2, "acc": float(i < 6),
                                      "arguments": [1, 2] if i % 5 < 3 else [1, 2, 3, 4],
                                      "filtered_resps": []} for i in range(10)]}}

    fake = types.ModuleType("lm_eval")
    fake.simple_evaluate = simple_evaluate
    models = types.ModuleType("lm_eval.models")
    hf = types.ModuleType("lm_eval.models.huggingface")
    hf.HFLM = FakeHFLM
    monkeypatch.setitem(sys.modules, "lm_eval", fake)
    monkeypatch.setitem(sys.modules, "lm_eval.models", models)
    monkeypatch.setitem(sys.modules, "lm_eval.models.huggingface", hf)

    task = get_task("lmeval:piqa")
    metrics, samples = task.evaluate_fn("MODEL", "TOK", limit=10, seed=0, batch_size=8)
    assert calls == {"hflm": ("MODEL", "TOK", 8), "tasks": ["piqa"], "limit": 10}
    assert metrics["accuracy"] == 0.6 and metrics["n"] == 10 and metrics["correct"] == 6
    assert metrics["chance"] == pytest.approx(0.4) and metrics["kind"] == "multiple_choice"
    assert metrics["lmeval"]["acc_norm,none"] == 0.62 and "acc,none" not in metrics["lmeval"]
    assert [s["correct"] for s in samples] == [1.0] * 6 + [0.0] * 4
    assert [s["id"] for s in samples] == list(range(10)) and {s["task"] for s in samples} == {"lmeval:piqa"}
    with pytest.raises(UsageError, match="no results"):
        map_results("arc_easy", {"results": {}})
    # N-shot per task: lmeval:<task>:<N> passes num_fewshot and records it
    seen = {}
    fake.simple_evaluate = lambda model, tasks, limit, **kw: seen.update(kw) or simple_evaluate(model, tasks, limit)
    shot = get_task("lmeval:piqa:5")
    assert shot.name == "lmeval:piqa:5"
    metrics, samples = shot.evaluate_fn("MODEL", "TOK", limit=10, seed=0, batch_size=8)
    assert seen["num_fewshot"] == 5 and metrics["num_fewshot"] == 5 and samples[0]["task"] == "lmeval:piqa:5"
    get_task("lmeval:piqa").evaluate_fn("MODEL", "TOK", limit=10, seed=0, batch_size=8)
    assert seen["num_fewshot"] is None
    with pytest.raises(UsageError, match="number of shots"):
        get_task("lmeval:piqa:")


def test_lmeval_local_task_file_runs_on_the_in_memory_model(tmp_path, monkeypatch):
    """A real lm-eval run, offline: a local task file reading a local JSONL, on a tiny model."""
    pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from prunescope.eval import evaluate
    from common import make_tiny_model, make_tokenizer

    rows = []
    for a in range(4):
        for b in range(3):  # the right sum at every position in turn: chance 1/4
            choices = [str(a + b + 1), "x", "y"]
            choices.insert((3 * a + b) % 4, str(a + b))
            rows.append({"question": f"{a} + {b} =", "choices": choices, "label": (3 * a + b) % 4})
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task_file = tmp_path / "toy_add.yaml"
    task_file.write_text(f"task: toy_add\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                         f"    test: {tmp_path / 'toy.jsonl'}\ntest_split: test\noutput_type: multiple_choice\n"
                         "doc_to_text: '{{question}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\n"
                         "metric_list:\n  - metric: acc\n")
    metrics = evaluate(make_tiny_model(), make_tokenizer(), [f"lmeval:{task_file}"], limit=8, progress=False,
                       out=tmp_path / "metrics.json")
    result = metrics["tasks"][f"lmeval:{task_file}"]
    assert result["n"] == 8 and result["chance"] == 0.25 and result["kind"] == "multiple_choice"
    assert 0.0 <= result["accuracy"] <= 1.0 and result["metric"] == "lmeval acc,none"
    assert result["correct"] == round(result["accuracy"] * 8)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 8 and {s["task"] for s in samples} == {f"lmeval:{task_file}"}
    assert sum(bool(s["correct"]) for s in samples) == result["correct"]


def test_lmeval_local_task_file_errors(tmp_path):
    with pytest.raises(UsageError, match="no such lm-eval task file"):
        get_task(f"lmeval:{tmp_path / 'missing.yaml'}")
    (tmp_path / "bad.yaml").write_text("dataset_path: json\n")
    with pytest.raises(UsageError, match="task: <name>"):
        get_task(f"lmeval:{tmp_path / 'bad.yaml'}")


def test_hub_dataset_without_network_fails_at_once_in_one_line(monkeypatch):
    """No DNS: no retries with back-off, one UsageError saying how to pass a local file, and the hub
    client's offline flags restored afterwards."""
    pytest.importorskip("datasets")
    import socket
    import time

    import datasets.config
    import huggingface_hub.constants

    from prunescope.tasks.data import load_hub

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # as for a user with network
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    before = (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    start = time.perf_counter()
    with pytest.raises(UsageError, match=r"no network.*--data FILE\.jsonl") as err:
        load_hub("no-such-org/no-such-dataset", None, "test", how_to_fix="pass --data FILE.jsonl")
    assert time.perf_counter() - start < 10 and "\n" not in str(err.value)
    assert (huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before


def test_lmeval_unknown_task_and_unreachable_dataset_are_usage_errors(tmp_path, monkeypatch):
    pytest.importorskip("lm_eval")
    import socket

    import datasets.config
    import huggingface_hub.constants
    from common import make_tiny_model, make_tokenizer

    model, tok = make_tiny_model(), make_tokenizer()
    with pytest.raises(UsageError, match="lm-eval has no task of that name"):
        get_task("lmeval:no_such_lmeval_task").evaluate_fn(model, tok, limit=2, seed=0, batch_size=2)

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    task_file = tmp_path / "remote.yaml"
    task_file.write_text("task: remote_toy\ndataset_path: no-such-org/no-such-dataset\ntest_split: test\n"
                         "output_type: multiple_choice\ndoc_to_text: '{{q}}'\ndoc_to_choice: '{{c}}'\n"
                         "doc_to_target: 0\nmetric_list:\n  - metric: acc\n")
    with pytest.raises(UsageError, match=r"its dataset cannot be loaded \(no network") as err:
        get_task(f"lmeval:{task_file}").evaluate_fn(model, tok, limit=2, seed=0, batch_size=2)
    assert "\n" not in str(err.value)
