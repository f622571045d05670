"""The stage protocol: every stage of the pipeline plans, reuses, builds, publishes and reports the
same way. A stage is one small class (compute/stages/*/stage.py); `run` drives each of them:

    plan     what the stage depends on: a fingerprint (a digest of its inputs, code and settings)
             and whatever the build needs. Reads names, sizes and manifests, never the data.
    reuse    when the published output's manifest has the same fingerprint (and no --force), its
             stored result is returned, marked reused; nothing is rebuilt and Ray is not started.
    build    the work, fanned out over Ray, written into fresh staging folders (compute/publish.py).
             Parts whose inputs are unchanged are carried over instead of rebuilt.
    publish  the staging folders become the published outputs, each in one step, with a manifest
             that records the fingerprint, the typed result and what every part was built from.
    report   files derived from the result (reports/, logs/), written after the publish; files
             that only a build makes (Built.reports: a training log, plots) are written then too.

A stage's `seconds` never include starting or joining Ray: that is the run's cost, not the stage's.

To add a stage, these are the places:
  1. a package compute/stages/<name>/: stage.py (a Stage subclass), results.py (its result, a
     StageResult) and its work;
  2. compute/layout.py: the names of what it writes;
  3. flows/stages.py: the stage in WHERE, in order; flows/pipeline.py: a task that runs it, a
     field of PipelineResult and a call in the flow.
For a command or a deployment of its own: a row of COMMANDS in flows/cli.py, an entry in
prefect.yaml. tests/unit/test_stage.py shows a complete small stage.
"""

from __future__ import annotations

import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from compute import cluster, lock, publish, stop, storage
from compute.cluster import Progress
from compute.errors import Refused, is_out_of_space, store_failure
from compute.layout import Layout
from compute.publish import Manifest, Part, Staging
from compute.settings import Settings


class StageResult(BaseModel):
    # NaN metrics (an empty split) stay NaN in JSON, as json.dumps writes them.
    model_config = ConfigDict(ser_json_inf_nan="constants")
    # Fields left out of the JSON while they hold their default (None, or False for `reused`).
    omit_when_default: ClassVar[tuple[str, ...]] = ()

    reused: bool = False  # the stage was unchanged since the last run and nothing was rebuilt

    def to_json(self) -> dict[str, Any]:
        omit = {"reused", *self.omit_when_default}
        data = self.model_dump(mode="json", exclude={n for n in omit if getattr(self, n) in (None, False)})
        if self.reused:
            data["reused"] = data.pop("reused")  # last, where readers of older reports found it
        return data

    def timed(self, seconds: float) -> Self:
        """This result with the stage's own time (excluding Ray's start) filled in, where it has one."""
        if "seconds" not in type(self).model_fields:
            return self
        return self.model_copy(update={"seconds": round(seconds, 3)})


R = TypeVar("R", bound=StageResult)


@dataclass
class Plan:
    fingerprint: str


P = TypeVar("P", bound=Plan)


@dataclass
class Built(Generic[R]):
    result: R
    parts: dict[str, Part] = field(default_factory=dict)  # recorded in the manifest
    # Files that only a build makes (a training log, plots): location -> what makes the content,
    # called after the publish, so the output is published before they are drawn. A reuse leaves
    # the previous build's files as they are.
    reports: dict[str, Callable[[], bytes]] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """What a stage shows in the Prefect UI: a markdown or a table artifact."""

    key: str
    description: str
    markdown: str | None = None
    table: list[dict[str, Any]] | None = None


