"""The criterion registry's entry point and the scores.json format, checked against hand-worked values
with a stand-in criterion (no scoring computation: the tiny model only supplies its layer count)."""
from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import pytest

from common import make_tiny_model
from prunescope.criteria import CRITERIA, CriterionResult, load_scores, register_criterion, save_scores
from prunescope.criteria.base import (compute_scores, model_name, order_from_scores, plus_rule_layers,
                                      protected_order, rank_scores)
from prunescope.errors import UsageError


@pytest.mark.parametrize("scores, order", [
    ([3.0, 1.0, 2.0], [1, 2, 0]),
    ([1.0, 1.0, 0.0], [2, 0, 1]),  # ties: the lower index first
    ([0.5, -2.0, 0.5, -2.0], [1, 3, 0, 2]),
    ([], []),
])
def test_order_from_scores_is_ascending_with_ties_to_the_lower_index(scores, order):
    assert order_from_scores(scores) == order


@pytest.mark.parametrize("total, kept", [
    (30, [0, 1, 2, 3, 28, 29]), (8, [0, 1, 2, 3, 6, 7]), (7, [0, 1, 2, 3, 5, 6]), (6, [0, 1, 2, 3, 4, 5]),
    (3, [0, 1, 2]),
])
def test_plus_rule_keeps_the_first_four_and_last_two_blocks(total, kept):
    assert plus_rule_layers(total) == kept


def test_protected_blocks_go_last_each_part_by_score():
    scores = [0.5, 0.1, 0.3, 0.2, 0.9, 0.0]
    # ascending: 5 (0.0), 1, 3, 2, 0, 4 (0.9); 1 and 5 protected
    assert protected_order(scores, [1, 5]) == [3, 2, 0, 4, 5, 1]
    assert protected_order([1.0, 1.0, 1.0, 1.0], [0, 2]) == [1, 3, 0, 2]
    assert protected_order(scores, []) == [5, 1, 3, 2, 0, 4]


@pytest.mark.parametrize("order, scores", [
    ([2, 0, 1], [0.5, 1.0, 0.0]),
    ([0, 1, 2, 3, 4], [0.0, 0.25, 0.5, 0.75, 1.0]),
    ([0], [0.0]),
    ([1, 0], [1.0, 0.0]),
])
def test_rank_scores_spread_the_order_over_zero_to_one(order, scores):
    assert rank_scores(order) == scores


def test_model_name_prefers_the_recorded_source_then_the_config():
    config = SimpleNamespace(_name_or_path="org/base")
    assert model_name(SimpleNamespace(prunescope_source="smollm2-135m", config=config)) == "smollm2-135m"
    assert model_name(SimpleNamespace(prunescope_source=None, config=config)) == "org/base"
    assert model_name(SimpleNamespace(config=config)) == "org/base"
    assert model_name(SimpleNamespace(config=SimpleNamespace(_name_or_path=""))) == "model"
    assert model_name(SimpleNamespace(config=SimpleNamespace())) == "model"


@pytest.fixture
def fixed():
    """Registers criterion ``test_fixed`` whose result is ``fixed.result`` and which records what it saw."""
    seen = SimpleNamespace(result=CriterionResult(scores=[2, 0, 1, 0]), calls=[], batches=False, fail=False)

    def criterion(ctx):
        seen.calls.append({"ctx": ctx, "training": ctx.model.training})
        if seen.batches:
            first = ctx.calibration_batches()
            assert ctx.calibration_batches() is first, "the calibration set is built once"
        if seen.fail:
            raise RuntimeError("criterion failed")
        return seen.result
    register_criterion("test_fixed")(criterion)
    try:
        yield seen
    finally:
        CRITERIA._items.pop("test_fixed", None)


@pytest.fixture(scope="module")
def model4():
    model = make_tiny_model("llama", layers=4)
    model.prunescope_source = "tiny-llama"
    return model


