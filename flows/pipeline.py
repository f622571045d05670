"""The `stock-pipeline` flow and its per-stage flows. One Prefect task per stage; each task drives
its stage (compute/stages/) through the stage protocol (compute/stage.py), and Ray does the
fan-out inside it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import TaskRun
from prefect.exceptions import Abort
from prefect.logging.handlers import APILogWorker
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, Failed, State
from pydantic import BaseModel

from bento.stage import Package, PackageResult
from compute import download, lock, stage, stop, timeline
from compute.errors import is_transient
from compute.layout import Layout
from compute.settings import Settings, get_settings
from compute.stage import StageResult
from compute.stages import Features, Forecast, Ingest, Train
from compute.stages.features.results import FeaturesReport
from compute.stages.forecast.results import ForecastReport
from compute.stages.ingest.results import IngestReport
from compute.stages.train.results import TrainMetrics
from flows import stopping
from flows.progress import StageProgress

R = TypeVar("R", bound=StageResult)


class PipelineResult(BaseModel):
    """What `stock-pipeline` returns: each stage that ran, in order."""

    ingest: IngestReport | None = None
    features: FeaturesReport | None = None
    forecast: ForecastReport | None = None
    train: TrainMetrics | None = None
    package: PackageResult | None = None

    def stages(self) -> dict[str, StageResult]:
        return {name: result for name in type(self).model_fields if (result := getattr(self, name))}


def only_transient(_task: Any, _run: TaskRun, state: State) -> bool:
    """Retry a stage only for failures that can pass (a lost worker, a network or store timeout);
    a bug or bad input fails the same way again (compute/errors.py), and a stopped run stops."""
    if stop.requested():
        return False
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


# Publishing is atomic, so running a stage again after a failure is always safe.
STAGE_TASK = {"retries": 1, "retry_delay_seconds": 5, "retry_condition_fn": only_transient}


def _run(stage_class: type[stage.Stage[Any, R]], settings: Settings) -> R | State:
    """Run one stage; a stop ends the task Cancelled (or Failed), with the line that says why."""
    try:
        with StageProgress(stage_class.name) as progress:
            current = stage_class(settings, progress)
            result = stage.run(current)
    except stop.Stopped as stopped:
        stop.request(stopped)  # a stop from within (a full disk): the flow and the command see it too
        said = stopping.line(stopped, Layout(settings.out))
        return Cancelled(message=said) if stopped.outcome == "cancelled" else Failed(message=said)
    for artifact in current.artifacts(result):
        if artifact.table is not None:
            create_table_artifact(table=artifact.table, key=artifact.key, description=artifact.description)
        else:
            create_markdown_artifact(
                markdown=artifact.markdown or "", key=artifact.key, description=artifact.description
            )
    return result


@task(name="ingest", **STAGE_TASK)
def ingest(settings: Settings) -> IngestReport:
    return _run(Ingest, settings)


@task(name="features", **STAGE_TASK)
def features(settings: Settings) -> FeaturesReport:
    return _run(Features, settings)


@task(name="forecast", **STAGE_TASK)
def forecast(settings: Settings) -> ForecastReport:
    return _run(Forecast, settings)


@task(name="train", **STAGE_TASK)
def train(settings: Settings) -> TrainMetrics:
    return _run(Train, settings)


@task(name="package", **STAGE_TASK)
def package(settings: Settings) -> PackageResult:
    return _run(Package, settings)


@task(name="download", task_run_name="download {dataset}", retries=2,
      retry_delay_seconds=15)  # fmt: skip
def fetch_dataset(dataset: str, settings: Settings) -> str:
    """The verified Kaggle zip (downloaded only if no verified copy is on disk yet)."""
    path, downloaded = download.fetch(dataset, settings.download_dir, settings.max_file_bytes)
    get_run_logger().info("%s %s", "downloaded" if downloaded else "using the verified copy", path)
    return str(path)


def run_settings(parameters: dict[str, Any]) -> Settings:
    """A flow run's settings: its parameters where given, the environment (STOCKPIPE_*) for the
    rest, then the defaults. Every flow parameter that is a setting defaults to None for that
    reason; `force` False leaves STOCKPIPE_FORCE in charge."""
    given = {k: v for k, v in parameters.items() if k in Settings.model_fields}
    return get_settings(**{**given, "force": given.get("force") or None})


def _settings(parameters: dict[str, Any]) -> Settings:
    """The run's settings (`run_settings`); a kaggle:OWNER/DATASET source becomes the downloaded zip."""
    settings = run_settings(parameters)
    dataset = download.kaggle_dataset(settings.source)
    return settings.model_copy(update={"source": fetch_dataset(dataset, settings)}) if dataset else settings


