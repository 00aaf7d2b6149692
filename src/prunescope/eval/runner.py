"""``evaluate``: run tasks on an in-memory model and produce metrics.json (+ samples.jsonl)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prunescope.errors import UsageError
from prunescope.eval import engine
from prunescope.eval.degeneration import degeneration
from prunescope.eval.metrics import add_retention, proportion, summarise, wilson_interval, chance_normalised
from prunescope.tasks import Task, get_task
from prunescope.tasks.chance import chance_of
from prunescope.tasks.spec import adds_bos


def _model_name(model) -> str:
    return str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "") or type(model).__name__)


def _check_chat(tokenizer, chat: bool | None) -> None:
    if chat and not getattr(tokenizer, "chat_template", None):
        raise UsageError("--chat-template on was asked for but this model's tokenizer has no chat template; "
                         "use --chat-template off (or auto)")


class HFBackend:
    """The default backend: prunescope's engine on an in-memory transformers model."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def score_choices(self, items, **kw):
        return engine.score_choices(self.model, self.tokenizer, items, **kw)

    def generate(self, prompts, **kw):
        return engine.generate(self.model, self.tokenizer, prompts, **kw)


class _Answered:
    """A backend that answers from results already computed: a matched pair's shared pass over its contexts
    (``engine.score_and_generate``), handed to each task of the pair in turn."""

    def __init__(self, items, scores, outputs, seconds: float, partner: str):
        self.items, self.scores, self.outputs, self.seconds, self.partner = items, scores, outputs, seconds, partner

    def score_choices(self, items, **_):
        return self.scores

    def generate(self, prompts, **_):
        return self.outputs


def _shared_passes(model, tokenizer, tasks: list[Task], *, limit, seed, batch_size, chat, progress,
                   full_outputs) -> dict[str, _Answered]:
    """Matched pairs among ``tasks`` whose items render the same contexts, each evaluated in one pass over
    those contexts: ``{task name: answers}`` for both tasks of each pair (pairs that cannot share are left
    out and evaluate on their own)."""
    by_name = {t.name: t for t in tasks}
    answered: dict[str, _Answered] = {}
    for mc in tasks:
        gen = by_name.get(mc.pair or "")
        if (mc.kind != "multiple_choice" or gen is None or gen.kind != "generate" or not (mc.matched and gen.matched)
                or mc.evaluate_fn or gen.evaluate_fn or mc.name in answered):
            continue
        mc_items, gen_items = mc.items(limit, seed=seed, split="eval"), gen.items(limit, seed=seed, split="eval")
        contexts = [mc.render(it, tokenizer, chat=chat) for it in mc_items]
        if ([it.id for it in mc_items] != [it.id for it in gen_items]
                or contexts != [gen.render(it, tokenizer, chat=chat) for it in gen_items]):
            continue
        _check_token_prefixes(mc, mc_items, tokenizer, chat)
        start = time.perf_counter()
        result = engine.score_and_generate(model, tokenizer, [(c, it.choices) for c, it in zip(contexts, mc_items)],
                                           max_new_tokens=gen.max_new_tokens, stop=gen.stop,
                                           settled=_settled(gen, gen_items, full_outputs), batch_size=batch_size,
                                           progress=progress, desc=f"{mc.name} + {gen.name}")
        if result is None:
            continue
        half = (time.perf_counter() - start) / 2
        answered[mc.name] = _Answered(mc_items, result[0], None, half, gen.name)
        answered[gen.name] = _Answered(gen_items, None, result[1], half, mc.name)
    return answered


def _settled(task: Task, items, full_outputs: bool):
    """``settled(i, text)`` for the engine: item ``i``'s verdict is decided (None: decode whole outputs)."""
    if task.settled is None or full_outputs:
        return None
    return lambda i, text: task.settled(items[i], text)


def _check_token_prefixes(task: Task, items, tokenizer, chat) -> None:
    """A UsageError when a choice's tokens are a prefix of another's (tasks/rules.py)."""
    from prunescope.tasks.rules import token_prefix_problems
    problems = token_prefix_problems(task, items, tokenizer, chat=chat)
    if problems:
        raise UsageError(f"{problems[0]} ({len(problems)} item(s) in all)")


