"""Choosing which blocks to cut: explicit indices, a count or ratio from a criterion's order."""
from __future__ import annotations

from typing import Sequence

from prunescope.errors import UsageError


def count_for_ratio(ratio: float, total: int, *, flag: str = "--ratio") -> int:
    """Number of blocks to remove for a fraction ``ratio`` of ``total`` (rounded, at least one)."""
    if not 0.0 < ratio < 1.0:
        raise UsageError(f"{flag} {ratio} must be strictly between 0 and 1 (a fraction of the layers)")
    k = max(1, round(ratio * total))
    if k >= total:
        raise UsageError(f"{flag} {ratio} would remove all {total} layers; use a smaller ratio")
    return k


def check_count(k: int, total: int, *, flag: str = "--num-layers") -> int:
    """Validate a number of blocks to remove."""
    if k < 1:
        raise UsageError(f"{flag} {k} must be at least 1")
    if k >= total:
        raise UsageError(f"{flag} {k} must be less than the model's {total} layers")
    return k


def layers_from_order(order: Sequence[int], k: int, total: int, *, flag: str = "--num-layers") -> list[int]:
    """The first ``k`` entries of a removal order (least important first), sorted."""
    check_count(k, total, flag=flag)
    if len(order) < k:
        raise UsageError(f"{flag} {k}: the scores only give an order for {len(order)} layers")
    return sorted(int(i) for i in order[:k])


def parse_layer_list(text: str, *, flag: str = "--layers") -> list[int]:
    """Parse ``"3,5,7"`` into 0-based indices (ranges ``"3-5"`` allowed)."""
    out: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        bounds = part.split("-")
        if len(bounds) > 2 or not all(b.strip().isdigit() for b in bounds):
            raise UsageError(f"{flag}: {part!r} is not a 0-based layer index or range (e.g. {flag} 3,5,7 or 3-5)")
        first, last = int(bounds[0]), int(bounds[-1])
        if last < first:
            raise UsageError(f"{flag}: range {part!r} runs backwards; write it low-high, e.g. {last}-{first}")
        out.extend(range(first, last + 1))
    if not out:
        raise UsageError(f"{flag} is empty; give 0-based layer indices such as 3,5,7")
    return out
