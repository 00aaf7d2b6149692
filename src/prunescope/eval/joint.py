"""Multiple choice and generation on the same contexts, from one pass over each context.

The two tasks of a matched pair (``arith_add_1d_mc`` / ``arith_add_1d_gen``) show the same rendered context
for every item; only how the answer is read differs. So the context runs once: its KV cache scores the
item's choices (the second pass of ``prefix.score_batch_two_pass``) and, forked, starts greedy generation.
Rows are right padded; the holes are hidden by the attention mask and skipped by explicit positions, which
is exact for full attention only, so models with windowed attention evaluate the two tasks separately
(``score_and_generate`` returns None and the caller does).
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch

from prunescope.eval.forward import cache_of, forward, model_device
from prunescope.eval.prefix import Unshareable, add_rest_of_choices, cache_supports_sharing, context_pass


def _fork(cache):
    """A second handle on ``cache`` whose row selections and updates leave the original untouched (cache
    layers replace their tensors on update and selection, never write into them)."""
    twin = copy.copy(cache)
    twin.layers = [copy.copy(layer) for layer in cache.layers]
    return twin


@torch.inference_mode()
def score_and_generate_batch(model, tokenizer, prefix_cache, prefix_len: int,
                             groups: list[tuple[list[int], list[list[int]]]], pad: int, *, max_new_tokens: int,
                             stop: Sequence[str], eos: set[int],
                             settled: Callable[[int, str], bool] | None = None) -> tuple[list[list[float]], list[str]]:
    """For each (context, continuations) group: the sum log-prob of every continuation given the context,
    and the greedy continuation of the context (cut at a stop string, end-of-sequence, the token budget, or
    when ``settled(row, text)`` says so), all contexts starting with the cached ``prefix_len`` tokens."""
    from prunescope.eval.engine import take_token

    device = model_device(model)
    n = len(groups)
    out, lens, full_mask, last, scores = context_pass(model, prefix_cache, prefix_len, groups, pad, use_cache=True)
    cache = cache_of(out)
    if not cache_supports_sharing(cache):
        raise Unshareable(type(cache).__name__)
    # Choices longer than one token: their other tokens against a fork of each context's cache.
    add_rest_of_choices(model, _fork(cache), prefix_len, lens, full_mask, groups, pad, scores)

    # Greedy generation from each context's own cache.
    rows = list(range(n))
    generated: list[list[int]] = [[] for _ in groups]
    texts = [""] * n
    gen_mask, cursor = full_mask, prefix_len + lens
    next_tok = last.argmax(-1)
    while True:
        kept, feed = [], []
        for r, tok in enumerate(next_tok.tolist()):
            if take_token(tokenizer, tok, rows[r], generated, texts, stop=stop, eos=eos, settled=settled,
                          max_new_tokens=max_new_tokens):
                kept.append(r)
                feed.append(tok)
        if not kept:
            return scores, texts
        if len(kept) < len(rows):  # finished rows leave the batch
            sel = torch.tensor(kept, device=device)
            rows = [rows[r] for r in kept]
            cache.batch_select_indices(sel)
            gen_mask, cursor = gen_mask[sel], cursor[sel]
        gen_mask = torch.cat([gen_mask, gen_mask.new_ones((len(rows), 1))], dim=1)
        out = forward(model, input_ids=torch.tensor(feed, device=device)[:, None], attention_mask=gen_mask,
                      position_ids=cursor[:, None], cache=cache, use_cache=True)
        cursor = cursor + 1
        next_tok = out.logits[:, -1].argmax(-1)
