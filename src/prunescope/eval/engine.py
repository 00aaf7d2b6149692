"""The evaluation engine: batched log-likelihood and batched greedy generation on an in-memory model.

Shared prefix: the contexts of a task mostly repeat one few-shot block. The engine finds the longest
token prefix a group of contexts shares (``prunescope.eval.prefix``: split on the token ids of each
full context, so tokenization is exactly the full context's; a context whose tokens leave the prefix
early, e.g. a merge across the boundary, runs in another group or without a prefix), runs it once,
and continues every batch from its KV cache, expanded over the batch as views.

Log-likelihood (classification-style scoring): requests are grouped by context, sorted by length and
packed ``batch_size`` contexts per forward pass; each context's suffix runs once and its KV cache is
then expanded over that context's choices, so a 4-way item costs one context pass plus its choices'
tokens. Scores equal a plain full forward of context + continuation (tested on four architectures).

Generation: greedy decoding with a KV cache, prompts sorted by length; stop strings checked on the
decoded text, and per-sequence early exit: a finished sequence leaves the batch (its rows are dropped
from the cache), so the remaining ones run on a smaller batch. Without a shared prefix (or with
``share_prefix=False``) batches are left padded.

``batch_size="auto"``: see ``prunescope.eval.batching`` (largest that fits on a GPU, best measured
throughput on a CPU).

Tokenization follows lm-evaluation-harness: the tokenizer's own special tokens (a BOS where the model
expects one) unless the text already starts with BOS (a rendered chat template); trailing whitespace
of a context moves to its continuation; continuation tokens are the tail of the joint encoding.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from prunescope.eval import prefix as shared
from prunescope.eval.batching import CPU_BATCH, BatchSizer, run_batches
from prunescope.eval.forward import (CACHE_KW, cache_of, forward, left_pad, model_device, pad_id, positions,
                                     right_pad)

__all__ = ["CACHE_KW", "CPU_BATCH", "auto_batch_size", "encode", "encode_pair", "generate", "loglikelihood",
           "model_device", "resolve_batch_size", "right_pad", "score_choices", "truncate_at_stop"]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with the tokenizer's special tokens, unless it already starts with BOS."""
    bos = getattr(tokenizer, "bos_token", None)
    add = not (bos and text.startswith(bos))
    return list(tokenizer(text, add_special_tokens=add)["input_ids"])


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness splits them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [start], encode(tokenizer, continuation)
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return ctx, whole[len(ctx):]


