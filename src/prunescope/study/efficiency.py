"""What depth pruning buys: parameters, peak memory, prefill latency and decode throughput.

Timing: a fixed random prompt of ``prompt_tokens`` tokens is run through the model (prefill), then
``new_tokens`` tokens are decoded greedily one at a time from the KV cache. ``warmup`` untimed rounds
come first; the medians over ``repeats`` timed rounds are reported, and every round is kept. Against a
base, the speedup gets a rank interval over the rounds (``prunescope.speed``); with the base passed as
``base`` its rounds are interleaved with the model's in one call, the only setting in which that interval
may support a "faster" or "slower" claim.

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the timed rounds. On CPU there is no
allocator counter, so it is the bytes of parameters and buffers plus the largest rise of the process's
resident memory (sampled every 5 ms with psutil, or ``ru_maxrss`` without it) above its level before
the run: the activations and KV cache the run needed on top of the weights.

Ideal speedup: the per-token cost of a decoder LM is its matmul FLOPs: ``2 * params`` for each block
(plus ``4 * context * attention width`` for attention over the cache) and ``2 * vocab * hidden`` for the
LM head; the embedding lookup costs none. Removing blocks removes only block FLOPs, so the ideal
speedup is ``flops_base / flops_pruned = 1 / (head_share + block_share * kept / total)``, which is below
``layers_before / layers_after`` by exactly the head and embedding's share.
"""
from __future__ import annotations

import contextlib
import statistics
import threading
import time
from typing import Any

import torch

from prunescope.models.architectures import get_architecture, get_submodule


def parameter_counts(model) -> dict[str, int]:
    """Parameters in total, in the decoder blocks, the embedding and the LM head (tied weights once)."""
    arch = get_architecture(model)
    blocks = get_submodule(model, arch.layers)
    seen: set[int] = set()

    def count(module) -> int:
        n = 0
        for p in (module.parameters() if module is not None else []):
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        return n

    block_params = count(blocks)
    embed = count(get_submodule(model, arch.embed))
    head = count(get_submodule(model, arch.lm_head))  # 0 when tied to the embedding
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {"total": total, "blocks": block_params, "embedding": embed, "lm_head": head,
            "other": total - block_params - embed - head, "per_block": block_params // max(1, len(blocks))}


def tensor_bytes(t, seen: set | None = None) -> int:
    """Bytes a tensor holds in memory. A quantized weight (a tensor subclass such as torchao's Int8Tensor)
    is counted by the tensors it is made of (data, scales, zero points), since its own ``element_size``
    reports the dtype it computes in; a tensor seen twice (tied weights) counts once."""
    seen = set() if seen is None else seen
    flatten = getattr(t, "__tensor_flatten__", None)
    if flatten is not None and type(t) not in (torch.Tensor, torch.nn.Parameter):
        names = flatten()[0]
        return sum(tensor_bytes(getattr(t, n), seen) for n in names if isinstance(getattr(t, n, None), torch.Tensor))
    key = (t.data_ptr(), str(t.device), t.numel())
    if key in seen:
        return 0
    seen.add(key)
    return t.numel() * t.element_size()


def weight_bytes(model) -> int:
    """Bytes of the model's parameters and buffers as stored (quantized weights at their packed size)."""
    seen: set = set()
    return sum(tensor_bytes(t, seen) for t in [*model.parameters(), *model.buffers()])


def flops_per_token(model, context: int) -> dict[str, float]:
    """Matmul FLOPs per generated token at ``context`` tokens of cache, split into blocks and head."""
    cfg = model.config
    arch = get_architecture(model)
    blocks = get_submodule(model, arch.layers)
    counts = parameter_counts(model)
    head_module = get_submodule(model, arch.lm_head)
    head_weight = getattr(head_module, "weight", None)
    head_params = head_weight.numel() if head_weight is not None else 0
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    head_dim = getattr(cfg, "head_dim", None) or (getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0)) // heads
    attention = 4 * context * heads * head_dim  # q.k scores and weighted sum of values
    block = len(blocks) * (2 * counts["per_block"] + attention)
    head = 2 * head_params
    return {"blocks": float(block), "head": float(head), "total": float(block + head),
            "block_share": block / max(1.0, block + head)}


