"""``compare_runs``: runs side by side on the items they share — two models, two configs, a cell before and after
recovery, the same study on two versions of prunescope.

A run is a study run folder or an eval folder (prunescope.compare.runs). Every later run is compared with the
first: per shared (cell, task) the accuracy difference with a paired-bootstrap 95% interval over the shared
items, and per shared pruned cell the difference in chance-adjusted retention when both runs have a baseline.
"""
from __future__ import annotations

import logging
import string
from pathlib import Path

from prunescope import stats
from prunescope.errors import UsageError

log = logging.getLogger("prunescope.compare")
MATCH = ("content", "id")


def default_out(paths: list[str | Path]) -> Path:
    """``compare-<A>-vs-<B>[-vs-<C>…]`` in the current folder, from the runs' folder names."""
    from prunescope.compare.runs import run_names

    folders = [Path(p).parent if Path(p).is_file() else Path(p) for p in paths]
    return Path("compare-" + "-vs-".join(run_names(folders)))


def compare_runs(paths: list[str | Path], *, out: str | Path | None = None, seed: int = 0,
                 resamples: int = stats.RESAMPLES, match: str = "content", unpaired: bool = False,
                 overwrite: bool = False) -> dict:
    """Compare each of ``paths[1:]`` with ``paths[0]``; write compare.md, compare.html and compare.png into
    ``out`` (default: ``default_out(paths)``), atomically. Returns ``{runs, comparisons, …, paths}``.

    ``match``: ``content`` pairs items with the same id and the same recorded prompt/choices/gold; ``id`` by id
    alone. ``unpaired`` resamples each run's items independently (for runs on different items). ``out`` may be
    replaced when it holds an earlier comparison; any other non-empty folder needs ``overwrite``.
    """
    from prunescope.compare.analysis import compare_pair
    from prunescope.compare.render import FIGURE, document, figure
    from prunescope.compare.runs import load_run, run_names
    from prunescope.io import atomic_dir, check_out_dir, write_text

    if len(paths) < 2:
        raise UsageError("compare needs at least two runs: prunescope compare RUN_A RUN_B [RUN_C ...]")
    if len(paths) > len(string.ascii_uppercase):
        raise UsageError(f"compare takes at most {len(string.ascii_uppercase)} runs, got {len(paths)}")
    if match not in MATCH:
        raise UsageError(f"--match {match!r}: use content or id")
    if resamples < 100:
        raise UsageError(f"--resamples {resamples} is too few for a 95% interval; use at least 100 (default "
                         f"{stats.RESAMPLES})")
    runs = [load_run(p) for p in paths]
    letters = string.ascii_uppercase[:len(runs)]
    out = Path(out) if out is not None else default_out(paths)
    if not (out / "compare.md").is_file():  # an earlier comparison is replaced; anything else is protected
        check_out_dir(out, overwrite=overwrite)
    comparisons = []
    for i in range(1, len(runs)):
        comp = compare_pair(runs[0], runs[i], names=(letters[0], letters[i]), seed=seed, resamples=resamples,
                            match=match, unpaired=unpaired)
        if comp["content_differs"]:
            n = sum(k for *_, k in comp["content_differs"])
            cell, task, _ = comp["content_differs"][0]
            log.warning(f"warning: {n} item(s) in {len(comp['content_differs'])} (cell, task) share an id but differ "
                        f"in prompt, choices or gold between {letters[0]} and {letters[i]} (e.g. {cell} / {task}); "
                        f"left out — pass --match id to pair them by id alone")
        comparisons.append(comp)
    names = run_names([r.path for r in runs])
    result = {"runs": [{"letter": letters[i], "name": names[i], "path": str(r.path), "kind": r.kind}
                       for i, r in enumerate(runs)],
              "comparisons": comparisons, "seed": seed, "resamples": resamples, "match": match, "unpaired": unpaired}
    with atomic_dir(out, overwrite=True) as tmp:
        figure(result, tmp / FIGURE)
        doc = document(result)
        write_text(tmp / "compare.md", doc.markdown())
        write_text(tmp / "compare.html", doc.html(tmp))
    result["paths"] = {"markdown": out / "compare.md", "html": out / "compare.html", "figure": out / FIGURE}
    return result
