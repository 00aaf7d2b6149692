"""Recovery by distillation at equal budget: SFT on the teacher's responses, KD on the teacher's
sequences, on-policy (GKD) distillation on the student's own samples. Losses against hand computations,
samples against the student's own generate, token budgets counted from the batches the loop trains on."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from common import make_tiny_model, make_tokenizer

from prunescope.recovery import RecoverConfig, recover
from prunescope.recovery import loop as recovery_loop
from prunescope.recovery.losses import generalized_jsd_sum
from prunescope.recovery.onpolicy import cap_tokens, onpolicy_seed

pytestmark = pytest.mark.usefixtures("one_thread")


def _prompts(path, n=6):
    path.write_text("".join(json.dumps({"prompt": f"say {w}", "response": w * 3}) + "\n"
                            for w in ["ab", "cd", "ef", "gh", "ij", "kl"][:n]))
    return path


def _cfg(prompts, **kw):
    base = dict(data="dataset", prompts=str(prompts), batch_size=2, lr=1e-2, save_every=0, max_seq_len=64,
                onpolicy_max_new_tokens=8, gen_max_new_tokens=8, gen_batch_size=6)
    return RecoverConfig(**{**base, **kw})


def _pair():
    """A student and a teacher whose outputs differ (different random weights)."""
    return make_tiny_model("llama", layers=2, seed=1), make_tiny_model("llama", layers=2, seed=2)


def _samples(out):
    return [json.loads(line) for line in (out / "onpolicy_samples.jsonl").read_text().splitlines()]


def _hand_kl(p_logits, q_logits):
    """KL(p || q) of two logit rows, in plain Python floats."""
    def softmax(xs):
        m = max(xs)
        e = [math.exp(x - m) for x in xs]
        return [v / sum(e) for v in e]
    p, q = softmax(p_logits), softmax(q_logits)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_generalized_jsd_by_hand():
    student = torch.tensor([[[0.2, -1.0, 0.5], [1.5, 0.0, -0.3], [0.1, 0.2, 0.3]]])
    teacher = torch.tensor([[[1.0, 0.0, -1.0], [0.3, 0.9, 0.0], [2.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 2, 1]])  # positions 0 and 1 predict a response token; position 2 none
    rows = [0, 1]
    fwd = sum(_hand_kl(teacher[0, i].tolist(), student[0, i].tolist()) for i in rows)
    rev = sum(_hand_kl(student[0, i].tolist(), teacher[0, i].tolist()) for i in rows)
    assert generalized_jsd_sum(student, teacher, labels, beta=0.0).item() == pytest.approx(fwd, rel=1e-5)
    assert generalized_jsd_sum(student, teacher, labels, beta=1.0).item() == pytest.approx(rev, rel=1e-5)
    # beta 0.5: beta * KL(t || m) + (1 - beta) * KL(s || m), m the equal mixture (Agarwal et al. Eq. 1)
    jsd = 0.0
    for i in rows:
        s, t = torch.softmax(student[0, i], -1).tolist(), torch.softmax(teacher[0, i], -1).tolist()
        m = [0.5 * a + 0.5 * b for a, b in zip(s, t)]
        jsd += 0.5 * sum(a * math.log(a / c) for a, c in zip(t, m)) + 0.5 * sum(a * math.log(a / c) for a, c in zip(s, m))
    assert generalized_jsd_sum(student, teacher, labels, beta=0.5).item() == pytest.approx(jsd, rel=1e-5)


def test_onpolicy_loss_equals_kl_on_the_students_sample(tmp_path):
    """The first step's logged loss is the forward KL, by hand, of teacher and (initial) student logits
    on the sequence the student sampled; that sequence is what the student's own generate gives."""
    student, teacher = _pair()
    initial = copy.deepcopy(student)
    out = tmp_path / "o"
    cfg = _cfg(_prompts(tmp_path / "p.jsonl", 1), loss="onpolicy", onpolicy_lambda=1.0, onpolicy_beta=0.0,
               method="full", batch_size=1, max_steps=1)
    recover(student, make_tokenizer(), teacher=teacher, teacher_tokenizer=make_tokenizer(), config=cfg, out=out)
    (sample,) = _samples(out)
    ids = sample["context"] + sample["response"]
    assert sample["response"], "the student sampled nothing"
    with torch.no_grad():
        s = initial(torch.tensor([ids])).logits[0].double()
        t = teacher(torch.tensor([ids])).logits[0].double()
    n_ctx = len(sample["context"])
    positions = range(n_ctx - 1, len(ids) - 1)  # each predicts one response token
    expected = sum(_hand_kl(t[i].tolist(), s[i].tolist()) for i in positions) / len(positions)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["loss"] == pytest.approx(expected, rel=1e-4)
    assert log[0]["response_tokens"] == len(sample["response"])


