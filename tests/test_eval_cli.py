import json

import pytest

from common import make_tiny_model, make_tokenizer, save_tiny
from prunescope.cli import main
from prunescope.eval import evaluate, format_table
from prunescope.eval.degeneration import bleu, degeneration, repeated_ngram_rate, self_bleu
from prunescope.eval.metrics import add_retention, chance_normalised, wilson_interval
from prunescope.tasks import gsm8k


def test_wilson_interval_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_chance_normalisation_and_retention():
    assert chance_normalised(0.25, 0.25) == 0 and chance_normalised(1.0, 0.25) == 1
    assert chance_normalised(0.625, 0.25) == pytest.approx(0.5)
    tasks = {"a": {"accuracy": 0.3, "normalized": 0.2}, "b": {"accuracy": 0.5}}
    add_retention(tasks, {"tasks": {"a": {"accuracy": 0.6, "normalized": 0.4}, "c": {"accuracy": 1.0}}})
    assert tasks["a"]["retention"] == pytest.approx(0.5) and tasks["a"]["normalized_retention"] == pytest.approx(0.5)
    assert "retention" not in tasks["b"]


def test_degeneration_measures():
    assert repeated_ngram_rate("a b c d", 2) == 0
    assert repeated_ngram_rate("a b a b a b", 2) == pytest.approx(1 - 2 / 5)
    assert repeated_ngram_rate("a", 2) is None
    assert bleu("the cat sat on the mat".split(), ["the cat sat on the mat".split()]) == pytest.approx(1.0)
    assert bleu("x y z".split(), ["a b c".split()]) == 0
    loop = "I like cats. I like cats. I like cats."
    varied = "I like cats. Dogs bark at night. The sea is cold."
    assert self_bleu(loop) == pytest.approx(1.0) and self_bleu(varied) < 0.2
    assert self_bleu("one sentence only") is None
    d = degeneration([loop, varied, ""])
    assert d["mean_length"] == pytest.approx((9 + 11 + 0) / 3)
    assert 0 < d["repeated_ngram_rate_3"] < 1 and set(d) >= {"repeated_ngram_rate_2", "repeated_ngram_rate_4", "self_bleu"}


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("llama", layers=2, seed=3), make_tokenizer()


