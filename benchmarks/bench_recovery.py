"""Recovery on the default model: what LoRA on self-generated responses buys back, and how fast it trains.

1. SmolLM2-135M-Instruct, pruned by its six lowest block-influence layers (20% of 30; or --layers).
2. The targeted generative probe (arith_add_1d_gen), the same questions as multiple choice
   (arith_add_1d_mc) and a harder classification probe (arith_add_2d_mc), for the base, the pruned
   and the recovered model.
3. Recovery: LoRA, completion-only SFT on the unpruned teacher's answers: by default to the shipped
   general instruction prompts (self-instruct, sampled at T 0.9 / top-p 0.95, as the paper), or with
   ``--prompts arith_add_1d_gen`` task-specific recovery on the probe's calibration prompts (disjoint
   from the evaluation items in canonical form, greedy, correct answers only).
4. Training throughput against a plain Hugging Face ``Trainer`` doing the same work (same tokenized
   examples in the same order, same steps, batch, LoRA config, optimizer and clipping), alternating
   runs, median tokens/s of the repeats; the per-step losses of the two are compared too.

    python benchmarks/bench_recovery.py            # about 10 minutes on 2 CPU cores
"""
from __future__ import annotations

import argparse
import copy
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from prunescope.criteria import score_layers
from prunescope.eval import evaluate
from prunescope.models import load_model
from prunescope.pruning import drop_layers
from prunescope.recovery import RecoverConfig, recover
from prunescope.recovery.api import build_training_examples
from prunescope.recovery.data import load_prompts, prompt_source_kind
from prunescope.recovery.loop import collate, example_order, train
from prunescope.recovery.methods import prepare

PROBES = ["arith_add_1d_gen", "arith_add_1d_mc", "arith_add_2d_mc"]


def probe(model, tok, limit: int) -> dict[str, float]:
    metrics = evaluate(model, tok, PROBES, limit=limit, seed=0, progress=False)
    return {name: m["accuracy"] for name, m in metrics["tasks"].items()}


def ours(model, tok, examples, cfg, out: Path) -> tuple[float, list[float]]:
    """Tokens/s and per-step losses of prunescope's loop."""
    torch.manual_seed(cfg.seed)
    model = prepare(model, cfg)
    summary = train(model, tok, examples, config=cfg, out=out, resume=False)
    losses = [json.loads(line)["loss"] for line in (out / "train_log.jsonl").read_text().splitlines()]
    return summary["tokens_seen"] / summary["wall_time"], losses


