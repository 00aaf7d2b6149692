"""The command line: one map from verb to the module that holds its config and run function.

Each command module exposes ``Config`` (a dataclass, see prunescope.config), ``HELP`` (one line) and
``run(config) -> int``; ``run`` calls the same library function a Python user would call.
"""
from __future__ import annotations

import argparse
import contextlib
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


# Output flags every verb takes, from one parent parser. A verb whose Config has a field of the same name
# receives the value (``progress`` already resolved against the terminal, see ``main``).
COMMON_FIELDS = ("quiet", "progress")


def common_parser() -> argparse.ArgumentParser:
    """The flags every verb shares: --quiet and --progress/--no-progress."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="print only warnings, errors and the result (no step or info lines, no progress bars)")
    group.add_argument("--progress", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                       help="progress bars (default: on when stderr is a terminal; a log or CI gets none)")
    return common


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
    common = common_parser()
    for verb in verbs or VERBS:
        module = _load(verb)
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP, parents=[common])
        add_arguments(p, module.Config, skip=COMMON_FIELDS)
    return parser


@contextlib.contextmanager
def output_flags(ns: argparse.Namespace):
    """--quiet: the terminal gets warnings and errors only; bars only when asked for, not quiet, and on a
    terminal (library bars left at tqdm's defaults follow the same rule). Undone on exit, for callers of
    ``main`` in a longer-lived process."""
    ns.quiet = bool(getattr(ns, "quiet", False))
    ns.progress = bool(getattr(ns, "progress", True)) and not ns.quiet and sys.stderr.isatty()
    handlers = [(h, h.level) for h in logging.getLogger().handlers]
    tqdm_disable = os.environ.get("TQDM_DISABLE")
    try:
        if ns.quiet:
            for handler, _ in handlers:
                handler.setLevel(logging.WARNING)
        if not ns.progress:
            os.environ["TQDM_DISABLE"] = "1"
        yield ns
    finally:
        for handler, level in handlers:
            handler.setLevel(level)
        if tqdm_disable is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_disable


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
        with output_flags(ns):
            config = from_args(module.Config, ns)
            return int(module.run(config) or 0)
    except UsageError as e:
        print(f"prunescope: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunescope: interrupted; finished work is kept and a rerun resumes from it", file=sys.stderr)
        return 130
