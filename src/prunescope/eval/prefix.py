"""Shared-prefix KV reuse: find the token prefix a group of contexts shares, run it once, and run only
the suffixes against its KV cache.

Most prompts of a task repeat the same few-shot block before a short question. Splitting is done on
token ids of each full context (never by tokenizing a text prefix on its own), so the tokens the model
sees are exactly those of the full-context tokenization; a context whose tokens leave the shared
prefix early (a merge across the boundary, a different few-shot block) is not put in that group and
runs without a prefix (or in a group of its own).

Rows never contain holes: padding only ever sits at the right end of a row, after every real token,
so key/value index distance equals position distance and sliding-window attention (and its cropped
cache) behaves exactly as in a plain forward pass.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class Cluster:
    """Sequences (by index) that share ``prefix`` (token ids; empty for the no-prefix group)."""
    prefix: list[int]
    members: list[int] = field(default_factory=list)


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _best_split(seqs: list[Sequence[int]], pool: list[int]) -> tuple[int, list[int], int]:
    """(saved tokens, members, prefix length) of the best prefix shared by a subset of ``pool``.

    Candidate prefixes are taken from a few reference sequences (first, middle and last in
    lexicographic order); the length kept is the one that saves the most tokens,
    (members - 1) * length."""
    ordered = sorted(pool, key=lambda i: seqs[i])
    refs = {ordered[0], ordered[len(ordered) // 2], ordered[-1]}
    best = (0, [], 0)
    for r in refs:
        # Every member keeps at least one token of its own: its last token's logits are needed.
        lcps = sorted(((min(_lcp(seqs[r], seqs[i]), len(seqs[i]) - 1), i) for i in pool), reverse=True)
        for count, (length, _) in enumerate(lcps, start=1):  # the ``count`` longest share ``length`` tokens
            if length <= 0:
                break
            if (count - 1) * length > best[0]:
                best = ((count - 1) * length, count, length, r, lcps)
    if not best[1]:
        return 0, [], 0
    saved, count, length, _, lcps = best
    return saved, [i for lcp, i in lcps if lcp >= length], length


MAX_CLUSTERS = 16


def find_clusters(seqs: list[Sequence[int]], *, min_saved: int = 16) -> list[Cluster]:
    """Group sequences by a shared token prefix, each group's prefix as long as pays off most.

    Sequences left over (sharing nothing worth ``min_saved`` tokens) form a last cluster with an
    empty prefix."""
    pool = list(range(len(seqs)))
    clusters: list[Cluster] = []
    while len(pool) >= 2 and len(clusters) < MAX_CLUSTERS:
        saved, members, length = _best_split(seqs, pool)
        if saved < min_saved:
            break
        clusters.append(Cluster(prefix=list(seqs[members[0]][:length]), members=members))
        taken = set(members)
        pool = [i for i in pool if i not in taken]
    if pool:
        clusters.append(Cluster(prefix=[], members=pool))
    return clusters


def cache_supports_sharing(cache) -> bool:
    """Whether ``cache`` is a transformers DynamicCache made of plain or sliding-window layers: the
    layers whose tensors may be expanded as views and replaced (never written in place) on update."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
    except ImportError:  # pragma: no cover - older transformers
        return False
    return (isinstance(cache, DynamicCache) and not getattr(cache, "offloading", False)
            and all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in cache.layers))


def expand_cache(cache, batch: int):
    """A copy of a batch-1 ``cache`` seen as ``batch`` rows, without copying its tensors.

    The keys and values become ``expand`` views; the first update concatenates new states onto
    them (a fresh tensor), so the original prefix cache is never modified and can serve the next
    batch."""
    new = copy.copy(cache)
    new.layers = []
    for layer in cache.layers:
        lay = copy.copy(layer)
        if getattr(layer, "keys", None) is not None and layer.keys.numel():
            lay.keys = layer.keys.expand(batch, *layer.keys.shape[1:])
            lay.values = layer.values.expand(batch, *layer.values.shape[1:])
        new.layers.append(lay)
    return new


class Unshareable(Exception):
    """The model's KV cache cannot be shared as views; the caller falls back to the plain path."""


def run_prefix(model, prefix: list[int]):
    """The KV cache of ``prefix`` (batch 1), or None for an empty prefix."""
    from prunescope.eval.forward import cache_of, forward, model_device

    if not prefix:
        return None
    ids = torch.tensor([prefix], device=model_device(model))
    cache = cache_of(forward(model, input_ids=ids, use_cache=True, logits_to_keep=1))
    if not cache_supports_sharing(cache):
        raise Unshareable(type(cache).__name__)
    return cache


def _arange_rows(start: int, width: int, rows: int, device) -> torch.Tensor:
    return (start + torch.arange(width, device=device))[None].expand(rows, -1)


