"""The study's step lines on a simulated clock: one plain line per step, and an estimate of the total that is
within 30% of the real total once a quarter of the steps are done, for step mixes as costly as measured."""
import datetime as dt
import math
import random
import re

import pytest

from prunescope.study.steps import Step, step_line

# Seconds per step measured in a default study on 2 CPU cores (run.json of a fresh-clone run).
DEFAULT_RUN = ([("baseline", 800, 74.7), ("scores/reverse.json", 0, 0.0), ("scores/block_influence.json", 0, 13.4),
                ("cells/reverse-r0.2", 800, 105.4), ("cells/block_influence-r0.2", 800, 182.3),
                ("block_influence-r0.2/recovery-lora", 0, 215.9), ("efficiency/base", 0, 5.2),
                ("efficiency/k6", 0, 4.3), ("cells/method-merge-r0.2", 800, 88.6),
                ("cells/method-width-r0.2", 800, 78.2), ("cells/method-quant-int8", 800, 90.0),
                ("cells/method-speculative-r0.2", 800, 108.8), ("ablation/base", 40, 7.4)]
               + [(f"ablation/layer-{i:03d}", 40, s) for i, s in enumerate(
                   [9.9, 12.3, 8.0, 6.8, 7.8, 7.7, 7.1, 7.5, 6.8, 7.6, 8.1, 11.7, 6.6, 7.0, 7.2, 7.1, 7.7, 7.2, 7.4,
                    7.7, 9.6, 8.3, 8.5, 8.8, 8.8, 8.0, 7.2, 6.9, 7.6, 10.1])])


def larger_grid(seed: int):
    """Three criteria x three ratios, recovery of two cells, four methods, a 30-layer ablation; each step's
    cost is its kind's measured cost (pruned cells cost more as more layers go: fewer generations stop early)
    times a seeded +-25% jitter."""
    rng = random.Random(seed)

    def j(x):
        return round(x * rng.uniform(0.75, 1.25), 1)
    steps = [("baseline", 800, j(75))]
    steps += [(f"scores/{c}.json", 0, j(cost)) for c, cost in (("reverse", 0.1), ("block_influence", 13),
                                                                ("angular", 15))]
    steps += [(f"cells/{c}-r{r}", 800, j(90 + 400 * r)) for c in ("reverse", "block_influence", "angular")
              for r in (0.1, 0.2, 0.3)]
    steps += [(f"block_influence-r{r}/recovery-lora", 0, j(216)) for r in (0.2, 0.3)]
    steps += [("efficiency/base", 0, j(5))] + [(f"efficiency/k{k}", 0, j(4)) for k in (3, 6, 9)]
    steps += [(f"cells/method-{m}-r0.2", 800, j(cost)) for m, cost in (("merge", 89), ("width", 78), ("quant", 90),
                                                                       ("speculative", 109))]
    steps += [("ablation/base", 40, j(7.4))] + [(f"ablation/layer-{i:03d}", 40, j(8)) for i in range(30)]
    return steps


def simulate(schedule):
    """The lines a study logs on a fake clock, and the real total."""
    steps = [Step(key, key, {}, [], lambda: None, work=work) for key, work, _ in schedule]
    start = dt.datetime(2026, 1, 1, 12, 0, 0)
    elapsed, timings, lines = 0.0, {}, []
    for i, (step, (_, _, seconds)) in enumerate(zip(steps, schedule)):
        lines.append(step_line(i + 1, len(steps), step, steps[i:], elapsed, timings,
                               now=start + dt.timedelta(seconds=elapsed)))
        timings[step.key] = {"seconds": seconds, "work": step.work}
        elapsed += seconds
    return lines, elapsed


def predicted_totals(lines):
    """Elapsed + left, as a reader of each line would add them up (None before the first estimate)."""
    out = []
    for line in lines:
        m = re.search(r"(?:(\d+)m)?(\d+)s elapsed(?:, about (\d+)m(\d+)s left)?", line)
        elapsed = int(m.group(1) or 0) * 60 + int(m.group(2))
        out.append(elapsed + int(m.group(3)) * 60 + int(m.group(4)) if m.group(3) else None)
    return out


@pytest.mark.parametrize("schedule", [DEFAULT_RUN, larger_grid(0), larger_grid(1)],
                         ids=["default-measured", "grid-seed0", "grid-seed1"])
def test_estimate_within_30_percent_after_a_quarter_of_the_steps(schedule):
    lines, total = simulate(schedule)
    quarter = math.ceil(len(lines) / 4)
    for i, predicted in enumerate(predicted_totals(lines)):
        if i >= quarter:
            assert abs(predicted / total - 1) <= 0.30, (lines[i], predicted, total)


def test_step_lines_are_plain_one_per_step():
    """What a log file gets: one line per step, numbered, no carriage returns, the finish time of day."""
    lines, total = simulate(DEFAULT_RUN)
    assert len(lines) == len(DEFAULT_RUN)
    assert all("\r" not in line and "\n" not in line for line in lines)
    assert lines[0] == "[1/43] baseline  (42 left after this, 0s elapsed, estimate after the first step)"
    assert re.fullmatch(r"\[2/43\] scores/reverse\.json  \(41 left after this, 1m14s elapsed, about \d+m\d\ds left, "
                        r"done about \d\d:\d\d\)", lines[1])
    # the last line: the mean measured ablation step is left, done at 12:00 + everything but the last step
    ablation = [s for k, _, s in DEFAULT_RUN[:-1] if k.startswith("ablation/")]
    left = sum(ablation) / len(ablation)
    finish = dt.datetime(2026, 1, 1, 12) + dt.timedelta(seconds=sum(s for *_, s in DEFAULT_RUN[:-1]) + left)
    assert lines[-1].endswith(f"about 0m{int(left):02d}s left, done about {finish:%H:%M})")


def test_a_uniform_cost_estimate_misses(monkeypatch):
    """The check above can fail: an estimator that takes every step to cost the mean step misses by far."""
    import prunescope.study.steps as steps
    monkeypatch.setattr(steps, "step_kind", lambda key: "step")
    monkeypatch.setattr(steps, "Step", Step)
    lines, total = simulate([(k, 0, s) for k, _, s in DEFAULT_RUN])
    quarter = math.ceil(len(lines) / 4)
    assert max(abs(p / total - 1) for p in predicted_totals(lines)[quarter:]) > 0.30


def test_plan_states_the_time_left_when_earlier_steps_were_measured():
    from prunescope.study.steps import plan_text
    pending = [Step("cells/a-r0.1", "a", {}, [], lambda: None, work=400),
               Step("ablation/layer-000", "b", {}, [], lambda: None, work=10)]
    assert plan_text(pending) == "1 eval, 1 ablation"  # a fresh run: nothing measured yet
    # one evaluation of 400 items measured at 40 s: the cell 40 s, the ablation step 10 items at 0.1 s
    assert plan_text(pending, {"baseline": {"seconds": 40.0, "work": 400}}) == \
        "1 eval, 1 ablation; about 41s, from 1 step(s) measured here before"
