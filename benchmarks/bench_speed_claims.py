"""How often the speed rule makes a false claim: the same unchanged model timed on both arms.

Each trial is one ``measure_efficiency(model, base=model)`` call (3 rounds of each by default, interleaved);
any "faster" or "slower" verdict is false, and each should happen in at most 5% of trials
(``prunescope.speed``). The same rank test applied to rounds timed in different calls (the previous trial's
base rounds against this trial's) shows what pairing buys: machine load drifts between calls. With
``--layers`` a second arm skips those layers, to show the rule still sees a real speedup.

    python benchmarks/bench_speed_claims.py [--model smollm2-135m] [--trials 40] [--layers 20,21,22,23,24,25]
    python benchmarks/bench_speed_claims.py --tiny --trials 120    # a random 8-layer model, seconds
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tiny", action="store_true", help="a random tiny llama instead of --model")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--layers", default="", help="0-based layers a second arm skips (a real speedup)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from prunescope.pruning import skip_layers
    from prunescope.speed import ratio_interval, speed_verdict
    from prunescope.study.efficiency import measure_efficiency

    torch.set_num_threads(args.threads)
    if args.tiny:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from common import make_tiny_model, make_tokenizer
        model, tok = make_tiny_model("llama", layers=8, hidden=64), make_tokenizer()
    else:
        from prunescope import load_model
        model, tok = load_model(args.model, dtype="float32", device="cpu")
    kw = dict(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats, warmup=1)
    paired, apart, cut = collections.Counter(), collections.Counter(), collections.Counter()
    layers = [int(x) for x in args.layers.split(",") if x]
    previous = None
    for _ in range(args.trials):
        r = measure_efficiency(model, tok, base=model, **kw)
        paired[speed_verdict(r["speedup"]["decode_interval"])] += 1
        if previous is not None:  # the same test on rounds from two calls, as if they had been interleaved
            apart[speed_verdict({**ratio_interval(r["decode_tokens_per_s_all"], previous), "paired": True})] += 1
        previous = r["base_rounds"]["decode_tokens_per_s_all"]
        if layers:
            c = measure_efficiency(lambda: skip_layers(model, layers=layers), tok, base=model, **kw)
            cut[speed_verdict(c["speedup"]["decode_interval"])] += 1
    level = r["speedup"]["decode_interval"]["level"]
    print(f"{args.trials} trials, {args.repeats} rounds of each, interval level {level}")
    for name, counts in (("unchanged, interleaved", paired), ("unchanged, timed apart", apart)):
        n = sum(counts.values())
        print(f"{name:26s} false 'faster' {counts['faster'] / n:5.1%}  false 'slower' {counts['slower'] / n:5.1%}"
              f"  (each at most 5% by construction; n={n})")
    if layers:
        n = sum(cut.values())
        print(f"{len(layers)} layers skipped, interleaved: 'faster' in {cut['faster'] / n:.0%} of trials")


if __name__ == "__main__":
    main()
