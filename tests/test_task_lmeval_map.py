"""The lm-eval bridge's pure parts, against hand-worked values: which metric is the headline, chance from the
evaluated documents, group results, the sample rows, the ``task:N`` few-shot suffix and local task files."""
import pytest

from prunescope.errors import UsageError
from prunescope.tasks import get_task
from prunescope.tasks.lmeval import local_task_file, map_results, split_fewshot


def _results(table, rows=(), task="t", output_type="multiple_choice", effective=None, key="results"):
    out = {key: {task: table}, "samples": {task: list(rows)}}
    if effective is not None:
        out["n-samples"] = {task: {"original": 99, "effective": effective}}
    if output_type is not None:
        out["configs"] = {task: {"output_type": output_type}}
    return out


@pytest.mark.parametrize("table, metric", [
    ({"alias": "t", "acc_norm,none": 0.7, "acc_stderr,none": 0.1, "acc,none": 0.5}, "acc,none"),
    ({"accuracy,none": 0.9, "acc_norm,none": 0.4}, "acc_norm,none"),  # "accuracy" is not "acc"
    ({"f1,none": 0.2, "mc2,none": 0.4}, "mc2,none"),
    ({"pass@1,create_test": 0.3, "acc_norm,none": 0.1}, "pass@1,create_test"),
    ({"acc_norm,none": 0.3, "exact_match,strict-match": 0.1}, "exact_match,strict-match"),
    ({"mc2,none": 0.4, "acc_norm,none": 0.3}, "acc_norm,none"),
    ({"f1,none": 0.2, "mc2_stderr,none": 0.4}, "f1,none"),
    ({"alias": "t", "bleu,none": 3, "rouge,none": 1.0}, "bleu,none"),  # none preferred: the first number
])
def test_headline_metric_by_preference(table, metric):
    metrics, _ = map_results("t", _results(table, effective=4))
    assert metrics["metric"] == f"lmeval {metric}" and metrics["accuracy"] == float(table[metric])
    assert isinstance(metrics["accuracy"], float)
    assert metrics["lmeval"] == {k: v for k, v in table.items() if k != metric and not isinstance(v, str)}


def test_no_results_or_no_number_is_a_usage_error():
    with pytest.raises(UsageError, match=r"^lm-eval returned no results for 't'$"):
        map_results("t", {"results": {"other": {"acc,none": 1.0}}})
    with pytest.raises(UsageError, match=r"^lm-eval task 't' reported no numeric metric$"):
        map_results("t", _results({"alias": "t", "acc_stderr,none": 0.1}))


def test_chance_counts_and_sample_rows():
    # 2-way docs with golds 0, 0, 1 and one 4-way doc with gold 0: 1/k = (3/2 + 1/4) / 4 = 0.4375;
    # "always position 0" is right on 3 of 4 = 0.75, the chance.
    rows = [{"doc_id": i, "target": t, "arguments": [["c", "x"]] * k, "acc": float(i % 2), "filtered_resps": [f"r{i}"]}
            for i, (t, k) in enumerate([(0, 2), (0, 2), (1, 2), (0, 4)])]
    metrics, samples = map_results("t", _results({"acc,none": 0.5, "acc_stderr,none": 0.2}, rows, effective=4))
    assert metrics == {"kind": "multiple_choice", "n": 4, "accuracy": 0.5, "correct": 2, "chance": 0.75,
                       "metric": "lmeval acc,none", "lmeval": {"acc_stderr,none": 0.2}}
    assert samples == [{"task": "lmeval:t", "subtask": "t", "id": i, "target": r["target"], "correct": float(i % 2),
                        "response": [f"r{i}"]} for i, r in enumerate(rows)]
    # golds spread evenly: chance is 1/k
    rows = [dict(r, target=i % 2) for i, r in enumerate(rows[:2])]
    metrics, samples = map_results("t", _results({"acc,none": 0.5}, rows, effective=2), label="lmeval:t:5")
    assert metrics["chance"] == 0.5 and {s["task"] for s in samples} == {"lmeval:t:5"}
    # text targets count for 1/k only
    rows = [{"doc_id": 0, "target": "yes", "arguments": [1, 2, 3, 4], "acc": 1.0}]
    assert map_results("t", _results({"acc,none": 1.0}, rows, effective=1))[0]["chance"] == 0.25


def test_generation_and_rolling_tasks_have_no_choice_chance():
    rows = [{"doc_id": 0, "target": 3, "arguments": [["Q", {"until": ["\n"]}]], "exact_match": 1.0}]
    metrics, samples = map_results("t", _results({"exact_match,strict-match": 0.25}, rows, output_type="generate_until",
                                                 effective=8))
    assert (metrics["kind"], metrics["chance"], metrics["n"], metrics["correct"]) == ("generate", 0.0, 8, 2)
    assert samples[0]["correct"] == 1.0 and samples[0]["response"] is None
    assert map_results("t", _results({"word_perplexity,none": 3.0}, output_type="loglikelihood_rolling"))[0]["kind"] \
        == "perplexity"
    assert map_results("t", _results({"acc,none": 1.0}, output_type="loglikelihood"))[0]["kind"] == "multiple_choice"
    assert map_results("t", _results({"acc,none": 1.0}, output_type="other_kind"))[0]["kind"] == "other_kind"
    assert map_results("t", _results({"acc,none": 1.0}, output_type=None))[0]["kind"] == "multiple_choice"