def _run_multiple_choice(task: Task, items, backend, tokenizer, *, batch_size, chat, progress):
    contexts = [task.render(it, tokenizer, chat=chat) for it in items]
    scores = backend.score_choices([(c, it.choices) for c, it in zip(contexts, items)],
                                   batch_size=batch_size, progress=progress, desc=task.name)
    preds = [max(range(len(s)), key=s.__getitem__) for s in scores]
    flags = [p == it.gold for p, it in zip(preds, items)]
    # lm-eval's acc_norm: log-likelihood per character of the choice (len(choice); its per-byte variant is
    # a separate metric, acc_bytes), which removes the bias toward short choices.
    norm_preds = [max(range(len(s)), key=lambda j: s[j] / max(1, len(it.choices[j])))
                  for s, it in zip(scores, items)]
    extras = {"accuracy_length_normalized": proportion([p == it.gold for p, it in zip(norm_preds, items)])["accuracy"]}
    samples = [{"task": task.name, "id": it.id, "prompt": c, "choices": it.choices, "scores": s, "pred": p,
                "gold": it.gold, "correct": f} for it, c, s, p, f in zip(items, contexts, scores, preds, flags)]
    return flags, extras, samples


def _run_generate(task: Task, items, backend, tokenizer, *, batch_size, chat, progress, full_outputs=False):
    prompts = [task.render(it, tokenizer, chat=chat) for it in items]
    settled = _settled(task, items, full_outputs)
    kw = {} if settled is None else {"settled": settled}
    outputs = backend.generate(prompts, max_new_tokens=task.max_new_tokens, stop=task.stop,
                               batch_size=batch_size, progress=progress, desc=task.name, **kw)
    details: list[dict[str, Any]] = [{} for _ in items]
    if task.check_all is not None:
        checked = task.check_all(items, outputs)
        flags = []
        for d, c in zip(details, checked):
            if isinstance(c, dict):
                d.update({k: v for k, v in c.items() if k != "correct"})
                flags.append(bool(c.get("correct")))
            else:
                flags.append(bool(c))
    elif task.check is not None:
        flags = [bool(task.check(it, o)) for it, o in zip(items, outputs)]
    else:
        flags = [o.strip() == str(it.gold).strip() for it, o in zip(items, outputs)]
    if kw:  # outputs may end where their verdict was decided: their length and repetition say nothing
        extras: dict[str, Any] = {"outputs": "may stop once the verdict is decided (full_outputs=False)"}
    else:
        extras = {"degeneration": degeneration(outputs)}
    if task.extra_metrics is not None:
        extras.update(task.extra_metrics(items, outputs))
    samples = [{"task": task.name, "id": it.id, "prompt": p, "output": o, "gold": it.gold, "correct": f, **d}
               for it, p, o, f, d in zip(items, prompts, outputs, flags, details)]
    return flags, extras, samples


def evaluate_task(model, tokenizer, task: Task, *, limit: int | None = None, seed: int = 0,
                  batch_size: int | str = "auto", chat: bool | None = None, progress: bool = True, backend=None,
                  full_outputs: bool = False):
    """(metrics, samples) of one task. ``backend`` (default: the HF engine on ``model``) is any object
    with ``score_choices(items, **kw)`` and ``generate(prompts, **kw)``, e.g. a VllmBackend. Generation
    stops once a task's ``settled`` says the verdict is decided, unless ``full_outputs``."""
    backend = backend or HFBackend(model, tokenizer)
    start = time.perf_counter()
    if task.evaluate_fn is not None:
        metrics, samples = task.evaluate_fn(model, tokenizer, limit=limit, seed=seed, batch_size=batch_size)
        metrics.setdefault("ci95", list(wilson_interval(metrics.get("correct", 0), metrics.get("n", 0))))
        metrics.setdefault("normalized", chance_normalised(metrics["accuracy"], metrics.get("chance", 0.0)))
    else:
        answered = isinstance(backend, _Answered)  # its items were built and checked for the shared pass
        items = backend.items if answered else task.items(limit, seed=seed, split="eval")
        if not items:
            raise UsageError(f"task {task.name} has no evaluation items")
        if task.kind == "multiple_choice" and tokenizer is not None and not answered:
            _check_token_prefixes(task, items, tokenizer, chat)
        if task.kind == "multiple_choice":
            flags, extras, samples = _run_multiple_choice(task, items, backend, tokenizer, batch_size=batch_size,
                                                          chat=chat, progress=progress)
        else:
            flags, extras, samples = _run_generate(task, items, backend, tokenizer, batch_size=batch_size, chat=chat,
                                                   progress=progress, full_outputs=full_outputs)
        # Chance from the items just scored: the best answer-blind strategy on them (tasks/chance.py).
        chance, strategy = chance_of(task.kind, items)
        metrics = {**summarise(flags, kind=task.kind, chance=chance), "chance_strategy": strategy, **extras}
    if task.pair:
        metrics["pair"] = {"task": task.pair, "matched": task.matched}
    metrics["bos"] = adds_bos(tokenizer)
    seconds = time.perf_counter() - start
    if isinstance(backend, _Answered):  # half of the pass it shared with its partner
        seconds += backend.seconds
        metrics["shared_pass"] = backend.partner
    metrics["seconds"] = round(seconds, 3)
    return metrics, samples


