"""Study step identities, the steps.json manifest and the progress estimate (study/steps.py), against
hashes, diffs and times worked out here."""
from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest

from prunescope.study.steps import (Manifest, Step, diff_keys, estimate_seconds, eta_text, plan_text,
                                    step_kind)


def _step(key="cells/a-r0.25", inputs=None, outputs=(), **kw):
    return Step(key, key, {"seed": 1} if inputs is None else inputs, list(outputs), lambda: None, **kw)


def test_identity_is_the_sha256_of_the_sorted_compact_inputs():
    inputs = {"b": [1, 2], "a": {"y": 0.5, "x": "m"}}
    expected = hashlib.sha256(b'{"a":{"x":"m","y":0.5},"b":[1,2]}').hexdigest()[:16]
    assert _step(inputs=inputs).identity == expected
    assert _step(inputs={"a": {"x": "m", "y": 0.5}, "b": [1, 2]}).identity == expected  # key order is not identity
    assert _step(inputs={"a": {"x": "m", "y": 0.25}, "b": [1, 2]}).identity != expected
    # values json cannot write are identified by their str()
    from pathlib import PurePosixPath
    assert _step(inputs={"p": PurePosixPath("/x/y")}).identity == hashlib.sha256(b'{"p":"/x/y"}').hexdigest()[:16]


def test_finished_needs_the_first_output_and_extra_done(tmp_path):
    mark, other = tmp_path / "metrics.json", tmp_path / "samples.jsonl"
    step = _step(outputs=[mark, other])
    assert not step.finished()
    other.write_text("x")
    assert not step.finished()  # only the first output marks a finished step
    mark.write_text("{}")
    assert step.finished()
    other.unlink()
    assert step.finished()
    assert not _step(outputs=[mark], extra_done=lambda: False).finished()


def test_clear_deletes_files_and_folders_and_tolerates_missing(tmp_path):
    folder, file, missing = tmp_path / "ckpt", tmp_path / "scores.json", tmp_path / "nothing"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "w.bin").write_text("w")
    file.write_text("{}")
    keep = tmp_path / "keep.txt"
    keep.write_text("k")
    _step(outputs=[file, folder, missing]).clear()
    assert not file.exists() and not folder.exists() and keep.exists()


def test_manifest_done_stale_and_record(tmp_path):
    mark = tmp_path / "m.json"
    step = _step(inputs={"seed": 1}, outputs=[mark])
    m = Manifest(tmp_path)
    assert m.entries == {} and not m.done(step) and not m.stale(step)  # nothing written yet
    mark.write_text("{}")
    assert not m.done(step) and m.stale(step)  # finished, but under no recorded identity
    m.record(step)
    assert json.loads((tmp_path / "steps.json").read_text()) == {
        step.key: {"identity": step.identity, "inputs": {"seed": 1}}}
    again = Manifest(tmp_path)  # read back from disk
    assert again.done(step) and not again.stale(step)
    changed = _step(inputs={"seed": 2}, outputs=[mark])
    assert not again.done(changed) and again.stale(changed)
    assert again.reasons(changed) == ["seed"]
    assert again.reasons(_step(key="other", outputs=[mark])) == ["no identity recorded"]
    mark.unlink()
    assert not again.done(step) and not again.stale(step)  # unfinished is neither done nor stale


def test_diff_keys_names_dotted_paths_and_changed_dependencies():
    old = {"model": "m", "recovery": {"lr": 1e-4, "steps": 10}, "tasks": ["a"],
           "after": {"scores/x": "id1", "baseline": "id2"}}
    new = {"model": "m", "recovery": {"lr": 2e-4, "steps": 10, "rank": 8}, "tasks": ["a", "b"],
           "after": {"scores/x": "id9", "baseline": "id2", "cells/new": "id3"}}
    assert diff_keys(old, new) == ["after cells/new", "after scores/x", "recovery.lr", "recovery.rank", "tasks"]
    assert diff_keys(old, old) == []
    assert diff_keys({"after": None}, {"after": {"s": "1"}}) == ["after s"]
    assert diff_keys({"after": {"s": "1"}}, {}) == ["after s"]
    # "after" deeper down is an ordinary key
    assert diff_keys({"x": {"after": {"s": 1}}}, {"x": {"after": {"s": 2}}}) == ["x.after.s"]
    assert diff_keys(1, 2) == [""] and diff_keys({"a": 1}, 5) == [""]
    assert diff_keys({1: "a", "b": 2}, {1: "z", "b": 2}) == ["1"]  # keys that are not strings sort as str