def auto_batch_size(model, *, tokens_per_sequence: int = 512) -> int:
    """A starting batch size: 16 on CPU (``batch_size="auto"`` then measures throughput on the real
    batches, see ``prunescope.eval.batching``); on a GPU, as many sequences as half the free memory
    holds in KV cache plus one row of logits, capped at 256 (halved on an out-of-memory error)."""
    device = model_device(model)
    if device.type != "cuda":
        return CPU_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers = getattr(cfg, "num_hidden_layers", 32)
    heads = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", 32)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // getattr(cfg, "num_attention_heads", 32)
    elem = next(model.parameters()).element_size()
    per_seq = tokens_per_sequence * (2 * layers * heads * head_dim * elem + 4 * cfg.hidden_size * elem)
    per_seq += tokens_per_sequence * getattr(cfg, "vocab_size", 32000) * 4 // 8  # logits, partly kept
    return int(max(1, min(256, free * 0.5 // per_seq)))


def resolve_batch_size(model, batch_size: int | str, **kw) -> int:
    """``batch_size`` as a number: an int as is, ``"auto"`` as ``auto_batch_size``'s starting point."""
    if batch_size == "auto" or batch_size is None:
        return auto_batch_size(model, **kw)
    return max(1, int(batch_size))


def _sizer(model, batch_size, kind: str) -> BatchSizer:
    return BatchSizer(model, batch_size, kind=kind, gpu_estimate=lambda: auto_batch_size(model))


def _max_length(model) -> int | None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


@torch.inference_mode()
def _score_groups(model, groups: list[tuple[list[int], list[list[int]]]], pad: int) -> list[list[float]]:
    """Sum log-probs of each group's continuations given its context (one batch)."""
    device = model_device(model)
    ctx_ids, ctx_mask = left_pad([g[0] for g in groups], pad, device)
    out = forward(model, input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=positions(ctx_mask),
                   use_cache=True, logits_to_keep=1)
    first_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (groups, vocab)
    owner = [gi for gi, g in enumerate(groups) for _ in g[1]]
    conts = [c for g in groups for c in g[1]]
    owner_t = torch.tensor(owner, device=device)
    first_tok = torch.tensor([c[0] for c in conts], device=device)
    scores = first_logp[owner_t, first_tok]
    rest_len = max(len(c) for c in conts) - 1
    if rest_len > 0:
        cache = cache_of(out)
        cache.batch_select_indices(owner_t)  # expand each context's cache over its choices
        inp = torch.full((len(conts), rest_len), pad, dtype=torch.long, device=device)
        cmask = torch.zeros((len(conts), rest_len), dtype=torch.long, device=device)
        for i, c in enumerate(conts):
            if len(c) > 1:
                inp[i, :len(c) - 1] = torch.tensor(c[:-1])
                cmask[i, :len(c) - 1] = 1
        ctx_len = ctx_mask.sum(-1)[owner_t]
        pos = ctx_len[:, None] + torch.arange(rest_len, device=device)[None]
        # padding slots (masked) take a real position: past the table, absolute position embeddings fail
        pos = torch.where(cmask.bool(), pos, ctx_len[:, None] - 1)
        mask = torch.cat([ctx_mask[owner_t], cmask], dim=1)
        logits = forward(model, input_ids=inp, attention_mask=mask, position_ids=pos, cache=cache,
                          use_cache=True).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        targets = torch.full((len(conts), rest_len), 0, dtype=torch.long, device=device)
        for i, c in enumerate(conts):
            if len(c) > 1:
                targets[i, :len(c) - 1] = torch.tensor(c[1:])
        picked = logp.gather(-1, targets[..., None])[..., 0] * cmask
        scores = scores + picked.sum(-1)
    flat = scores.tolist()
    result, k = [], 0
    for g in groups:
        result.append(flat[k:k + len(g[1])])
        k += len(g[1])
    return result


def _score_cluster(model, groups, cluster: shared.Cluster, group_scores, pad: int, sizer: BatchSizer, done,
                   *, plain: bool = False) -> None:
    """Score the groups of one cluster: sorted by length so batches hold similar lengths."""
    prefix_cache = None if plain else shared.run_prefix(model, cluster.prefix)
    p = len(cluster.prefix)
    members = sorted(cluster.members, key=lambda g: -(len(groups[g][0]) + max(map(len, groups[g][1]))))
    # Full attention tolerates padding between a row's real tokens, so contexts run whole in one pass;
    # windowed attention needs rows without holes.
    score_batch = shared.score_batch if shared.windowed_attention(model) else shared.score_batch_two_pass

    def run(batch: list[int]) -> None:
        chunk = [groups[g] for g in batch]
        scored = _score_groups(model, chunk, pad) if plain else score_batch(model, prefix_cache, p, chunk, pad)
        for g, s in zip(batch, scored):
            group_scores[g] = s

    def tokens(batch: list[int]) -> int:
        return sum(len(groups[g][0]) - p + sum(map(len, groups[g][1])) for g in batch)

    run_batches(members, sizer, run, tokens, on_done=done)


def score_choices(model, tokenizer, items: list[tuple[str, list[str]]], *, batch_size: int | str = "auto",
                  progress: bool = False, desc: str = "log-likelihood", share_prefix: bool = True) -> list[list[float]]:
    """For each (context, continuations) pair, the sum log-prob of every continuation given the context.

    The context is encoded once per item and its KV cache is shared by all its continuations;
    ``batch_size`` contexts go through each forward pass (``"auto"``: see ``prunescope.eval.batching``).
    With ``share_prefix`` the token prefix that contexts share (a few-shot block) runs once and its
    KV cache serves every batch (``prunescope.eval.prefix``); the scores equal the plain path's."""
    max_len = _max_length(model)
    groups: list[tuple[list[int], list[list[int]]]] = []
    where: list[tuple[int, int, int, int]] = []  # (item, choice, group) for every non-empty continuation
    for item_index, (context, choices) in enumerate(items):
        # Usually every choice sees the same context tokens; a choice that tokenizes the boundary
        # differently (or, past the position table, keeps a different tail) gets a group of its own.
        buckets: dict[tuple[int, ...], int] = {}
        for choice_index, choice in enumerate(choices):
            ctx, cont = encode_pair(tokenizer, context, choice)
            if not cont:
                continue  # an empty continuation has log-probability 0
            if max_len and len(ctx) + len(cont) > max_len + 1:
                # lm-eval's HFLM: keep the last max_len + 1 tokens of context + continuation (the final one
                # is only a target), per request, so a shorter choice sees more context.
                ctx = ctx[-max(max_len + 1 - len(cont), 1):]
            key = tuple(ctx)
            if key not in buckets:
                buckets[key] = len(groups)
                groups.append((ctx, []))
            g = buckets[key]
            where.append((item_index, choice_index, g, len(groups[g][1])))
            groups[g][1].append(cont)
    group_scores: list[list[float]] = [[] for _ in groups]
    pad = pad_id(tokenizer)
    sizer = _sizer(model, batch_size, "loglikelihood")
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    per_group = len(items) / max(1, len(groups))
    done = lambda n: bar.update(n * per_group)  # noqa: E731
    ctxs = [g[0] for g in groups]
    clusters = shared.find_clusters(ctxs) if share_prefix else [shared.Cluster([], list(range(len(groups))))]
    for cluster in clusters:
        try:
            _score_cluster(model, groups, cluster, group_scores, pad, sizer, done)
        except shared.Unshareable:  # a cache type that cannot be shared: plain path for this cluster
            _score_cluster(model, groups, shared.Cluster([], cluster.members), group_scores, pad, sizer, done,
                           plain=True)
    bar.close()
    out = [[0.0] * len(choices) for _, choices in items]
    for item_index, choice_index, g, k in where:
        out[item_index][choice_index] = group_scores[g][k]
    return out


def loglikelihood(model, tokenizer, requests: list[tuple[str, str]], *, batch_size: int | str = "auto",
                  progress: bool = False) -> list[float]:
    """Sum log-probability of each continuation given its context, for (context, continuation) pairs.

    Requests sharing a context are scored from one encoding of it."""
    by_context: dict[str, list[int]] = {}
    for i, (ctx, _) in enumerate(requests):
        by_context.setdefault(ctx, []).append(i)
    contexts = list(by_context)
    scored = score_choices(model, tokenizer, [(c, [requests[i][1] for i in by_context[c]]) for c in contexts],
                           batch_size=batch_size, progress=progress)
    out = [0.0] * len(requests)
    for c, scores in zip(contexts, scored):
        for i, s in zip(by_context[c], scores):
            out[i] = s
    return out


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for e in (gen_eos, tokenizer.eos_token_id):
        if isinstance(e, int):
            ids.add(e)
        elif isinstance(e, (list, tuple)):
            ids.update(e)
    return ids


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut at the earliest stop string, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def take_token(tokenizer, tok: int, i: int, generated: list[list[int]], texts: list[str], *, stop: Sequence[str],
               eos: set[int], max_new_tokens: int, settled: Callable[[int, str], bool] | None = None) -> bool:
    """Add greedy token ``tok`` to output ``i`` (not an end-of-sequence token) and say whether that output goes
    on: False at end-of-sequence, a stop string (``texts[i]`` is cut before it), ``settled(i, text)`` or the
    token budget."""
    if tok in eos:
        return False
    generated[i].append(tok)
    texts[i], stopped = truncate_at_stop(tokenizer.decode(generated[i], skip_special_tokens=True), stop)
    if stopped or (settled is not None and settled(i, texts[i])):
        return False
    return len(generated[i]) < max_new_tokens


@torch.inference_mode()
def _generate_batch(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, stop: Sequence[str],
                    eos: set[int], use_cache: bool, settled: Callable[[int, str], bool] | None = None) -> list[str]:
    device = model_device(model)
    pad = pad_id(tokenizer)
    ids, mask = left_pad(prompts, pad, device)
    rows = list(range(len(prompts)))  # original index of each row still in the batch
    generated: list[list[int]] = [[] for _ in prompts]
    texts = [""] * len(prompts)
    out = forward(model, input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=use_cache,
                   logits_to_keep=1)
    cache = cache_of(out) if use_cache else None
    next_tok = out.logits[:, -1].argmax(-1)
    for _ in range(max_new_tokens):  # take_token ends every row by the budget
        keep = []
        for r, tok in enumerate(next_tok.tolist()):
            if take_token(tokenizer, tok, rows[r], generated, texts, stop=stop, eos=eos, settled=settled,
                          max_new_tokens=max_new_tokens):
                keep.append(r)
        if not keep:
            break
        keep_t = torch.tensor(keep, device=device)
        if len(keep) < len(rows):  # early exit: finished sequences leave the batch
            rows = [rows[r] for r in keep]
            mask, ids, next_tok = mask[keep_t], ids[keep_t], next_tok[keep_t]
            if cache is not None:
                cache.batch_select_indices(keep_t)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        ids = torch.cat([ids, next_tok[:, None]], dim=1)
        if cache is not None:
            pos = mask.sum(-1, keepdim=True) - 1
            out = forward(model, input_ids=next_tok[:, None], attention_mask=mask, position_ids=pos,
                           cache=cache, use_cache=True)
        else:
            out = forward(model, input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False,
                           logits_to_keep=1)
        next_tok = out.logits[:, -1].argmax(-1)
    return texts


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, stop: list[str] | None = None,
             batch_size: int | str = "auto", use_cache: bool = True, progress: bool = False,
             desc: str = "generate", share_prefix: bool = True,
             settled: Callable[[int, str], bool] | None = None) -> list[str]:
    """Greedy continuations of ``prompts`` (batched, KV cache), each cut at the first stop string (the
    stop string itself is not kept) or at end-of-sequence; special tokens are dropped. ``settled(i, text)``,
    when given, ends prompt ``i``'s continuation as soon as it returns True for the text so far (the
    caller knows that no more text can change what it will conclude).

    Prompts are sorted by length and batched (``"auto"``: see ``prunescope.eval.batching``). With
    ``share_prefix`` (and ``use_cache``) the token prefix the prompts share runs once and batches
    continue from its KV cache without padding (``prunescope.eval.prefix``); otherwise batches are
    left padded. Either way a finished sequence leaves its batch."""
    stop = list(stop or [])
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    encoded = [encode(tokenizer, p) or [start] for p in prompts]  # an empty prompt starts from BOS, as in scoring
    max_len = _max_length(model)
    if max_len:
        encoded = [e[-(max_len - max_new_tokens):] if len(e) + max_new_tokens > max_len else e for e in encoded]
    eos = _eos_ids(model, tokenizer)
    outputs = [""] * len(prompts)
    sizer = _sizer(model, batch_size, "generate")
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    share = share_prefix and use_cache
    clusters = shared.find_clusters(encoded) if share else [shared.Cluster([], list(range(len(prompts))))]
    for cluster in clusters:
        try:
            _generate_cluster(model, tokenizer, encoded, cluster, outputs, sizer, bar, plain=not share,
                              max_new_tokens=max_new_tokens, stop=stop, eos=eos, use_cache=use_cache,
                              settled=settled)
        except shared.Unshareable:
            _generate_cluster(model, tokenizer, encoded, shared.Cluster([], cluster.members), outputs, sizer, bar,
                              plain=True, max_new_tokens=max_new_tokens, stop=stop, eos=eos, use_cache=use_cache,
                              settled=settled)
    bar.close()
    return outputs


def _generate_cluster(model, tokenizer, encoded, cluster: shared.Cluster, outputs, sizer: BatchSizer, bar, *,
                      plain: bool, max_new_tokens: int, stop, eos, use_cache: bool, settled=None) -> None:
    prefix_cache = None if plain else shared.run_prefix(model, cluster.prefix)
    p = len(cluster.prefix)
    members = sorted(cluster.members, key=lambda i: -len(encoded[i]))
    new_tokens: dict[int, int] = {}

    def run(batch: list[int]) -> None:
        done = None if settled is None else (lambda row, text: settled(batch[row], text))  # row -> prompt index
        if plain:
            texts = _generate_batch(model, tokenizer, [encoded[i] for i in batch], max_new_tokens=max_new_tokens,
                                    stop=stop, eos=eos, use_cache=use_cache, settled=done)
        else:
            counts: list[int] = []
            texts = shared.generate_batch(model, tokenizer, prefix_cache, p, [encoded[i][p:] for i in batch],
                                          max_new_tokens=max_new_tokens, stop=stop, eos=eos, counts=counts,
                                          settled=done)
            new_tokens.update(zip(batch, counts))
        for i, t in zip(batch, texts):
            outputs[i] = t

    def tokens(batch: list[int]) -> int:  # real tokens run: prompt suffixes and generated tokens
        return sum(len(encoded[i]) - p + new_tokens.get(i, max_new_tokens) for i in batch)

    run_batches(members, sizer, run, tokens, on_done=bar.update)


def score_and_generate(model, tokenizer, items: list[tuple[str, list[str]]], *, max_new_tokens: int,
                       stop: list[str] | None = None, settled: Callable[[int, str], bool] | None = None,
                       batch_size: int | str = "auto", progress: bool = False,
                       desc: str = "score and generate") -> tuple[list[list[float]], list[str]] | None:
    """``score_choices`` and ``generate`` on the same contexts with one pass over each context
    (``prunescope.eval.joint``); the results equal the two calls'. None when that cannot be done exactly
    (windowed attention, a choice that changes how its context tokenizes, a context that would be
    truncated): the caller then makes the two calls."""
    from prunescope.eval.joint import score_and_generate_batch

    if shared.windowed_attention(model):
        return None
    groups: list[tuple[list[int], list[list[int]]]] = []
    for context, choices in items:
        pairs = [encode_pair(tokenizer, context, c) for c in choices]
        ctx = pairs[0][0] if pairs else []
        if not context or not ctx or any(p[0] != ctx or not p[1] for p in pairs) or ctx != encode(tokenizer, context):
            return None
        groups.append((ctx, [p[1] for p in pairs]))
    max_len = _max_length(model)
    if max_len and any(len(c) + max(max_new_tokens, *map(len, conts)) > max_len for c, conts in groups):
        return None
    stop, eos, pad = list(stop or []), _eos_ids(model, tokenizer), pad_id(tokenizer)
    scores: list[list[float]] = [[] for _ in groups]
    outputs = [""] * len(groups)
    sizer = _sizer(model, batch_size, "score_and_generate")
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    for cluster in shared.find_clusters([g[0] for g in groups]):
        try:
            prefix_cache = shared.run_prefix(model, cluster.prefix)
        except shared.Unshareable:
            return None
        p = len(cluster.prefix)

        def run(batch: list[int]) -> None:
            done = None if settled is None else (lambda row, text: settled(batch[row], text))
            s, t = score_and_generate_batch(model, tokenizer, prefix_cache, p, [groups[i] for i in batch], pad,
                                            max_new_tokens=max_new_tokens, stop=stop, eos=eos, settled=done)
            for i, si, ti in zip(batch, s, t):
                scores[i], outputs[i] = si, ti

        def tokens(batch: list[int]) -> int:
            return sum(len(groups[i][0]) - p + sum(map(len, groups[i][1])) for i in batch)

        try:
            run_batches(sorted(cluster.members, key=lambda i: -len(groups[i][0])), sizer, run, tokens,
                        on_done=bar.update)
        except shared.Unshareable:
            return None
    bar.close()
    return scores, outputs
