"""Mutation testing with mutmut, in a scratch copy of the checkout (never in CI: too slow on small machines).

    python scripts/mutation.py                      # the core packages configured in pyproject [tool.mutmut]
    python scripts/mutation.py --only src/prunescope/pruning/selection.py --tests tests/test_references.py

The copy lives in ``.mutation/`` (git-ignored); mutmut's own commands (``mutmut results``, ``mutmut show
NAME``) work inside it afterwards. Prints the score: killed / (all mutants that ran), survivors listed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", help="source files to mutate (default: pyproject's only_mutate)")
    ap.add_argument("--tests", nargs="+", help="test files or node ids to run (default: tests/)")
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="parallel mutants")
    ap.add_argument("--workdir", default=str(ROOT / ".mutation"), help="scratch copy (default: .mutation/)")
    args = ap.parse_args(argv)

    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (work / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, work / rel)
    pyproject = work / "pyproject.toml"
    text = pyproject.read_text()
    if args.only:
        text = re.sub(r"(?m)^only_mutate = .*$", "only_mutate = " + _toml_list(args.only), text)
    if args.tests:
        text = re.sub(r"(?m)^pytest_add_cli_args_test_selection = .*$",
                      "pytest_add_cli_args_test_selection = " + _toml_list(args.tests), text)
    pyproject.write_text(text)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": "src"}  # relative: inside mutants/, so the mutated copy is what gets imported
    mutmut = [sys.executable, "-m", "mutmut"]
    with open(work / "mutmut-run.log", "w") as log:  # the progress spinner is not worth a terminal
        rc = subprocess.run(mutmut + ["run", "--max-children", str(args.jobs)], cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    subprocess.run(mutmut + ["export-cicd-stats"], cwd=work, env=env, capture_output=True)
    stats_file = work / "mutants" / "mutmut-cicd-stats.json"
    if not stats_file.is_file():
        print(f"mutmut did not finish (exit {rc}); see {work}", file=sys.stderr)
        return 1
    stats = json.loads(stats_file.read_text())
    # Mutants no test reaches ("no_tests") count as survivors: an unexecuted line is an untested one.
    killed = stats["killed"] + stats.get("timeout", 0)
    ran = stats["total"] - stats.get("skipped", 0)
    score = killed / ran if ran else float("nan")
    print(json.dumps(stats))
    print(f"mutation score: {score:.1%} ({killed} of {ran} mutants killed; {stats.get('no_tests', 0)} not reached "
          "by any selected test count as survivors)")
    survivors = subprocess.run(mutmut + ["results"], cwd=work, env=env, capture_output=True, text=True).stdout
    print("survivors (mutmut show NAME in .mutation/ for the diff):\n" + survivors)
    return 0


if __name__ == "__main__":
    sys.exit(main())