@pytest.mark.parametrize("key, kind", [
    ("baseline", "eval"), ("cells/angular-r0.25", "eval"), ("cells/angular-r0.25/recovery-lora", "recovery"),
    ("scores/angular.json", "scores"), ("efficiency/base", "efficiency"), ("ablation/layer-003", "ablation"),
    ("baseline/recovery-x", "recovery"),
])
def test_step_kind(key, kind):
    assert step_kind(key) == kind


def test_plan_text_counts_kinds_in_order_of_appearance():
    steps = [_step(k) for k in ("scores/a.json", "cells/a-r0.1", "cells/a-r0.2", "baseline", "cells/a-r0.1/recovery-l")]
    assert plan_text(steps) == "1 scores, 3 eval, 1 recovery"
    assert plan_text([]) == "nothing left to do"


def test_estimate_by_kind_by_item_and_overall():
    timings = {"baseline": {"seconds": 30.0, "work": 300}, "cells/b-r0.1": {"seconds": "10", "work": 100},
               "scores/y.json": {"seconds": 5.0}}
    todo = [_step("cells/c-r0.5"), _step("ablation/layer-001", work=50), _step("efficiency/base"),
            _step("scores/z.json"), _step("other/x")]
    # eval measured: (30 + 10) / 2 = 20; ablation not measured, 50 items at (30 + 10) / (300 + 100) = 0.1 s;
    # efficiency not measured: its prior, 0.04 of the mean evaluation = 0.8; scores: 5; a kind with neither
    # a measurement, a prior nor items: mean of all measured (45 / 3 = 15)
    assert estimate_seconds(todo, timings) == pytest.approx(20 + 5 + 0.8 + 5 + 15)
    assert estimate_seconds([], timings) == 0
    # without any item counts, an unmeasured kind with items falls back to the overall mean
    assert estimate_seconds([_step("ablation/l", work=50)], {"scores/y.json": {"seconds": 6.0}}) == pytest.approx(6.0)


def test_eta_text_minutes_seconds_and_clock(monkeypatch):
    from prunescope.study import steps as mod

    class _Now(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return dt.datetime(2026, 1, 2, 10, 58, 30)

    monkeypatch.setattr(mod._dt, "datetime", _Now)
    assert eta_text([_step("cells/a")], {}) == ", estimate after the first step"
    # 2 evals at 65.5 s -> 131 s = 2m11s, done at 10:58:30 + 2:11 = 11:00:41
    assert eta_text([_step("cells/a"), _step("cells/b")], {"baseline": {"seconds": 65.5}}) == \
        ", about 2m11s left, done about 11:00"
    assert eta_text([_step("cells/a")], {"baseline": {"seconds": 5.0}}) == ", about 0m05s left, done about 10:58"


def test_diff_keys_more_edges(tmp_path):
    assert diff_keys(1, 1) == [] and diff_keys({"a": {"b": 1}}, {"a": {"b": 1}}) == []
    # keys sorted before "after" still count; the dotted name keeps trailing letters
    assert diff_keys({"a": 1, "after": {"s": "1"}, "boX": 1}, {"a": 2, "after": {"s": "2"}, "boX": 2}) == \
        ["a", "after s", "boX"]
    # an entry recorded without inputs: every input is new
    mark = tmp_path / "m.json"
    mark.write_text("{}")
    (tmp_path / "steps.json").write_text(json.dumps({"k": {"identity": "old"}}))
    step = _step(key="k", inputs={"seed": 1, "tasks": ["a"]}, outputs=[mark])
    assert Manifest(tmp_path).reasons(step) == ["seed", "tasks"]
