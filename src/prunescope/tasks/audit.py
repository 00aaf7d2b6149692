"""``prunescope tasks --check``: audit tasks for surface cues without a real model.

For each multiple-choice task, on its first ``limit`` evaluation items:

* **null model** — a one-block Llama whose ``lm_head`` is zero, so every next-token distribution is
  uniform: a choice scores ``-len(tokens) · log V``. It picks the choice with the fewest tokens (ties:
  the first), through the same engine and context/continuation split as a real evaluation;
* **longest / shortest** — always the choice with the most / fewest continuation tokens (ties shared);
* **same position / same answer** — the answer-blind strategies that define chance (tasks/chance.py);
* **prefix rule** — items where a choice's tokens are a prefix of another's (it could never win).

Then: a heuristic *beats chance* when the lower end of the 95% Wilson interval of its accuracy lies
above the task's chance (computed from the same items): a one-sided test at 2.5%. A row fails on any
heuristic that beats chance, any prefix violation, a declared chance outside the computed chance's 95%
interval, or (``_gen``/``_mc`` pairs) fewer than 95% of items with the partner's id and rendered context.

Tokenizer (``--tokenizer auto``): the default model's (SmolLM2) when its converted copy is in the
prunescope cache (any command that loaded ``smollm2-135m`` once), else a byte-level tokenizer (one token
per byte: then token lengths are byte lengths). ``--tokenizer PATH_OR_HUB_ID`` checks with a model's own.
"""
from __future__ import annotations

from typing import Any

from prunescope.errors import UsageError
from prunescope.eval.metrics import wilson_interval
from prunescope.tasks.chance import chance_of, mc_strategies
from prunescope.tasks.rules import token_prefix_problems

MATCH_MIN = 0.95  # share of items a matched pair must render identically


