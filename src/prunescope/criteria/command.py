"""``prunescope score``: score every layer of a model with one criterion and write scores.json."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from prunescope.config import field
from prunescope.criteria import CRITERIA
from prunescope.errors import UsageError

HELP = "Score every decoder layer with a criterion (higher = more important) and write scores.json."


@dataclasses.dataclass
class Config:
    model: str = field("smollm2-135m", help="hub id, model folder, .gguf file or smollm2-135m")
    criterion: str | None = field(None, help="scoring criterion: " + ", ".join(CRITERIA.names()))
    out: str | None = field(None, help="where to write the scores JSON (e.g. scores.json)")
    num_layers: int | None = field(None, help="block size n for angular; number of greedy removals for sleb "
                                              "and greedy_task (default: a quarter of the layers)")
    calib: str | None = field(None, help="calibration text: a JSONL file with {\"text\": ...} per line, or a hub "
                                         "dataset id (default: the built-in set)")
    max_calib_tokens: int | None = field(None, help="use at most this many calibration tokens")
    tasks: list[str] | None = field(None, help="tasks for greedy_task (comma-separated)")
    seed: int = field(0, help="random seed (random criterion, task items)")
    dtype: str = field("auto", help="auto, float32, bfloat16 or float16")
    device: str = field("auto", help="auto, cpu or cuda")
    overwrite: bool = field(False, help="replace an existing --out file")

    def __post_init__(self):
        if not self.criterion:
            raise UsageError(f"--criterion is required; choose from: {', '.join(CRITERIA.names())}")
        CRITERIA.get(self.criterion)  # unknown name: did-you-mean error before loading anything
        if not self.out:
            raise UsageError("--out is required (the scores JSON to write, e.g. --out scores.json)")
        if Path(self.out).is_dir():
            raise UsageError(f"--out {self.out} is a folder; pass a file path such as {self.out}/scores.json")
        if Path(self.out).exists() and not self.overwrite:
            raise UsageError(f"--out {self.out} exists; pass --overwrite to replace it or choose another path")
        if self.num_layers is not None and self.num_layers < 1:
            raise UsageError(f"--num-layers {self.num_layers} must be at least 1")
        if self.max_calib_tokens is not None and self.max_calib_tokens < 2:
            raise UsageError(f"--max-calib-tokens {self.max_calib_tokens} must be at least 2")


def run(config: Config) -> int:
    """Load the model, score its layers and write the scores JSON."""
    from prunescope.criteria import save_scores, score_layers
    from prunescope.models import load_model

    model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    result = score_layers(model, tokenizer, config.criterion, calib=config.calib, num_layers=config.num_layers,
                          seed=config.seed, max_calib_tokens=config.max_calib_tokens, tasks=config.tasks)
    save_scores(result, config.out)
    print(f"{config.criterion}: {result['num_layers']} layers scored; least important first: "
          f"{', '.join(map(str, result['order'][:8]))}{' ...' if result['num_layers'] > 8 else ''}")
    print(f"wrote {config.out}")
    return 0