def test_evaluate_writes_metrics_and_samples(tiny, tmp_path):
    model, tok = tiny
    out = tmp_path / "run" / "metrics.json"
    report = evaluate(model, tok, ["arith_add_1d_gen", "arith_add_2d_mc", "brackets_balanced_mc"], limit=6, seed=1,
                      batch_size=4, out=out, progress=False, model_name="tiny")
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert on_disk["model"] == "tiny" and on_disk["seed"] == 1
    gen, mc = on_disk["tasks"]["arith_add_1d_gen"], on_disk["tasks"]["arith_add_2d_mc"]
    # answers stop once their verdict is decided, so no degeneration measures (full_outputs=True keeps them)
    assert gen["kind"] == "generate" and gen["n"] == 6 and "degeneration" not in gen and "outputs" in gen
    assert mc["kind"] == "multiple_choice" and mc["n"] == 6
    # chance from these 6 items: gold positions are balanced per block of 4, so one position holds 2 of 6
    assert mc["chance"] >= 2 / 6 and mc["chance_strategy"] in ("same position", "same answer")
    assert mc["bos"] is False and mc["pair"]  # the byte tokenizer adds no special tokens == {"task": "arith_add_2d_gen", "matched": True}
    lo, hi = mc["ci95"]
    assert lo <= mc["accuracy"] <= hi
    assert mc["normalized"] == pytest.approx((mc["accuracy"] - mc["chance"]) / (1 - mc["chance"]))
    rows = [json.loads(line) for line in (out.parent / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 18
    mc_rows = [r for r in rows if r["task"] == "arith_add_2d_mc"]
    assert sum(r["correct"] for r in mc_rows) == mc["correct"]
    assert all(r["pred"] == max(range(4), key=r["scores"].__getitem__) for r in mc_rows)
    assert not list(out.parent.glob(".*.tmp"))

    again = evaluate(model, tok, ["arith_add_2d_mc"], limit=6, seed=1, batch_size=16, baseline=out, progress=False)
    assert again["tasks"]["arith_add_2d_mc"]["accuracy"] == mc["accuracy"]  # batch size does not change results
    if mc["accuracy"] > 0:
        assert again["tasks"]["arith_add_2d_mc"]["retention"] == pytest.approx(1.0)
    assert "arith_add_2d_mc" in format_table(again)


def test_evaluate_gsm8k_scores_strict_and_flexible(tiny, gsm8k_dir):
    """Outputs written by hand from the first three reference answers: one in GSM8K's ``#### n`` format,
    one with the right number only at the end of a sentence, one wrong."""
    import json as _json

    _, tok = tiny
    golds = [_json.loads(line)["answer"].split("####")[-1].strip().replace(",", "")
             for line in (gsm8k_dir / "test.jsonl").open()][:3]

    class Backend:
        def generate(self, prompts, **kw):
            assert len(prompts) == 3
            return [f"Step by step.\n#### {golds[0]}", f"So the answer is {golds[1]}.", "#### 123456789"]

    report = evaluate(None, tok, [gsm8k.gsm8k_task(gsm8k_dir)], limit=3, progress=False, chat=False,
                      backend=Backend(), model_name="hand-written")
    m = report["tasks"]["gsm8k"]
    assert m["n"] == 3 and m["correct"] == 2 and m["accuracy"] == pytest.approx(2 / 3)  # flexible is the headline
    assert m["strict_accuracy"]["accuracy"] == pytest.approx(1 / 3)
    assert m["flexible_accuracy"]["accuracy"] == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny") / "llama", "llama", layers=2)


def test_cli_eval_prints_table_and_writes_files(model_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    rc = main(["eval", "--model", str(model_dir), "--tasks", "arith_add_1d_gen,brackets4_mc", "--limit", "3",
               "--batch-size", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "arith_add_1d_gen" in text and "brackets4_mc" in text and "chance" in text
    assert (tmp_path / "samples.jsonl").is_file()
    rc = main(["eval", "--model", str(model_dir), "--tasks", "brackets4_mc", "--limit", "3", "--baseline", str(out),
               "--no-progress"])
    assert rc == 0 and "retention" in capsys.readouterr().out


def test_cli_tasks_lists_kind_and_chance(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "arith_mixed_first_digit" in out and "same position" in out and "multiple_choice" in out
    assert "gsm8k_mc (not matched)" in out


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("prunescope: error: "), lines
    return lines[0]


def test_cli_unknown_task_did_you_mean(model_dir, capsys):
    assert main(["eval", "--model", str(model_dir), "--tasks", "brackets_gne"]) == 2
    assert "did you mean 'brackets_gen'" in _error(capsys)


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_cli_bad_limit(model_dir, capsys, limit):
    assert main(["eval", "--model", str(model_dir), "--tasks", "brackets_gen", f"--limit={limit}"]) == 2
    assert "--limit" in _error(capsys)


def test_cli_malformed_data_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "gsm.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n\n{"question": oops}\n')
    assert main(["eval", "--model", str(model_dir), "--tasks", "gsm8k", "--data", str(bad), "--no-progress"]) == 2
    err = _error(capsys)
    assert "gsm.jsonl line 3" in err


def test_cli_dataset_offline_says_how_to_pass_data(model_dir, capsys, monkeypatch):
    monkeypatch.delenv(gsm8k.ENV_VAR, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    gsm8k.load_rows.cache_clear()
    assert main(["eval", "--model", str(model_dir), "--tasks", "gsm8k_mc", "--limit", "2", "--no-progress"]) == 2
    assert "--data" in _error(capsys)


def test_cli_chat_template_missing(tmp_path, capsys):
    path = save_tiny(tmp_path / "nochat", "llama", layers=1)
    cfg = json.loads((path / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))
    for f in path.glob("chat_template.*"):
        f.unlink()
    rc = main(["eval", "--model", str(path), "--tasks", "brackets_gen", "--limit", "1", "--chat-template", "on"])
    assert rc == 2
    assert "no chat template" in _error(capsys)


@pytest.mark.slow
def test_default_model_is_above_chance_on_one_digit_addition():
    from prunescope.models import load_model

    model, tok = load_model("smollm2-135m")
    report = evaluate(model, tok, ["arith_add_1d_gen", "arith_add_2d_mc"], limit=50, progress=False)
    gen, mc = report["tasks"]["arith_add_1d_gen"], report["tasks"]["arith_add_2d_mc"]
    assert gen["ci95"][0] > 0.1, gen  # a random generator almost never writes the exact sum
    assert mc["ci95"][0] > mc["chance"], mc