@torch.inference_mode()
def score_batch(model, prefix_cache, prefix_len: int, groups: list[tuple[list[int], list[list[int]]]],
                pad: int) -> list[list[float]]:
    """Sum log-probs of each group's continuations given its context, all contexts starting with the
    ``prefix_len`` tokens whose cache is ``prefix_cache``.

    Three steps, none with a hole in a row: the prefix (already cached, expanded over the groups);
    the first ``m`` suffix tokens of every group, ``m`` one less than the shortest suffix (no padding);
    then one row per continuation: the rest of its group's suffix and the continuation, padded on
    the right only. The last suffix token's logits score the first continuation token."""
    from prunescope.eval.forward import cache_of, forward, model_device, right_pad

    device = model_device(model)
    sufs = [ctx[prefix_len:] for ctx, _ in groups]
    m = min(map(len, sufs)) - 1
    cache = expand_cache(prefix_cache, len(groups)) if prefix_cache is not None else None
    done = prefix_len
    if m > 0:
        ids = torch.tensor([s[:m] for s in sufs], device=device)
        out = forward(model, input_ids=ids, position_ids=_arange_rows(done, m, len(groups), device), cache=cache,
                      use_cache=True, logits_to_keep=1)
        cache, done = cache_of(out), done + m
    rows, starts, targets, owner = [], [], [], []
    for g, (suf, (_, conts)) in enumerate(zip(sufs, groups)):
        rest = suf[max(m, 0):]
        for c in conts:
            rows.append(rest + c[:-1])
            starts.append(len(rest) - 1)
            targets.append(c)
            owner.append(g)
    ids, _ = right_pad(rows, pad, device)
    width = ids.shape[1]
    if cache is not None:
        cache.batch_select_indices(torch.tensor(owner, device=device))  # each group's cache over its choices
    first = min(starts)
    keep = width - first
    # Right padding needs no attention mask: causal attention never lets a real token see a later pad.
    out = forward(model, input_ids=ids, position_ids=_arange_rows(done, width, len(rows), device), cache=cache,
                  use_cache=cache is not None, logits_to_keep=keep)
    logits = out.logits[:, -keep:].float()
    longest = max(map(len, targets))
    index = torch.zeros((len(rows), longest), dtype=torch.long)
    tok = torch.zeros((len(rows), longest), dtype=torch.long)
    valid = torch.zeros((len(rows), longest), dtype=torch.bool)
    for r, (s, c) in enumerate(zip(starts, targets)):
        index[r, :len(c)] = torch.arange(s - first, s - first + len(c))
        tok[r, :len(c)] = torch.tensor(c)
        valid[r, :len(c)] = True
    index, tok, valid = index.to(device), tok.to(device), valid.to(device)
    picked = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))  # (rows, longest, vocab)
    logp = picked.gather(-1, tok[..., None])[..., 0] - torch.logsumexp(picked, dim=-1)
    flat = (logp * valid).sum(-1).tolist()
    result, k = [], 0
    for _, conts in groups:
        result.append(flat[k:k + len(conts)])
        k += len(conts)
    return result


@torch.inference_mode()
def generate_batch(model, tokenizer, prefix_cache, prefix_len: int, suffixes: list[list[int]], *,
                   max_new_tokens: int, stop: Sequence[str], eos: set[int],
                   counts: list[int] | None = None, settled=None) -> list[str]:
    """Greedy continuations of prompts ``prefix + suffix`` (the prefix already in ``prefix_cache``).

    The first ``m`` suffix tokens (``m`` the shortest suffix) run in one pass without padding; then
    every step feeds one token per row — the next prompt token of a row whose prompt is not used
    up, else its last generated token — so rows stay equally long and never hold padding. A row
    that hits end-of-sequence, a stop string, the token budget or ``settled(row, text)`` leaves the batch. ``counts``, if
    given, receives the number of tokens generated per row."""
    from prunescope.eval.engine import take_token
    from prunescope.eval.forward import cache_of, forward, model_device

    device = model_device(model)
    n = len(suffixes)
    cache = expand_cache(prefix_cache, n) if prefix_cache is not None else None
    m = min(map(len, suffixes))
    ids = torch.tensor([s[:m] for s in suffixes], device=device)
    out = forward(model, input_ids=ids, position_ids=_arange_rows(prefix_len, m, n, device), cache=cache,
                  use_cache=True, logits_to_keep=1)
    cache, length = cache_of(out), prefix_len + m
    cursor = [m] * n
    rows = list(range(n))
    generated: list[list[int]] = [[] for _ in suffixes]
    texts = [""] * n
    next_tok = out.logits[:, -1].argmax(-1)
    while True:
        keep, feed = [], []
        for r, tok in enumerate(next_tok.tolist()):
            i = rows[r]
            if cursor[i] < len(suffixes[i]):  # still reading its prompt: this prediction is not used
                feed.append(suffixes[i][cursor[i]])
                cursor[i] += 1
                keep.append(r)
                continue
            if take_token(tokenizer, tok, i, generated, texts, stop=stop, eos=eos, settled=settled,
                          max_new_tokens=max_new_tokens):
                keep.append(r)
                feed.append(tok)
        if not keep:
            if counts is not None:
                counts.extend(map(len, generated))
            return texts
        if len(keep) < len(rows):  # finished rows leave the batch
            rows = [rows[r] for r in keep]
            cache.batch_select_indices(torch.tensor(keep, device=device))
        step = torch.tensor(feed, device=device)[:, None]
        out = forward(model, input_ids=step, position_ids=torch.full((len(rows), 1), length, device=device),
                      cache=cache, use_cache=True)
        length += 1
        next_tok = out.logits[:, -1].argmax(-1)


