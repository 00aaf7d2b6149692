"""Multiple-choice scoring speed: prunescope's engine vs lm-evaluation-harness's HF backend (HFLM).

Same model object (same dtype), same items, same batch size (16 by default): lm-eval runs 16
(context, continuation) rows per forward pass; prunescope 16 contexts per pass, after running the
few-shot block the contexts share once (its KV cache then serves every batch), with each context's
choices scored from its cache. lm-eval gets the exact (context, continuation) requests prunescope
scores, as ``Instance`` objects passed to ``HFLM.loglikelihood``. The two run interleaved, ``--repeats``
times; the script prints items/s of each (median), the ratio (target >= 3x), the machine's load
average, whether the chosen answers and accuracies agree (target: accuracy equal within 0.01) and the
largest log-likelihood difference.

Items: by default freshly written held-out few-shot 4-choice questions (``heldout.py``, not the
repository's tasks); ``--items FILE`` takes a user-task YAML, or a JSONL whose rows are read with
``--prompt``, ``--choices-field``, ``--gold-field`` and ``--fewshot`` (see ``prunescope.tasks.user``).

    python benchmarks/bench_mc_vs_lmeval.py [--items FILE] [--limit 120] [--batch-size 16] [--repeats 3]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--items", default=None, help="user-task YAML or JSONL (default: held-out items written now)")
    parser.add_argument("--prompt", default="Question: {question}\nAnswer:", help="JSONL --items: prompt template")
    parser.add_argument("--choices-field", default="choices")
    parser.add_argument("--gold-field", default="answer")
    parser.add_argument("--fewshot", type=int, default=5, help="JSONL --items: first rows used as shots")
    parser.add_argument("--limit", type=int, default=120, help="items scored")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both (1 is steadier when other jobs share the cores)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from heldout import task_from
    from prunescope.eval.engine import score_choices
    from prunescope.models import load_model

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    task = task_from(args.items, kind="multiple_choice", n=args.limit * 4 // 3 + 20, prompt=args.prompt,
                     fewshot=args.fewshot, fields={"choices": args.choices_field, "gold": args.gold_field})
    items = task.items(args.limit, seed=0)
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
    results, loads = {}, []
    for _ in range(args.repeats):
        for name, fn in (("prunescope", run_ours), ("lm-eval", run_lmeval)):  # interleaved: fair under load
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
            loads.append(os.getloadavg()[0])

    def argmax(s):
        return max(range(len(s)), key=s.__getitem__)

    ours, theirs = results["prunescope"], results["lm-eval"]
    same = sum(argmax(a) == argmax(b) for a, b in zip(ours, theirs))
    max_diff = max(abs(x - y) for a, b in zip(ours, theirs) for x, y in zip(a, b))
    acc = {k: sum(argmax(s) == it.gold for s, it in zip(v, items)) / len(items) for k, v in results.items()}
    rate = {k: len(items) / statistics.median(v) for k, v in times.items()}
    ratio = rate["prunescope"] / rate["lm-eval"]
    shared = os.path.commonprefix([c for c, _ in requests])
    print(f"model {args.model}, items {args.items or 'held-out (written now)'}: {len(items)} items x "
          f"{len(items[0].choices)} choices, shared prefix {len(tok(shared)['input_ids'])} tokens, "
          f"batch size {args.batch_size}, dtype {next(model.parameters()).dtype}, {torch.get_num_threads()} torch threads, "
          f"median of {args.repeats}")
    print("seconds per run: " + "; ".join(f"{k} " + ", ".join(f"{t:.1f}" for t in v) for k, v in times.items()))
    print(f"load average during runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    print(f"prunescope: {rate['prunescope']:.2f} items/s   lm-eval HFLM: {rate['lm-eval']:.2f} items/s")
    print(f"ratio: {ratio:.2f}x (target >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    print(f"accuracy: prunescope {acc['prunescope']:.3f}, lm-eval {acc['lm-eval']:.3f} "
          f"(equal within 0.01: {'yes' if abs(acc['prunescope'] - acc['lm-eval']) <= 0.01 else 'NO'}); "
          f"identical chosen answers {same}/{len(items)}; max |log-likelihood difference| {max_diff:.2e}")


if __name__ == "__main__":
    main()