def _generate(model, context, seed, cfg):
    tok = make_tokenizer()
    torch.manual_seed(seed)
    out = model.generate(input_ids=torch.tensor([context]), attention_mask=torch.ones(1, len(context), dtype=torch.long),
                         do_sample=True, temperature=cfg.onpolicy_temperature, top_k=0, top_p=1.0,
                         max_new_tokens=cfg.onpolicy_max_new_tokens, pad_token_id=tok.pad_token_id,
                         eos_token_id=[tok.eos_token_id])
    new = out[0, len(context):].tolist()
    return new[:new.index(tok.eos_token_id) + 1] if tok.eos_token_id in new else new


def test_samples_come_from_the_current_student(tmp_path):
    """Step 1 samples match the initial student's generate (not the teacher's) under the step's seed;
    step 2 samples match the generate of the student after one step (samples are refreshed every step)."""
    prompts = _prompts(tmp_path / "p.jsonl", 1)
    cfg = _cfg(prompts, loss="onpolicy", onpolicy_lambda=1.0, method="full", batch_size=1, lr=0.05, max_steps=2)
    student, teacher = _pair()
    initial = copy.deepcopy(student)
    recover(student, make_tokenizer(), teacher=teacher, teacher_tokenizer=make_tokenizer(), config=cfg,
            out=tmp_path / "two")
    first, second = _samples(tmp_path / "two")
    assert first["step"] == 1 and second["step"] == 2
    assert first["response"] == _generate(initial, first["context"], onpolicy_seed(cfg.seed, 0, 0), cfg)
    assert first["response"] != _generate(teacher, first["context"], onpolicy_seed(cfg.seed, 0, 0), cfg)
    # the same run stopped after one step holds the weights the second step sampled with
    one_step = copy.deepcopy(initial)
    recover(one_step, make_tokenizer(), teacher=teacher, teacher_tokenizer=make_tokenizer(),
            config=_cfg(prompts, **{**{k: getattr(cfg, k) for k in ("loss", "onpolicy_lambda", "method",
                                                                     "batch_size", "lr")}, "max_steps": 1}),
            out=tmp_path / "one")
    expected = _generate(one_step, second["context"], onpolicy_seed(cfg.seed, 1, 0), cfg)
    assert second["response"] == expected
    assert expected != _generate(initial, second["context"], onpolicy_seed(cfg.seed, 1, 0), cfg)


def test_lambda_mixes_on_and_off_policy_batches(tmp_path):
    student, teacher = _pair()
    cfg = _cfg(_prompts(tmp_path / "p.jsonl"), loss="onpolicy", onpolicy_lambda=0.5, batch_size=1, grad_accum=2,
               max_steps=4, lr=1e-3)
    summary = recover(student, make_tokenizer(), teacher=teacher, teacher_tokenizer=make_tokenizer(), config=cfg,
                      out=tmp_path / "o")
    assert 0 < summary["on_policy_micro_batches"] < 8  # 8 micro-batches, each on-policy with probability 0.5
    assert len(_samples(tmp_path / "o")) == summary["on_policy_micro_batches"]


def test_cap_tokens_by_hand():
    a = {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, -100, 3, 4, 5]}   # 3 response tokens
    b = {"input_ids": [6, 7, 8], "labels": [-100, 7, 8]}                  # 2
    c = {"input_ids": [9, 10], "labels": [-100, 10]}                      # 1
    capped = cap_tokens([[a, b], [c]], 4)
    assert capped == [[a, {"input_ids": [6, 7], "labels": [-100, 7]}]]
    assert cap_tokens([[a], [b]], 99) == [[a], [b]]


