"""Every verb takes --quiet and --progress/--no-progress from one shared parser, and --quiet silences info lines."""
import io
import logging

import pytest

from common import write_tiny_gguf
from prunescope.cli import VERBS, build_parser, main


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_lists_quiet_and_no_progress(verb, capsys):
    with pytest.raises(SystemExit):
        build_parser([verb]).parse_args([verb, "--help"])
    text = capsys.readouterr().out
    assert "--quiet" in text and "--no-progress" in text and "--progress" in text


@pytest.mark.parametrize("verb", ["score", "prune", "eval", "study"])
def test_verbs_with_bars_receive_the_resolved_progress_flag(verb):
    """A Config with a ``progress`` field gets it; asked-for bars are dropped when stderr is no terminal (pytest)."""
    from prunescope.cli import _load, output_flags
    from prunescope.config import from_args

    argv = {"score": ["--out", "s.json", "--criterion", "reverse"], "prune": ["--out", "o", "--layers", "1"], "eval": ["--tasks", "brackets_mc"],
            "study": []}[verb]
    for flags in ([], ["--progress"], ["--no-progress"], ["--quiet"]):
        ns = build_parser([verb]).parse_args([verb, *argv, *flags])
        with output_flags(ns):
            config = from_args(_load(verb).Config, ns)
        assert config.progress is False


def test_quiet_silences_info_lines_but_not_the_result(tmp_path, capsys):
    gguf = write_tiny_gguf(tmp_path / "tiny.gguf")
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        outputs = {}
        for name, flags in (("loud", []), ("quiet", ["--quiet"])):
            stream.seek(0)
            stream.truncate()
            code = main(["prune", "--model", str(gguf), "--layers", "1", "--out", str(tmp_path / name), *flags])
            assert code == 0
            outputs[name] = (stream.getvalue(), capsys.readouterr().out)
        assert handler.level == logging.INFO  # restored after the command
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    assert "dequantizing tiny.gguf" in outputs["loud"][0]
    assert outputs["quiet"][0] == ""
    assert "saved to" in outputs["quiet"][1] and "saved to" in outputs["loud"][1]