def test_group_results_sum_their_subtasks():
    results = {"groups": {"g": {"acc,none": 0.625}}, "results": {"g_a": {"acc,none": 0.5}},
               "n-samples": {"g_a": {"effective": 3}, "g_b": {"effective": 5}},
               "samples": {"g_a": [{"doc_id": 0, "target": 1, "arguments": [1, 2], "acc": 1.0}],
                           "g_b": [{"doc_id": 0, "target": 1, "arguments": [1, 2], "acc": 0.0}]}}
    metrics, samples = map_results("g", results)
    assert (metrics["n"], metrics["correct"], metrics["accuracy"]) == (8, 5, 0.625)
    assert [(s["subtask"], s["correct"]) for s in samples] == [("g_a", 1.0), ("g_b", 0.0)]
    assert metrics["chance"] == 1.0  # both golds at position 1


@pytest.mark.parametrize("spec, want", [("arc_easy:5", ("arc_easy", 5)), ("arc_easy", ("arc_easy", None)),
                                        ("a:b:3", ("a:b", 3)), (":5", (":5", None)), ("x:abc", ("x:abc", None)),
                                        ("dir/t.yaml:0", ("dir/t.yaml", 0))])
def test_split_fewshot(spec, want):
    assert split_fewshot(spec) == want


def test_shot_suffix_without_a_number_is_refused():
    with pytest.raises(UsageError) as err:
        split_fewshot("arc_easy:")
    assert str(err.value) == "--tasks lmeval:arc_easy:: give the number of shots after the colon, e.g. lmeval:arc_easy:5"


def test_local_task_files(tmp_path):
    assert local_task_file("hellaswag") is None
    (tmp_path / "t.yml").write_text("task: my_toy\ndataset_path: json\n")
    assert local_task_file(str(tmp_path / "t.yml")) == ("my_toy", tmp_path.resolve())
    (tmp_path / "list.yaml").write_text("- task: x\n")
    with pytest.raises(UsageError) as err:
        local_task_file(str(tmp_path / "list.yaml"))
    assert str(err.value) == f"--tasks lmeval:{tmp_path / 'list.yaml'}: an lm-eval task file needs a 'task: <name>' line"
    (tmp_path / "num.yaml").write_text("task: 5\n")
    with pytest.raises(UsageError, match="needs a 'task: <name>' line"):
        local_task_file(str(tmp_path / "num.yaml"))
    with pytest.raises(UsageError) as err:
        local_task_file(str(tmp_path / "none.yaml"))
    assert str(err.value) == f"--tasks lmeval:{tmp_path / 'none.yaml'}: no such lm-eval task file; check the path"


def test_bridge_task_spec():
    task = get_task("lmeval:arc_easy:5")
    assert (task.name, task.kind, task.family) == ("lmeval:arc_easy:5", "multiple_choice", "lmeval")
    assert task.description == "lm-evaluation-harness task 'arc_easy', 5-shot (optional extra)"
    assert get_task("lmeval:piqa").description == "lm-evaluation-harness task 'piqa' (optional extra)"
    assert callable(task.evaluate_fn)
    with pytest.raises(UsageError) as err:
        task.items(3)
    assert str(err.value) == "lmeval:arc_easy is run by lm-eval and has no items of its own; use a built-in task"
    with pytest.raises(UsageError) as err:
        get_task("lmeval:")
    assert str(err.value) == "--tasks lmeval: needs a task name, e.g. lmeval:hellaswag"


def test_samples_count_this_task_only_and_missing_counts_are_zero():
    results = _results({"acc,none": 1.0}, effective=4)
    results["n-samples"]["other"] = {"effective": 6}
    assert map_results("t", results)[0]["n"] == 4
    group = {"groups": {"g": {"acc,none": 1.0}}, "n-samples": {"a": {"effective": 3}, "b": {"original": 9}}}
    assert map_results("g", group)[0]["n"] == 3
    metrics = map_results("g", {"groups": {"g": {"acc,none": 1.0}}})[0]
    assert (metrics["n"], metrics["correct"]) == (0, 0)


