"""compute/timeline.py: a phase's first end, appended as a JSON line, only where asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compute import timeline


def test_each_phase_is_marked_once_and_only_when_a_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(timeline, "_marked", set())
    monkeypatch.delenv("STOCKPIPE_TIMELINE", raising=False)
    timeline.mark("unseen")  # no file named: nothing written, and not counted as marked
    path = tmp_path / "timeline.jsonl"
    monkeypatch.setenv("STOCKPIPE_TIMELINE", str(path))
    for phase in ("imports", "ray", "imports", "unseen"):
        timeline.mark(phase)
    marks = [json.loads(line) for line in path.read_text().splitlines()]
    assert [m["phase"] for m in marks] == ["imports", "ray", "unseen"]
    assert marks[0]["at"] <= marks[1]["at"] <= marks[2]["at"]
