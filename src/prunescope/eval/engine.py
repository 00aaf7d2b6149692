"""The evaluation engine: batched log-likelihood and batched greedy generation on an in-memory model.

Log-likelihood (classification-style scoring): requests are grouped by context, groups are sorted by
length and packed ``batch_size`` contexts per forward pass. Each context is encoded once
(left padded, so the last position of every row is a real token whose logits give the first
continuation token); its KV cache is then expanded over that context's choices and only the
continuation tokens are run. A 4-way multiple choice item thus costs one context pass instead of four.

Generation: greedy decoding with a KV cache, prompts sorted by length and left padded, stop strings
checked on the decoded text, and per-sequence early exit: a finished sequence leaves the batch (its
rows are dropped from the cache), so the remaining ones run on a smaller batch.

Tokenization follows lm-evaluation-harness: the tokenizer's own special tokens (a BOS where the model
expects one) unless the text already starts with BOS (a rendered chat template); trailing whitespace
of a context moves to its continuation; continuation tokens are the tail of the joint encoding.
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

CPU_BATCH = 16


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


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def auto_batch_size(model, *, tokens_per_sequence: int = 512) -> int:
    """A batch size that fits: 16 on CPU (larger batches stop paying off there); on a GPU, as many
    sequences as half the free memory holds in KV cache plus one row of logits, capped at 256."""
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
    if batch_size == "auto" or batch_size is None:
        return auto_batch_size(model, **kw)
    return max(1, int(batch_size))


def _cache_keyword() -> str:
    """Transformers 5.x calls the KV cache argument ``cache``; older versions ``past_key_values``."""
    from transformers.modeling_outputs import CausalLMOutputWithPast
    return "cache" if "cache" in getattr(CausalLMOutputWithPast, "__dataclass_fields__", {}) else "past_key_values"


CACHE_KW = _cache_keyword()


def _cache_of(out):
    return getattr(out, CACHE_KW)


def _forward(model, **kwargs):
    if "cache" in kwargs and CACHE_KW != "cache":
        kwargs[CACHE_KW] = kwargs.pop("cache")
    try:
        return model(**kwargs)
    except TypeError:  # models without logits_to_keep
        kwargs.pop("logits_to_keep", None)
        return model(**kwargs)


def _left_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(r)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _pad_id(tokenizer) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return t
    return 0


def _max_length(model) -> int | None:
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


@torch.inference_mode()
def _score_groups(model, groups: list[tuple[list[int], list[list[int]]]], pad_id: int) -> list[list[float]]:
    """Sum log-probs of each group's continuations given its context (one batch)."""
    device = model_device(model)
    ctx_ids, ctx_mask = _left_pad([g[0] for g in groups], pad_id, device)
    out = _forward(model, input_ids=ctx_ids, attention_mask=ctx_mask, position_ids=_positions(ctx_mask),
                   use_cache=True, logits_to_keep=1)
    first_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (groups, vocab)
    owner = [gi for gi, g in enumerate(groups) for _ in g[1]]
    conts = [c for g in groups for c in g[1]]
    owner_t = torch.tensor(owner, device=device)
    first_tok = torch.tensor([c[0] for c in conts], device=device)
    scores = first_logp[owner_t, first_tok]
    rest_len = max(len(c) for c in conts) - 1
    if rest_len > 0:
        cache = _cache_of(out)
        cache.batch_select_indices(owner_t)  # expand each context's cache over its choices
        inp = torch.full((len(conts), rest_len), pad_id, dtype=torch.long, device=device)
        cmask = torch.zeros((len(conts), rest_len), dtype=torch.long, device=device)
        for i, c in enumerate(conts):
            if len(c) > 1:
                inp[i, :len(c) - 1] = torch.tensor(c[:-1])
                cmask[i, :len(c) - 1] = 1
        ctx_len = ctx_mask.sum(-1)[owner_t]
        pos = ctx_len[:, None] + torch.arange(rest_len, device=device)[None]
        mask = torch.cat([ctx_mask[owner_t], cmask], dim=1)
        logits = _forward(model, input_ids=inp, attention_mask=mask, position_ids=pos, cache=cache,
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


def score_choices(model, tokenizer, items: list[tuple[str, list[str]]], *, batch_size: int | str = "auto",
                  progress: bool = False, desc: str = "log-likelihood") -> list[list[float]]:
    """For each (context, continuations) pair, the sum log-prob of every continuation given the context.

    The context is encoded once per item and its KV cache is shared by all its continuations;
    ``batch_size`` contexts go through each forward pass."""
    bs = resolve_batch_size(model, batch_size)
    max_len = _max_length(model)
    groups: list[tuple[list[int], list[list[int]]]] = []
    where: list[tuple[int, int, int, int]] = []  # (item, choice, group) for every non-empty continuation
    for item_index, (context, choices) in enumerate(items):
        # Usually every choice sees the same context tokens; a choice that tokenizes the boundary
        # differently gets a group of its own.
        buckets: dict[tuple[int, ...], int] = {}
        for choice_index, choice in enumerate(choices):
            ctx, cont = encode_pair(tokenizer, context, choice)
            if not cont:
                continue  # an empty continuation has log-probability 0
            key = tuple(ctx)
            if key not in buckets:
                buckets[key] = len(groups)
                groups.append((ctx, []))
            g = buckets[key]
            where.append((item_index, choice_index, g, len(groups[g][1])))
            groups[g][1].append(cont)
    if max_len:
        for gi, (ctx, conts) in enumerate(groups):
            room = max_len - max(map(len, conts))
            if len(ctx) > room:
                groups[gi] = (ctx[-max(room, 1):], conts)
    order = sorted(range(len(groups)), key=lambda g: -(len(groups[g][0]) + max(map(len, groups[g][1]))))
    group_scores: list[list[float]] = [[] for _ in groups]
    pad = _pad_id(tokenizer)
    bar = tqdm(total=len(items), desc=desc, disable=not progress, leave=False)
    i = 0
    while i < len(order):
        # ``bs`` contexts per forward pass, as many full sequences as a harness scoring one
        # (context, continuation) pair per row; their continuations follow in one short pass.
        batch = order[i:i + bs]
        i += len(batch)
        for g, s in zip(batch, _score_groups(model, [groups[g] for g in batch], pad)):
            group_scores[g] = s
        bar.update(len(batch) * len(items) / max(1, len(groups)))
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


@torch.inference_mode()
def _generate_batch(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, stop: Sequence[str],
                    eos: set[int], use_cache: bool) -> list[str]:
    device = model_device(model)
    pad = _pad_id(tokenizer)
    ids, mask = _left_pad(prompts, pad, device)
    rows = list(range(len(prompts)))  # original index of each row still in the batch
    generated: list[list[int]] = [[] for _ in prompts]
    texts = [""] * len(prompts)
    out = _forward(model, input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=use_cache,
                   logits_to_keep=1)
    cache = _cache_of(out) if use_cache else None
    next_tok = out.logits[:, -1].argmax(-1)
    for step in range(max_new_tokens):
        keep = []
        for r, tok in enumerate(next_tok.tolist()):
            i = rows[r]
            if tok in eos:
                continue
            generated[i].append(tok)
            text = tokenizer.decode(generated[i], skip_special_tokens=True)
            texts[i], stopped = truncate_at_stop(text, stop)
            if not stopped:
                keep.append(r)
        if not keep or step == max_new_tokens - 1:
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
            out = _forward(model, input_ids=next_tok[:, None], attention_mask=mask, position_ids=pos,
                           cache=cache, use_cache=True)
        else:
            out = _forward(model, input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False,
                           logits_to_keep=1)
        next_tok = out.logits[:, -1].argmax(-1)
    return texts


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, stop: list[str] | None = None,
             batch_size: int | str = "auto", use_cache: bool = True, progress: bool = False,
             desc: str = "generate") -> list[str]:
    """Greedy continuations of ``prompts`` (batched, left padded, KV cache), each cut at the first stop
    string (the stop string itself is not kept) or at end-of-sequence; special tokens are dropped."""
    stop = list(stop or [])
    bs = resolve_batch_size(model, batch_size)
    encoded = [encode(tokenizer, p) for p in prompts]
    max_len = _max_length(model)
    if max_len:
        encoded = [e[-(max_len - max_new_tokens):] if len(e) + max_new_tokens > max_len else e for e in encoded]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    eos = _eos_ids(model, tokenizer)
    outputs = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    for start in range(0, len(order), bs):
        chunk = order[start:start + bs]
        texts = _generate_batch(model, tokenizer, [encoded[i] for i in chunk], max_new_tokens=max_new_tokens,
                                stop=stop, eos=eos, use_cache=use_cache)
        for i, t in zip(chunk, texts):
            outputs[i] = t
        bar.update(len(chunk))
    bar.close()
    return outputs
