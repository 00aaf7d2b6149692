"""Arithmetic probes: the skill that depth pruning destroys first.

Three formats of the same skill, so recognition and generation can be compared side by side:

* ``arith_<op>_<d>d_gen`` — few-shot ``a op b =``; the model writes the number (exact match of the first
  integer it produces).
* ``arith_<op>_<d>d_mc`` — the same items (ids, shots, context); the model picks the result among four
  by log-likelihood. Distractors are the mistakes people and pruned models make — off by one, a dropped
  or extra carry, swapped digits, off by ten — with as many digits as the answer, so length gives
  nothing away; every choice ends with the newline that ends each shot (`` 7\n``), which is where
  generation stops too, and the gold takes each position equally often.
* ``arith_mixed_*`` — the paper's single-digit three-operand probe ``(a op b) op c`` (3-shot), as
  generate, as multiple choice, and with *first-digit* scoring: the model's next-token choice among
  the ten digits after ``=`` (a multiple choice over the continuations `` 0`` … `` 9``; chance is the
  share of the commonest first digit, about a third, not 0.1; the shared leading space adds the same log-probability to every choice, so the argmax equals the
  argmax over digit tokens of the next-token logits).

Operands of ``d`` digits have exactly ``d`` digits (1-digit ones may be 0); subtraction keeps
``a >= b`` and the mixed probe keeps results non-negative, so every answer is a plain number.
"""
from __future__ import annotations

import random
import re

from prunescope.tasks.sampling import balanced_position, item_id, mc_item, synthetic_items
from prunescope.tasks.spec import Item, Task, register_task

OPS = {"add": "+", "sub": "-", "mul": "*"}
OP_WORDS = {"add": "addition", "sub": "subtraction", "mul": "multiplication"}
SHOTS = 5
MIXED_SHOTS = 3
_INT = re.compile(r"^\s*(-?\d+)")


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _operand(rng: random.Random, digits: int) -> int:
    return rng.randint(0, 9) if digits == 1 else rng.randint(10 ** (digits - 1), 10 ** digits - 1)


def _draw_binary(op: str, digits: int):
    def draw(rng: random.Random):
        a, b = _operand(rng, digits), _operand(rng, digits)
        if op == "-" and b > a:
            a, b = b, a
        return f"{a} {op} {b}", _apply(a, op, b)
    return draw


def _draw_mixed(rng: random.Random):
    while True:
        a, b, c = (rng.randint(0, 9) for _ in range(3))
        op1, op2 = rng.choice("+-*"), rng.choice("+-*")
        value = _apply(_apply(a, op1, b), op2, c)
        if value >= 0:
            return f"({a} {op1} {b}) {op2} {c}", value


def _key(q) -> str:
    return q[0]


def _shots_text(shots) -> str:
    return "".join(f"{expr} = {value}\n" for expr, value in shots)


def first_int(text: str) -> int | None:
    """The integer a generated answer starts with (``None`` when it does not start with one)."""
    m = _INT.match(text.replace(",", ""))
    return int(m.group(1)) if m else None


def distractors(value: int, rng: random.Random, *, a: int | None = None, b: int | None = None, k: int = 3) -> list[int]:
    """``k`` plausible wrong answers to ``value`` with as many digits as it: off by one/two, a lost or
    extra carry, swapped digits, off by ten; all distinct, non-negative and different from ``value``."""
    width = len(str(value))
    cands: list[int] = [value + 1, value - 1, value + 10, value - 10]
    text = str(value)
    if len(text) >= 2:
        swapped = text[:-2] + text[-1] + text[-2]
        cands.append(int(swapped))
        cands.append(int(text[::-1]))
    if a is not None and b is not None:
        # Digit-wise sum without carries, the classic carry error.
        sa, sb = str(a).zfill(8), str(b).zfill(8)
        cands.append(int("".join(str((int(x) + int(y)) % 10) for x, y in zip(sa, sb))))
    cands += [value + 2, value - 2, value + 100, value - 100, value + 3, value - 3]
    pool = []
    for c in cands:
        if c >= 0 and c != value and c not in pool and len(str(c)) == width:
            pool.append(c)
    near, far = pool[:6], pool[6:]
    rng.shuffle(near)
    chosen = (near + far)[:k]
    lo, hi = (0, 9) if width == 1 else (10 ** (width - 1), 10 ** width - 1)
    if k > hi - lo:
        raise ValueError(f"no {k} distinct wrong answers of {width} digit(s) besides {value}")
    spread = 5
    while len(chosen) < k:  # few same-width neighbours: any other number of that width, close by first
        others = [c for c in range(max(lo, value - spread), min(hi, value + spread) + 1)
                  if c != value and c not in chosen]
        if not others:
            spread *= 2  # the window is used up: widen it
            continue
        chosen.append(rng.choice(others))
    return chosen


