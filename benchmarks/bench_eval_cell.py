"""One study cell's evaluation: matched pairs run once per context and answers stop once decided, against
each task evaluated on its own with every answer decoded to its stop string or budget.

Both ways give the same accuracies (checked here item by item); the ratio is the speedup a study gets in
every cell. A pruned model that no longer stops by itself gains most from stopping decided answers.

    python benchmarks/bench_eval_cell.py [--model smollm2-135m] [--remove 12,13,14,17,25,26] [--limit 200]
                                         [--tasks arith_add_1d_mc,arith_add_1d_gen,brackets_mc,brackets_gen]
                                         [--items FILE.yaml …] [--repeats 3] [--threads N]
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from prunescope.eval.runner import evaluate
from prunescope.models import load_model
from prunescope.pruning import skip_layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--remove", default="12,13,14,17,25,26",
                    help="layers skipped (default: the default study's block-influence cut; '' for the base)")
    ap.add_argument("--tasks", default="arith_add_1d_mc,arith_add_1d_gen,brackets_mc,brackets_gen")
    ap.add_argument("--items", nargs="*", default=[], help="task files of your own (added to --tasks)")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model, dtype="float32", device="cpu")
    tasks = [t for t in args.tasks.split(",") if t] + list(args.items)
    removed = [int(x) for x in args.remove.split(",") if x.strip()]
    kw = dict(limit=args.limit, seed=0, batch_size="auto", progress=False)

    def together():
        return evaluate(model, tok, tasks, **kw)

    def apart():
        out = {}
        for t in tasks:
            out.update(evaluate(model, tok, [t], full_outputs=True, **kw)["tasks"])
        return {"tasks": out}

    times = {"together": [], "apart": []}
    with skip_layers(model, layers=removed) if removed else contextlib.nullcontext():
        together()  # warm-up: batch sizes settle, caches fill
        for _ in range(args.repeats):
            for name, fn in (("apart", apart), ("together", together)):
                start = time.perf_counter()
                result = fn()
                times[name].append(time.perf_counter() - start)
                accs = {t: m["accuracy"] for t, m in result["tasks"].items()}
                if name == "apart":
                    ref = accs
                elif accs != ref:
                    raise SystemExit(f"accuracies differ: {accs} vs {ref}")
    a, b = statistics.median(times["apart"]), statistics.median(times["together"])
    print(f"model {args.model}, {len(removed)} layers skipped, tasks {', '.join(tasks)}, limit {args.limit}")
    print(f"each task alone, whole outputs: {a:.1f} s   pairs together, decided answers stop: {b:.1f} s   "
          f"speedup {a / b:.2f}x (medians of {args.repeats}; identical accuracies: {ref})")


if __name__ == "__main__":
    main()
