"""``prunescope study``: the whole experiment in one command, resumable, ending in a report."""
from __future__ import annotations

from dataclasses import dataclass

from prunescope.config import field

HELP = ("Run the study: baseline, layer scores, pruned models per ratio, recovery, efficiency and a report "
        "(resumes an interrupted run).")


@dataclass
class Config:
    config: str = field("default", help="study YAML file, or a packaged config: default (CPU; about 14 minutes on 2 idle "
                                        "cores, estimated from measured per-item costs) "
                                        "or paper (8B model on a GPU)")
    model: str | None = field(None, help="override the config's model (hub id, folder, .gguf or smollm2-135m)")
    tasks: list[str] | None = field(None, help="override the config's tasks (comma-separated; see `prunescope tasks`)")
    criteria: list[str] | None = field(None, help="override the config's criteria (comma-separated)")
    ratios: list[float] | None = field(None, help="override the config's fractions of layers to remove (e.g. 0.1,0.25)")
    limit: int | None = field(None, help="override the config's items per task")
    out: str | None = field(None, help="run folder (default runs/<name from the config>)")
    device: str | None = field(None, help="override the config's device: auto, cpu or cuda")
    overwrite: bool = field(False, help="delete what the run folder holds and start over instead of resuming")
    progress: bool = field(True, help="progress bars while evaluating (shown only on a terminal; a log or CI gets "
                                      "one line per step)")
    quiet: bool = field(False, help="print only errors and the final report path")
    force: bool = field(False, help="recompute finished steps whose settings changed (and the steps after them) "
                                    "instead of refusing")


def run(config: Config) -> int:
    import logging
    import shutil

    from prunescope.study.config import load_study_config
    from prunescope.study.runner import run_study

    study = load_study_config(config.config, model=config.model, tasks=config.tasks, criteria=config.criteria,
                              ratios=config.ratios, limit=config.limit, out=config.out, device=config.device)
    if config.overwrite and study.out_dir.exists():
        shutil.rmtree(study.out_dir)
    logging.getLogger("prunescope.study").setLevel(logging.INFO)  # study.log in the run folder gets every step
    if config.quiet:
        for handler in logging.getLogger().handlers:  # the terminal gets warnings only
            handler.setLevel(logging.WARNING)
    out = run_study(study, force=config.force, progress=None if config.progress and not config.quiet else False)
    if not config.quiet:
        from prunescope.report.summary import summary_table
        print(summary_table(out))
    print(f"report: {out / 'report.md'}\n        {out / 'report.html'}")
    return 0
