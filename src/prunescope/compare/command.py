"""``prunescope compare RUN_A RUN_B [RUN_C ...]``: runs side by side on the items they share."""
from __future__ import annotations

from dataclasses import dataclass

from prunescope.config import field, require
from prunescope.stats import RESAMPLES

HELP = ("Compare study runs or eval folders on the items they share: paired differences with 95% intervals per "
        "cell and task; writes compare.md, compare.html and a figure.")


@dataclass
class Config:
    runs: list[str] = field(default_factory=list, flag="runs",
                            help="two or more study run folders (runs/NAME) or eval folders (metrics.json + "
                                 "samples.jsonl); each later run is compared with the first")
    out: str | None = field(None, help="folder for compare.md, compare.html and compare.png (default: "
                                       "./compare-<A>-vs-<B>)")
    seed: int = field(0, help="seed of the bootstrap resamples")
    resamples: int = field(RESAMPLES, help="bootstrap resamples per interval")
    match: str = field("content", choices=["content", "id"],
                       help="pair items with the same id and the same prompt, choices and gold (content), or by id "
                            "alone (id: e.g. two models whose chat templates render prompts differently)")
    unpaired: bool = field(False, help="resample each run's items independently, for runs evaluated on different "
                                       "items (e.g. different seeds); intervals are wider")
    overwrite: bool = field(False, help="replace a non-empty --out folder that is not an earlier comparison")
    quiet: bool = field(False, help="print only warnings, errors and the output path")

    def __post_init__(self) -> None:
        require(len(self.runs) >= 2, f"compare needs at least two runs, got {len(self.runs)}: "
                                     f"prunescope compare RUN_A RUN_B [RUN_C ...]")
        require(self.resamples >= 100, f"--resamples {self.resamples} is too few for a 95% interval; use at least "
                                       f"100 (default {RESAMPLES})")


def run(config: Config) -> int:
    from prunescope.compare import compare_runs
    from prunescope.compare.render import terminal_table

    result = compare_runs(config.runs, out=config.out, seed=config.seed, resamples=config.resamples,
                          match=config.match, unpaired=config.unpaired, overwrite=config.overwrite)
    if not config.quiet:
        print(terminal_table(result))
    paths = result["paths"]
    print(f"compare: {paths['markdown']}\n         {paths['html']}")
    return 0
