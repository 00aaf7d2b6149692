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


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: thread hand-offs cost more than the arithmetic, badly so on busy machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
                      config=_cfg(data="self", prompts=TASK, num_prompts=12, max_steps=2, filter_correct=True), out=out)
    rows = [json.loads(line) for line in (out / "self_generated.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and calls == [12]
    even = [r for r in rows if (eval(r["prompt"].rstrip("=")) % 2 == 0)]  # noqa: S307 (our own "a+b=" strings)
    assert all(r["correct"] for r in even) and not any(r["correct"] for r in rows if r not in even)
    assert summary["data"]["examples"] == len(even) and summary["data"]["dropped_incorrect"] == 12 - len(even)
    assert 0 < len(even) < 12

    # same key: the cache is reused without generating; --no-filter-correct keeps all 12
    recover(make_tiny_model("llama", layers=2), make_tokenizer(), teacher=teacher, overwrite=True,
            config=_cfg(data="self", prompts=TASK, num_prompts=12, max_steps=1, filter_correct=False), out=out)
    assert calls == [12]
    assert json.loads((out / "recover.json").read_text())["data"]["examples"] == 12
    # another prompt set is another key: generated afresh
    recover(make_tiny_model("llama", layers=2), make_tokenizer(), teacher=teacher, overwrite=True,
            config=_cfg(data="self", prompts=TASK, num_prompts=6, max_steps=1, filter_correct=True), out=out)
    assert calls == [12, 6]


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