def byte_tokenizer():
    """A byte-level tokenizer: one token per byte (ids 3..258), ``<pad>``=0, ``<s>``=1, ``</s>``=2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def resolve_tokenizer(spec: str = "auto"):
    """(tokenizer, what it is): ``auto`` (the cached default model's, else byte-level), ``bytes``, or a
    model folder / hub id."""
    from transformers import AutoTokenizer

    if spec == "bytes":
        return byte_tokenizer(), "byte-level"
    if spec == "auto":
        from prunescope.models.loading import DEFAULT_MODEL, cache_dir

        cached = cache_dir() / DEFAULT_MODEL
        if (cached / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(cached), f"{DEFAULT_MODEL} (cached)"
        return byte_tokenizer(), "byte-level (the default model is not cached yet)"
    try:
        return AutoTokenizer.from_pretrained(spec), spec
    except Exception as e:  # missing folder, no hub access: the user's to fix
        raise UsageError(f"--tokenizer {spec}: cannot load a tokenizer ({type(e).__name__}); "
                         "pass a model folder, or auto / bytes") from None


def null_model(tokenizer):
    """A one-block Llama over ``tokenizer``'s vocabulary whose ``lm_head`` is zero: uniform everywhere."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id or 0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def _beats(acc: float, n: int, chance: float) -> bool:
    """True when the 95% Wilson interval of ``acc`` over ``n`` items lies wholly above ``chance``."""
    return wilson_interval(acc * n, n)[0] > chance + 1e-12


def _length_pick(lengths: list[int], gold: int, longest: bool) -> float:
    best = max(lengths) if longest else min(lengths)
    tied = [i for i, x in enumerate(lengths) if x == best]
    return (gold in tied) / len(tied)


def pair_match(task, tokenizer, *, limit: int, seed: int = 0, data=None) -> float | None:
    """Share of ``task``'s items whose partner item has the same id and the same rendered context
    (None when the task has no partner)."""
    from prunescope.tasks import get_task

    if not task.pair:
        return None
    other = get_task(task.pair, data=data)
    mine, theirs = task.items(limit, seed=seed), other.items(limit, seed=seed)
    by_id = {it.id: other.render(it, tokenizer) for it in theirs}
    same = sum(by_id.get(it.id) == task.render(it, tokenizer) for it in mine)
    return same / max(len(mine), len(theirs), 1)


def audit_task(task, tokenizer, model, *, limit: int = 200, seed: int = 0, data=None) -> dict[str, Any]:
    """One audit row for ``task`` (see the module docstring): measures and ``problems`` (empty = pass).
    ``model`` is the null model (``null_model(tokenizer)``), run through the engine; None computes its
    choice in closed form (fewest continuation tokens, the first on ties), which is what it does."""
    from prunescope.eval import engine

    if task.evaluate_fn is not None:
        return {"task": task.name, "kind": task.kind, "skipped": "run by lm-eval, which owns its items"}
    try:
        items = task.items(limit, seed=seed)
    except UsageError as e:  # a broken item fails the row; data that is not here (gsm8k) skips it
        if str(e).startswith(f"task {task.name}, item"):
            return {"task": task.name, "kind": task.kind, "problems": [str(e)]}
        return {"task": task.name, "kind": task.kind, "skipped": str(e)}
    n = len(items)
    chance, strategy = chance_of(task.kind, items)
    row: dict[str, Any] = {"task": task.name, "kind": task.kind, "n": n, "chance": chance, "strategy": strategy,
                           "problems": []}
    problems = row["problems"]
    if task.chance is not None:
        lo, hi = wilson_interval(chance * n, n)
        row["declared_chance"] = task.chance
        if not lo - 1e-12 <= task.chance <= hi + 1e-12:
            problems.append(f"declared chance {task.chance:.3f} is outside the computed chance {chance:.3f} "
                            f"[{lo:.3f}, {hi:.3f}] ({strategy})")
    if task.kind == "multiple_choice" and n:
        contexts = [task.render(it, tokenizer) for it in items]
        lengths = [[len(engine.encode_pair(tokenizer, c, ch)[1]) for ch in it.choices] for c, it in zip(contexts, items)]
        if model is not None:
            scores = engine.score_choices(model, tokenizer, [(c, it.choices) for c, it in zip(contexts, items)],
                                          batch_size=64, progress=False)
        else:  # what the null model computes, in closed form: -len(tokens) * log V per choice
            scores = [[-float(x) for x in L] for L in lengths]
        heur = {"null": sum(max(range(len(s)), key=s.__getitem__) == it.gold for s, it in zip(scores, items)) / n,
                "longest": sum(_length_pick(L, it.gold, True) for L, it in zip(lengths, items)) / n,
                "shortest": sum(_length_pick(L, it.gold, False) for L, it in zip(lengths, items)) / n}
        strategies = mc_strategies(items)
        row.update(heur, position=strategies["same position"], answer=strategies["same answer"])
        for name, acc in heur.items():
            if _beats(acc, n, chance):
                lo = wilson_interval(acc * n, n)[0]
                problems.append(f"the {name} heuristic scores {acc:.3f} (95% CI from {lo:.3f}), above chance {chance:.3f}")
        prefix = token_prefix_problems(task, items, tokenizer)
        row["prefix"] = len(prefix)
        problems += prefix[:3]
    if task.pair:
        if not task.matched:
            row["pair"] = f"{task.pair} (not matched)"
        else:
            share = pair_match(task, tokenizer, limit=limit, seed=seed, data=data)
            row["pair"] = f"{task.pair} {share:.0%}"
            if share < MATCH_MIN:
                problems.append(f"only {share:.0%} of items share id and rendered context with {task.pair} "
                                f"(a matched pair needs {MATCH_MIN:.0%})")
    return row


def format_rows(rows: list[dict[str, Any]]) -> str:
    """The audit table: one line per task, then one line per problem."""
    head = ("task", "kind", "n", "chance", "null", "longest", "shortest", "position", "answer", "prefix", "pair",
            "verdict")

    def f(x):
        return "-" if x is None else f"{x:.2f}" if isinstance(x, float) else str(x)

    lines = []
    for r in rows:
        verdict = "skipped" if r.get("skipped") else ("FAIL" if r.get("problems") else "ok")
        chance = f"{r['chance']:.2f} ({r['strategy']})" if "chance" in r else "-"
        lines.append((r["task"], "mc" if r["kind"] == "multiple_choice" else "gen", f(r.get("n")), chance,
                      f(r.get("null")), f(r.get("longest")), f(r.get("shortest")), f(r.get("position")),
                      f(r.get("answer")), f(r.get("prefix")), r.get("pair", "-"), verdict))
    widths = [max(len(x[i]) for x in lines + [head]) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(x, widths)).rstrip() for x in lines]
    for r in rows:
        out += [f"  {r['task']}: {p}" for p in r.get("problems", [])]
        if r.get("skipped"):
            out.append(f"  {r['task']}: skipped ({r['skipped']})")
    return "\n".join(out)
