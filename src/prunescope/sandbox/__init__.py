"""Running model-written code: used by tasks that execute programs (HumanEval) and by recovery's
filter of self-generated data. See ``runner`` for what a program may do and how it is judged, and
``layers`` for the layers that confine it."""
from prunescope.sandbox.layers import LAYERS, landlock_abi
from prunescope.sandbox.runner import (STATUSES, SandboxResult, classify_failure, isolation, run_program,
                                       run_programs)

__all__ = ["LAYERS", "STATUSES", "SandboxResult", "classify_failure", "isolation", "landlock_abi", "run_program",
           "run_programs"]