def evaluate(model, tokenizer, tasks: list[str | Task], *, limit: int | None = None, seed: int = 0,
             batch_size: int | str = "auto", baseline: dict | str | Path | None = None,
             out: str | Path | None = None, progress: bool = True, chat: bool | None = None,
             data: str | Path | None = None, model_name: str | None = None, backend=None,
             full_outputs: bool = False) -> dict[str, Any]:
    """Evaluate ``model`` on ``tasks`` (names or Task objects) and return the metrics.json content
    ``{model, seed, limit, tasks: {name: {kind, n, accuracy, ci95, chance, normalized, retention?, …}}}``.

    ``limit`` caps items per task (None: every item of a dataset, 200 of a synthetic probe); ``baseline`` (a metrics
    dict or a path to metrics.json) adds ``retention``; ``out`` (a path to metrics.json) writes it and
    ``samples.jsonl`` beside it, atomically. ``chat`` forces the chat template on or off (None: as each
    task asks, when the tokenizer has one). ``data`` is passed to tasks that read a dataset (GSM8K).
    ``backend`` replaces the HF engine (e.g. ``VllmBackend``; ``model`` may then be None). A generated
    answer stops as soon as its task can tell that more text would not change its verdict (tasks with
    ``settled``, e.g. an addition whose number is complete); ``full_outputs`` decodes every answer to its
    stop string or token budget instead, for reading the outputs or measuring their degeneration.
    """
    from prunescope.io import read_json, write_json, write_jsonl

    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be a positive number of items, got {limit}")
    _check_chat(tokenizer, chat)
    resolved = [get_task(t, data=data) for t in tasks]  # resolve all first: a typo fails before any work
    if isinstance(baseline, (str, Path)):
        baseline = read_json(baseline)
    if model is not None:
        model.eval()
    results: dict[str, Any] = {}
    all_samples: list[dict[str, Any]] = []
    answered = {}
    if backend is None and model is not None:  # the HF engine runs a matched pair's contexts once
        answered = _shared_passes(model, tokenizer, resolved, limit=limit, seed=seed, batch_size=batch_size,
                                  chat=chat, progress=progress, full_outputs=full_outputs)
    for task in resolved:
        metrics, samples = evaluate_task(model, tokenizer, task, limit=limit, seed=seed, batch_size=batch_size,
                                         chat=chat, progress=progress, backend=answered.get(task.name, backend),
                                         full_outputs=full_outputs)
        results[task.name] = metrics
        all_samples += samples
    if baseline is not None:
        add_retention(results, baseline)
    report = {"model": model_name or _model_name(model), "seed": seed, "limit": limit, "tasks": results}
    if out is not None:
        out = Path(out)
        write_jsonl(out.with_name("samples.jsonl"), all_samples)
        write_json(out, report)
    return report


def format_table(report: dict[str, Any]) -> str:
    """A readable table of a metrics dict: task, kind, n, accuracy ± CI, chance, retention."""
    head = ("task", "kind", "n", "accuracy [95% CI]", "chance", "retention")
    rows = []
    for name, m in report["tasks"].items():
        lo, hi = m.get("ci95", [0, 1])
        ret = m.get("retention")
        rows.append((name, m["kind"], str(m["n"]), f"{100 * m['accuracy']:5.1f}% [{100 * lo:4.1f}, {100 * hi:5.1f}]",
                     f"{100 * m.get('chance', 0):.0f}%", "-" if ret is None else f"{100 * ret:.0f}%"))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