def windowed_attention(model) -> bool:
    """Whether some layer attends to a window (sliding or chunked) rather than the whole past; then
    rows must not hold padding between real tokens. Unknown layer types count as windowed."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    types = getattr(cfg, "layer_types", None)
    if types:
        return any(t != "full_attention" for t in types)
    if getattr(cfg, "attention_chunk_size", None):
        return True
    return bool(getattr(cfg, "sliding_window", None)) and getattr(cfg, "use_sliding_window", True) is not False


def context_pass(model, prefix_cache, prefix_len: int, groups: list[tuple[list[int], list[list[int]]]], pad: int, *,
                 use_cache: bool):
    """The first pass of ``score_batch_two_pass``: every group's whole suffix, right padded, after the cached
    prefix. Returns (output, suffix lengths, attention mask over prefix + suffixes, logits of each row's last
    real token, each continuation's first-token log-prob per group)."""
    from prunescope.eval.forward import forward, model_device, right_pad

    device = model_device(model)
    n = len(groups)
    lens = torch.tensor([len(ctx) - prefix_len for ctx, _ in groups], device=device)
    cache = expand_cache(prefix_cache, n) if prefix_cache is not None else None
    ids, mask = right_pad([ctx[prefix_len:] for ctx, _ in groups], pad, device)
    width = ids.shape[1]
    full_mask = torch.cat([mask.new_ones((n, prefix_len)), mask], dim=1)
    keep = width - int(lens.min()) + 1
    out = forward(model, input_ids=ids, attention_mask=full_mask, position_ids=_arange_rows(prefix_len, width, n, device),
                  cache=cache, use_cache=use_cache, logits_to_keep=keep)
    last = out.logits[:, -keep:].float()[torch.arange(n, device=device), lens - 1 - (width - keep)]
    first_logp = torch.log_softmax(last, dim=-1)  # (groups, vocab)
    scores = [[first_logp[g, c[0]].item() for c in conts] for g, (_, conts) in enumerate(groups)]
    return out, lens, full_mask, last, scores


def add_rest_of_choices(model, cache, prefix_len: int, lens: torch.Tensor, full_mask: torch.Tensor,
                        groups: list[tuple[list[int], list[list[int]]]], pad: int, scores: list[list[float]]) -> None:
    """The second pass of ``score_batch_two_pass``: the continuation tokens after the first, one row per
    continuation, against its group's rows of ``cache`` (the context pass's cache, which this selects from
    in place); their log-probs are added to ``scores``."""
    from prunescope.eval.forward import forward, model_device, right_pad

    longer = [(g, j, c) for g, (_, conts) in enumerate(groups) for j, c in enumerate(conts) if len(c) > 1]
    if not longer:
        return
    device = model_device(model)
    owner = torch.tensor([g for g, _, _ in longer], device=device)
    cache.batch_select_indices(owner)
    ids2, mask2 = right_pad([c[:-1] for _, _, c in longer], pad, device)
    w2 = ids2.shape[1]
    pos = prefix_len + lens[owner][:, None] + torch.arange(w2, device=device)[None]
    # padding slots (masked) take a real position: past the table, absolute position embeddings fail
    pos = torch.where(mask2.bool(), pos, prefix_len + lens[owner][:, None] - 1)
    out = forward(model, input_ids=ids2, attention_mask=torch.cat([full_mask[owner], mask2], dim=1), position_ids=pos,
                  cache=cache, use_cache=True)
    logp = torch.log_softmax(out.logits[:, -w2:].float(), dim=-1)
    tgt, _ = right_pad([c[1:] for _, _, c in longer], 0, device)
    picked = (logp.gather(-1, tgt[..., None])[..., 0] * mask2).sum(-1).tolist()
    for (g, j, _), s in zip(longer, picked):
        scores[g][j] += s


@torch.inference_mode()
def score_batch_two_pass(model, prefix_cache, prefix_len: int, groups: list[tuple[list[int], list[list[int]]]],
                         pad: int) -> list[list[float]]:
    """``score_batch`` for models whose every layer attends to the whole past, in two passes: each
    group's whole suffix (right padded; its last real token scores every first continuation token),
    then the continuation tokens after the first, one row per continuation. The second pass's rows
    have a hole (the first pass's padding), which the attention mask hides and explicit positions
    skip; that is exact for full attention, not for windowed attention (``windowed_attention``)."""
    from prunescope.eval.forward import cache_of

    multi = any(len(c) > 1 for _, conts in groups for c in conts)
    out, lens, full_mask, _, scores = context_pass(model, prefix_cache, prefix_len, groups, pad, use_cache=multi)
    if multi:
        add_rest_of_choices(model, cache_of(out), prefix_len, lens, full_mask, groups, pad, scores)
    return scores
