"""Generation speed: prunescope's greedy decoding vs transformers' batched ``generate``.

Same model, same prompts, same batch size (16), same stop string ("\\n") and token budget. The peer
is what users run: ``model.generate`` on left-padded batches (prompts sorted by length, like
prunescope's, so the peer pads no more than it must) with ``stop_strings``; its outputs are cut at
the stop string the same way. prunescope runs the few-shot block the prompts share once and
continues every batch from its KV cache, without padding, and drops finished rows. The two run
interleaved ``--repeats`` times; the script prints prompts/s of each (median), the ratio (target >= 2x),
the load average, and how many outputs are identical (target >= 97%).

Items: by default freshly written held-out few-shot questions (``heldout.py``, not the repository's
tasks); ``--items FILE`` takes a user-task YAML of kind generate, or a JSONL whose rows are read with
``--prompt``, ``--answer-field`` and ``--fewshot`` (see ``prunescope.tasks.user``).

    python benchmarks/bench_generate.py [--items FILE] [--limit 64] [--batch-size 16] [--repeats 3]
"""
from __future__ import annotations

import argparse
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
    parser.add_argument("--answer-field", default="answer")
    parser.add_argument("--fewshot", type=int, default=5, help="JSONL --items: first rows used as shots")
    parser.add_argument("--limit", type=int, default=64, help="prompts generated")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--stop", default="\n")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for both (1 is steadier when other jobs share the cores)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from heldout import task_from
    from prunescope.eval.engine import encode, generate, truncate_at_stop
    from prunescope.eval.forward import left_pad, pad_id
    from prunescope.models import load_model

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_model(args.model)
    task = task_from(args.items, kind="generate", n=args.limit * 4 // 3 + 20, prompt=args.prompt,
                     fewshot=args.fewshot, fields={"answer": args.answer_field})
    prompts = [task.render(it, tok) for it in task.items(args.limit, seed=0)]
    stop = [args.stop]
    pad = pad_id(tok)

    def ours():
        return generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, stop=stop, batch_size=args.batch_size)

    def peer():
        encoded = [encode(tok, p) for p in prompts]  # the same token ids as prunescope's
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        outs = [""] * len(prompts)
        for start in range(0, len(order), args.batch_size):
            chunk = order[start:start + args.batch_size]
            ids, mask = left_pad([encoded[i] for i in chunk], pad, model.device)
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                 do_sample=False, stop_strings=stop, tokenizer=tok, pad_token_id=pad)
            for i, row in zip(chunk, gen[:, ids.shape[1]:]):
                outs[i] = truncate_at_stop(tok.decode(row, skip_special_tokens=True), stop)[0]
        return outs

    times = {"prunescope": [], "transformers": []}
    results, loads = {}, []
    for _ in range(args.repeats):
        for name, fn in (("prunescope", ours), ("transformers", peer)):  # interleaved: fair under load
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
            loads.append(os.getloadavg()[0])
    same = sum(a == b for a, b in zip(results["prunescope"], results["transformers"]))
    rate = {k: len(prompts) / statistics.median(v) for k, v in times.items()}
    ratio = rate["prunescope"] / rate["transformers"]
    shared = os.path.commonprefix(prompts)
    print(f"model {args.model}, items {args.items or 'held-out (written now)'}: {len(prompts)} prompts, shared prefix "
          f"{len(tok(shared)['input_ids'])} tokens, max {args.max_new_tokens} new tokens, stop {args.stop!r}, "
          f"batch size {args.batch_size}, {torch.get_num_threads()} torch threads, median of {args.repeats}")
    print("seconds per run: " + "; ".join(f"{k} " + ", ".join(f"{t:.1f}" for t in v) for k, v in times.items()))
    print(f"load average during runs: {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores")
    print(f"prunescope: {rate['prunescope']:.2f} prompts/s   transformers batched generate: "
          f"{rate['transformers']:.2f} prompts/s")
    print(f"ratio: {ratio:.2f}x (target >= 2x: {'met' if ratio >= 2 else 'NOT met'})")
    print(f"identical outputs: {same}/{len(prompts)} ({same / len(prompts):.1%}; target >= 97%: "
          f"{'met' if same >= 0.97 * len(prompts) else 'NOT met'})")
    for a, b in zip(results["prunescope"], results["transformers"]):
        if a != b:
            print(f"  differs: {a!r} vs {b!r}")


if __name__ == "__main__":
    main()
