"""``lmeval:<task>``: any lm-evaluation-harness task on the in-memory model.

The model (base, pruned or recovered, never reloaded from disk) is wrapped in lm-eval's HF backend
(``HFLM(pretrained=model, tokenizer=tokenizer)``) and run with ``lm_eval.simple_evaluate``; the
result is mapped into prunescope's metrics shape (accuracy with a Wilson interval, chance level), so
MMLU, ARC, HellaSwag, PIQA, WinoGrande… sit in the same table as the built-in probes. Needs the
optional extra ``pip install prunescope[lmeval]`` and, for most tasks, access to the dataset hub.
``lmeval:path/to/task.yaml`` runs a local lm-eval task file instead (its folder is added to lm-eval's
task search path), e.g. one whose ``dataset_path: json`` reads a local file, which needs no hub.

``lmeval:<task>:<N>`` sets the number of few-shot examples (``lmeval:arc_easy:5``, the paper's 5-shot);
without it the task's own default applies (0 for most). ``num_fewshot`` is recorded in metrics.json.

BOS: lm-eval's HF backend is built with ``add_bos_token`` unset, so it encodes with the tokenizer's own
special tokens, as prunescope's engine does for the built-in probes (a BOS exactly where the tokenizer
adds one, none when the text already starts with it). ``metrics.json`` records ``bos`` for every task.
Chance is the better of 1/k and the most frequent gold position over the evaluated documents.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from prunescope.errors import UsageError
from prunescope.hub import hub_access, hub_failure_reason
from prunescope.io import read_yaml
from prunescope.tasks.spec import Task

PREFIX = "lmeval:"
# The headline metric, in order of preference; lm-eval keys are "<metric>,<filter>".
_PREFERRED = ("acc", "exact_match", "pass@1", "acc_norm", "mc2", "f1")
_OUTPUT_KIND = {"multiple_choice": "multiple_choice", "loglikelihood": "multiple_choice",
                "generate_until": "generate", "loglikelihood_rolling": "perplexity"}


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise UsageError("lmeval: tasks need lm-evaluation-harness: pip install 'prunescope[lmeval]'") from None
    return lm_eval, HFLM


def _headline(metrics: dict[str, Any]) -> tuple[str, float] | None:
    numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "_stderr" not in k}
    for want in _PREFERRED:
        for key, value in numeric.items():
            if key.split(",")[0] == want:
                return key, float(value)
    first = next(iter(numeric.items()), None)  # none preferred: the first number, a float like the others
    return None if first is None else (first[0], float(first[1]))


def map_results(task_name: str, results: dict[str, Any], *, label: str | None = None
                ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """prunescope's (metrics, samples) from an ``lm_eval.simple_evaluate`` result for ``task_name``;
    samples are tagged ``label`` (default ``lmeval:<task_name>``)."""
    table = results.get("results", {}).get(task_name) or results.get("groups", {}).get(task_name)
    if table is None:
        raise UsageError(f"lm-eval returned no results for {task_name!r}")
    headline = _headline(table)
    if headline is None:
        raise UsageError(f"lm-eval task {task_name!r} reported no numeric metric")
    metric, accuracy = headline
    n_samples = results.get("n-samples", {})
    n = n_samples.get(task_name, {}).get("effective")
    if n is None:
        n = sum(v.get("effective", 0) for v in n_samples.values())
    output_type = results.get("configs", {}).get(task_name, {}).get("output_type", "multiple_choice")
    samples = []
    inverse_choices = []
    positions: dict = {}
    for sub, rows in results.get("samples", {}).items():
        for row in rows:
            args = row.get("arguments") or []
            if output_type == "multiple_choice" and args:
                inverse_choices.append(1.0 / len(args))
                if isinstance(row.get("target"), int):
                    positions[row["target"]] = positions.get(row["target"], 0) + 1
            samples.append({"task": label or f"{PREFIX}{task_name}", "subtask": sub, "id": row.get("doc_id"),
                            "target": row.get("target"), "correct": row.get(metric.split(",")[0]),
                            "response": row.get("filtered_resps")})
    chance = sum(inverse_choices) / len(inverse_choices) if inverse_choices else 0.0
    if positions:  # always answering the commonest gold position is answer-blind too
        chance = max(chance, max(positions.values()) / len(inverse_choices))
    extras = {k: v for k, v in table.items() if isinstance(v, (int, float)) and k != metric}
    metrics = {"kind": _OUTPUT_KIND.get(output_type, output_type), "n": int(n or 0), "accuracy": accuracy,
               "correct": round(accuracy * (n or 0)), "chance": chance, "metric": f"lmeval {metric}",
               "lmeval": extras}
    return metrics, samples


def local_task_file(spec: str) -> tuple[str, Path] | None:
    """(task name, folder) of a local lm-eval task YAML ``spec``; None when ``spec`` is a task name."""
    if not spec.endswith((".yaml", ".yml")):
        return None
    path = Path(spec)
    if not path.is_file():
        raise UsageError(f"--tasks {PREFIX}{spec}: no such lm-eval task file; check the path")
    config = read_yaml(path)
    name = config.get("task") if isinstance(config, dict) else None
    if not isinstance(name, str):
        raise UsageError(f"--tasks {PREFIX}{spec}: an lm-eval task file needs a 'task: <name>' line")
    return name, path.resolve().parent


def split_fewshot(spec: str) -> tuple[str, int | None]:
    """``"arc_easy:5"`` -> ``("arc_easy", 5)``; ``"arc_easy"`` -> ``("arc_easy", None)``."""
    name, sep, tail = spec.rpartition(":")
    if sep and tail.isdigit() and name:
        return name, int(tail)
    if sep and name and not tail:
        raise UsageError(f"--tasks {PREFIX}{spec}: give the number of shots after the colon, e.g. {PREFIX}{name}:5")
    return spec, None


def lmeval_task(task_name: str) -> Task:
    """A Task that runs lm-eval's ``task_name`` (``name`` or ``name:N`` for N-shot), or the local lm-eval
    task file it names (kind and chance come from lm-eval at run time)."""
    if not task_name:
        raise UsageError("--tasks lmeval: needs a task name, e.g. lmeval:hellaswag")
    full_name = task_name
    task_name, num_fewshot = split_fewshot(task_name)
    local = local_task_file(task_name)
    lm_name = local[0] if local else task_name

    def run(model, tokenizer, *, limit=None, seed=0, batch_size="auto"):
        lm_eval, HFLM = _import_lm_eval()
        bs = batch_size if isinstance(batch_size, int) else 16
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=bs)
        extra = {}
        if local:
            from lm_eval.tasks import TaskManager

            extra["task_manager"] = TaskManager(include_path=str(local[1]))
        access = None
        try:
            with hub_access() as access:
                results = lm_eval.simple_evaluate(model=lm, tasks=[lm_name], limit=limit, random_seed=seed,
                                                  numpy_random_seed=seed, torch_random_seed=seed,
                                                  fewshot_random_seed=seed, log_samples=True,
                                                  num_fewshot=num_fewshot, **extra)
        except KeyError as e:
            if "not a registered task" not in str(e):
                raise
            raise UsageError(f"{PREFIX}{task_name}: lm-eval has no task of that name; "
                             "`lm-eval ls tasks` lists them") from None
        except OSError as e:  # datasets' ConnectionError / DatasetNotFoundError: the task's data is not here
            raise UsageError(f"{PREFIX}{task_name}: its dataset cannot be loaded ({hub_failure_reason(e, access)}); "
                             "lm-eval tasks read the hub; use a local lm-eval task file (lmeval:path/to/task.yaml) "
                             "or a prunescope task") from None
        if results is None:
            raise UsageError(f"lm-eval produced no results for {lm_name!r}")
        metrics, samples = map_results(lm_name, results, label=f"{PREFIX}{full_name}")
        used = results.get("configs", {}).get(lm_name, {}).get("num_fewshot", num_fewshot)
        metrics["num_fewshot"] = used
        return metrics, samples

    def no_items(n, seed, split):
        raise UsageError(f"{PREFIX}{task_name} is run by lm-eval and has no items of its own; use a built-in task")

    shots = "" if num_fewshot is None else f", {num_fewshot}-shot"
    return Task(name=f"{PREFIX}{full_name}", kind="multiple_choice", make_items=no_items,
                evaluate_fn=run, family="lmeval",
                description=f"lm-evaluation-harness task {task_name!r}{shots} (optional extra)")
