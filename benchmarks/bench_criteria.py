"""Criterion speed on the default model.

1. Times every single-pass criterion (reverse, random, block_influence, angular, taylor) on the
   default calibration (64 random windows of 512 tokens of the shipped corpus; change it with
   --calib-samples / --calib-seq-len).
2. Splits one forward of the fast-vs-naive calibration into blocks, final norm + head, and loss, and
   from it the best ratio exact reuse can reach for ppl (the head and loss run for every candidate).
3. Compares the fast ppl / sleb path (block inputs captured once, only the blocks after the skipped
   one rerun, the head only on scored positions; sleb also starts a candidate from the state its run
   kept at the previous step's winner) against the naive loop (skip the block, rerun the whole model
   and the loss on full logits, as SLEB's ``sleb.py`` and Shortened LLaMA's
   ``anal_block_sensitivity_ppl.py`` do), printing the median speedup and the largest score
   difference (expected: identical).

    python benchmarks/bench_criteria.py [--model smollm2-135m] [--loss-tokens 256] [--threads N] [--repeats 3]
    python benchmarks/bench_criteria.py --shape llama3-8b --skip-single-pass

What exact reuse can save depends on the model's shape: the head and loss run once per candidate
whatever is reused, so the bound is (L + H) / (L / 2 + H) with H the head's cost in blocks. The default
model's head (49,152-token vocabulary on a 576-wide model) costs about 8 of its 30 blocks, so its bound is
near 1.6x; an 8B model's head costs 0.6-2.4 blocks. ``--shape`` builds a random model with a named
model's depth, attention grouping, FFN width and head-to-block cost ratio, scaled to a 256-wide hidden
state (vocabulary scaled with the width so the head costs the same number of blocks), and runs the
same comparison on it with a byte-level tokenizer.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from prunescope.criteria.activations import capture, model_logits, sequence_stats
from prunescope.criteria.base import compute_scores
from prunescope.criteria.calibration import calibration_batches
from prunescope.models import load_model
from prunescope.models.architectures import get_layers

SINGLE_PASS = ["reverse", "random", "block_influence", "angular", "taylor"]
# name: (config class, layers, hidden, attention heads, key-value heads, FFN width, vocabulary)
SHAPES = {
    "llama3-8b": ("LlamaConfig", 32, 4096, 32, 8, 14336, 128256),
    "llama2-7b": ("LlamaConfig", 32, 4096, 32, 32, 11008, 32000),
    "qwen2.5-7b": ("Qwen2Config", 28, 3584, 28, 4, 18944, 152064),
}
SHAPE_WIDTH = 256


def shaped_model(name: str):
    """A random fp32 model with ``name``'s depth, head grouping, FFN-to-hidden ratio and head cost in
    blocks, at ``SHAPE_WIDTH`` hidden units, and a byte-level tokenizer (its ids fit every vocabulary)."""
    import sys
    from pathlib import Path

    import transformers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.common import make_tokenizer, model_from_config

    cls, layers, hidden, heads, kv_heads, ffn, vocab = SHAPES[name]
    scale = SHAPE_WIDTH / hidden
    small_heads = 8
    config = getattr(transformers, cls)(
        vocab_size=max(512, round(vocab * scale)), hidden_size=SHAPE_WIDTH, num_hidden_layers=layers,
        num_attention_heads=small_heads, num_key_value_heads=max(1, small_heads * kv_heads // heads),
        intermediate_size=round(ffn * scale), max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return model_from_config(config), make_tokenizer()


def timed(fn):
    """(wall seconds, result); the CPU seconds of the last call are kept in ``timed.cpu``."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    timed.cpu = time.process_time() - cpu
    return time.perf_counter() - start, out


