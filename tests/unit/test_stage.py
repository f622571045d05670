"""The stage protocol with a small stage of its own (no Ray): build, reuse, carry-over of unchanged
parts, --force, and a failed build that leaves the published output as it was."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from compute import publish
from compute.lock import LOCK_FILE
from compute.publish import Manifest, Part, Staging
from compute.settings import Settings
from compute.stage import Built, Plan, Stage, StageResult, run, unchanged_parts


class WordCount(StageResult):
    files: int
    words: int
    seconds: float = 0.0


@dataclass
class WordPlan(Plan):
    inputs: dict[str, str]  # part name -> its text's digest
    carried: dict[str, Part]


class CountWords(Stage[WordPlan, WordCount]):
    """One part per text file in <source>: its word count."""

    name = "count"
    result_type = WordCount
    depends_on = "the texts"
    uses_ray = False

    def outputs(self) -> tuple[str, ...]:
        return (str(Path(self.settings.out) / "counts"),)

    def plan(self, previous: Manifest | None) -> WordPlan:
        texts = sorted(Path(self.settings.source).glob("*.txt"))
        inputs = {f"{t.stem}.json": publish.digest(t.read_text()) for t in texts}
        return WordPlan(publish.digest(inputs), inputs, unchanged_parts(previous, inputs))

    def build(self, plan: WordPlan, staging: list[Staging]) -> Built[WordCount]:
        (counts,) = staging
        counts.carry_over(list(plan.carried))
        self.built = [name for name in plan.inputs if name not in plan.carried]
        parts = dict(plan.carried)
        for name in self.built:
            words = len((Path(self.settings.source) / name.replace(".json", ".txt")).read_text().split())
            if words == 0:
                raise ValueError(f"{name}: empty text")
            Path(counts.join(name)).write_text(json.dumps(words))
            parts[name] = Part(inputs=plan.inputs[name], counts={"words": words})
        total = sum(p.counts["words"] for p in parts.values())
        return Built(WordCount(files=len(parts), words=total), parts)


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    source = tmp_path / "texts"
    source.mkdir()
    for name, text in {"a": "one two", "b": "three", "c": "four five six"}.items():
        (source / f"{name}.txt").write_text(text)
    return source


def test_a_stage_builds_then_reuses_then_rebuilds_only_what_changed(texts: Path, tmp_path: Path) -> None:
    settings = Settings(source=str(texts), out=tmp_path / "out")
    first = CountWords(settings)
    result = run(first)
    assert (result.files, result.words, result.reused) == (3, 6, False)
    assert first.built == ["a.json", "b.json", "c.json"]
    stored = publish.read_manifest(str(tmp_path / "out" / "counts"))
    assert stored and stored.result == result.to_json() and set(stored.parts) == set(first.built)

    again = CountWords(settings)
    reused = run(again)
    assert reused.reused and reused.model_dump(exclude={"reused"}) == result.model_dump(exclude={"reused"})
    assert not hasattr(again, "built"), "a reused stage must not build"

    inode = (tmp_path / "out" / "counts" / "a.json").stat().st_ino
    (texts / "b.txt").write_text("three and more")
    changed = CountWords(settings)
    assert run(changed).words == 8
    assert changed.built == ["b.json"]  # a and c carried over, as the same files
    assert (tmp_path / "out" / "counts" / "a.json").stat().st_ino == inode

    forced = CountWords(settings.model_copy(update={"force": True}))
    assert not run(forced).reused and forced.built == ["a.json", "b.json", "c.json"]


def test_a_failed_build_leaves_the_published_output_and_nothing_else(texts: Path, tmp_path: Path) -> None:
    settings = Settings(source=str(texts), out=tmp_path / "out")
    run(CountWords(settings))
    published = sorted((tmp_path / "out" / "counts").iterdir())
    (texts / "d.txt").write_text("")
    with pytest.raises(ValueError, match="empty text"):
        run(CountWords(settings))
    assert sorted((tmp_path / "out" / "counts").iterdir()) == published
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [LOCK_FILE, "counts"], "staging left"
