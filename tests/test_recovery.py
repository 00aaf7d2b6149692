"""Recovery: methods train, losses fall, merged == base+adapter, resume is exact, self-generated data is
filtered, bad input is one line with exit code 2. Tiny random models and a byte tokenizer only."""
from __future__ import annotations

import json

import pytest
import torch
from common import make_tiny_model, make_tokenizer, save_tiny

from prunescope.cli import main
from prunescope.io import write_json
from prunescope.recovery import RecoverConfig, recover
from prunescope.recovery import data as recovery_data
from prunescope.recovery import generation as recovery_generation
from prunescope.recovery import loop as recovery_loop
from prunescope.tasks.spec import TASKS, Item, Task

TASK = "recovery_test_add"


pytestmark = pytest.mark.usefixtures("one_thread")


def _items(n, seed, split):
    """Calibration sums have a first operand of 5-9, evaluation ones only operands of 0-4: disjoint."""
    rng = torch.Generator().manual_seed(seed + (1000 if split == "calib" else 0))
    pairs = torch.randint(0, 5, (n or 12, 2), generator=rng)
    pairs[:, 0] += 5 if split == "calib" else 0
    pairs = pairs.tolist()
    return [Item(id=f"{split}{i}", prompt=f"{a}+{b}=", gold=str(a + b), target=str(a + b))
            for i, (a, b) in enumerate(pairs)]


if TASK not in TASKS:
    TASKS.register(TASK, lambda: Task(name=TASK, kind="generate", description="one-digit sums", chance=0.0,
                                      make_items=_items, stop=["\n"], max_new_tokens=3,
                                      check=lambda item, out: out.strip() == item.gold))


