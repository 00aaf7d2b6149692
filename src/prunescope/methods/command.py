"""``prunescope compress``: compress a model with a registered method and save a checkpoint."""
from __future__ import annotations

import dataclasses

from prunescope.config import field
from prunescope.models.checkpoint import CHOICES as CHECKPOINT_DTYPES, DTYPE_HELP
from prunescope.errors import UsageError
from prunescope.methods.base import METHODS

HELP = ("Compress a model (depth, replace, merge, width, quant, speculative) and save a checkpoint loadable by "
        "plain transformers.")


@dataclasses.dataclass
class Config:
    model: str = field("smollm2-135m", help="hub id, model folder, .gguf file or smollm2-135m")
    method: str = field("depth", help=f"compression method: {', '.join(METHODS.names())}")
    ratio: float | None = field(None, help="budget as a fraction of the decoder layers (quant ignores it)")
    out: str | None = field(None, help="output folder for the compressed checkpoint")
    settings: str | None = field(None, help="method settings as key=value,key=value (e.g. criterion=angular)")
    calib: str | None = field(None, help="calibration JSONL file or hub dataset id")
    seed: int = field(0, help="random seed")
    dtype: str = field("auto", choices=CHECKPOINT_DTYPES, help=DTYPE_HELP)
    device: str = field("auto", help="auto, cpu or cuda")
    overwrite: bool = field(False, help="replace a non-empty --out folder")

    def __post_init__(self):
        from prunescope.io import check_out_dir
        METHODS.get(self.method)
        if not self.out:
            raise UsageError("--out is required (the folder for the compressed checkpoint)")
        if self.ratio is not None and not 0.0 < self.ratio < 1.0:
            raise UsageError(f"--ratio {self.ratio} must be strictly between 0 and 1 (a fraction of the layers)")
        if self.ratio is None and self.method != "quant":
            raise UsageError(f"method {self.method} needs --ratio (e.g. --ratio 0.25)")
        from prunescope.methods.base import parse_settings, resolve_settings
        resolve_settings(self.method, parse_settings(self.settings))
        check_out_dir(self.out, overwrite=self.overwrite)


def run(config: Config) -> int:
    """Load the model, compress it, save it and print what was done."""
    from prunescope.methods import compress, parse_settings, save_compressed
    from prunescope.methods.save import describe
    from prunescope.models import load_model

    model, tokenizer = load_model(config.model, dtype=config.dtype, device=config.device)
    result = compress(model, tokenizer, config.method, ratio=config.ratio, calib=config.calib,
                      settings=parse_settings(config.settings), seed=config.seed)
    save_compressed(result, tokenizer, config.out, base=config.model, overwrite=config.overwrite, dtype=config.dtype)
    r = result.record
    print(f"{config.method}: {describe(r)}")
    print(f"parameters: {r['parameters_before']:,} -> {r['parameters_after']:,}")
    print(f"saved to {config.out}")
    return 0
