"""On-policy distillation (GKD): the student samples the sequences it is trained on.

Reference: Agarwal et al., "On-Policy Distillation of Language Models: Learning from Self-Generated
Mistakes" (ICLR 2024), as TRL implements it (github:huggingface/trl, ``trl/experimental/gkd/gkd_trainer.py``,
``GKDTrainer.training_step`` and ``generate_on_policy_outputs``; defaults in ``gkd_config.py``):

* for each micro-batch, with probability ``lmbda`` (default 0.5) the student, with its current weights,
  samples a response to every prompt of the batch (``do_sample``, temperature 0.9, top-k 0, top-p 1,
  at most 128 new tokens); otherwise the batch keeps the dataset's sequences (here: ``--data``'s, the
  teacher's own responses with ``--data self``);
* a sampled response is kept up to and including its first end-of-sequence token; the prompt is masked;
* the teacher scores the sequence and the loss is the generalized JSD (``losses.generalized_jsd_sum``)
  over the response tokens.

Differences, none of which changes what is computed: the draw for each micro-batch comes from a generator
seeded by (seed, step, micro-batch, process), so a resumed run replays it; the sampled sequences are
re-packed right-padded like every other training example; task prompts (which end at a stop string, not
an end-of-sequence token) also end at their stop string, which is kept as the response's last tokens.
"""
from __future__ import annotations

import random

import torch


def onpolicy_seed(seed: int, step: int, micro: int, rank: int = 0) -> int:
    """The seed of micro-batch ``micro`` of optimizer step ``step``: its on-policy draw and its sampling."""
    return (seed * 1_000_003 + step * 7_919 + micro * 104_729 + rank * 15_485_863 + 17) % (2 ** 63)


def is_on_policy(lmbda: float, seed: int) -> bool:
    """TRL's ``random.random() <= lmbda``, from a generator seeded per micro-batch."""
    return lmbda >= 1.0 or (lmbda > 0.0 and random.Random(seed).random() <= lmbda)


def prompt_only(example: dict) -> list[int]:
    """The context tokens of a training example (everything before its first response token)."""
    return list(example["input_ids"][:example["context_len"]])


def _end_of_response(new: list[int], eos: set[int], stop: list[str], tokenizer) -> int | None:
    """Index of the response's last token: the first end-of-sequence token, or the token that completes
    the first stop string; None when neither comes."""
    first_eos = next((j for j, t in enumerate(new) if t in eos), None)
    limit = first_eos if first_eos is not None else len(new) - 1
    if stop:
        for j in range(limit + 1):
            if any(s in tokenizer.decode(new[:j + 1], skip_special_tokens=True) for s in stop):
                return j
    return first_eos


@torch.no_grad()
def sample_on_policy(model, tokenizer, examples: list[dict], *, temperature: float, max_new_tokens: int,
                     max_seq_len: int, seed: int) -> list[dict]:
    """The student's own sequences for the prompts of ``examples``: one sampled response per prompt
    through transformers' ``generate`` (left-padded batch, KV cache), each returned as a training
    example (``input_ids`` = context + response, ``labels`` -100 on the context) with ``response``
    (the sampled token ids) and ``on_policy`` = True. ``model`` is put in eval mode while sampling and
    restored afterwards."""
    from prunescope.recovery.generation import _eos_ids

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    eos = _eos_ids(model, tokenizer)
    contexts = [prompt_only(e) for e in examples]
    width = max(len(c) for c in contexts)
    ids = torch.tensor([[pad] * (width - len(c)) + c for c in contexts], device=device)
    mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts], device=device)
    was_training = model.training
    model.eval()
    torch.manual_seed(seed)
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature, top_k=0,
                             top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=sorted(eos) or None)
    finally:
        model.train(was_training)
    sampled = []
    for row, (example, context) in enumerate(zip(examples, contexts)):
        new = out[row, width:].tolist()
        end = _end_of_response(new, eos, list(example.get("stop") or []), tokenizer)
        response = new[:end + 1] if end is not None else new
        room = max(max_seq_len - len(context), 0)
        kept = response[:room]
        sampled.append({"input_ids": context + kept, "labels": [-100] * len(context) + kept,
                        "context_len": len(context), "stop": example.get("stop"), "response": kept,
                        "on_policy": True})
    return sampled


def choose_sequences(model, tokenizer, chunks: list[list[dict]], config, *, step: int, rank: int = 0):
    """For each micro-batch of a step, the student's samples (with probability ``onpolicy_lambda``) or
    the batch as it is; returns (chunks, number of on-policy micro-batches)."""
    out, on = [], 0
    for micro, chunk in enumerate(chunks):
        seed = onpolicy_seed(config.seed, step, micro, rank)
        if chunk and is_on_policy(config.onpolicy_lambda, seed):
            chunk = sample_on_policy(model, tokenizer, chunk, temperature=config.onpolicy_temperature,
                                     max_new_tokens=config.onpolicy_max_new_tokens, max_seq_len=config.max_seq_len,
                                     seed=seed)
            on += 1
        out.append(chunk)
    return out, on


def response_count(example: dict) -> int:
    """Trained tokens of one example: labels other than -100 after the first position (position 0 has
    no prediction), as the loop counts them."""
    return sum(1 for t in example["labels"][1:] if t != -100)


def cap_tokens(chunks: list[list[dict]], remaining: int) -> list[list[dict]]:
    """Cut a step's micro-batches to at most ``remaining`` response tokens, in order: the example that
    crosses the budget keeps only its first response tokens (its sequence is cut after the last kept
    one, which changes no earlier logit), and later examples are left out."""
    out: list[list[dict]] = []
    for chunk in chunks:
        kept = []
        for e in chunk:
            if remaining <= 0:
                break
            n = response_count(e)
            if n > remaining:
                labels, seen, last = list(e["labels"]), 0, 0
                for j in range(1, len(labels)):
                    if labels[j] != -100:
                        seen += 1
                        if seen > remaining:
                            labels[j] = -100
                        else:
                            last = j
                e = {**e, "input_ids": list(e["input_ids"][:last + 1]), "labels": labels[:last + 1]}
                n = remaining
            kept.append(e)
            remaining -= n
        out.append(kept)
    return [c for c in out if c]
