"""Generation speed: prunescope's batched greedy decoding vs a per-item ``model.generate`` loop.

Same model, same prompts (a mix of probe tasks, so lengths and stopping points differ), same stop
strings and token budget; the peer passes ``stop_strings`` to ``generate`` so it also stops early.
Prints items/s of each (median of repeats), the ratio (target >= 3x) and whether the outputs are
identical.

    python benchmarks/bench_generate.py [--items 32] [--batch-size 16] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="arith_add_2d_gen,copy_words_gen,brackets_gen")
    parser.add_argument("--items", type=int, default=32, help="prompts in all, spread over the tasks")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from prunescope.eval.engine import encode, generate, truncate_at_stop
    from prunescope.models import load_model
    from prunescope.tasks import get_task

    torch.set_grad_enabled(False)
    model, tok = load_model(args.model)
    names = args.tasks.split(",")
    prompts = []
    for i, name in enumerate(names):
        task = get_task(name)
        share = args.items // len(names) + (i < args.items % len(names))
        prompts += [task.render(it, tok) for it in task.items(share, seed=0)]
    stop = ["\n"]

    def batched():
        return generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, stop=stop, batch_size=args.batch_size)

    def per_item():
        outs = []
        for p in prompts:
            ids = torch.tensor([encode(tok, p)])
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                 do_sample=False, stop_strings=stop, tokenizer=tok,
                                 pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
            outs.append(truncate_at_stop(tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True), stop)[0])
        return outs

    times = {"batched": [], "per-item": []}
    results = {}
    for _ in range(args.repeats):
        for name, fn in (("batched", batched), ("per-item", per_item)):
            start = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - start)
    same = sum(a == b for a, b in zip(results["batched"], results["per-item"]))
    rate = {k: len(prompts) / statistics.median(v) for k, v in times.items()}
    print(f"model {args.model}, {len(prompts)} prompts from {args.tasks}, max {args.max_new_tokens} new tokens, "
          f"batch size {args.batch_size}, median of {args.repeats}")
    print(f"prunescope batched: {rate['batched']:.2f} items/s   per-item model.generate: {rate['per-item']:.2f} items/s")
    print(f"ratio: {rate['batched'] / rate['per-item']:.2f}x (target >= 3x)")
    print(f"identical outputs: {same}/{len(prompts)} ({'yes' if same == len(prompts) else 'NO'})")
    for a, b in zip(results["batched"], results["per-item"]):
        if a != b:
            print(f"  differs: {a!r} vs {b!r}")


if __name__ == "__main__":
    main()
