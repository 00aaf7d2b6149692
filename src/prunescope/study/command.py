"""``prunescope study``: the whole experiment in one command, resumable, ending in a report."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunescope.config import field

HELP = ("Run the study: baseline, layer scores, pruned models per ratio, recovery, efficiency and a report "
        "(resumes an interrupted run).")


@dataclass
class Config:
    config: str = field("default", help="study YAML file, or a packaged config: default (CPU; about 11 minutes on 2 "
                                        "cores, measured end to end) "
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
    init: str | None = field(None, help="write an annotated copy of the config (--config, default: the default "
                                        "study) to this YAML file to edit, then exit without running")
    list_configs: bool = field(False, help="list the packaged configs with what each is for, then exit")


def packaged_configs() -> dict[str, str]:
    """Packaged config name -> its first comment line (what the config is for)."""
    from prunescope.study.config import CONFIG_DIR

    out = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        first = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        out[path.stem] = first
    return out


def write_init(spec: str, dest: str) -> Path:
    """Copy the study config ``spec`` (a packaged name or a file) to ``dest`` with its comments, after checking
    that it loads; refuses to overwrite an existing file. Returns the written path."""
    from prunescope.errors import UsageError
    from prunescope.io import write_text
    from prunescope.study.config import CONFIG_DIR, load_study_config

    target = Path(dest)
    if target.exists():
        raise UsageError(f"--init: {target} already exists; pick another file name or delete it first")
    source = CONFIG_DIR / f"{spec}.yaml" if (CONFIG_DIR / f"{spec}.yaml").is_file() else Path(spec)
    load_study_config(str(source))  # the copy is what the study would run: validate before writing
    write_text(target, source.read_text())
    return target


def run(config: Config) -> int:
    import logging
    import shutil

    if config.list_configs:
        for name, about in packaged_configs().items():
            print(f"{name:10s} {about}")
        return 0
    if config.init:
        path = write_init(config.config, config.init)
        print(f"wrote {path}: edit it, then run `prunescope study --config {path}`")
        return 0

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