def breakdown(model, tok, tokens: int, repeats: int) -> None:
    """Median seconds of one forward's parts on the first calibration batch, and the ppl ratio that
    exact reuse reaches with no overhead at all: naive = L + 1 full forwards (base + one per block,
    each L - 1 blocks), fast = one forward + per candidate c the blocks after c, the head and the loss."""
    batch = calibration_batches(model, tok, max_tokens=tokens)[0][0]
    parts = {"blocks": [], "forward": [], "loss": []}
    with torch.inference_mode():
        for _ in range(repeats):
            parts["blocks"].append(timed(lambda: capture(model, batch, logits=False))[0])
            seconds, logits = timed(lambda: model_logits(model, batch))
            parts["forward"].append(seconds)
            parts["loss"].append(timed(lambda: sequence_stats(logits, batch))[0])
            del logits
    blocks, forward, loss = (statistics.median(parts[k]) for k in ("blocks", "forward", "loss"))
    head = max(forward - blocks, 0.0)
    layers = len(get_layers(model))
    block = blocks / layers
    naive = (layers + 1) * (forward + loss) - layers * block
    fast = forward + loss + sum((layers - 1 - c) * block + head + loss for c in range(layers))
    print(f"\none forward on {int(batch.attention_mask.sum())} tokens: blocks {blocks:.2f} s ({block * 1000:.0f} ms "
          f"each), final norm + head {head:.2f} s, loss on full logits {loss:.2f} s; exact reuse bound for ppl "
          f"(no overhead, head and loss per candidate): {naive / fast:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="instead of --model, a random model shaped like this one (see above)")
    parser.add_argument("--loss-tokens", type=int, default=256,
                        help="calibration tokens for the fast-vs-naive comparison (the naive loop is slow)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the ppl comparison (median ratio)")
    parser.add_argument("--sleb-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-single-pass", action="store_true")
    parser.add_argument("--calib-samples", type=int, default=None, help="single-pass calibration windows (default 64)")
    parser.add_argument("--calib-seq-len", type=int, default=None, help="tokens per window (default 512)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shape:
        model, tok = shaped_model(args.shape)
        args.model = f"random, shaped like {args.shape}"
    else:
        model, tok = load_model(args.model, dtype="float32", device="cpu")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"model {args.model}: {len(model.model.layers) if hasattr(model, 'model') else '?'} layers, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f} (timings are wall-clock; a busy machine inflates them)")

    if not args.skip_single_pass:
        print("\nsingle-pass criteria, default calibration:")
        for name in SINGLE_PASS:
            seconds, result = timed(lambda: compute_scores(model, tok, name, progress=False,
                                                           calib_samples=args.calib_samples,
                                                           calib_seq_len=args.calib_seq_len))
            tokens = result["config"].get("calib_tokens", "-")
            verdict = "ok" if seconds < 60 else "over a minute"
            # CPU seconds / threads estimates the wall time on an otherwise idle machine
            print(f"  {name:16s} {seconds:7.2f} s wall, {timed.cpu:7.2f} s CPU  ({tokens} calibration tokens)  "
                  f"{verdict}", flush=True)

    breakdown(model, tok, args.loss_tokens, args.repeats)
    kw = dict(max_calib_tokens=args.loss_tokens, progress=False)
    print(f"\nppl, fast vs naive, {args.loss_tokens} calibration tokens, {args.repeats} repeats:")
    ratios, cpu_ratios, diffs, same = [], [], [], []
    for _ in range(args.repeats):
        t_fast, fast = timed(lambda: compute_scores(model, tok, "ppl", **kw))
        cpu_fast = timed.cpu
        t_naive, naive = timed(lambda: compute_scores(model, tok, "ppl", fast=False, **kw))
        ratios.append(t_naive / t_fast)
        cpu_ratios.append(timed.cpu / cpu_fast)
        same.append(fast["order"] == naive["order"])
        diffs.append(max(abs(a - b) for a, b in zip(fast["scores"], naive["scores"])))
        print(f"  fast {t_fast:7.2f} s   naive {t_naive:7.2f} s   speedup {t_naive / t_fast:5.2f}x "
              f"(CPU seconds {cpu_fast:.1f} / {timed.cpu:.1f}: {cpu_ratios[-1]:.2f}x)", flush=True)
    print(f"  median speedup {statistics.median(ratios):.2f}x wall, {statistics.median(cpu_ratios):.2f}x CPU; "
          f"max |score diff| {max(diffs):.2e}; identical orders: {all(same)}")

    print(f"\nsleb, {args.sleb_steps} steps, fast vs naive, {args.loss_tokens} calibration tokens, "
          f"{args.repeats} repeats:")
    kw["num_layers"] = args.sleb_steps
    ratios, cpu_ratios, same = [], [], []
    for _ in range(args.repeats):
        t_fast, fast = timed(lambda: compute_scores(model, tok, "sleb", **kw))
        cpu_fast = timed.cpu
        t_naive, naive = timed(lambda: compute_scores(model, tok, "sleb", fast=False, **kw))
        ratios.append(t_naive / t_fast)
        cpu_ratios.append(timed.cpu / cpu_fast)
        same.append(fast["order"] == naive["order"])
        diff = max(abs(a["objective"] - b["objective"])
                   for a, b in zip(fast["config"]["steps"], naive["config"]["steps"]))
        print(f"  fast {t_fast:7.2f} s   naive {t_naive:7.2f} s   speedup {t_naive / t_fast:5.2f}x "
              f"(CPU {cpu_ratios[-1]:.2f}x); removals {fast['order'][:args.sleb_steps]}; "
              f"max |objective diff| {diff:.2e}", flush=True)
    print(f"  median speedup {statistics.median(ratios):.2f}x wall, {statistics.median(cpu_ratios):.2f}x CPU; "
          f"identical orders: {all(same)}")

if __name__ == "__main__":
    main()
