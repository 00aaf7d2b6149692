"""``prunescope eval``: evaluate a model on tasks, print a table, write metrics.json + samples.jsonl."""
from __future__ import annotations

from dataclasses import dataclass

from prunescope.config import field, require

HELP = "Evaluate a model on classification and generation tasks; writes metrics.json and samples.jsonl."


@dataclass
class Config:
    tasks: list[str] = field(default_factory=list, help="comma-separated task names (see `prunescope tasks`), lmeval:<task> or lmeval:<task>:<shots> (e.g. lmeval:arc_easy:5), or task.yaml files")
    model: str = field("smollm2-135m", help="hub id, local folder, .gguf file, or smollm2-135m")
    out: str | None = field(None, help="path of metrics.json to write (samples.jsonl goes beside it)")
    limit: int | None = field(None, help="items per task (default: every item of a dataset, 200 of a synthetic probe)")
    seed: int = field(0, help="seed of the generated items")
    batch_size: str = field("auto", help="sequences per forward pass, or auto")
    data: str | None = field(None, help="GSM8K data: a JSONL file or a folder with train.jsonl/test.jsonl")
    baseline: str | None = field(None, help="metrics.json of the unpruned model; adds retention")
    chat_template: str = field("auto", help="wrap prompts in the model's chat template", choices=["auto", "on", "off"])
    dtype: str = field("auto", help="auto, float32, bfloat16 or float16")
    device: str = field("auto", help="auto, cpu, cuda, cuda:N or mps")
    progress: bool = field(True, help="show progress bars")
    backend: str = field("hf", help="hf (transformers, any device) or vllm (GPU, optional extra)", choices=["hf", "vllm"])
    full_outputs: bool = field(False, help="decode every answer to its stop string or token budget, also where the "
                                           "verdict is already decided (slower; keeps whole outputs and adds "
                                           "degeneration measures)")

    def __post_init__(self):
        require(self.limit is None or self.limit > 0, f"--limit must be a positive number of items, got {self.limit}")
        require(self.batch_size == "auto" or (self.batch_size.isdigit() and int(self.batch_size) > 0),
                f"--batch-size must be a positive integer or auto, got {self.batch_size!r}")
        require(bool(self.tasks), "--tasks needs at least one task; see `prunescope tasks`")


def run(config: Config) -> int:
    from prunescope.eval import evaluate, format_table
    from prunescope.models import load_model
    from prunescope.tasks import get_task

    tasks = [get_task(t, data=config.data) for t in config.tasks]
    for task in tasks:  # a typo, a bad data file or an unreachable dataset fails before the model loads
        if task.evaluate_fn is None:
            task.items(1, seed=config.seed)
    chat = {"auto": None, "on": True, "off": False}[config.chat_template]
    backend = None
    if config.backend == "vllm":
        from prunescope.eval.vllm_backend import VllmBackend
        backend = VllmBackend(config.model, dtype=config.dtype)
        model, tokenizer = None, backend.tokenizer
    else:
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    batch_size = config.batch_size if config.batch_size == "auto" else int(config.batch_size)
    report = evaluate(model, tokenizer, tasks, limit=config.limit, seed=config.seed, batch_size=batch_size,
                      baseline=config.baseline, out=config.out, progress=config.progress, chat=chat,
                      model_name=config.model, backend=backend, full_outputs=config.full_outputs)
    print(format_table(report))
    if config.out:
        print(f"\nwrote {config.out} and samples.jsonl beside it")
    return 0
