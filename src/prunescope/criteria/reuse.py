"""Greedy removal that also reuses work across steps (used by sleb's fast path).

Within a step, ``activations.skip_scan`` already starts each candidate ``c`` from its captured input.
Across steps more is reusable: when block ``r`` is removed at step ``s``, then at step ``s + 1`` a
candidate ``c < r`` needs blocks ``c+1 .. r-1`` run on the input of ``c`` (unchanged, since nothing
before ``c`` changed), and that is exactly what step ``s`` ran for ``c``. If step ``s`` kept the
input of block ``r`` from candidate ``c``'s run, step ``s + 1`` starts ``c`` there and runs only the
blocks after ``r``.

``r`` is not known while step ``s`` runs, but with candidates evaluated from the last to the first, the
blocks already evaluated when ``c`` runs are exactly those after ``c``; the step's winner ``r`` (if
``r > c``) is then the best of them, whatever the tie rule, since the winner of all candidates also
wins any subset holding it. So each candidate keeps one state: the input of the best block evaluated
so far. The values computed are the ones the naive loop computes (same blocks on the same inputs).

This needs every batch's states in memory at once (candidates outside, batches inside, so that a
candidate's objective is complete before the next runs): about one state per candidate, i.e.
candidates x calibration tokens x hidden size values (SmolLM2-135M, default calibration: 2.2 GB).
Above ``REUSE_BYTES`` the scan falls back to ``skip_scan`` (reuse within a step only).
"""
from __future__ import annotations

from typing import Callable

import torch

from prunescope.criteria.activations import capture, run_from, sequence_stats, skip_scan
from prunescope.criteria.calibration import Batch
from prunescope.models.architectures import num_layers

REUSE_BYTES = 4 * 2**30  # kept block inputs; above this, only the within-step reuse of skip_scan is used


class StepReuse:
    """``evaluate(removed, allowed, bar) -> {candidate: value}`` for ``criteria.iterative.greedy``, with
    ``value(stats)`` the objective of a candidate's per-sequence stats (see ``sequence_stats``), higher
    is better, ties to the later block when ``later_wins_ties``. A kept state is used only while it
    holds (see ``_valid``), so any sequence of calls gives the naive loop's values; states save work
    when ``removed`` grows by the block the previous call ranked best, as in ``greedy``."""

    def __init__(self, model, batches: list[Batch], value: Callable[[torch.Tensor], float], *,
                 later_wins_ties: bool, budget: int | None = None):
        self.model, self.batches, self.value = model, batches, value
        self.sign = 1 if later_wins_ties else -1
        self.budget = REUSE_BYTES if budget is None else budget
        self.saved: dict[int, tuple[int, list[torch.Tensor], tuple[int, ...]]] = {}
        self.fallback = False

    def _valid(self, c: int, removed: list[int]):
        """The kept state of candidate ``c`` if it still holds: recorded with a prefix of ``removed``
        and every block removed since is at or after the state's block (its input is unchanged)."""
        entry = self.saved.get(c)
        if entry is None:
            return None
        start, states, then = entry
        if tuple(removed[:len(then)]) != then or any(r < start for r in removed[len(then):]):
            return None
        return entry

    def __call__(self, removed: list[int], allowed: list[int], bar) -> dict[int, float]:
        if self.fallback:
            return self._within_step(removed, allowed, bar)
        model, total = self.model, num_layers(self.model)
        kept = [i for i in range(total) if i not in set(removed)]
        self.saved = {c: e for c in allowed if (e := self._valid(c, removed)) is not None}
        need = [c for c in allowed if c not in self.saved or self.saved[c][0] <= c + 1]
        captured: dict[int, list[torch.Tensor]] = {c: [] for c in need}
        tuple_output = False
        with torch.inference_mode():
            for batch in self.batches:
                _, inputs, tuple_output = capture(model, batch, removed=removed, logits=False)
                for c in need:
                    captured[c].append(inputs[kept.index(c)])
                del inputs
                if batch is self.batches[0] and self._too_big(captured, allowed):
                    self.fallback, self.saved = True, {}
                    return self._within_step(removed, allowed, bar)
            values: dict[int, float] = {}
            best = None
            for c in sorted(allowed, reverse=True):
                entry = self.saved.get(c)
                if entry is not None and entry[0] > c + 1:
                    start, states = entry[0], entry[1]
                else:
                    start, states = c + 1, captured[c]
                record = best if best is not None and best >= start else None
                stats, recorded = [], []
                for batch, hidden in zip(self.batches, states):
                    out, got = run_from(model, batch, skipped=set(removed) | {c}, start=start, hidden=hidden,
                                        tuple_output=tuple_output, record=record)
                    stats.append(sequence_stats(out, batch))
                    recorded.append(got)
                    del out
                    if bar is not None:
                        bar.update(1)
                captured.pop(c, None)
                if record is not None:
                    self.saved[c] = (record, recorded, tuple(removed))
                values[c] = self.value(torch.cat(stats))
                if best is None or (values[c], self.sign * c) > (values[best], self.sign * best):
                    best = c
        return values

    def _too_big(self, captured: dict[int, list[torch.Tensor]], allowed: list[int]) -> bool:
        """Whether all batches' kept tensors exceed the budget, extrapolated from the first batch. Each
        candidate holds one at a time (its captured input until it runs, then the state its run kept),
        plus one being replaced and one batch's capture in flight."""
        first = next((t[0] for t in captured.values() if t), None)
        if first is None:
            return False
        per_token = first[0, 0].numel() * first.element_size()
        tokens = sum(b.input_ids.numel() for b in self.batches)
        return (len(allowed) + 2) * tokens * per_token > self.budget

    def _within_step(self, removed, allowed, bar) -> dict[int, float]:
        _, skipped = skip_scan(self.model, self.batches, removed=removed, candidates=allowed, progress=bar,
                               base=False)
        return {c: self.value(s) for c, s in skipped.items()}
