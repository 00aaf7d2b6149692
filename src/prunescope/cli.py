"""The command line: one map from verb to the module that holds its config and run function.

Each command module exposes ``Config`` (a dataclass, see prunescope.config), ``HELP`` (one line) and
``run(config) -> int``; ``run`` calls the same library function a Python user would call.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from prunescope.errors import UsageError

VERBS: dict[str, str] = {
    "score": "prunescope.criteria.command",
    "prune": "prunescope.pruning.command",
    "compress": "prunescope.methods.command",
    "eval": "prunescope.eval.command",
    "tasks": "prunescope.tasks.command",
    "recover": "prunescope.recovery.command",
    "study": "prunescope.study.command",
    "bench": "prunescope.study.bench_command",
    "report": "prunescope.report.command",
    "compare": "prunescope.compare.command",
}


def _load(verb: str):
    return importlib.import_module(VERBS[verb])


def build_parser(verbs: list[str] | None = None) -> argparse.ArgumentParser:
    """The argparse parser with one sub-command per verb."""
    from prunescope.config import add_arguments

    parser = argparse.ArgumentParser(
        prog="prunescope",
        description="What does removing these layers cost? Score, prune, recover and evaluate depth-pruned LLMs. "
        "Layer indices are 0-based everywhere.")
    from prunescope import __version__
    parser.add_argument("--version", action="version", version=f"prunescope {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in verbs or VERBS:
        module = _load(verb)
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        add_arguments(p, module.Config)
    return parser


class _Parser(argparse.ArgumentParser):
    pass


# Library messages a user cannot act on: torchao's optional CUDA kernels and Triton absent on a CPU build,
# and torch's deprecation notes for torchao's pytree registrations.
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def quiet_libraries() -> None:
    """Silence warnings from libraries that say nothing a prunescope user can act on."""
    import warnings

    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``prunescope`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet_libraries()
    verb = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser([verb] if verb in VERBS else None)
        ns = parser.parse_args(argv)
        if ns.verb is None:
            parser.print_help()
            return 2
        from prunescope.config import from_args
        module = _load(ns.verb)
        config = from_args(module.Config, ns)
        return int(module.run(config) or 0)
    except UsageError as e:
        print(f"prunescope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunescope: interrupted; finished work is kept and a rerun resumes from it", file=sys.stderr)
        return 130