class Stage(ABC, Generic[P, R]):
    name: ClassVar[str]
    result_type: ClassVar[type[StageResult]]
    depends_on: ClassVar[str]  # for the "unchanged since the last run" line, e.g. "stage 1 and the code"
    uses_ray: ClassVar[bool] = True
    result_file: ClassVar[str | None] = None  # the result as JSON, published in the first output
    # What a person relies on once the stage ran, for the line of a stopped run: its name ("stage
    # 1") and the Layout folder that holds it (None: not a folder of the output).
    output_name: ClassVar[str]
    output_folder: ClassVar[str | None] = None

    def __init__(self, settings: Settings, progress: Progress | Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.progress = Progress.of(progress)
        self.layout = Layout(settings.out)

    def outputs(self) -> tuple[str, ...]:
        """The folders this stage publishes. The first carries the result in its manifest; the
        others are published just before it."""
        return ()

    @classmethod
    def is_published(cls, layout: Layout) -> bool:
        return cls.output_folder is not None and publish.is_published(getattr(layout, cls.output_folder))

    @classmethod
    def after_stop(cls, layout: Layout) -> str | None:
        """What stands of its output when the stage was stopped before publishing (None: nothing
        worth a word)."""
        if cls.output_folder is None:
            return None
        return f"{cls.output_name} is {'unchanged' if cls.is_published(layout) else 'not built'}"

    def code(self) -> str:
        """A digest of the code that shapes the output: the stage's module and every module of the
        project it imports (compute/publish.py: code_modules), for the plan's fingerprint."""
        return publish.code_digest(type(self).__module__)

    def previous(self) -> Manifest | None:
        """The published manifest the plan and the reuse compare with (default: the first output's)."""
        outputs = self.outputs()
        return publish.read_manifest(outputs[0]) if outputs else None

    @abstractmethod
    def plan(self, previous: Manifest | None) -> P:
        """What the build depends on. `previous` is the published manifest (None with --force)."""

    def reuse(self, plan: P, previous: Manifest | None) -> R | None:
        """The published result, when it was built from exactly what `plan` describes."""
        if previous is None or previous.fingerprint != plan.fingerprint:
            return None
        try:
            return self.result_type.model_validate(previous.result)  # type: ignore[return-value]
        except ValidationError:  # written by an older version of this code
            return None

    @abstractmethod
    def build(self, plan: P, staging: list[Staging]) -> Built[R]:
        """Do the work into `staging` (one per output, in the order of `outputs()`)."""

    def space_needed(self, plan: P) -> int | None:
        """About how many bytes the build will write, for a local output (None: not known)."""
        return None

    def report(self, result: R) -> None:
        """Write files derived from the result, after the publish (and after a reuse)."""

    def artifacts(self, result: R) -> list[Artifact]:
        return []

    def describe(self, result: R) -> list[str]:
        """What the command line prints about the result."""
        return []


def unchanged_parts(previous: Manifest | None, inputs: dict[str, str]) -> dict[str, Part]:
    """The previous publish's parts whose recorded inputs equal their current `inputs`: they can be
    carried over as they are."""
    if previous is None:
        return {}
    return {name: part for name, part in previous.parts.items() if inputs.get(name) == part.inputs}


def run(stage: Stage[P, R]) -> R:
    """Plan, reuse or build, publish and report one stage; return its typed result. The stage holds
    its output's lock throughout (a flow run holds it already for all its stages). A stop
    (compute/stop.py) can cut its build short; it leaves the published outputs as they were. A
    stage that refuses (compute/errors.py: Refused) stops the run with its one line."""
    stop.checkpoint()
    stop.running = stage.name
    try:
        with lock.hold(stage.settings.out, wait=stage.settings.wait, say=stage.progress):
            try:
                return _run(stage)
            except Refused as refused:
                raise stop.Stopped(str(refused), code=1, outcome="failed", then=refused.then) from None
    except stop.Stopped as stopped:
        stopped.stage = stopped.stage or stage.name
        raise
    finally:
        stop.running = None


def _run(stage: Stage[P, R]) -> R:
    started = time.perf_counter()
    settings, outputs = stage.settings, stage.outputs()
    previous = None if settings.force else stage.previous()
    plan = stage.plan(previous)
    if not settings.force and (reused := stage.reuse(plan, previous)) is not None:
        result = reused.model_copy(update={"reused": True})
        stage.progress(f"{stage.name}: {stage.depends_on} unchanged since the last run: reused")
        stage.report(result)
        return result

    if stage.uses_ray:
        started += cluster.connect(settings, stage.progress)  # the stage's time excludes Ray's start
    for folder in outputs:  # what killed runs left: no live run owns it, since this one holds the lock
        publish.remove_leftovers(folder)
    if outputs:
        _check_space(stage, outputs[0], stage.space_needed(plan))
    stop.checkpoint()
    staging = [Staging(folder) for folder in outputs]
    try:
        built = stage.build(plan, staging)
        stop.checkpoint()  # a build that ended as the stop came: not published either
        result = built.result.timed(time.perf_counter() - started)
        if stage.result_file:
            storage.write_json(result.to_json(), staging[0].join(stage.result_file))
        for extra in staging[1:]:
            extra.commit(Manifest(fingerprint=plan.fingerprint))
        if staging:
            staging[0].commit(
                Manifest(fingerprint=plan.fingerprint, result=result.to_json(), parts=built.parts)
            )
    except BaseException as exc:
        for folder in staging:
            folder.abort()
        # The line goes on with what stands (the published stage unchanged: flows/stopping.py).
        if not isinstance(exc, stop.Stopped) and (failure := store_failure(exc)):
            raise stop.Stopped(
                f"the object store at {settings.out} keeps failing ({failure}): {stage.name} stopped",
                code=1, outcome="failed", then="run again once the store answers",
            ) from None  # fmt: skip
        if not isinstance(exc, stop.Stopped) and is_out_of_space(exc):  # someone else filled the disk
            raise stop.Stopped(
                f"the disk holding {settings.out} is full (no space left on device): {stage.name} stopped, "
                "its staging folder removed",
                code=1, outcome="failed", then="free some space and run again",
            ) from None  # fmt: skip
        raise
    for location, make in built.reports.items():
        storage.write_bytes(make(), location)
    stage.report(result)
    return result


def _check_space(stage: Stage[Any, Any], folder: str, needed: int | None) -> None:
    """Refuse, before writing, a build that would not fit beside a local output."""
    if needed is None or not storage.is_local(folder):
        return  # an object store has no such figure
    existing = Path(folder)
    while not existing.exists():
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    if needed > free:
        raise stop.Stopped(
            f"not enough space for {stage.name} in {existing}: it writes about {needed / 1e6:,.0f} MB, "
            f"{free / 1e6:,.0f} MB are free; nothing was written",
            code=1, outcome="failed", then="free some space and run again",
        )  # fmt: skip