class _FakeHarness:
    """lm-eval's entry points, recording what the bridge hands them (the real harness runs in test_tasks.py's
    local task file test; this one checks the bridge's wiring and its error paths without a model)."""

    def __init__(self, monkeypatch, result=None, error=None):
        import sys
        import types

        self.calls, self.result, self.error = [], result, error
        fake, models, hf, tasks = (types.ModuleType(n) for n in ("lm_eval", "lm_eval.models",
                                                                   "lm_eval.models.huggingface", "lm_eval.tasks"))
        harness = self

        class HFLM:
            def __init__(self, pretrained, tokenizer, batch_size):
                self.args = (pretrained, tokenizer, batch_size)

        class TaskManager:
            def __init__(self, include_path):
                self.include_path = include_path

        def simple_evaluate(**kw):
            harness.calls.append(kw)
            if harness.error is not None:
                raise harness.error
            return harness.result
        fake.simple_evaluate, hf.HFLM, tasks.TaskManager = simple_evaluate, HFLM, TaskManager
        for name, module in (("lm_eval", fake), ("lm_eval.models", models), ("lm_eval.models.huggingface", hf),
                             ("lm_eval.tasks", tasks)):
            monkeypatch.setitem(sys.modules, name, module)


def test_the_bridge_hands_lm_eval_the_model_seeds_and_shots(tmp_path, monkeypatch):
    result = _results({"acc,none": 0.5}, effective=2, task="piqa")
    result["configs"]["piqa"]["num_fewshot"] = 0
    harness = _FakeHarness(monkeypatch, result)
    metrics, _ = get_task("lmeval:piqa").evaluate_fn("MODEL", "TOK", limit=3, seed=7)
    (call,) = harness.calls
    assert call.pop("model").args == ("MODEL", "TOK", 16)  # batch_size "auto" -> lm-eval's 16
    assert call == {"tasks": ["piqa"], "limit": 3, "random_seed": 7, "numpy_random_seed": 7, "torch_random_seed": 7,
                    "fewshot_random_seed": 7, "log_samples": True, "num_fewshot": None}
    assert metrics["num_fewshot"] == 0  # what lm-eval says it used
    del result["configs"]["piqa"]["num_fewshot"]
    metrics, _ = get_task("lmeval:piqa:3").evaluate_fn("MODEL", "TOK")
    assert harness.calls[-1]["random_seed"] == 0 and harness.calls[-1]["num_fewshot"] == 3
    assert harness.calls[-1]["model"].args[2] == 16 and metrics["num_fewshot"] == 3
    (tmp_path / "toy.yaml").write_text("task: toy_task\n")
    harness.result = _results({"acc,none": 1.0}, effective=1, task="toy_task")
    metrics, samples = get_task(f"lmeval:{tmp_path / 'toy.yaml'}").evaluate_fn("M", "T", batch_size=4)
    call = harness.calls[-1]
    assert call["tasks"] == ["toy_task"] and call["task_manager"].include_path == str(tmp_path.resolve())
    assert call["model"].args == ("M", "T", 4) and metrics["accuracy"] == 1.0
    harness.result = _results({"acc,none": 1.0}, effective=1, task="piqa", output_type=None)  # no configs at all
    assert get_task("lmeval:piqa:2").evaluate_fn("M", "T")[0]["num_fewshot"] == 2
    harness.result = {**_results({"acc,none": 1.0}, effective=1, task="piqa"), "configs": {"other": {}}}
    assert get_task("lmeval:piqa:2").evaluate_fn("M", "T")[0]["num_fewshot"] == 2
    harness.result = None
    with pytest.raises(UsageError) as err:
        get_task("lmeval:piqa").evaluate_fn("M", "T")
    assert str(err.value) == "lm-eval produced no results for 'piqa'"


def test_the_bridge_turns_lm_eval_failures_into_one_line(monkeypatch):
    import socket

    harness = _FakeHarness(monkeypatch, error=KeyError("'nope' is not a registered task"))
    with pytest.raises(UsageError) as err:
        get_task("lmeval:nope").evaluate_fn("M", "T")
    assert str(err.value) == "lmeval:nope: lm-eval has no task of that name; `lm-eval ls tasks` lists them"
    harness.error = KeyError("acc")
    with pytest.raises(KeyError):
        get_task("lmeval:nope").evaluate_fn("M", "T")

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    harness.error = ConnectionError("cannot reach the hub")
    with pytest.raises(UsageError) as err:
        get_task("lmeval:arc_easy:5").evaluate_fn("M", "T")
    from prunescope.hub import NO_NETWORK

    assert str(err.value) == (f"lmeval:arc_easy: its dataset cannot be loaded ({NO_NETWORK}); lm-eval tasks read the "
                              "hub; use a local lm-eval task file (lmeval:path/to/task.yaml) or a prunescope task")
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [])  # the hub resolves: lm-eval's own reason
    with pytest.raises(UsageError, match=r"^lmeval:arc_easy: its dataset cannot be loaded \(cannot reach the hub\); "):
        get_task("lmeval:arc_easy:5").evaluate_fn("M", "T")


def test_without_lm_eval_the_error_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(UsageError) as err:
        get_task("lmeval:piqa").evaluate_fn("M", "T")
    assert str(err.value) == "lmeval: tasks need lm-evaluation-harness: pip install 'prunescope[lmeval]'"
