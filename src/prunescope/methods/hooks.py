"""Capturing what a decoder block receives and returns, so a block can be rerun (or trained) on its own."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


def detach(value: Any) -> Any:
    """``value`` with every tensor detached (tuples, lists and dicts walked)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (tuple, list)):
        return type(value)(detach(v) for v in value)
    if isinstance(value, dict):
        return {k: detach(v) for k, v in value.items()}
    return value


def first(output: Any) -> torch.Tensor:
    """A block's hidden-state output (blocks return a tensor or a tuple whose first item it is)."""
    return output[0] if isinstance(output, (tuple, list)) else output


@contextlib.contextmanager
def capture_io(first_block, last_block) -> Iterator[tuple[list, list]]:
    """Record ``(args, kwargs)`` of every call to ``first_block`` and the hidden states ``last_block`` returns.

    Run the model with ``use_cache=False`` inside the block: the recorded calls can then be replayed with
    ``call_block`` (for training a replacement, or scoring one).
    """
    calls: list[tuple[tuple, dict]] = []
    outputs: list[torch.Tensor] = []
    h1 = first_block.register_forward_pre_hook(lambda m, a, k: calls.append((detach(a), detach(k))), with_kwargs=True)
    h2 = last_block.register_forward_hook(lambda m, a, out: outputs.append(first(out).detach()))
    try:
        yield calls, outputs
    finally:
        h1.remove()
        h2.remove()


def block_input(call: tuple[tuple, dict]) -> torch.Tensor:
    """The hidden states a recorded call passed in (positionally or by name)."""
    args, kwargs = call
    return args[0] if args else kwargs["hidden_states"]


def call_block(block, call: tuple[tuple, dict]) -> torch.Tensor:
    """Rerun ``block`` on a recorded call; returns its hidden-state output."""
    args, kwargs = call
    return first(block(*args, **kwargs))
