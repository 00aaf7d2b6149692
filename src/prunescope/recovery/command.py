"""``prunescope recover``: heal a pruned model with LoRA, partial or full finetuning."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from prunescope.config import field, require
from prunescope.models.checkpoint import CHOICES as CHECKPOINT_DTYPES, DTYPE_HELP
from prunescope.errors import UsageError
from prunescope.recovery.config import RecoverConfig

log = logging.getLogger(__name__)

HELP = "Recover a pruned model: LoRA / partial / full finetuning on self-generated responses or data, SFT or KD."


@dataclass
class Config(RecoverConfig):
    model: str | None = field(None, help="the pruned model: a folder written by prunescope prune, a hub id or a .gguf")
    teacher: str | None = field(None, help="the unpruned model that writes responses (--data self) and logits "
                                           "(--loss kd); default: base_model in the pruned folder's prunescope.json")
    out: str | None = field(None, help="output folder: adapter/, merged/, train_log.jsonl, self_generated.jsonl, "
                                       "checkpoint/")
    overwrite: bool = field(False, help="start over in a non-empty --out (the teacher-response cache is kept)")
    resume: bool = field(True, help="continue from --out/checkpoint when it exists")
    dtype: str = field("auto", choices=CHECKPOINT_DTYPES, help=DTYPE_HELP)
    device: str = field("auto", help="auto, cpu or cuda")

    def validate(self) -> None:
        super().validate()
        require(bool(self.model), "--model is required: the pruned model folder (or hub id) to recover")
        require(bool(self.out), "--out is required: the folder for the adapter, merged model and logs")


def _device(device: str) -> str:
    """Under ``accelerate launch`` each process loads onto its own GPU."""
    import torch
    if device == "auto" and torch.cuda.is_available():
        from accelerate import PartialState
        return str(PartialState().device)
    return device


def run(config: Config) -> int:
    from prunescope.models import load_model
    from prunescope.recovery import recover

    device = _device(config.device)
    if config.qlora:
        from prunescope.recovery.loading import load_4bit
        model, tokenizer = load_4bit(config.model)
    else:
        model, tokenizer = load_model(config.model, dtype=config.dtype, device=device)
    teacher = None
    if config.teacher:
        # A loader, not a loaded model: recover loads the teacher for its own phase and frees it before
        # the student trains (and never loads it when the response cache is complete).
        def teacher():
            return load_model(config.teacher, dtype=config.dtype if not config.qlora else "bfloat16", device=device)
        teacher.prunescope_source = config.teacher
    summary = recover(model, tokenizer, teacher=teacher, teacher_tokenizer=None,
                      config=RecoverConfig.from_config(config), out=config.out, overwrite=config.overwrite,
                      resume=config.resume, dtype=config.dtype)
    print(f"recovered in {summary['steps']} steps: {summary['tokens_seen']:,} tokens "
          f"({summary['response_tokens']:,} trained), {summary['wall_time']:.1f}s "
          f"({summary['tokens_per_second']:.0f} tokens/s), final loss {summary['final_loss']:.4f}; "
          f"merged model in {summary['paths']['merged']}")
    return 0
