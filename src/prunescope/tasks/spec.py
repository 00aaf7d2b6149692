"""What a task is: data plus a spec.

A task's ``kind`` says how it is scored: ``multiple_choice`` picks the choice with the highest
log-likelihood (classification-style), ``generate`` decodes greedily and checks the output
(generative). Task families register a factory with ``@register_task("name")``; parameterised
families register one name per variant.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from prunescope.registry import Registry

Kind = Literal["multiple_choice", "generate"]
Split = Literal["eval", "calib"]


@dataclass
class Item:
    """One question.

    ``prompt`` is the raw context (few-shot examples included, chat template not applied);
    ``choices`` are the continuations for multiple choice (None for generate);
    ``gold`` is the index of the correct choice (multiple choice) or the reference answer (generate);
    ``target`` is the gold continuation text, used for teacher-forced scoring and as SFT data.
    """
    id: str
    prompt: str
    gold: Any
    target: str
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """A task spec. ``make_items(n, seed, split)`` builds items deterministically from the seed; the
    ``calib`` split never overlaps the ``eval`` split, so criteria never see evaluation items.
    ``check(item, output)`` scores a generated output (generate tasks); ``extra_metrics(items, outputs)``
    may add task-specific numbers (e.g. GSM8K strict vs flexible)."""
    name: str
    kind: Kind
    description: str
    make_items: Callable[[int, int, str], list[Item]]
    # Optional *declared* chance (a user's task file may state one). The chance prunescope reports is
    # always computed from the items (tasks/chance.py); a declared value below it is an error.
    chance: float | None = None
    use_chat_template: bool = False
    stop: list[str] = field(default_factory=lambda: ["\n"])
    max_new_tokens: int = 16
    check: Callable[[Item, str], bool] | None = None
    # Optional: ``settled(item, output_so_far)`` is True once no continuation of the output can change what
    # ``check`` says about it (e.g. an answer already longer than any correct one). Generation of that item
    # stops there, which saves decoding on models that no longer stop by themselves; the verdict is the same
    # as with the whole output (tested for every task that sets it).
    settled: Callable[[Item, str], bool] | None = None
    extra_metrics: Callable[[list[Item], list[str]], dict[str, Any]] | None = None
    family: str = ""
    # Optional: score all generated outputs at once (e.g. run every program in parallel); preferred
    # over ``check`` when set. Returns one bool per item, or one dict per item with a "correct" key and
    # anything else worth keeping in samples.jsonl.
    check_all: Callable[[list[Item], list[str]], list[Any]] | None = None
    # Optional: tasks evaluated by another harness (the lm-eval bridge) run themselves:
    # ``evaluate_fn(model, tokenizer, limit=, seed=, batch_size=)`` -> (metrics dict, sample rows).
    evaluate_fn: Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]] | None = None
    # The other kind of the same skill: a ``_gen`` task names its ``_mc`` partner and vice versa.
    # ``matched`` says whether the two show the same items (ids) with the same rendered context;
    # False where that is impossible (a chain-of-thought generation prompt such as gsm8k's).
    pair: str | None = None
    matched: bool = True

    def items(self, n: int | None = None, *, seed: int = 0, split: Split = "eval") -> list[Item]:
        """``n`` items (all the task has when None) of ``split``, deterministic for ``seed``. Every item
        is checked against the multiple-choice rules (tasks/rules.py): a violation is a UsageError
        naming the task and the item."""
        from prunescope.tasks.rules import validate_items

        items = self.make_items(n, seed, split)
        validate_items(self, items)
        return items

    def render(self, item: Item, tokenizer=None, *, chat: bool | None = None) -> str:
        """The exact context string the model sees. The chat template is applied when ``chat`` is true,
        or, with ``chat=None``, when the spec asks for it and the tokenizer has one (the caller checks
        that the tokenizer has one when forcing it). ``item.meta["messages"]``, when present, holds the
        conversation (few-shot turns included); otherwise the prompt is one user turn."""
        use = self.use_chat_template if chat is None else chat
        if use and tokenizer is not None and getattr(tokenizer, "chat_template", None):
            messages = item.meta.get("messages") or [{"role": "user", "content": item.prompt}]
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return item.prompt


def adds_bos(tokenizer) -> bool | None:
    """Whether ``tokenizer`` puts a BOS token before a plain text (None without a tokenizer). Built-in
    probes (prunescope's engine) and lm-eval tasks (its HF backend with ``add_bos_token`` unset) both
    encode with the tokenizer's own special tokens, so this one flag describes both; it is recorded as
    ``bos`` in metrics.json."""
    if tokenizer is None or getattr(tokenizer, "bos_token_id", None) is None:
        return None if tokenizer is None else False
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


TASKS: Registry[Callable[[], Task]] = Registry("task")


def register_task(name: str):
    """Decorator: register a zero-argument factory returning the Task called ``name``."""
    return TASKS.register(name)
