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
    calib: str | None = field(None, help="calibration corpus: wikitext-2 (SLEB's), a hub dataset id, or a JSONL file "
                                         "with {\"text\": ...} per line (default: five public-domain Shakespeare "
                                         "plays shipped in the package)")
    calib_samples: int | None = field(None, help="random calibration windows drawn from the corpus, seeded by "
                                                 "--seed (default: 64)")
    calib_seq_len: int | None = field(None, help="tokens per calibration window (default: 512, or the model's "
                                                 "context if shorter, with more windows)")
    max_calib_tokens: int | None = field(None, help="use at most this many calibration tokens")
    tasks: list[str] | None = field(None, help="tasks for greedy_task (comma-separated)")
    plus_rule: bool = field(True, help="taylor and ppl: keep the first 4 and last 2 layers out of the removal "
                                       "order (Shortened LLaMA's Taylor+/PPL rule); --no-plus-rule is the plain "
                                       "criterion")
    angular_tokens: str = field("last", choices=["last", "all"],
                                help="angular: compare hidden states at the last token (the paper) or average "
                                     "over all tokens (a deviation)")
    greedy_objective: str = field("generate", choices=["generate", "teacher_forced"],
                                  help="greedy_task: generation accuracy on calibration items (the paper) or the "
                                       "answer's teacher-forced probability (a fast proxy)")
    progress: bool = field(True, help="progress bars while scoring (the command line shows them only on a terminal)")
    seed: int = field(0, help="random seed (random criterion, calibration windows, task items)")
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
        check_calibration_flags(self)


def check_calibration_flags(config) -> None:
    """Shared by ``score`` and ``prune``: the calibration sizes must be usable."""
    if config.max_calib_tokens is not None and config.max_calib_tokens < 2:
        raise UsageError(f"--max-calib-tokens {config.max_calib_tokens} must be at least 2")
    if config.calib_samples is not None and config.calib_samples < 1:
        raise UsageError(f"--calib-samples {config.calib_samples} must be at least 1")
    if config.calib_seq_len is not None and config.calib_seq_len < 2:
        raise UsageError(f"--calib-seq-len {config.calib_seq_len} must be at least 2")


def scoring_kwargs(config) -> dict:
    """The score_layers keyword arguments a ``score`` or ``prune`` config carries."""
    return dict(calib=config.calib, seed=config.seed, max_calib_tokens=config.max_calib_tokens,
                calib_samples=config.calib_samples, calib_seq_len=config.calib_seq_len, tasks=config.tasks,
                plus_rule=config.plus_rule, angular_tokens=config.angular_tokens,
                greedy_objective=config.greedy_objective, progress=getattr(config, "progress", True))


def run(config: Config) -> int:
    """Load the model, score its layers and write the scores JSON."""
    from prunescope.criteria import save_scores, score_layers
    from prunescope.models import load_model

    model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    result = score_layers(model, tokenizer, config.criterion, num_layers=config.num_layers, **scoring_kwargs(config))
    save_scores(result, config.out)
    print(f"{config.criterion}: {result['num_layers']} layers scored; least important first: "
          f"{', '.join(map(str, result['order'][:8]))}{' ...' if result['num_layers'] > 8 else ''}")
    print(f"wrote {config.out}")
    return 0