def test_equal_token_budget_across_sft_kd_onpolicy(tmp_path, monkeypatch):
    """sft and kd on the teacher's own responses and on-policy distillation train on exactly the budget,
    counted here from every batch the loop collates."""
    counted: dict[str, int] = {}
    real_collate = recovery_loop.collate
    current = {"name": None}

    def counting_collate(examples, pad_id):
        batch = real_collate(examples, pad_id)
        counted[current["name"]] = counted.get(current["name"], 0) + int((batch["labels"][:, 1:] != -100).sum())
        return batch

    monkeypatch.setattr(recovery_loop, "collate", counting_collate)
    prompts = _prompts(tmp_path / "p.jsonl")
    budget = 37  # not a multiple of any batch's token count: the last step must be cut
    for loss in ["sft", "kd", "onpolicy"]:
        current["name"] = loss
        student, teacher = _pair()
        cfg = _cfg(prompts, data="self", loss=loss, token_budget=budget, onpolicy_lambda=1.0, onpolicy_beta=0.0,
                   lr=1e-3)
        summary = recover(student, make_tokenizer(), teacher=teacher, teacher_tokenizer=make_tokenizer(), config=cfg,
                          out=tmp_path / loss)
        record = json.loads((tmp_path / loss / "merged" / "prunescope.json").read_text())["recovery"]
        assert summary["response_tokens"] == record["response_tokens"] == budget
        assert record["token_budget"] == budget
    assert counted == {"sft": budget, "kd": budget, "onpolicy": budget}
    assert json.loads((tmp_path / "kd" / "recover.json").read_text())["data"]["sequences"] == "teacher-generated"
    assert json.loads((tmp_path / "onpolicy" / "recover.json").read_text())["data"]["sequences"] == \
        "student-generated (on-policy)"


def test_bad_onpolicy_settings(tmp_path, capsys, tiny_model_dir):
    from prunescope.cli import main
    rc = main(["recover", "--model", str(tiny_model_dir), "--loss", "onpolicy", "--onpolicy-lambda", "1.5",
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("prunescope: error:") and "--onpolicy-lambda must be in [0, 1]" in err[-1]


def test_study_losses_axis_at_equal_tokens(tiny_model_dir, tmp_path):
    """recovery.losses makes one cell per loss; later losses train on the first one's token count; the
    results and the report say how many tokens each got."""
    import csv

    from prunescope.study import run_study
    from prunescope.study.config import StudyConfig, from_mapping

    config = from_mapping(StudyConfig, dict(
        name="distill", model=str(tiny_model_dir), dtype="float32", device="cpu", tasks=["arith_add_1d_mc"], limit=2,
        criteria=["reverse"], ratios=[0.5], efficiency={"enabled": False}, ablation={"enabled": False},
        recovery={"methods": ["lora"], "losses": ["sft", "kd", "onpolicy"],
                  "settings": {"data": "self", "prompts": "arith_add_1d_gen", "num_prompts": 4, "max_steps": 2,
                               "batch_size": 2, "lora_r": 2, "save_every": 0, "onpolicy_lambda": 1.0,
                               "onpolicy_max_new_tokens": 4}},
        out=str(tmp_path / "run")))
    run = run_study(config)
    cell = run / "cells" / "reverse-r0.5"
    tokens = {loss: json.loads((cell / f"recovery-lora-{loss}" / "recover.json").read_text())["response_tokens"]
              for loss in ("sft", "kd", "onpolicy")}
    assert tokens["sft"] > 0 and len(set(tokens.values())) == 1, tokens
    with open(run / "results.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["recovery"] != "none"]
    assert {r["recovery"] for r in rows} == {"lora-sft", "lora-kd", "lora-onpolicy"}
    assert {int(r["recovery_tokens"]) for r in rows} == {tokens["sft"]}
    report = (run / "report.md").read_text()
    assert f"{tokens['sft']:,} tokens" in report and "Recovery runs" in report


def test_packaged_distill_config():
    from prunescope.study.config import load_study_config, recovery_variants
    from prunescope.study.stages import validate_names
    config = load_study_config("distill")
    validate_names(config)
    assert [label for label, _, _ in recovery_variants(config.recovery)] == ["lora-sft", "lora-kd", "lora-onpolicy"]
    assert config.recovery.equal_tokens and "token_budget" not in config.recovery.settings
    assert not load_study_config("default").recovery.losses  # the default study keeps its one recovery
