"""Where a stage's progress shows: Prefect's log (a line every tenth of a fan-out), a progress
artifact per stage in the Prefect UI, updated as Ray tasks finish, and a progress bar in the
terminal when stdout is one (plain log lines otherwise)."""

from __future__ import annotations

import time
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from compute.cluster import Progress
from flows.terminal import Bars

ARTIFACT_EVERY_SECONDS = 0.5  # each update is a call to the Prefect API


class StageProgress:
    """A compute.cluster.Progress for one stage run as a Prefect task; use it as a context manager
    (the terminal bar is drawn while it is open)."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.artifact: UUID | None = None
        self.updated = 0.0
        self.bars = Bars()
        self.progress = Progress(get_run_logger().info, self._tasks)

    def __enter__(self) -> Progress:
        self.bars.__enter__()
        return self.progress

    def __exit__(self, *exc: object) -> None:
        self.bars.__exit__(*exc)

    def _tasks(self, label: str, done: int, total: int) -> None:
        self.bars.update(label, done, total)
        percent = 100.0 * done / max(total, 1)
        if self.artifact is None:
            self.artifact = create_progress_artifact(
                progress=percent, key=f"{self.stage}-progress", description=f"{self.stage}: Ray tasks done"
            )
            self.updated = time.monotonic()
        elif done == total or time.monotonic() - self.updated >= ARTIFACT_EVERY_SECONDS:
            update_progress_artifact(
                self.artifact, progress=percent, description=f"{self.stage}: {label} {done}/{total}"
            )
            self.updated = time.monotonic()
