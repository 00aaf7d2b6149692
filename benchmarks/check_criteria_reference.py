"""Each criterion on the default model against a small independent re-implementation of its reference.

The re-implementations here use only transformers (``output_hidden_states``, the model's own loss with
``labels``, ``torch.autograd.grad``, forward hooks that make a block return its input) and follow the
reference scripts: ShortGPT's block influence, PruneMe's last-token angular distance, Shortened LLaMA's
element-wise Taylor and its PPL, SLEB's greedy loop with barriers. Both sides see the same calibration
windows (drawn by prunescope); the script prints Spearman's rho between the two rankings.

    python benchmarks/check_criteria_reference.py [--samples 16] [--seq-len 256] [--sleb-steps 2]
"""
from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch

from prunescope.criteria import score_layers
from prunescope.criteria.calibration import calibration_batches
from prunescope.models import get_layers, load_model


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho of two score lists (average ranks for ties)."""
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


@contextlib.contextmanager
def bypassed(model, layers):
    """Blocks ``layers`` return their input (forward hooks; independent of prunescope's surgery)."""
    def hook(module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
    handles = [get_layers(model)[i].register_forward_hook(hook, with_kwargs=True) for i in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def hidden_states(model, ids):
    """Inputs of every block plus the raw output of the last block (hs[L] from transformers is normed)."""
    last = {}
    h = get_layers(model)[-1].register_forward_hook(
        lambda m, a, o: last.__setitem__("out", o[0] if isinstance(o, tuple) else o))
    try:
        hs = model(ids, output_hidden_states=True).hidden_states
    finally:
        h.remove()
    return list(hs[:-1]) + [last["out"]]


def loss(model, windows):
    """Mean token NLL over equal-length windows (the model's own loss with labels)."""
    return sum(model(w, labels=w).loss for w in windows) / len(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--sleb-steps", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated criteria to skip")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    model, tok = load_model(args.model, dtype="float32", device="cpu")
    L = len(get_layers(model))
    kw = dict(calib_samples=args.samples, calib_seq_len=args.seq_len, progress=False)
    batches, info = calibration_batches(model, tok, None, samples=args.samples, seq_len=args.seq_len)
    windows = [row[None] for b in batches for row in b.input_ids]
    print(f"{args.model}: {L} layers; calibration {info['calib_samples']} x {info['calib_seq_len']} tokens "
          f"of {info['calib']}", flush=True)
    rows = []

    def report(name, ours, ref, seconds):
        rho = spearman(ours, ref)
        rows.append((name, rho))
        print(f"  {name:16s} Spearman {rho:.4f}   ({seconds:.0f} s)", flush=True)

    if "block_influence" not in skip or "angular" not in skip:
        start = time.perf_counter()
        cos_all = torch.zeros(L, dtype=torch.float64)
        ang_last = torch.zeros(L, dtype=torch.float64)
        tokens = 0
        with torch.no_grad():
            for w in windows:
                hs = hidden_states(model, w)
                for l in range(L):
                    a, b = hs[l][0].double(), hs[l + 1][0].double()
                    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
                    cos_all[l] += cos.sum()
                    ang_last[l] += torch.arccos(cos[-1].clamp(-1, 1)) / math.pi
                tokens += w.shape[1]
        ref_seconds = time.perf_counter() - start
        for name, ref in (("block_influence", (1 - cos_all / tokens).tolist()),
                          ("angular", (ang_last / len(windows)).tolist())):
            if name in skip:
                continue
            start = time.perf_counter()
            ours = score_layers(model, tok, name, **kw)["scores"]
            report(name, ours, ref, time.perf_counter() - start + ref_seconds / 2)

    if "taylor" not in skip:
        start = time.perf_counter()
        ours = score_layers(model, tok, "taylor", **kw)["scores"]
        params = [[p for n, p in b.named_parameters() if "weight" in n] for b in get_layers(model)]
        flat = [p for ps in params for p in ps]
        grads = [torch.zeros_like(p) for p in flat]
        for w in windows:  # gradient of the mean loss, window by window (equal lengths)
            for g, d in zip(grads, torch.autograd.grad(model(w, labels=w).loss / len(windows), flat)):
                g += d
        ref, k = [], 0
        with torch.no_grad():
            for ps in params:
                ref.append(sum(float((p * grads[k + j]).abs().sum()) for j, p in enumerate(ps)))
                k += len(ps)
        report("taylor", ours, ref, time.perf_counter() - start)

    if "ppl" not in skip:
        start = time.perf_counter()
        ours = score_layers(model, tok, "ppl", **kw)["scores"]
        with torch.no_grad():
            base = float(loss(model, windows))
            ref = []
            for i in range(L):
                with bypassed(model, [i]):
                    ref.append(float(loss(model, windows)) - base)
        report("ppl", ours, ref, time.perf_counter() - start)

    if "sleb" not in skip:
        start = time.perf_counter()
        result = score_layers(model, tok, "sleb", num_layers=args.sleb_steps, **kw)
        alive, removal, last = list(range(L)), [], {}
        with torch.no_grad():
            for _ in range(args.sleb_steps):
                last = {}
                for j in alive[1:-1]:
                    with bypassed(model, removal + [j]):
                        last[j] = float(loss(model, windows))
                best = min(last, key=lambda j: (last[j], j))
                removal.append(best)
                alive.remove(best)
        rest = sorted((j for j in last if j not in removal), key=lambda j: (last[j], j))
        order = removal + rest + [i for i in range(L) if i not in removal and i not in rest]
        position = {layer: p for p, layer in enumerate(order)}
        ours_position = {layer: p for p, layer in enumerate(result["order"])}
        print(f"    sleb removals: ours {result['order'][:args.sleb_steps]}, reference {removal}")
        report("sleb", [ours_position[i] for i in range(L)], [position[i] for i in range(L)],
               time.perf_counter() - start)

    print("\nall >= 0.95:", all(rho >= 0.95 for _, rho in rows))


if __name__ == "__main__":
    main()
