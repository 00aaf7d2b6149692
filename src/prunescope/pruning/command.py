"""``prunescope prune``: cut decoder layers (listed, or chosen by a criterion or saved scores) and save
a checkpoint that loads with plain ``transformers``."""
from __future__ import annotations

import dataclasses

from prunescope.config import field
from prunescope.models.checkpoint import CHOICES as CHECKPOINT_DTYPES, DTYPE_HELP
from prunescope.criteria import CRITERIA
from prunescope.errors import UsageError

HELP = ("Remove decoder layers (--layers, --criterion/--num-layers, --ratio or --scores) and save a checkpoint "
        "loadable by plain transformers.")
DEFAULT_CRITERION = "block_influence"


@dataclasses.dataclass
class Config:
    model: str = field("smollm2-135m", help="hub id, model folder, .gguf file or smollm2-135m")
    out: str | None = field(None, help="output folder for the pruned checkpoint")
    layers: str | None = field(None, help="0-based layers to remove, e.g. 3,5,7 or 20-23")
    criterion: str | None = field(None, help=f"criterion choosing the layers (default with --num-layers/--ratio: "
                                             f"{DEFAULT_CRITERION}): {', '.join(CRITERIA.names())}")
    num_layers: int | None = field(None, help="how many layers to remove")
    ratio: float | None = field(None, help="fraction of the layers to remove, strictly between 0 and 1")
    scores: str | None = field(None, help="reuse a scores JSON from `prunescope score` instead of scoring again")
    calib: str | None = field(None, help="calibration corpus for the criterion: wikitext-2, a hub dataset id or a "
                                         "JSONL file (default: the shipped public-domain corpus)")
    calib_samples: int | None = field(None, help="random calibration windows (default: 64)")
    calib_seq_len: int | None = field(None, help="tokens per calibration window (default: 512)")
    max_calib_tokens: int | None = field(None, help="use at most this many calibration tokens")
    tasks: list[str] | None = field(None, help="tasks for greedy_task (comma-separated)")
    plus_rule: bool = field(True, help="taylor and ppl: never cut the first 4 and last 2 layers unless more are "
                                       "asked for (Shortened LLaMA's rule)")
    angular_tokens: str = field("last", choices=["last", "all"], help="angular: last token (the paper) or all tokens")
    greedy_objective: str = field("generate", choices=["generate", "teacher_forced"],
                                  help="greedy_task: generation accuracy (the paper) or teacher-forced proxy")
    progress: bool = field(True, help="progress bars while scoring (the command line shows them only on a terminal)")
    seed: int = field(0, help="random seed for the criterion (calibration windows, random order, task items)")
    dtype: str = field("auto", choices=CHECKPOINT_DTYPES, help=DTYPE_HELP)
    device: str = field("auto", help="auto, cpu or cuda")
    overwrite: bool = field(False, help="replace a non-empty --out folder")

    def __post_init__(self):
        from prunescope.io import check_out_dir
        if not self.out:
            raise UsageError("--out is required (the folder for the pruned checkpoint)")
        if self.layers is not None:
            others = [f for f, v in (("--criterion", self.criterion), ("--num-layers", self.num_layers),
                                     ("--ratio", self.ratio), ("--scores", self.scores)) if v is not None]
            if others:
                raise UsageError(f"--layers cannot be combined with {', '.join(others)}; give the layers "
                                 f"explicitly or let a criterion choose them")
        else:
            if self.num_layers is not None and self.ratio is not None:
                raise UsageError("--num-layers and --ratio both say how many layers to remove; give one")
            if self.scores is not None and self.criterion is not None:
                raise UsageError("--scores already names its criterion; drop --criterion or drop --scores")
            if self.num_layers is None and self.ratio is None:
                raise UsageError("say which layers to remove: --layers 3,5,7, or --num-layers K / --ratio R "
                                 "(with --criterion C or --scores FILE)")
        if self.num_layers is not None and self.num_layers < 1:
            raise UsageError(f"--num-layers {self.num_layers} must be at least 1")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise UsageError(f"--ratio {self.ratio} must be strictly between 0 and 1 (a fraction of the layers)")
        if self.criterion is not None:
            CRITERIA.get(self.criterion)
        from prunescope.criteria.command import check_calibration_flags
        check_calibration_flags(self)
        check_out_dir(self.out, overwrite=self.overwrite)


