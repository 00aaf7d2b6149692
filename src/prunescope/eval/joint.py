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

from prunescope.eval.forward import cache_of, forward, model_device, right_pad
from prunescope.eval.prefix import Unshareable, _arange_rows, cache_supports_sharing, expand_cache


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
    from prunescope.eval.engine import truncate_at_stop

    device = model_device(model)
    n = len(groups)
    sufs = [ctx[prefix_len:] for ctx, _ in groups]
    lens = torch.tensor([len(s) for s in sufs], device=device)
    cache = expand_cache(prefix_cache, n) if prefix_cache is not None else None
    ids, mask = right_pad(sufs, pad, device)
    width = ids.shape[1]
    full_mask = torch.cat([mask.new_ones((n, prefix_len)), mask], dim=1)
    keep = width - int(lens.min()) + 1
    out = forward(model, input_ids=ids, attention_mask=full_mask,
                  position_ids=_arange_rows(prefix_len, width, n, device), cache=cache, use_cache=True,
                  logits_to_keep=keep)
    cache = cache_of(out)
    if not cache_supports_sharing(cache):
        raise Unshareable(type(cache).__name__)
    last = out.logits[:, -keep:].float()[torch.arange(n, device=device), lens - 1 - (width - keep)]
    first_logp = torch.log_softmax(last, dim=-1)
    scores = [[first_logp[g, c[0]].item() for c in conts] for g, (_, conts) in enumerate(groups)]

    # Choices longer than one token: their other tokens against a fork of each context's cache.
    longer = [(g, j, c) for g, (_, conts) in enumerate(groups) for j, c in enumerate(conts) if len(c) > 1]
    if longer:
        owner = torch.tensor([g for g, _, _ in longer], device=device)
        choice_cache = _fork(cache)
        choice_cache.batch_select_indices(owner)
        ids2, mask2 = right_pad([c[:-1] for _, _, c in longer], pad, device)
        w2 = ids2.shape[1]
        pos = prefix_len + lens[owner][:, None] + torch.arange(w2, device=device)[None]
        out2 = forward(model, input_ids=ids2, attention_mask=torch.cat([full_mask[owner], mask2], dim=1),
                       position_ids=pos, cache=choice_cache, use_cache=True)
        logp = torch.log_softmax(out2.logits[:, -w2:].float(), dim=-1)
        tgt, _ = right_pad([c[1:] for _, _, c in longer], 0, device)
        picked = (logp.gather(-1, tgt[..., None])[..., 0] * mask2).sum(-1).tolist()
        for (g, j, _), s in zip(longer, picked):
            scores[g][j] += s
        del choice_cache, out2, logp

    # Greedy generation from each context's own cache.
    rows = list(range(n))
    generated: list[list[int]] = [[] for _ in groups]
    texts = [""] * n
    gen_mask, cursor = full_mask, prefix_len + lens
    next_tok = last.argmax(-1)
    while True:
        kept, feed = [], []
        for r, tok in enumerate(next_tok.tolist()):
            i = rows[r]
            if tok in eos:
                continue
            generated[i].append(tok)
            texts[i], stopped = truncate_at_stop(tokenizer.decode(generated[i], skip_special_tokens=True), stop)
            stopped = stopped or (settled is not None and settled(i, texts[i]))
            if not stopped and len(generated[i]) < max_new_tokens:
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