def hf_trainer(model, tok, examples, cfg, out: Path) -> tuple[float, list[float]]:
    """Tokens/s and per-step losses of transformers.Trainer on the same examples in the same order."""
    from torch.utils.data import SequentialSampler
    from transformers import Trainer, TrainingArguments

    class SameOrder(Trainer):
        def _get_train_sampler(self, *args, **kwargs):
            return SequentialSampler(self.train_dataset)

    per_step = cfg.batch_size * cfg.grad_accum
    ordered = [examples[i] for i in example_order(len(examples), 0, cfg.max_steps * per_step, cfg.seed)]
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=cfg.batch_size,
                             gradient_accumulation_steps=cfg.grad_accum, max_steps=cfg.max_steps,
                             learning_rate=cfg.lr, lr_scheduler_type="constant", weight_decay=0.0,
                             max_grad_norm=cfg.max_grad_norm, logging_steps=1, save_strategy="no", report_to=[],
                             seed=cfg.seed, dataloader_num_workers=0, disable_tqdm=True, use_cpu=True)
    torch.manual_seed(cfg.seed)
    model = prepare(model, cfg)
    trainer = SameOrder(model=model, args=args, train_dataset=ordered,
                        data_collator=lambda rows: collate(rows, tok.pad_token_id))
    tokens = sum(len(e["input_ids"]) for e in ordered)
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return tokens / wall, losses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default=None, help="blocks to drop (0-based, comma-separated); default: "
                    "the --num-layers lowest block-influence layers")
    ap.add_argument("--num-layers", type=int, default=6)
    ap.add_argument("--limit", type=int, default=100, help="evaluation items per probe")
    ap.add_argument("--prompts", default="self-instruct", help="self-instruct (general) or a task name")
    ap.add_argument("--gen-max-new-tokens", type=int, default=96, help="longest teacher answer to a general prompt")
    ap.add_argument("--num-prompts", type=int, default=48)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--compare-steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-base", action="store_true", help="skip evaluating the unpruned model")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_recovery."))
    t0 = time.perf_counter()

    teacher, tok = load_model("smollm2-135m", device="cpu")
    if args.layers:
        layers = [int(x) for x in args.layers.split(",")]
    else:
        layers = sorted(score_layers(teacher, tok, "block_influence", progress=False)["order"][:args.num_layers])
    pruned = copy.deepcopy(teacher)
    drop_layers(pruned, layers=layers)
    student = copy.deepcopy(pruned)
    base_acc = {n: float("nan") for n in PROBES} if args.no_base else probe(teacher, tok, args.limit)
    pruned_acc = probe(pruned, tok, args.limit)
    t_eval = time.perf_counter() - t0

    task_specific = prompt_source_kind(args.prompts) == "task-specific"
    cfg = RecoverConfig(method="lora", data="self", prompts=args.prompts, num_prompts=args.num_prompts,
                        filter_correct=task_specific, gen_decoding="greedy" if task_specific else "sample",
                        gen_max_new_tokens=args.gen_max_new_tokens, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                        lora_r=8, lora_alpha=16, save_every=0, max_seq_len=384, gen_batch_size=32)
    start = time.perf_counter()
    summary = recover(student, tok, teacher=teacher, config=cfg, out=work / "recovered")
    t_recover = time.perf_counter() - start
    recovered_acc = probe(student, tok, args.limit)

    # Throughput: the same tokenized examples, steps, batch and LoRA config (no dropout, so the two
    # loss curves should agree to rounding).
    cmp_cfg = RecoverConfig(**{**cfg.to_dict(), "max_steps": args.compare_steps, "lora_dropout": 0.0})
    examples, _ = build_training_examples(load_prompts(cfg.prompts, num=cfg.num_prompts, seed=cfg.seed), tok, cmp_cfg,
                                          out=work / "recovered", teacher_name="smollm2-135m", teacher=teacher,
                                          teacher_tokenizer=tok)
    ours_tps, hf_tps, loss_gap = [], [], []
    for r in range(args.repeats):
        a, la = ours(copy.deepcopy(pruned), tok, examples, cmp_cfg, work / f"ours{r}")
        b, lb = hf_trainer(copy.deepcopy(pruned), tok, examples, cmp_cfg, work / f"hf{r}")
        ours_tps.append(a)
        hf_tps.append(b)
        loss_gap.append(max(abs(x - y) for x, y in zip(la, lb)))
    total = time.perf_counter() - t0

    print(f"\nmodel smollm2-135m, dropped layers {layers}; {args.limit} items per probe; "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'probe':<20}{'base':>8}{'pruned':>8}{'recovered':>11}")
    for name in PROBES:
        print(f"{name:<20}{base_acc[name]:>8.2f}{pruned_acc[name]:>8.2f}{recovered_acc[name]:>11.2f}")
    d = summary["data"]
    correct = "n/a" if d["teacher_correct"] is None else f"{d['teacher_correct']:.2f}"
    print(f"recovery ({d['label']}, --prompts {d['prompt_source']}): {d['prompts']} prompts, "
          f"teacher correct {correct}, {d['truncated']} cut by the length limit ({d['truncated_policy']}), "
          f"{d['examples']} kept; {summary['steps']} steps x batch {cfg.batch_size}, "
          f"{summary['tokens_seen']:,} tokens ({summary['response_tokens']:,} trained), "
          f"final loss {summary['final_loss']:.3f}, train {summary['wall_time']:.1f}s "
          f"({summary['tokens_per_second']:.0f} tokens/s), whole recover() {t_recover:.1f}s")
    o, h = statistics.median(ours_tps), statistics.median(hf_tps)
    print(f"training throughput, {args.compare_steps} steps x {args.repeats} repeats: prunescope {o:.0f} tokens/s, "
          f"transformers.Trainer {h:.0f} tokens/s, ratio {o / h:.2f}x (higher = prunescope faster)")
    print(f"same work: max |loss difference| per step {max(loss_gap):.2e} "
          f"({'identical to rounding' if max(loss_gap) < 1e-3 else 'DIFFERENT'})")
    print(f"evaluation before recovery {t_eval:.0f}s; total {total:.0f}s")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