def _pairs_file(path, n=12):
    rows = [{"prompt": f"say {w}", "response": w * 3} for w in ["ab", "cd", "ef", "gh", "ij", "kl", "mn", "op",
                                                                "qr", "st", "uv", "wx"][:n]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _log(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _cfg(**kw):
    base = dict(data="dataset", max_steps=30, batch_size=4, lr=3e-3, lora_r=4, save_every=0, max_seq_len=64)
    return RecoverConfig(**{**base, **kw})


@pytest.mark.parametrize("method,lr", [("lora", 1e-2), ("partial", 3e-3), ("full", 3e-3)])
def test_loss_goes_down(tmp_path, method, lr):
    tok = make_tokenizer()
    model = make_tiny_model("llama", layers=4)
    before = {n: p.clone() for n, p in model.named_parameters()}
    summary = recover(model, tok, config=_cfg(method=method, lr=lr, prompts=str(_pairs_file(tmp_path / "p.jsonl"))),
                      out=tmp_path / "out")
    losses = [r["loss"] for r in _log(tmp_path / "out")]
    assert len(losses) == 30 == summary["steps"]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    assert summary["response_tokens"] > 0 and summary["tokens_seen"] > summary["response_tokens"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    if method == "partial":  # only the last 3 blocks and lm_head (tied to the embedding here or not)
        assert changed and all(n.startswith(("model.layers.1.", "model.layers.2.", "model.layers.3.", "lm_head",
                                              "model.embed"))
                               for n in changed)
        assert "model.layers.0.self_attn.q_proj.weight" not in changed
    else:  # lora is merged in place, so base weights changed too
        assert "model.layers.0.self_attn.q_proj.weight" in changed
    assert (tmp_path / "out" / "adapter").is_dir() == (method == "lora")


def test_merged_equals_base_plus_adapter(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from prunescope.models import load_model
    src = save_tiny(tmp_path / "pruned", "llama", layers=4)
    write_json(src / "prunescope.json", {"base_model": "some/base", "removed_layers": [2, 3]})
    model, tok = load_model(str(src), device="cpu")
    recover(model, tok, config=_cfg(max_steps=10, prompts=str(_pairs_file(tmp_path / "p.jsonl"))), out=tmp_path / "out")
    ids = torch.tensor([list(range(3, 40))])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged").eval()
    base = AutoModelForCausalLM.from_pretrained(src).eval()
    with torch.no_grad():
        base_logits = base(ids).logits
        adapted = PeftModel.from_pretrained(base, tmp_path / "out" / "adapter").eval()
        adapter_logits = adapted(ids).logits
        merged_logits = merged(ids).logits
    assert not torch.allclose(base_logits, adapter_logits, atol=1e-3)  # the adapter learned something
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-4, rtol=1e-4)
    record = json.loads((tmp_path / "out" / "merged" / "prunescope.json").read_text())
    assert record["removed_layers"] == [2, 3] and record["recovery"]["steps"] == 10
    assert record["recovery"]["config"]["method"] == "lora"
    assert (tmp_path / "out" / "merged" / "tokenizer_config.json").is_file()


def _trainable(out):
    from safetensors.torch import load_file
    return load_file(str(out / "checkpoint" / "trainable.safetensors"))


def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    prompts = str(_pairs_file(tmp_path / "p.jsonl"))
    cfg = dict(max_steps=8, save_every=2, lora_dropout=0.1, prompts=prompts, grad_accum=2, batch_size=3)
    recover(make_tiny_model("llama", layers=4), make_tokenizer(), config=_cfg(**cfg), out=tmp_path / "a")

    real_save = recovery_loop.save_checkpoint

    def save_then_crash(out, model, optimizer, scheduler, state, rows):
        real_save(out, model, optimizer, scheduler, state, rows)
        if state["step"] == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(recovery_loop, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        recover(make_tiny_model("llama", layers=4), make_tokenizer(), config=_cfg(**cfg), out=tmp_path / "b")
    monkeypatch.setattr(recovery_loop, "save_checkpoint", real_save)
    assert len(_log(tmp_path / "b")) == 4 and not (tmp_path / "b" / "merged").exists()
    recover(make_tiny_model("llama", layers=4), make_tokenizer(), config=_cfg(**cfg), out=tmp_path / "b")

    # a shorter run extended with a larger --max-steps ends in the same place too
    recover(make_tiny_model("llama", layers=4), make_tokenizer(), config=_cfg(**{**cfg, "max_steps": 4}),
            out=tmp_path / "c")
    recover(make_tiny_model("llama", layers=4), make_tokenizer(), config=_cfg(**cfg), out=tmp_path / "c")

    a = _trainable(tmp_path / "a")
    assert a and all(n.endswith(("lora_A.default.weight", "lora_B.default.weight")) for n in a)
    for other in ("b", "c"):
        b = _trainable(tmp_path / other)
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
        assert [r["loss"] for r in _log(tmp_path / other)] == pytest.approx([r["loss"] for r in _log(tmp_path / "a")])
    # a different seed is a different run
    recover(make_tiny_model("llama", layers=4), make_tokenizer(), config=_cfg(**{**cfg, "seed": 1}), out=tmp_path / "d")
    assert any(not torch.allclose(a[n], t) for n, t in _trainable(tmp_path / "d").items())


def test_self_generated_responses_are_filtered_and_cached(tmp_path, monkeypatch):
    calls = []

    def stub_generate(model, tokenizer, prompts, *, max_new_tokens, stop, batch_size, **kw):
        calls.append(len(prompts))
        outs = []
        for text in prompts:  # right on even sums, wrong on odd ones
            a, b = text.rstrip("=").split("+")
            total = int(a) + int(b)
            outs.append((str(total) if total % 2 == 0 else str(total + 1), False))
        return outs

    monkeypatch.setattr(recovery_generation, "generate_responses", stub_generate)
    teacher = make_tiny_model("llama", layers=2, seed=1)
    out = tmp_path / "out"
    summary = recover(make_tiny_model("llama", layers=2), make_tokenizer(), teacher=teacher,
                      config=_cfg(data="self", prompts=TASK, num_prompts=12, max_steps=2, batch_size=6,
                                  filter_correct=True), out=out)
    rows = [json.loads(line) for line in (out / "self_generated.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and calls == [12]
    even = [r for r in rows if (eval(r["prompt"].rstrip("=")) % 2 == 0)]  # noqa: S307 (our own "a+b=" strings)
    assert all(r["correct"] for r in even) and not any(r["correct"] for r in rows if r not in even)
    assert summary["data"]["examples"] == len(even) and summary["data"]["dropped_incorrect"] == 12 - len(even)
    assert 0 < len(even) < 12

    # same key: the cache is reused without generating; --no-filter-correct keeps all 12
    recover(make_tiny_model("llama", layers=2), make_tokenizer(), teacher=teacher, overwrite=True,
            config=_cfg(data="self", prompts=TASK, num_prompts=12, max_steps=2, batch_size=6, filter_correct=False),
            out=out)
    assert calls == [12]
    assert json.loads((out / "recover.json").read_text())["data"]["examples"] == 12
    # another prompt set is another key: generated afresh
    recover(make_tiny_model("llama", layers=2), make_tokenizer(), teacher=teacher, overwrite=True,
            config=_cfg(data="self", prompts=TASK, num_prompts=6, max_steps=1, batch_size=6, filter_correct=True), out=out)
    assert calls == [12, 6]
    # a short run asks the teacher only for what it trains on: 1 step x 4 examples
    recover(make_tiny_model("llama", layers=2), make_tokenizer(), teacher=teacher, overwrite=True,
            config=_cfg(data="self", prompts=TASK, num_prompts=10, max_steps=1, batch_size=4), out=out)
    assert calls == [12, 6, 4]
    assert json.loads((out / "recover.json").read_text())["data"]["prompts_available"] == 10


def test_teacher_defaults_to_base_model_of_pruned_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(recovery_generation, "generate_responses", lambda m, t, prompts, **kw: [("7", False)] * len(prompts))
    base = save_tiny(tmp_path / "base", "llama", layers=4)
    pruned = save_tiny(tmp_path / "pruned", "llama", layers=2)
    write_json(pruned / "prunescope.json", {"base_model": str(base), "removed_layers": [1, 2]})
    rc = main(["recover", "--model", str(pruned), "--prompts", TASK, "--num-prompts", "4", "--no-filter-correct",
               "--max-steps", "1", "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert rc == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "self_generated.jsonl").read_text().splitlines()]
    assert {r["teacher"] for r in rows} == {str(base)}


@pytest.mark.parametrize("loss", ["kd", "mix"])
def test_distillation_runs_and_decreases(tmp_path, loss):
    teacher = make_tiny_model("llama", layers=4, seed=1)
    student = make_tiny_model("llama", layers=2, seed=0)
    recover(student, make_tokenizer(), teacher=teacher, teacher_tokenizer=make_tokenizer(),
            config=_cfg(loss=loss, kd_topk=32 if loss == "kd" else 0, method="full",
                        prompts=str(_pairs_file(tmp_path / "p.jsonl"))), out=tmp_path / "out")
    losses = [r["loss"] for r in _log(tmp_path / "out")]
    assert all(x == x for x in losses)  # no NaN
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5])


def test_kd_loss_against_itself():
    from prunescope.recovery.losses import kd_loss_sum
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    assert kd_loss_sum(logits, logits, labels).item() == pytest.approx(0.0, abs=1e-5)
    assert kd_loss_sum(logits, torch.randn(2, 5, 11), labels).item() > 0
    # top-k renormalises the teacher over its k best tokens: KL = -log(mass of those k) per position
    mask = labels[:, 1:] != -100
    probs = logits[:, :-1][mask].softmax(-1)
    expected = -probs.topk(3, dim=-1).values.sum(-1).log().sum()
    assert kd_loss_sum(logits, logits, labels, topk=3).item() == pytest.approx(expected.item(), rel=1e-4)


# ------------------------------------------------------------------------------------------- bad input

def _error(capsys, argv) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2, err
    assert err and err[-1].startswith("prunescope: error:")
    return err[-1]


def test_bad_max_steps(tmp_path, capsys, tiny_model_dir):
    msg = _error(capsys, ["recover", "--model", str(tiny_model_dir), "--max-steps", "0", "--out", str(tmp_path / "o")])
    assert "--max-steps" in msg


def test_empty_and_malformed_prompt_files(tmp_path, capsys, tiny_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    common = ["recover", "--model", str(tiny_model_dir), "--data", "dataset", "--out", str(tmp_path / "o"),
              "--device", "cpu"]
    assert str(empty) in _error(capsys, common + ["--prompts", str(empty)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "response": "yo"}\n{"prompt": "oops"\n')
    assert f"{bad}:2" in _error(capsys, common + ["--prompts", str(bad)])
    keyless = tmp_path / "keyless.jsonl"
    keyless.write_text('{"text": "hi"}\n')
    assert f"{keyless}:1" in _error(capsys, common + ["--prompts", str(keyless)])
    no_response = tmp_path / "prompts.jsonl"
    no_response.write_text('{"prompt": "hi"}\n')
    assert "--data dataset" in _error(capsys, common + ["--prompts", str(no_response)])
    assert "no such file" in _error(capsys, common + ["--prompts", str(tmp_path / "missing.jsonl")])


def test_kd_with_different_tokenizers(tmp_path, capsys, tiny_model_dir):
    other = tmp_path / "teacher"
    make_tiny_model("llama", layers=2).save_pretrained(other)
    tok = make_tokenizer()
    tok.add_tokens(["<extra>"])
    tok.save_pretrained(other)
    msg = _error(capsys, ["recover", "--model", str(tiny_model_dir), "--teacher", str(other), "--loss", "kd",
                          "--data", "dataset", "--prompts", str(_pairs_file(tmp_path / "p.jsonl")),
                          "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert "tokenizer" in msg


def test_lora_unsupported_architecture(tmp_path, capsys):
    from transformers import BloomConfig, BloomForCausalLM
    torch.manual_seed(0)
    path = tmp_path / "bloom"
    BloomForCausalLM(BloomConfig(vocab_size=259, hidden_size=32, n_layer=2, n_head=4)).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    msg = _error(capsys, ["recover", "--model", str(path), "--data", "dataset", "--device", "cpu",
                          "--prompts", str(_pairs_file(tmp_path / "p.jsonl")), "--out", str(tmp_path / "o")])
    assert "--method lora" in msg and "bloom" in msg


def test_self_data_without_teacher(tmp_path, capsys, tiny_model_dir):
    msg = _error(capsys, ["recover", "--model", str(tiny_model_dir), "--data", "self", "--prompts", TASK,
                          "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert "--teacher" in msg


def test_out_with_foreign_files(tmp_path, capsys, tiny_model_dir):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    msg = _error(capsys, ["recover", "--model", str(tiny_model_dir), "--data", "dataset", "--device", "cpu",
                          "--prompts", str(_pairs_file(tmp_path / "p.jsonl")), "--out", str(tmp_path / "o")])
    assert "--overwrite" in msg


def test_response_window_gives_the_same_loss():
    from prunescope.recovery.loop import collate, response_window
    from prunescope.recovery.losses import sft_loss_sum
    model = make_tiny_model("llama", layers=2)
    batch = collate([{"input_ids": list(range(3, 15)), "labels": [-100] * 9 + [12, 13, 14]},
                     {"input_ids": list(range(3, 10)), "labels": [-100] * 5 + [8, 9]}], pad_id=0)
    keep = response_window(batch["labels"])
    assert keep == 12 - 4  # the shorter context starts its response at position 5
    with torch.no_grad():
        full = sft_loss_sum(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                            batch["labels"])
        window = sft_loss_sum(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                    logits_to_keep=keep).logits, batch["labels"][:, -keep:])
    torch.testing.assert_close(full, window)


# ------------------------------------------------------------------------ the paper's recipe, piece by piece

def test_sft_loss_equals_transformers_loss_on_response_tokens():
    """The loop's loss (tokenize -> collate -> logits window -> summed CE / response tokens) against
    transformers' own ``model(input_ids, labels=labels).loss`` with -100 on exactly the prompt tokens,
    labels built here from the context's own tokenization."""
    from prunescope.eval.engine import encode
    from prunescope.recovery.losses import recovery_loss_sum
    tok, model = make_tokenizer(), make_tiny_model("llama", layers=2).eval()
    prompts = [recovery_data.Prompt(id="a", messages=[{"role": "user", "content": "say hello"}]),
               recovery_data.Prompt(id="b", messages=[{"role": "user", "content": "count to three, then stop"}])]
    responses = ["hello there", "one two three"]
    examples = [recovery_data.tokenize_example(p, r, tok, 256) for p, r in zip(prompts, responses)]
    batch = recovery_loop.collate(examples, tok.pad_token_id)
    keep = recovery_loop.response_window(batch["labels"])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
        ours = recovery_loss_sum("sft", logits, batch["labels"][:, -keep:]) / (batch["labels"][:, 1:] != -100).sum()
        ref_losses, ref_counts = [], []
        for p, r in zip(prompts, responses):  # one sequence at a time: no padding in the reference
            context = tok.apply_chat_template(p.messages, tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template(p.messages + [{"role": "assistant", "content": r}], tokenize=False)
            ctx_ids = encode(tok, context)
            ids = ctx_ids + tok(full[len(context):], add_special_tokens=False)["input_ids"]
            labels = torch.tensor([[-100] * len(ctx_ids) + ids[len(ctx_ids):]])
            n = len(ids) - len(ctx_ids)
            ref_losses.append(model(input_ids=torch.tensor([ids]), labels=labels).loss * n)
            ref_counts.append(n)
    assert ours.item() == pytest.approx((sum(ref_losses) / sum(ref_counts)).item(), rel=1e-5)


def test_kd_at_temperature_two_against_a_hand_computed_kl():
    """KL(teacher || student) at T=2 on softened distributions, times T^2, written out with math.exp."""
    import math

    from prunescope.recovery.losses import kd_loss_sum
    student = [[0.5, -1.0, 2.0, 0.0], [1.5, 0.3, -0.7, 0.2]]
    teacher = [[1.0, 0.0, 1.0, -2.0], [0.0, 2.5, 0.1, 0.4]]

    def softmax(row, t):
        z = [math.exp(v / t) for v in row]
        return [v / sum(z) for v in z]
    expected = 0.0
    for s_row, t_row in zip(student, teacher):
        p, q = softmax(t_row, 2.0), softmax(s_row, 2.0)
        expected += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    expected *= 2.0 ** 2
    # positions 0 and 1 predict the response tokens at 1 and 2; position 2 predicts nothing
    s = torch.tensor([student + [[9.0, 9.0, 9.0, 9.0]]])
    t = torch.tensor([teacher + [[0.0, 0.0, 0.0, 5.0]]])
    labels = torch.tensor([[-100, 1, 3]])
    assert kd_loss_sum(s, t, labels, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("a,b", [("3 + 4", "4+3"), ("(8 * 3) * 1", "1 * (3*8)"), ("(2 * 3) + 1", "1 + 3 * 2"),
                                 ("  What is  2+2? ", "what is 2+2"), ("( [ { } ] ) =", "([{}])")])
def test_canonical_question_equal(a, b):
    assert recovery_data.canonical_question(a) == recovery_data.canonical_question(b)


@pytest.mark.parametrize("a,b", [("7 - 3", "3 - 7"), ("(2 + 3) * 4", "2 + (3 * 4)"), ("12 + 3", "21 + 3"),
                                 ("( [ ] )", "[ ( ) ]")])
def test_canonical_question_different(a, b):
    assert recovery_data.canonical_question(a) != recovery_data.canonical_question(b)


OVERLAP_TASK = "recovery_test_overlap"


def _overlap_items(n, seed, split):
    """Calibration asks 3+4, 1+2 and 5+6; evaluation asks 4 + 3 and 9+9: one question in common."""
    qs = ["3+4", "1+2", "5+6"] if split == "calib" else ["4 + 3", "9+9"]
    return [Item(id=f"{split}{i}", prompt=f"{q}=", gold=str(eval(q)), target=str(eval(q)), meta={"key": q})  # noqa: S307
            for i, q in enumerate(qs)]


if OVERLAP_TASK not in TASKS:
    TASKS.register(OVERLAP_TASK, lambda: Task(name=OVERLAP_TASK, kind="generate", description="sums", chance=0.0,
                                              make_items=_overlap_items, stop=["\n"], max_new_tokens=3,
                                              check=lambda item, out: out.strip() == item.gold))


def test_task_prompts_are_disjoint_from_evaluation_by_canonical_form(tmp_path, monkeypatch):
    monkeypatch.setattr(recovery_generation, "generate_responses",
                        lambda m, t, prompts, **kw: [("7", False)] * len(prompts))
    summary = recover(make_tiny_model("llama", layers=2), make_tokenizer(), teacher=make_tiny_model("llama", layers=2),
                      config=_cfg(data="self", prompts=OVERLAP_TASK, max_steps=1), out=tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "self_generated.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == ["1+2=", "5+6="]
    data = summary["data"]
    assert data["overlap_with_eval"] == 1 and data["disjoint_from"] == [OVERLAP_TASK]
    assert data["label"] == "task-specific recovery" and data["prompt_kind"] == "task-specific"


def test_shipped_general_prompts():
    from pathlib import Path
    prompts = recovery_data.load_prompts("self-instruct")
    assert len(prompts) == 427 and len({p.id for p in prompts}) == 427
    assert all(p.chat and p.messages[0]["role"] == "user" and p.messages[0]["content"].strip() for p in prompts)
    folder = Path(recovery_data.__file__).parent / "prompts"
    assert "Apache License" in (folder / "LICENSE.txt").read_text()
    assert "yizhongw/self-instruct" in (folder / "NOTICE.txt").read_text()
    sample = recovery_data.load_prompts("self-instruct", num=20, seed=3)
    assert len(sample) == 20 and [p.id for p in sample] == [p.id for p in recovery_data.load_prompts(
        "self-instruct", num=20, seed=3)] != [p.id for p in prompts[:20]]
    assert recovery_data.prompt_source_kind("self-instruct") == "general"
    assert RecoverConfig().prompts == "self-instruct" and RecoverConfig().partial_layers == 3
    assert not RecoverConfig().filter_correct


@pytest.mark.parametrize("policy", ["keep", "drop"])
def test_truncated_responses_are_kept_without_a_stop_token_or_dropped(tmp_path, monkeypatch, policy):
    def stub(m, t, prompts, **kw):  # every other response ran into the length limit
        return [("12", i % 2 == 1) for i in range(len(prompts))]
    monkeypatch.setattr(recovery_generation, "generate_responses", stub)
    tok = make_tokenizer()
    captured = {}
    real_train = recovery_loop.train

    def spy(model, tokenizer, examples, **kw):
        captured["examples"] = examples
        return real_train(model, tokenizer, examples, **kw)
    import prunescope.recovery.api as api
    monkeypatch.setattr(api, "train", spy)
    summary = recover(make_tiny_model("llama", layers=2), tok, teacher=make_tiny_model("llama", layers=2),
                      config=_cfg(data="self", prompts=TASK, num_prompts=8, max_steps=2, truncated=policy),
                      out=tmp_path / "out")
    rows = [json.loads(line) for line in (tmp_path / "out" / "self_generated.jsonl").read_text().splitlines()]
    cut = [r["truncated"] for r in rows]
    assert sum(cut) == 4 and summary["data"]["truncated"] == 4 and summary["data"]["truncated_policy"] == policy
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    endings = [[t for t in e["labels"] if t != -100] for e in captured["examples"]]
    assert all(e[-len(newline):] != newline for e in endings if e == tok("12", add_special_tokens=False)["input_ids"])
    with_stop = [e for e in endings if e[-len(newline):] == newline]
    assert len(with_stop) == 4  # the finished responses end with the task's stop string
    if policy == "keep":
        assert len(endings) == 8 and summary["data"]["dropped_truncated"] == 0
    else:
        assert len(endings) == 4 and summary["data"]["dropped_truncated"] == 4


def test_teacher_generation_greedy_equals_engine_and_sampling_is_seeded():
    """Greedy teacher responses equal the evaluation engine's greedy decoding (an independent loop);
    ``truncated`` is true exactly when the limit was reached with no end of sequence; sampling reaches
    transformers with the paper's settings and is reproducible."""
    from prunescope.eval.engine import generate as engine_generate
    tok, model = make_tokenizer(), make_tiny_model("llama", layers=2, seed=3).eval()
    texts = ["1+2=", "hello world, this is", "abc"]
    ours = recovery_generation.generate_responses(model, tok, texts, max_new_tokens=6, stop=[], batch_size=2,
                                                  decoding="greedy")
    assert [r for r, _ in ours] == engine_generate(model, tok, texts, max_new_tokens=6, stop=[], batch_size=2)
    long = recovery_generation.generate_responses(model, tok, texts, max_new_tokens=60, stop=[], batch_size=3,
                                                  decoding="greedy")
    for (short, cut), (full, _) in zip(ours, long):  # cut at 6 tokens iff the 60-token answer is longer
        assert cut == (len(tok(full, add_special_tokens=False)["input_ids"]) > len(tok(short, add_special_tokens=False)["input_ids"]))
    seen = {}
    real = model.generate

    def spy(**kw):
        seen.update(kw)
        return real(**kw)
    model.generate = spy
    a = recovery_generation.generate_responses(model, tok, texts, max_new_tokens=8, stop=[], batch_size=3,
                                               decoding="sample", seed=5)
    assert seen["do_sample"] and seen["temperature"] == 0.9 and seen["top_p"] == 0.95 and seen["top_k"] == 0
    b = recovery_generation.generate_responses(model, tok, texts, max_new_tokens=8, stop=[], batch_size=3,
                                               decoding="sample", seed=5)
    assert a == b


def test_fp32_master_weights_keep_small_updates_of_a_bf16_model(tmp_path):
    """Full training of a bfloat16 model at a tiny learning rate: with float32 master weights nearly every
    weight moves; stepping the bf16 weights themselves rounds most updates away."""
    from safetensors.torch import load_file
    moved = {}
    for mode in ("fp32", "model"):
        model = make_tiny_model("llama", layers=2).to(torch.bfloat16)
        before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
        recover(model, make_tokenizer(), config=_cfg(method="full", lr=1e-5, max_steps=1, master_weights=mode,
                                                     prompts=str(_pairs_file(tmp_path / "p.jsonl"))),
                out=tmp_path / mode)
        after = load_file(str(tmp_path / mode / "checkpoint" / "trainable.safetensors"))
        name = "model.layers.0.mlp.up_proj.weight"
        assert after[name].dtype == (torch.float32 if mode == "fp32" else torch.bfloat16)
        moved[mode] = (after[name].float() != before[name]).float().mean().item()
        assert next(model.parameters()).dtype == torch.bfloat16  # saved and returned in the model's dtype
    assert moved["fp32"] > 0.9 and moved["model"] < 0.5, moved


def test_gradient_checkpointing_gives_the_same_step(tmp_path):
    runs = {}
    for mode in ("off", "on"):
        model = make_tiny_model("llama", layers=2)
        if mode == "on":
            real = model.gradient_checkpointing_enable
            calls = []
            model.gradient_checkpointing_enable = lambda **kw: (calls.append(kw), real(**kw))
        recover(model, make_tokenizer(), config=_cfg(method="full", max_steps=2, gradient_checkpointing=mode,
                                                     prompts=str(_pairs_file(tmp_path / "p.jsonl"))),
                out=tmp_path / mode)
        runs[mode] = [r["loss"] for r in _log(tmp_path / mode)]
    assert calls and runs["on"] == pytest.approx(runs["off"], rel=1e-5)


def test_paper_config_reaches_the_trainer(tmp_path, monkeypatch):
    """study --config paper's recovery settings, run on a tiny model (4-bit loading aside: no GPU here),
    arrive in peft, AdamW, the scheduler, clipping and the data step as the paper's code has them."""
    import peft
    import transformers

    from prunescope.study.config import load_study_config
    from prunescope.study.stages import validate_names
    study = load_study_config("paper")
    validate_names(study)
    settings = dict(study.recovery.settings)
    assert settings["qlora"] is True and study.recovery.methods == ["lora"]
    seen = {}
    real_adamw, real_sched, real_lora = torch.optim.AdamW, transformers.get_scheduler, peft.LoraConfig
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, **kw: (seen.update(adamw=kw), real_adamw(params, **kw))[1])
    monkeypatch.setattr(transformers, "get_scheduler", lambda name, opt, **kw: (seen.update(sched=(name, kw)),
                                                                                 real_sched(name, opt, **kw))[1])
    monkeypatch.setattr(peft, "LoraConfig", lambda **kw: (seen.update(lora=kw), real_lora(**kw))[1])
    import accelerate
    real_clip = accelerate.Accelerator.clip_grad_norm_
    monkeypatch.setattr(accelerate.Accelerator, "clip_grad_norm_",
                        lambda self, params, max_norm, **kw: (seen.update(clip=max_norm),
                                                              real_clip(self, params, max_norm, **kw))[1])
    monkeypatch.setattr(recovery_generation, "generate_responses", lambda m, t, prompts, **kw: (
        seen.update(gen=kw), [("an answer", False)] * len(prompts))[1])
    cfg = RecoverConfig(method="lora", **{**settings, "qlora": False, "max_steps": 1, "batch_size": 2, "grad_accum": 1,
                                          "max_seq_len": 128})
    summary = recover(make_tiny_model("llama", layers=2), make_tokenizer(), teacher=make_tiny_model("llama", layers=2),
                      config=cfg, out=tmp_path / "out")
    assert seen["lora"]["r"] == 64 and seen["lora"]["lora_alpha"] == 16 and seen["lora"]["lora_dropout"] == 0.05
    assert sorted(seen["lora"]["target_modules"]) == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"])
    assert seen["adamw"]["lr"] == 2e-4 and seen["adamw"]["betas"] == (0.9, 0.99)
    assert seen["adamw"]["weight_decay"] == 1e-4
    assert seen["sched"][0] == "constant_with_warmup" and seen["sched"][1]["num_warmup_steps"] == 50
    assert seen["clip"] == 1.0
    assert seen["gen"]["decoding"] == "sample" and seen["gen"]["temperature"] == 0.9 and seen["gen"]["top_p"] == 0.95
    assert summary["data"]["label"] == "general recovery" and summary["data"]["prompt_source"] == "self-instruct"
    assert summary["data"]["dropped_incorrect"] == 0 and cfg.loss == "sft" and cfg.max_steps == 1
    assert RecoverConfig(method="lora", **settings).max_steps is None  # one epoch over the self-generated set


def test_study_recovers_qlora_from_the_saved_cut(tmp_path, monkeypatch):
    """With qlora the study saves the cut and loads it through the 4-bit loader (faked here: no GPU)."""
    from types import SimpleNamespace

    import prunescope.recovery.loading as loading
    from prunescope.study.runner import StudyRun
    loaded = []

    def fake_4bit(path, device=None):
        from prunescope.models import load_model
        loaded.append(path)
        return load_model(path, device="cpu")
    monkeypatch.setattr(loading, "load_4bit", fake_4bit)
    stub = SimpleNamespace(model=make_tiny_model("llama", layers=4), tokenizer=make_tokenizer(),
                           config=SimpleNamespace(model="tiny-base"), removed_layers=lambda c, k: [1, 2])
    stub._save_checkpoint = lambda *a: StudyRun._save_checkpoint(stub, *a)
    student = StudyRun._recovery_student(stub, "reverse", 2, RecoverConfig(qlora=True), tmp_path / "recovery-lora")
    assert loaded == [str(tmp_path / "recovery-lora" / "student")]
    assert student.config.num_hidden_layers == 2
    meta = json.loads((tmp_path / "recovery-lora" / "student" / "prunescope.json").read_text())
    assert meta["removed_layers"] == [1, 2]
    plain = StudyRun._recovery_student(stub, "reverse", 2, RecoverConfig(), tmp_path / "other")
    assert plain.config.num_hidden_layers == 2 and len(loaded) == 1


_PEAK_SCRIPT = r"""
import json, resource, sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(1)
from transformers import LlamaConfig, AutoModelForCausalLM
from common import make_tokenizer, VOCAB
from prunescope.recovery import RecoverConfig, recover
config = LlamaConfig(vocab_size=VOCAB, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                     num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=128, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
weights = sum(p.numel() * p.element_size() for p in model.parameters())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
recover(model, make_tokenizer(), config=RecoverConfig(method="full", data="dataset", prompts=sys.argv[2], max_steps=2,
        batch_size=2, max_seq_len=64, save_every=0), out=sys.argv[3])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"weights": weights, "before": before, "peak": peak}))
"""


@pytest.mark.slow  # a fresh process and a 34M-parameter model: ~15 s on an idle machine
def test_full_training_peak_memory_is_within_five_times_the_weights(tmp_path):
    """``recover --method full`` on a 34M-parameter model (135 MB in float32), in a fresh process: the
    resident set grows by at most 4x the weights during recovery (gradients 1x + AdamW's two moments 2x
    + activations, checkpoint and export), so with the weights themselves the peak stays within 5x."""
    import subprocess
    import sys
    from pathlib import Path
    script = tmp_path / "peak.py"
    script.write_text(_PEAK_SCRIPT)
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(recovery_data.__file__).parents[2])}
    done = subprocess.run([sys.executable, str(script), str(Path(__file__).parent),
                           str(_pairs_file(tmp_path / "p.jsonl")), str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    m = json.loads(done.stdout.strip().splitlines()[-1])
    growth = (m["peak"] - m["before"]) / m["weights"]
    print(f"full recovery: weights {m['weights'] / 2**20:.0f} MiB, RSS growth {growth:.2f}x the weights")
    assert m["weights"] > 100 * 2 ** 20
    assert growth <= 4.0, growth


@pytest.mark.gpu
def test_paper_recipe_on_a_1b_class_model(tmp_path, monkeypatch):
    """The paper's recovery recipe end to end on one GPU: a 1B-class Llama (16 blocks of width 2048,
    like Llama-3.2-1B; random weights, so it runs without the hub), 4 blocks cut, teacher sampling in its
    own phase, QLoRA NF4 r=64 on all 7 projections with gradient checkpointing, merged checkpoint saved.
    Checks: every stage finishes, the teacher is gone from the GPU before training, the loss is finite,
    and peak GPU memory during training stays within 1.25x the bf16 weights of the cut (bf16 LoRA would
    need 1x for the frozen weights alone; QLoRA keeps them in 4 bits). The vocabulary is the test's byte
    tokenizer's, so the 0.97B parameters are all in the blocks."""
    pytest.importorskip("bitsandbytes")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from transformers import AutoModelForCausalLM, LlamaConfig

    from prunescope.models import load_model
    from prunescope.pruning import drop_layers, save_pruned
    from prunescope.recovery.loading import load_4bit
    from prunescope.study.config import load_study_config
    tok = make_tokenizer()
    from common import VOCAB
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device("cuda"):
        base = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    base.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    cut = drop_layers(base, layers=[8, 9, 10, 11])
    save_pruned(cut, tok, tmp_path / "cut", base=str(tmp_path / "base"), removed=[8, 9, 10, 11],
                num_layers_before=16, criterion="manual", overwrite=True)
    cut_bytes = sum(p.numel() * p.element_size() for p in cut.parameters())
    del base, cut
    student, student_tok = load_4bit(str(tmp_path / "cut"), device="cuda")
    assert student.is_loaded_in_4bit

    teacher_loaded = []

    def teacher():
        teacher_loaded.append(True)
        return load_model(str(tmp_path / "base"), dtype="bfloat16", device="cuda")
    teacher.prunescope_source = str(tmp_path / "base")

    import prunescope.recovery.loop as loop
    real_train, during = loop.train, {}

    def spy(model, tokenizer, examples, **kw):
        torch.cuda.synchronize()
        during["allocated_before_training"] = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        out = real_train(model, tokenizer, examples, **kw)
        during["peak"] = torch.cuda.max_memory_allocated()
        during["checkpointing"] = any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
        return out
    import prunescope.recovery.api as api
    monkeypatch.setattr(api, "train", spy)
    settings = dict(load_study_config("paper").recovery.settings)
    settings.update(num_prompts=32, gen_max_new_tokens=64, max_steps=4, batch_size=4, grad_accum=2,
                    max_seq_len=512, warmup_steps=2)
    summary = recover(student, student_tok, teacher=teacher, config=RecoverConfig(method="lora", **settings),
                      out=tmp_path / "out")
    assert teacher_loaded == [True]
    # the student (4-bit, about a third of the bf16 bytes) and its adapters: no 2.4 GB bf16 teacher left
    assert during["allocated_before_training"] < 0.6 * cut_bytes, during
    assert during["checkpointing"]
    assert during["peak"] < 1.25 * cut_bytes, (during["peak"], cut_bytes)
    assert summary["steps"] == 4 and summary["final_loss"] == summary["final_loss"]
    assert summary["data"]["decoding"] == {"mode": "sample", "temperature": 0.9, "top_p": 0.95}
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "merged", dtype=torch.bfloat16)
    assert merged.config.num_hidden_layers == 12


def test_recovery_data_is_logged_as_one_readable_line():
    from prunescope.recovery.api import describe_data

    line = describe_data({"label": "general recovery", "prompt_source": "self-instruct", "prompts": 32, "examples": 30,
                          "decoding": {"mode": "sample", "temperature": 0.9, "top_p": 0.95}, "truncated": 4,
                          "truncated_policy": "keep", "overlap_with_eval": 0})
    assert line == ("general recovery on self-instruct; 30 examples; mode sample, temperature 0.9, top_p 0.95; "
                    "4 cut by the length limit (keep)")
