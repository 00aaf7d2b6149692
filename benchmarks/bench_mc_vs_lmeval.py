"""Multiple-choice scoring speed: prunescope's engine vs lm-evaluation-harness's HF backend.

Same model, same items, same batch size: 16 full sequences per forward pass (lm-eval: 16 (context,
continuation) rows; prunescope: 16 contexts, whose continuations then run from the contexts' expanded
KV cache in one short pass of continuation tokens only). lm-eval gets the exact
(context, continuation) requests prunescope scores, as ``Instance`` objects passed to
``HFLM.loglikelihood``. Prints items/s of each (median of repeats), the ratio (target >= 1.5x),
whether the chosen answers are identical, and the largest log-likelihood difference.

    python benchmarks/bench_mc_vs_lmeval.py [--task arith_add_2d_mc] [--items 100] [--repeats 3]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="arith_add_2d_mc")
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from prunescope.eval.engine import score_choices
    from prunescope.models import load_model
    from prunescope.tasks import get_task

    torch.set_grad_enabled(False)
    model, tok = load_model(args.model)
    task = get_task(args.task)
    items = task.items(args.items, seed=0)
    requests = [(task.render(it, tok), it.choices) for it in items]
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=args.batch_size)
    instances = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, c), idx=j)
                 for ctx, choices in requests for j, c in enumerate(choices)]

    def run_ours():
        return score_choices(model, tok, requests, batch_size=args.batch_size)

    def run_lmeval():
        flat = [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
        out, k = [], 0
        for _, choices in requests:
            out.append(flat[k:k + len(choices)])
            k += len(choices)
        return out

    times = {"prunescope": [], "lm-eval": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("prunescope", run_ours), ("lm-eval", run_lmeval)):  # interleaved: fair under load
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)

    def argmax(s):
        return max(range(len(s)), key=s.__getitem__)

    ours, theirs = results["prunescope"], results["lm-eval"]
    same = sum(argmax(a) == argmax(b) for a, b in zip(ours, theirs))
    max_diff = max(abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a, b))
    acc = sum(argmax(a) == it.gold for a, it in zip(ours, items)) / len(items)
    rate = {k: len(items) / statistics.median(v) for k, v in times.items()}
    print(f"model {args.model}, task {args.task}, {len(items)} items x {len(items[0].choices)} choices, "
          f"batch size {args.batch_size}, median of {args.repeats}")
    print(f"prunescope: {rate['prunescope']:.2f} items/s   lm-eval HFLM: {rate['lm-eval']:.2f} items/s")
    print(f"ratio: {rate['prunescope'] / rate['lm-eval']:.2f}x (target >= 1.5x)")
    print(f"identical chosen answers: {same}/{len(items)} ({'yes' if same == len(items) else 'NO'}); "
          f"max |log-likelihood difference| {max_diff:.2e}; accuracy {acc:.1%}")


if __name__ == "__main__":
    main()
