"""The compression frontier on one model: what each method buys in speed and memory, measured in one run.

For the base model and each method at one budget (``--ratio`` of the decoder layers; quant at int8 and int4;
``--methods`` takes ``name`` or ``name:key=value;key=value``): parameters, weight bytes in memory, bytes on
disk (as ``compress`` saves it; the base in the dtype a cut of it is saved in), peak memory, prefill latency
and decode tokens/s from ``measure_efficiency`` (medians of ``--repeats`` rounds, the base timed alongside
each method with rounds interleaved; the decode speedup with its rank interval and verdict,
``prunescope.speed``), each as a ratio to the base. The speculative draft is timed through ``generate``
against plain greedy ``generate`` on real prompts (same harness both ways), with its
acceptance rate and a check that its output equals the full model's.

    python benchmarks/bench_frontier.py [--model smollm2-135m] [--ratio 0.25] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

METHODS = ["depth", "width", "quant", "quant:scheme=int4", "merge", "speculative", "replace"]
# merge: LaCo on pairs of layers, as the default study (the paper's 7 at a time merges nothing on small models)
SETTINGS = {"replace": {"steps": 100}, "quant": {"scheme": "int8"}, "merge": {"merge_layers": 2}}
PROMPTS = ["Question: What is 23 + 48?\nAnswer:", "Write a Python function that reverses a string.\n",
           "The three primary colours are", "Once upon a time, in a small village by the sea,"]


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".safetensors", ".bin"))


def fmt_disk(disk: int | None, base_disk: int) -> str:
    return "-" if disk is None else f"{disk / base_disk:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a shared machine)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from prunescope.errors import UsageError
    from prunescope.methods import compress, parse_settings, save_compressed
    from prunescope.methods.speculative import measure_speculative
    from prunescope.models import load_model
    from prunescope.models.checkpoint import checkpoint_dtype, save_weights
    from prunescope.speed import fmt_speedup, speed_verdict
    from prunescope.study.efficiency import measure_efficiency

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    kw = dict(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats)
    model, tok = load_model(args.model)
    base_model = model  # kept unchanged: each method compresses a fresh copy, timed alongside this one
    base = measure_efficiency(model, tok, **kw)
    with tempfile.TemporaryDirectory() as tmp:  # in the dtype prunescope saves a cut of this model in
        save_weights(model, Path(tmp), checkpoint_dtype("auto", args.model, model)[0])
        base_disk = disk_bytes(Path(tmp))
    rows = [("base", base, base_disk, "")]
    print(f"base: {base['decode_tokens_per_s']:.1f} tokens/s decode, {base['prefill_ms']:.0f} ms prefill", flush=True)
    for entry in args.methods.split(","):
        name, _, extra = entry.partition(":")
        settings = {**SETTINGS.get(name, {}), **parse_settings(extra.replace(";", ","))}
        if name == "quant":
            entry = f"quant-{settings['scheme']}"
        model, tok = load_model(args.model)
        start = time.perf_counter()
        with torch.enable_grad():
            result = compress(model, tok, name, ratio=args.ratio, settings=settings)
        took = time.perf_counter() - start
        if name == "speculative":
            s = measure_speculative(result.model, result.draft, tok, PROMPTS, new_tokens=args.new_tokens,
                                    repeats=args.repeats)
            print(f"speculative: draft skips {result.record['draft_removed_layers']}; assisted "
                  f"{s['assisted_tokens_per_s']:.1f} vs plain {s['plain_tokens_per_s']:.1f} tokens/s via generate; "
                  f"acceptance {s['acceptance_rate']:.2f}; output identical: {s['identical']}")
            eff = dict(base)
            eff["speedup"] = {"decode": s["decode_speedup"], "prefill": 1.0, "ideal": None,
                              "decode_interval": s["decode_interval"]}
            rows.append((entry, eff, base_disk, f"acc {s['acceptance_rate']:.2f}, identical={s['identical']}, "
                                               f"{took:.0f}s"))
            continue
        eff = measure_efficiency(result.model, tok, base=base_model, **kw)  # rounds interleaved with the base's
        with tempfile.TemporaryDirectory() as tmp:
            try:
                disk = disk_bytes(save_compressed(result, tok, Path(tmp) / name, base=args.model))
            except UsageError:  # a format transformers cannot save (torchao's CPU int4 layout)
                disk = None
        note = f"{took:.0f}s to compress"
        if name == "merge":
            note += f", merges {[(g['into'], g['merged']) for g in result.record['merges']]}"
        if name == "replace":
            v = result.record["valid_mse"]
            note += f", span {result.record['span']}, valid MSE {v['remove_span']:.3g} -> {v['trained']:.3g}"
        rows.append((entry, eff, disk, note))
        iv = eff["speedup"]["decode_interval"]
        print(f"{entry}: decode {fmt_speedup(eff['speedup']['decode'], iv)} ({speed_verdict(iv)}), weights "
              f"{eff['memory']['weights_bytes'] / base['memory']['weights_bytes']:.2f}x base; {note}", flush=True)

    print(f"\n{args.model}, budget {args.ratio} of the layers; {base['threads']} threads; medians of {args.repeats}")
    print(f"{'method':<13}{'layers':>7}{'params':>8}{'weights':>9}{'disk':>7}{'peak':>7}{'prefill':>9}{'decode':>8}"
          f"{'ideal':>7}  notes")
    bw, bp = base["memory"]["weights_bytes"], base["memory"]["peak_bytes"]
    for name, eff, disk, note in rows:
        sp = eff.get("speedup", {"decode": 1.0, "prefill": 1.0, "ideal": 1.0})
        ideal = f"{sp['ideal']:.2f}x" if sp.get("ideal") else "  -  "
        print(f"{name:<13}{eff['num_layers']:>7}{eff['parameters']['total'] / base['parameters']['total']:>8.2f}"
              f"{eff['memory']['weights_bytes'] / bw:>9.2f}{fmt_disk(disk, base_disk):>7}"
              f"{eff['memory']['peak_bytes'] / bp:>7.2f}"
              f"{sp['prefill']:>8.2f}x{sp['decode']:>7.2f}x{ideal:>7}  {note}")
    print("params / weights / disk / peak are ratios to the base; prefill / decode are speedups over the base; "
          "disk '-': not saveable in that format.")


if __name__ == "__main__":
    main()
