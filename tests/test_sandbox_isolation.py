"""The sandbox degrades layer by layer and says so: with each isolation layer missing (no root, root
without CAP_SYS_ADMIN, no Landlock, no seccomp) correct programs still pass, wrong ones still fail,
HumanEval's pass@1 on a known set of completions is unchanged, and a warning names what is missing.

Each mode runs in a fresh interpreter: capabilities are really dropped with ``setpriv`` where the
host allows it, and layers are turned off with ``PRUNESCOPE_SANDBOX_DISABLE`` otherwise.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Known-good and known-wrong completions of the first HumanEval problems: pass@1 is 6/8 whatever the host.
SCRIPT = r"""
import json, logging, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from prunescope.tasks import humaneval
from prunescope.sandbox import isolation
items = humaneval.make_items(6, 0, "eval")
outputs = [humaneval.problems()[i]["canonical_solution"] for i in range(6)]
items += items[:2]
outputs += ["    return None\n", "    return [x for x in numbers if x > threshold\n"]  # wrong, and a bracket error
checked = humaneval.check_all(items, outputs)
extra = humaneval.extra_metrics(items, outputs)
print(json.dumps({"pass": extra["pass@1"], "statuses": [c["status"] for c in checked], "isolation": isolation()}))
"""


def run_mode(prefix: list[str], disable: str = "") -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": SRC, "PRUNESCOPE_SANDBOX_DISABLE": disable}
    proc = subprocess.run([*prefix, sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def setpriv(*args: str) -> list[str]:
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("dropping capabilities needs root and setpriv")
    return ["setpriv", *args, "--"]


EXPECTED_STATUSES = ["passed"] * 6 + ["assertion", "bracket_syntax"]


@pytest.mark.parametrize("mode", ["host", "no root", "no CAP_SYS_ADMIN", "no Landlock", "no seccomp", "nothing"])
def test_every_isolation_mode_scores_humaneval_the_same(mode):
    prefix, disable = [], ""
    if mode == "no root":  # root's user id, but without any capability: as good as an ordinary user
        prefix = setpriv("--bounding-set=-all", "--inh-caps=-all")
    elif mode == "no CAP_SYS_ADMIN":  # a default Docker container
        prefix = setpriv("--bounding-set=-sys_admin", "--inh-caps=-sys_admin")
    elif mode == "no Landlock":
        disable = "landlock"
    elif mode == "no seccomp":
        disable = "seccomp"
    elif mode == "nothing":
        disable = "uid,netns,landlock,seccomp"
    result, stderr = run_mode(prefix, disable)
    assert result["pass"] == pytest.approx(6 / 8)
    assert result["statuses"] == EXPECTED_STATUSES
    missing = result["isolation"]["missing"]
    for layer in filter(None, disable.split(",")):
        assert layer in missing
    if mode == "no root":
        assert "uid" in missing
    if missing:
        assert "isolation layers missing on this host: " + ", ".join(missing) in stderr
    else:
        assert "missing" not in stderr
    assert result["isolation"]["summary"]


def test_unknown_layer_is_refused(monkeypatch):
    from prunescope.sandbox import layers
    monkeypatch.setenv("PRUNESCOPE_SANDBOX_DISABLE", "landlok")
    with pytest.raises(ValueError, match="landlok"):
        layers.disabled_layers()
