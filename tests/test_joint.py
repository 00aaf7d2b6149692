"""A matched pair's contexts run once for both of its tasks (``eval/joint.py``): the scores, outputs and
metrics must equal evaluating each task on its own, on several architectures."""
from __future__ import annotations

import json

import pytest

from prunescope.eval import engine
from prunescope.eval.runner import evaluate

from common import make_tiny_model, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = ["arith_add_1d_mc", "arith_add_1d_gen", "brackets_mc", "brackets_gen"]


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "gemma2"])
@pytest.mark.parametrize("full_outputs", [False, True])
def test_a_pair_evaluated_together_equals_each_task_alone(model_type, full_outputs, tmp_path):
    model, tok = make_tiny_model(model_type, layers=2), make_tokenizer()
    if model_type != "gpt2":  # rotary positions: room for the bracket contexts (5 shots, one byte per token)
        model.config.max_position_embeddings = 512
    kw = dict(limit=9, seed=0, batch_size=4, progress=False, full_outputs=full_outputs)
    together = evaluate(model, tok, PAIRS, out=tmp_path / "t" / "metrics.json", **kw)
    alone = {}
    for name in PAIRS:
        evaluate(model, tok, [name], out=tmp_path / name / "metrics.json", **kw)
        alone.update({(r["task"], r["id"]): r for r in map(json.loads, (tmp_path / name / "samples.jsonl").open())})
    rows = [json.loads(line) for line in (tmp_path / "t" / "samples.jsonl").open()]
    assert len(rows) == len(alone)
    for row in rows:
        ref = alone[(row["task"], row["id"])]
        if "scores" in row:
            assert row["scores"] == pytest.approx(ref["scores"], abs=1e-4)
            assert row["pred"] == ref["pred"]
        else:
            assert row["output"] == ref["output"]
        assert row["correct"] == ref["correct"]
    # sliding-window attention (gemma2), or contexts longer than gpt2's 128 positions: each task on its own
    for name in PAIRS:
        shared = model_type in ("llama", "qwen2") or (model_type == "gpt2" and name.startswith("arith"))
        assert ("shared_pass" in together["tasks"][name]) == shared, name


def test_engine_joint_pass_equals_separate_calls():
    model, tok = make_tiny_model("llama", layers=3), make_tokenizer()
    shots = "1 + 2 = 3\n4 + 4 = 8\n"
    items = [(shots + f"{a} + {b} =", [f" {a + b}\n", f" {a + b + 1}\n", " 0\n", " 13\n"]) for a in range(4)
             for b in range(3)]
    items.append(("x =", [" y\n", " zz\n"]))  # shares no prefix with the rest
    joint = engine.score_and_generate(model, tok, items, max_new_tokens=6, stop=["\n"], batch_size=5)
    assert joint is not None
    scores = engine.score_choices(model, tok, items, batch_size=5)
    outputs = engine.generate(model, tok, [c for c, _ in items], max_new_tokens=6, stop=["\n"], batch_size=5)
    for got, ref in zip(joint[0], scores):
        assert got == pytest.approx(ref, abs=1e-4)
    assert joint[1] == outputs


def test_contexts_that_cannot_share_are_refused():
    model, tok = make_tiny_model("llama", layers=2), make_tokenizer()
    # trailing whitespace moves into the choices, so scoring sees other context tokens than generation
    assert engine.score_and_generate(model, tok, [("2 + 2 = ", ["4\n", "5\n"])], max_new_tokens=4) is None
    assert engine.score_and_generate(make_tiny_model("gemma2", layers=2), tok, [("2 + 2 =", [" 4\n"])],
                                     max_new_tokens=4) is None
