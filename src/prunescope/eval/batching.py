"""Batch sizes: a fixed number, or ``auto`` — the largest batch that fits on a GPU, and on a CPU the
size with the best measured throughput.

On a CPU a bigger batch stops paying off once the matrix multiplies saturate the cores; where that
happens depends on the machine, the model and the sequence lengths, so ``auto`` measures it on the
real batches of the run: it starts small and doubles the batch size while real tokens per second
grow by at least ``gain``, then keeps the best size seen. On a GPU it starts from an estimate of what
half the free memory holds and halves the batch on an out-of-memory error. Chosen sizes are
remembered per (model, kind) for the rest of the process, so later tasks and study cells skip the
search.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

CPU_BATCH = 16
CPU_START = 4
CPU_MAX = 128

_chosen: dict[tuple, int] = {}


def _key(model, kind: str) -> tuple:
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    return kind, type(model).__name__, params, next(model.parameters()).device.type, getattr(cfg, "num_hidden_layers", 0)


class BatchSizer:
    """Gives the size of the next batch and learns from how long each batch took.

    ``batch_size`` is an int (used as is) or "auto"; ``start`` is the GPU estimate or the fixed size."""

    def __init__(self, model, batch_size: int | str | None, *, kind: str, gpu_estimate: Callable[[], int],
                 gain: float = 1.1):
        self.auto = batch_size in (None, "auto")
        self.gain = gain
        self.key = _key(model, kind)
        self.on_gpu = next(model.parameters()).device.type == "cuda"
        self.settled = not self.auto
        self.rates: dict[int, list[float]] = {}
        if not self.auto:
            self.size = max(1, int(batch_size))
        elif self.key in _chosen:
            self.size, self.settled = _chosen[self.key], True
        elif self.on_gpu:
            self.size, self.settled = gpu_estimate(), True
        else:
            self.size = CPU_START

    def record(self, real_tokens: int, seconds: float, used: int) -> None:
        """Note that a batch of ``used`` rows processed ``real_tokens`` tokens in ``seconds``."""
        if self.settled or used < self.size:  # a short last batch says nothing about its size
            return
        self.rates.setdefault(self.size, []).append(real_tokens / max(seconds, 1e-9))
        rate = {s: max(r) for s, r in self.rates.items()}
        best = max(rate, key=rate.get)
        previous = self.size // 2
        if (previous in rate and rate[self.size] < rate[previous] * self.gain) or self.size >= CPU_MAX:
            self.size, self.settled = best, True
            _chosen[self.key] = best
        else:
            self.size *= 2

    def shrink(self) -> None:
        """Halve after an out-of-memory error (at least 1 row), and remember it."""
        self.size = max(1, self.size // 2)
        self.settled = True
        if self.auto:
            _chosen[self.key] = self.size


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def run_batches(order: Sequence[int], sizer: BatchSizer, run: Callable[[list[int]], None],
                tokens: Callable[[list[int]], int], *, on_done: Callable[[int], None] | None = None) -> None:
    """Call ``run`` on consecutive slices of ``order`` sized by ``sizer``, timing each one."""
    i = 0
    while i < len(order):
        batch = list(order[i:i + sizer.size])
        start = time.perf_counter()
        try:
            run(batch)
        except RuntimeError as err:
            if not (sizer.on_gpu and _is_oom(err)) or sizer.size == 1:
                raise
            torch.cuda.empty_cache()
            sizer.shrink()
            continue
        sizer.record(tokens(batch), time.perf_counter() - start, len(batch))
        i += len(batch)
        if on_done is not None:
            on_done(len(batch))