SIZED = ("angular", "sleb", "greedy_task")  # criteria whose scores depend on how many layers are cut


def check_scores_fit(scores: dict, total: int, k: int, *, source: str, model: str) -> None:
    """Refuse a scores file that cannot choose ``k`` of this model's ``total`` layers: another layer
    count, an angular file scored for another block size, or an iterative file with fewer greedy
    removals than asked for (its tail is not a greedy order)."""
    fix = f"score again with `prunescope score --model {model} --criterion {scores.get('criterion')} --num-layers {k}`"
    if scores["num_layers"] != total:
        raise UsageError(f"{source} is for a model with {scores['num_layers']} layers, but {model} has {total}; "
                         f"score this model with `prunescope score`")
    config = scores.get("config") or {}
    criterion = scores.get("criterion")
    if criterion == "angular":
        size = config.get("block_size", 1)
        if size != k:
            raise UsageError(f"{source} was scored by angular for a block of {size} layers, not {k}; {fix}")
    elif criterion in ("sleb", "greedy_task"):
        steps = config.get("removals", len(config.get("steps", [])))
        if steps < k:
            raise UsageError(f"{source} holds {steps} greedy {criterion} removals, fewer than the {k} asked for; "
                             f"{fix}")


def choose_layers(model, tokenizer, config: Config) -> tuple[list[int], str | None, dict | None]:
    """The 0-based layers to remove, the criterion that chose them and its scores (None for --layers)."""
    from prunescope.criteria import load_scores, score_layers
    from prunescope.models import num_layers
    from prunescope.pruning import count_for_ratio, layers_from_order, parse_layer_list, validate_layers

    total = num_layers(model)
    if config.layers is not None:
        return validate_layers(parse_layer_list(config.layers), total), None, None
    if config.ratio is not None:
        k = count_for_ratio(config.ratio, total)
        flag = "--ratio"
    else:
        k = config.num_layers
        flag = "--num-layers"
        if k >= total:
            raise UsageError(f"--num-layers {k} must be less than the model's {total} layers")
    if config.scores is not None:
        scores = load_scores(config.scores)
        check_scores_fit(scores, total, k, source=f"--scores {config.scores}", model=config.model)
        criterion = scores["criterion"]
    else:
        from prunescope.criteria.command import scoring_kwargs
        criterion = config.criterion or DEFAULT_CRITERION
        scores = score_layers(model, tokenizer, criterion, **scoring_kwargs(config),
                              num_layers=k if criterion in SIZED else None)
    return layers_from_order(scores["order"], k, total, flag=flag), criterion, scores


def run(config: Config) -> int:
    """Load the model, choose the layers, cut them and save the checkpoint; print a short report."""
    from prunescope.models import load_model, num_layers
    from prunescope.pruning import drop_layers, save_pruned

    model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    removed, criterion, scores = choose_layers(model, tokenizer, config)
    before_layers = num_layers(model)
    before_params = sum(p.numel() for p in model.parameters())
    drop_layers(model, layers=removed)
    after_params = sum(p.numel() for p in model.parameters())
    save_pruned(model, tokenizer, config.out, base=config.model, removed=removed, num_layers_before=before_layers,
                criterion=criterion, scores=scores, overwrite=config.overwrite, dtype=config.dtype)
    print(f"removed layers (0-based): {', '.join(map(str, removed))}"
          f"{f' (chosen by {criterion})' if criterion else ''}")
    print(f"layers: {before_layers} -> {num_layers(model)}")
    print(f"parameters: {before_params:,} -> {after_params:,} ({100 * (1 - after_params / before_params):.1f}% fewer)")
    print(f"saved to {config.out}")
    return 0
