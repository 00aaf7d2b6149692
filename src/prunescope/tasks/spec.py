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
    chance: float
    make_items: Callable[[int, int, str], list[Item]]
    use_chat_template: bool = False
    stop: list[str] = field(default_factory=lambda: ["\n"])
    max_new_tokens: int = 16
    check: Callable[[Item, str], bool] | None = None
    extra_metrics: Callable[[list[Item], list[str]], dict[str, Any]] | None = None
    family: str = ""

    def items(self, n: int | None = None, *, seed: int = 0, split: Split = "eval") -> list[Item]:
        """``n`` items (all the task has when None) of ``split``, deterministic for ``seed``."""
        return self.make_items(n, seed, split)

    def render(self, item: Item, tokenizer=None) -> str:
        """The exact context string the model sees: the chat template is applied when the spec asks
        for it (the caller checks that the tokenizer has one)."""
        if self.use_chat_template and tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "user", "content": item.prompt}], tokenize=False,
                                                 add_generation_prompt=True)
        return item.prompt


TASKS: Registry[Callable[[], Task]] = Registry("task")


def register_task(name: str):
    """Decorator: register a zero-argument factory returning the Task called ``name``."""
    return TASKS.register(name)