class _PeakRss:
    """Samples the resident memory of this process in a thread; ``rise`` is peak minus start (bytes)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.rise, self._stop = interval, 0, threading.Event()
        self._active = threading.Event()
        self._active.set()
        try:
            import psutil
            self._proc = psutil.Process()
        except ImportError:  # fall back to the kernel's lifetime peak, coarser but dependency-free
            self._proc = None

    def _rss(self) -> int:
        if self._proc is not None:
            return self._proc.memory_info().rss
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            rise = self._rss() - self.start  # sampled while paused too: the sampler costs both arms alike
            if self._active.is_set():
                self.rise = max(self.rise, rise)

    @contextlib.contextmanager
    def paused(self):
        """Samples inside (another model's rounds) are not counted; they are still taken, since the sampling
        thread slows the rounds it runs beside (in the same process, for the GIL) and a timed comparison needs
        both arms slowed alike. What the allocator keeps from those rounds may be seen after, so with a base
        timed alongside the CPU peak is an upper bound."""
        self.rise = max(self.rise, self._rss() - self.start)
        self._active.clear()
        try:
            yield
        finally:
            self._active.set()

    def __enter__(self):
        self.start = self._rss()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.rise = max(self.rise, self._rss() - self.start)


def _prompt(model, tokenizer, prompt_tokens: int, batch_size: int, seed: int) -> torch.Tensor:
    """A fixed random prompt of ordinary tokens (special tokens avoided)."""
    vocab = model.get_input_embeddings().weight.shape[0]
    special = set(getattr(tokenizer, "all_special_ids", []) or []) if tokenizer is not None else set()
    low = max(special, default=-1) + 1 if special and max(special) < vocab // 2 else 0
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(low, vocab, (batch_size, prompt_tokens), generator=gen)


def _cache_argument(model) -> str:
    """Newer transformers name the KV-cache argument ``cache``, older ones ``past_key_values``."""
    import inspect
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(out):
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.past_key_values


@torch.inference_mode()
def _one_round(model, ids: torch.Tensor, new_tokens: int, sync) -> tuple[float, float]:
    """Prefill seconds and decode seconds for one greedy generation with the KV cache."""
    sync()
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    nxt = out.logits[:, -1:].argmax(-1)
    sync()
    t1 = time.perf_counter()
    cache_arg = _cache_argument(model)
    past = _cache_of(out)
    for _ in range(new_tokens):
        out = model(input_ids=nxt, use_cache=True, **{cache_arg: past})
        past = _cache_of(out)
        nxt = out.logits[:, -1:].argmax(-1)
    sync()
    return t1 - t0, time.perf_counter() - t1


def _enter(arm):
    """A model, or a zero-argument callable returning a context manager that yields the model to time (e.g.
    ``lambda: skip_layers(model, layers=[3, 4])``): a context manager either way."""
    return contextlib.nullcontext(arm) if isinstance(arm, torch.nn.Module) else arm()


def _describe(model, prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    """What does not need a clock: layers, parameters, weight bytes, FLOPs per token."""
    return {"num_layers": len(get_submodule(model, get_architecture(model).layers)),
            "parameters": parameter_counts(model), "weights_bytes": weight_bytes(model),
            "flops_per_token": flops_per_token(model, context=prompt_tokens + new_tokens // 2)}


def _timed(arm, ids: torch.Tensor, new_tokens: int, sync) -> tuple[float, float]:
    """One round of ``arm`` in eval mode (its training flag restored after)."""
    with _enter(arm) as model:
        was_training = model.training
        model.eval()
        try:
            return _one_round(model, ids, new_tokens, sync)
        finally:
            model.train(was_training)


def _rates(rounds: list[tuple[float, float]], new_tokens: int, batch_size: int) -> tuple[list[float], list[float]]:
    return [p * 1000 for p, _ in rounds], [new_tokens * batch_size / d for _, d in rounds]


def measure_efficiency(model, tokenizer=None, *, prompt_tokens: int = 128, new_tokens: int = 32, repeats: int = 5,
                       warmup: int = 1, batch_size: int = 1, seed: int = 0,
                       baseline: dict[str, Any] | None = None, base=None) -> dict[str, Any]:
    """Measure ``model`` (base or pruned) as it is: parameters, peak memory, prefill latency (median ms)
    and decode throughput (median tokens/s over ``repeats`` rounds after ``warmup`` untimed ones); every
    round's numbers are kept (``prefill_ms_all``, ``decode_tokens_per_s_all``).

    With ``baseline`` (this function's result on the unpruned model) adds ``speedup``: measured prefill
    and decode speedups and the ideal one from the FLOP shares (see the module docstring), the decode one
    with a rank interval over the rounds (``prunescope.speed``) marked ``paired: false``: rounds timed in
    another call are not exchangeable with these, so that interval never supports a "faster" claim.

    With ``base`` (the unpruned model, or a callable returning a context manager that yields it) the base is
    timed in this same call, its rounds alternating with the model's (cell, base, base, cell, ...), so load
    from other processes falls on both alike: the speedup and its interval come from these paired rounds
    (``paired: true``) and the base's rounds are kept under ``base_rounds``. This doubles the timed work (on
    the default model with 128 prompt and 16 new tokens, a few seconds per measurement). ``model`` may be
    such a callable too. Peak memory counts only the model's own rounds.
    """
    if min(prompt_tokens, new_tokens, repeats, batch_size) < 1 or warmup < 0:
        raise ValueError("prompt_tokens, new_tokens, repeats and batch_size must be >= 1 and warmup >= 0")
    with _enter(model) as m:
        device = next(m.parameters()).device
        dtype = next(m.parameters()).dtype
        max_pos = getattr(m.config, "max_position_embeddings", None) or getattr(m.config, "n_positions", None)
        if max_pos and prompt_tokens + new_tokens > max_pos:  # stay inside the position table
            prompt_tokens = max(1, max_pos - new_tokens)
        ids = _prompt(m, tokenizer, prompt_tokens, batch_size, seed).to(device)
        described = _describe(m, prompt_tokens, new_tokens)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        _timed(model, ids, new_tokens, sync)
        if base is not None:
            _timed(base, ids, new_tokens, sync)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    rounds, base_rounds, peak = [], [], 0
    with (_PeakRss() if not cuda else contextlib.nullcontext()) as rss:
        for i in range(repeats):
            # alternate which arm goes first (cell, base, base, cell, ...): a steady drift in load cancels
            order = ["cell", "base"] if i % 2 == 0 else ["base", "cell"]
            for arm in order if base is not None else ["cell"]:
                if arm == "base":
                    with (rss.paused() if rss is not None else contextlib.nullcontext()):
                        base_rounds.append(_timed(base, ids, new_tokens, sync))
                    continue
                if cuda:
                    torch.cuda.reset_peak_memory_stats(device)
                rounds.append(_timed(model, ids, new_tokens, sync))
                if cuda:
                    peak = max(peak, torch.cuda.max_memory_allocated(device))
    weights = described.pop("weights_bytes")
    if cuda:
        memory = {"peak_bytes": int(peak), "weights_bytes": int(weights),
                  "activations_bytes": int(max(0, peak - before)), "method": "cuda.max_memory_allocated"}
    else:
        memory = {"peak_bytes": int(weights + rss.rise), "weights_bytes": int(weights),
                  "activations_bytes": int(rss.rise), "method": "weights + buffers + peak RSS rise (CPU)"}
    prefill, decode = _rates(rounds, new_tokens, batch_size)
    result = {
        "num_layers": described["num_layers"],
        "parameters": described["parameters"],
        "memory": memory,
        "prefill_ms": statistics.median(prefill),
        "decode_tokens_per_s": statistics.median(decode),
        "time_per_token_ms": 1000.0 / statistics.median(decode) * batch_size,
        "prefill_ms_all": prefill,
        "decode_tokens_per_s_all": decode,
        "flops_per_token": described["flops_per_token"],
        "settings": {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
                     "warmup": warmup, "batch_size": batch_size, "seed": seed},
        "device": str(device), "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
    }
    if base is not None:
        with _enter(base) as b:
            base_described = _describe(b, prompt_tokens, new_tokens)
        base_prefill, base_decode = _rates(base_rounds, new_tokens, batch_size)
        result["base_rounds"] = {"prefill_ms_all": base_prefill, "decode_tokens_per_s_all": base_decode,
                                 "prefill_ms": statistics.median(base_prefill),
                                 "decode_tokens_per_s": statistics.median(base_decode)}
        paired_base = {**base_described, **result["base_rounds"]}
        result["speedup"] = speedup(paired_base, result, paired=True)
    elif baseline is not None:
        result["speedup"] = speedup(baseline, result)
    return result


def speedup(base: dict[str, Any], pruned: dict[str, Any], *, paired: bool = False) -> dict[str, Any]:
    """Measured speedups of ``pruned`` over ``base`` next to the ideal ones (see the module docstring), with
    rank intervals over the rounds (``decode_interval``, ``prefill_interval``; ``prunescope.speed``) when both
    records keep their rounds. ``paired``: the rounds were interleaved in one call (the only case in which
    the interval may support a claim)."""
    from prunescope.speed import ratio_interval

    ideal = base["flops_per_token"]["total"] / pruned["flops_per_token"]["total"]
    decode = pruned["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    out = {
        "decode": decode,
        "prefill": base["prefill_ms"] / pruned["prefill_ms"],
        "ideal": ideal,
        "layer_ratio": base["num_layers"] / pruned["num_layers"],
        "of_ideal": (decode - 1) / (ideal - 1) if ideal > 1 else None,
        "parameters": base["parameters"]["total"] / pruned["parameters"]["total"],
        "decode_interval": None, "prefill_interval": None,
    }
    if base.get("decode_tokens_per_s_all") and pruned.get("decode_tokens_per_s_all"):
        out["decode_interval"] = ratio_interval(pruned["decode_tokens_per_s_all"], base["decode_tokens_per_s_all"],
                                                paired=paired)
    if base.get("prefill_ms_all") and pruned.get("prefill_ms_all"):  # latency: the rate is its reciprocal
        out["prefill_interval"] = ratio_interval([1 / x for x in pruned["prefill_ms_all"]],
                                                 [1 / x for x in base["prefill_ms_all"]], paired=paired)
    return out