def test_result_holds_the_scores_an_order_by_ascending_score_and_the_config(fixed, model4, tokenizer):
    out = compute_scores(model4, tokenizer, "test_fixed", seed=7, max_calib_tokens=99, progress=False)
    seconds = out["config"].pop("seconds")
    assert 0 <= seconds < 5
    assert out == {"model": "tiny-llama", "criterion": "test_fixed", "num_layers": 4,
                   "scores": [2.0, 0.0, 1.0, 0.0], "order": [1, 3, 2, 0],
                   "config": {"seed": 7, "num_layers_arg": None, "max_calib_tokens": 99}}
    assert all(type(s) is float for s in out["scores"])
    ctx = fixed.calls[0]["ctx"]
    assert (ctx.seed, ctx.max_calib_tokens, ctx.progress, ctx.fast) == (7, 99, False, True)
    fixed.result = CriterionResult(scores=[0.1, 0.2, 0.3, 0.4], order=[3.0, 0, 2, 1], info={"extra": "x", "seed": 1})
    out = compute_scores(model4, tokenizer, "test_fixed", num_layers=3, fast=False)
    assert out["order"] == [3, 0, 2, 1] and all(type(i) is int for i in out["order"])
    assert out["config"]["num_layers_arg"] == 3 and out["config"]["extra"] == "x"
    assert out["config"]["seed"] == 1, "the criterion's own info is recorded last"
    assert fixed.calls[1]["ctx"].fast is False and fixed.calls[1]["ctx"].num_layers == 3


def test_score_layers_passes_every_option_to_the_criterion(fixed, model4, tokenizer):
    from prunescope.criteria import score_layers
    score_layers(model4, tokenizer, "test_fixed")
    ctx = fixed.calls[0]["ctx"]
    assert (ctx.calib, ctx.num_layers, ctx.seed, ctx.max_calib_tokens, ctx.calib_samples, ctx.calib_seq_len, ctx.tasks,
            ctx.task_scorer, ctx.plus_rule, ctx.angular_tokens, ctx.greedy_objective, ctx.progress, ctx.fast) == (
        None, None, 0, None, None, None, None, None, True, "last", "generate", True, True)

    def scorer(model):
        return 1.0
    score_layers(model4, tokenizer, "test_fixed", calib=["ab"], num_layers=2, seed=5, max_calib_tokens=9,
                 calib_samples=3, calib_seq_len=7, tasks=["t"], task_scorer=scorer, plus_rule=False,
                 angular_tokens="all", greedy_objective="teacher_forced", progress=False)
    ctx = fixed.calls[1]["ctx"]
    assert (ctx.calib, ctx.num_layers, ctx.seed, ctx.max_calib_tokens, ctx.calib_samples, ctx.calib_seq_len, ctx.tasks,
            ctx.task_scorer, ctx.plus_rule, ctx.angular_tokens, ctx.greedy_objective, ctx.progress, ctx.fast) == (
        ["ab"], 2, 5, 9, 3, 7, ["t"], scorer, False, "all", "teacher_forced", False, True)


def test_seconds_are_rounded_to_milliseconds(fixed, model4, tokenizer):
    fixed.result = CriterionResult(scores=[0.0] * 4, info={})
    real = fixed.result

    def slow(ctx):  # long enough that the time has digits below a millisecond
        __import__("time").sleep(0.0123)
        return real
    CRITERIA._items["test_fixed"] = slow
    seconds = compute_scores(model4, tokenizer, "test_fixed")["config"]["seconds"]
    assert type(seconds) is float and 0.012 <= seconds < 5 and seconds == round(seconds, 3)


def test_calibration_set_is_built_once_and_recorded(fixed, model4, tokenizer):
    fixed.batches = True
    out = compute_scores(model4, tokenizer, "test_fixed", calib=["abcdefgh", "ijk"], seed=3, progress=False)
    config = {k: v for k, v in out["config"].items() if k != "seconds"}
    assert config == {"seed": 3, "num_layers_arg": None, "max_calib_tokens": None, "calib": "list of 2 texts",
                      "calib_seed": 3, "calib_mode": "texts", "calib_texts": 2, "calib_samples": 2,
                      "calib_seq_len": 128, "calib_tokens": 11}
    (batch,) = fixed.calls[0]["ctx"].calibration_batches()
    assert batch.input_ids[0].tolist() == tokenizer("abcdefgh").input_ids


def test_scoring_runs_in_eval_mode_and_restores_the_training_flag(fixed, model4, tokenizer):
    model4.train()
    try:
        compute_scores(model4, tokenizer, "test_fixed")
        assert fixed.calls[-1]["training"] is False and model4.training is True
        fixed.fail = True
        with pytest.raises(RuntimeError, match="criterion failed"):
            compute_scores(model4, tokenizer, "test_fixed")
        assert model4.training is True, "restored even when the criterion fails"
    finally:
        model4.eval()
    fixed.fail = False
    compute_scores(model4, tokenizer, "test_fixed")
    assert fixed.calls[-1]["training"] is False and model4.training is False