def _check_gen(item: Item, output: str) -> bool:
    return first_int(output) == item.gold


def _settled_gen(item: Item, output: str) -> bool:
    """Whether ``first_int`` of every continuation of ``output`` is already decided as right or wrong: the
    leading integer is followed by something else, has more significant digits than the answer (more digits
    only make it larger), or the output can no longer start with an integer."""
    text = output.replace(",", "")
    m = _INT.match(text)
    if m:
        digits = m.group(1).lstrip("-").lstrip("0")
        return m.end() < len(text) or len(digits) > len(str(abs(item.gold)))
    return re.fullmatch(r"\s*-?", text) is None


def _gen_task(name: str, description: str, family: str, draw, shots: int, default_n: int = 200) -> Task:
    def make(n, seed, split):
        def build(q, shot_qs, rng, i):
            expr, value = q
            prompt = _shots_text(shot_qs) + f"{expr} ="
            return Item(id=item_id(family, split, seed, i), prompt=prompt, gold=value, target=f" {value}",
                        meta={"expression": expr})
        return synthetic_items(family=family, n=n, seed=seed, split=split, draw=draw, key=_key, build=build,
                               shots=shots, default_n=default_n, task=name)
    return Task(name=name, kind="generate", description=description, make_items=make,
                stop=["\n"], max_new_tokens=12, check=_check_gen, settled=_settled_gen, family=family, pair=name[:-4] + "_mc")


def _mc_task(name: str, description: str, family: str, draw, shots: int, default_n: int = 200) -> Task:
    def make(n, seed, split):
        def build(q, shot_qs, rng, i):
            expr, value = q
            nums = [int(x) for x in re.findall(r"\d+", expr)]
            wrong = distractors(value, rng, a=nums[0], b=nums[1]) if len(nums) == 2 and "+" in expr \
                else distractors(value, rng)
            return mc_item(id=item_id(family, split, seed, i), prompt=_shots_text(shot_qs) + f"{expr} =",
                           gold_text=str(value), distractors=[str(w) for w in wrong], rng=rng,
                           position=balanced_position(family, seed, split, i, 4),
                           meta={"expression": expr, "value": value})
        return synthetic_items(family=family, n=n, seed=seed, split=split, draw=draw, key=_key, build=build,
                               shots=shots, default_n=default_n, task=name)
    return Task(name=name, kind="multiple_choice", description=description, make_items=make,
                family=family, pair=name[:-3] + "_gen")


def _first_digit_task() -> Task:
    name, family = "arith_mixed_first_digit", "arith_mixed"

    def make(n, seed, split):
        def build(q, shot_qs, rng, i):
            expr, value = q
            choices = [f" {d}" for d in range(10)]
            return Item(id=item_id(family, split, seed, i), prompt=_shots_text(shot_qs) + f"{expr} =",
                        gold=int(str(value)[0]), target=choices[int(str(value)[0])], choices=choices,
                        meta={"expression": expr, "value": value})
        return synthetic_items(family=family, n=n, seed=seed, split=split, draw=_draw_mixed, key=_key,
                               build=build, shots=MIXED_SHOTS, task=name)
    return Task(name=name, kind="multiple_choice", make_items=make, family=family, pair="arith_mixed_gen",
                description="(a op b) op c, single digits, 3-shot: first digit of the answer, argmax over the ten digits")


def _register(name: str, factory) -> None:
    register_task(name)(factory)


for _op, _sym in OPS.items():
    for _d in (1, 2, 3, 4):
        _family = f"arith_{_op}_{_d}d"
        _desc = f"{_d}-digit {OP_WORDS[_op]} ({_sym}), {SHOTS}-shot"
        _draw = _draw_binary(_sym, _d)
        _register(f"{_family}_gen", lambda n=f"{_family}_gen", f=_family, d=_desc, dr=_draw:
                  _gen_task(n, d + ", generate the number", f, dr, SHOTS))
        _register(f"{_family}_mc", lambda n=f"{_family}_mc", f=_family, d=_desc, dr=_draw:
                  _mc_task(n, d + ", pick the result among 4", f, dr, SHOTS))

register_task("arith_mixed_gen")(lambda: _gen_task(
    "arith_mixed_gen", "(a op b) op c, single digits, 3-shot, generate the number", "arith_mixed", _draw_mixed,
    MIXED_SHOTS))
register_task("arith_mixed_mc")(lambda: _mc_task(
    "arith_mixed_mc", "(a op b) op c, single digits, 3-shot, pick the result among 4", "arith_mixed", _draw_mixed,
    MIXED_SHOTS))
register_task("arith_mixed_first_digit")(_first_digit_task)