class Stages:
    """A flow run's stage tasks, run in order by calling them through this: none runs after a stop,
    and `outcome` is what the flow returns: its result, or the stopped stage's final state."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopped: State | None = None

    def __call__(self, stage_task: Any) -> Any:
        if self.stopped is not None:
            return None
        state = stage_task(self.settings, return_state=True)
        if stop.requested() is not None and not state.is_completed():
            self.stopped = state
            return None
        return state.result()

    def outcome(self, result: Any) -> Any:
        """The flow's result, or its final state after a stop. In a deployment run (a worker's
        process, whose engine asks for the flow's result and would take a returned Cancelled
        state for a failure of its own) the state is recorded here and the run ends with
        Prefect's Abort, which its engine answers by exiting the process cleanly.

        Either way, everything the run logged is sent to the server first: Prefect sends logs in
        batches from a worker thread, so the last lines (the gate's, a stopped stage's) could reach
        the server after the run's final state, or, when the process ends with the Abort, never."""
        APILogWorker.drain_all(timeout=30)
        if self.stopped is None:
            return result
        message = self.stopped.message
        state = Cancelled(message=message) if self.stopped.is_cancelled() else Failed(message=message)
        if not deployment.id:
            return state
        import ray

        ray.shutdown()  # before the interpreter's exit, which a live Ray driver can abort
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run.id, state, force=True)
        aborted = Abort(message)
        aborted.state = state  # type: ignore[attr-defined]  # the engine keeps it, as recorded
        raise aborted


@contextmanager
def _holding(settings: Settings) -> Iterator[Stages]:
    """The output's lock for the whole flow run (another run on it waits, or fails at once), and
    SIGINT and SIGTERM stopping it in order (flows/stopping.py)."""
    timeline.mark("flow")
    stopping.quiet_stop_lines()
    with (
        stopping.handled(),
        lock.hold(settings.out, wait=settings.wait, flow_run=str(flow_run.id), say=get_run_logger().info),
    ):
        yield Stages(settings)


# Every flow parameter that is a setting defaults to None: the environment decides (run_settings).
@flow(name="stock-pipeline")
def stock_pipeline(
    source: str | None = None,
    out: str | None = None,
    ray_address: str | None = None,
    train_device: str | None = None,
    train_layout: str | None = None,
    train_rounds: int | None = None,
    stop_after: Literal["features", "forecast", "train", "package"] = "package",
    force: bool = False,
    train_backtest_folds: int | None = None,
) -> PipelineResult:
    """Ingest `source` (a folder, a zip, or kaggle:OWNER/DATASET), compute rolling features, forecast
    each symbol's next session, train the model, and build the Bento, all under `out` (or stop
    after an earlier stage)."""
    with _holding(_settings(locals())) as run:
        result = PipelineResult(ingest=run(ingest))
        result.features = run(features)
        if stop_after in ("forecast", "train", "package"):
            result.forecast = run(forecast)
        if stop_after in ("train", "package"):
            result.train = run(train)
        if stop_after == "package":
            result.package = run(package)
    return run.outcome(result)


@flow(name="ingest-stage")
def ingest_flow(
    source: str | None = None, out: str | None = None, ray_address: str | None = None, force: bool = False
) -> IngestReport:
    with _holding(_settings(locals())) as run:
        return run.outcome(run(ingest))


@flow(name="features-stage")
def features_flow(
    out: str | None = None, ray_address: str | None = None, force: bool = False
) -> FeaturesReport:
    with _holding(_settings(locals())) as run:
        return run.outcome(run(features))


@flow(name="forecast-stage")
def forecast_flow(
    out: str | None = None,
    ray_address: str | None = None,
    train_device: str | None = None,
    force: bool = False,
) -> ForecastReport:
    with _holding(_settings(locals())) as run:
        return run.outcome(run(forecast))


@flow(name="train-stage")
def train_flow(
    out: str | None = None,
    ray_address: str | None = None,
    train_device: str | None = None,
    train_layout: str | None = None,
    train_rounds: int | None = None,
    force: bool = False,
    train_backtest_folds: int | None = None,
) -> TrainMetrics:
    with _holding(_settings(locals())) as run:
        return run.outcome(run(train))