@pytest.mark.parametrize("kwargs, message", [
    (dict(angular_tokens="first"), r"^--angular-tokens 'first': choose last \(the paper\) or all$"),
    (dict(greedy_objective="loss"), r"^--greedy-objective 'loss': choose generate \(the paper\) or teacher_forced"),
    (dict(num_layers=4), r"^--num-layers 4 must be between 1 and 3 for a model with 4 layers$"),
    (dict(num_layers=-1), r"^--num-layers -1 must be between 1 and 3"),
])
def test_bad_options_are_refused_before_scoring(fixed, model4, tokenizer, kwargs, message):
    with pytest.raises(UsageError, match=message):
        compute_scores(model4, tokenizer, "test_fixed", **kwargs)
    assert fixed.calls == []


@pytest.mark.parametrize("kwargs", [dict(num_layers=1), dict(num_layers=3), dict(num_layers=0),
                                    dict(angular_tokens="all"), dict(greedy_objective="teacher_forced")])
def test_good_options_at_the_bounds_are_accepted(fixed, model4, tokenizer, kwargs):
    compute_scores(model4, tokenizer, "test_fixed", **kwargs)
    ctx = fixed.calls[0]["ctx"]
    assert all(getattr(ctx, k) == v for k, v in kwargs.items())


def test_a_criterion_with_the_wrong_number_of_scores_is_refused(fixed, model4, tokenizer):
    fixed.result = CriterionResult(scores=[1.0, 2.0, 3.0])
    with pytest.raises(UsageError, match=r"^the criterion result: scores must be 4 finite numbers$"):
        compute_scores(model4, tokenizer, "test_fixed")


GOOD = {"model": "m", "criterion": "c", "num_layers": 3, "scores": [0.5, 1, -2.0], "order": [2, 0, 1]}


@pytest.mark.parametrize("change, message", [
    (None, None),
    ({"num_layers": 1, "scores": [0.0], "order": [0]}, None),
    ("list", r"is not a scores file \(expected a JSON object\)$"),
    ({"order": "drop", "model": "drop"},
     r"is not a scores file: missing model, order; write one with `prunescope score`"),
    ({"criterion": "drop"}, "missing criterion;"),
    ({"num_layers": "drop"}, "missing num_layers;"),
    ({"scores": "drop"}, "missing scores;"),
    ({"num_layers": "3"}, "num_layers must be a positive integer"),
    ({"num_layers": 0, "scores": [], "order": []}, "num_layers must be a positive integer"),
    ({"scores": [0.5, 1]}, "scores must be 3 finite numbers"),
    ({"scores": [0.5, 1, 2, 3]}, "scores must be 3 finite numbers"),
    ({"scores": [0.5, "1", 2]}, "scores must be 3 finite numbers"),
    ({"scores": [0.5, float("nan"), 2]}, "scores must be 3 finite numbers"),
    ({"scores": [0.5, float("inf"), 2]}, "scores must be 3 finite numbers"),
    ({"scores": {"0": 1}}, "scores must be 3 finite numbers"),
    ({"order": [2, 0, 0]}, r"order must list each of the 3 layers \(0-based\) once"),
    ({"order": [1, 2, 3]}, "order must list each"),
    ({"order": [2, 0]}, "order must list each"),
    ({"order": "201"}, "order must list each"),
])
def test_scores_files_are_validated_on_load(tmp_path, change, message):
    if change == "list":
        data = [GOOD]
    else:
        data = {k: v for k, v in {**GOOD, **(change or {})}.items() if v != "drop"}
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(data))
    if message is None:
        assert load_scores(path) == data
        assert json.loads(save_scores(data, tmp_path / "again.json").read_text()) == data
        return
    names_the_file = "missing" in message or "expected" in message
    with pytest.raises(UsageError, match="^" + re.escape(str(path)) if names_the_file else message):
        load_scores(path)
    with pytest.raises(UsageError, match=message):
        load_scores(path)
    with pytest.raises(UsageError, match=r"^the scores"):
        save_scores(data, tmp_path / "refused.json")
    assert not (tmp_path / "refused.json").exists()


def test_save_scores_writes_what_load_scores_reads(tmp_path):
    data = {**GOOD, "config": {"seed": 0, "seconds": 0.25}}
    written = save_scores(data, tmp_path / "sub" / "s.json")
    assert json.loads((tmp_path / "sub" / "s.json").read_text()) == data
    assert load_scores(written) == data
    assert math.isfinite(load_scores(written)["scores"][2])
