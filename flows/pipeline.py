"""The `stock-pipeline` flow and its per-stage flows. Each task is one stage; Ray does the fan-out."""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from compute import download, stages
from compute.layout import Layout
from compute.report import ingest_markdown, training_markdown
from compute.settings import SAMPLE_SOURCE, Settings, get_settings


def _settings(out: str, ray_address: str | None, force: bool = False, **overrides: Any) -> Settings:
    # force=False leaves STOCKPIPE_FORCE in charge; True rebuilds stages whose inputs are unchanged.
    return get_settings(out=out, ray_address=ray_address, force=force or None, **overrides)


@task(
    name="download",
    task_run_name="download {dataset}",
    tags=["stage:download"],
    retries=2,
    retry_delay_seconds=15,
)
def fetch_dataset(dataset: str, settings: Settings) -> str:
    """The verified Kaggle zip (downloaded only if no verified copy is on disk yet)."""
    path, downloaded = download.fetch(dataset, settings.download_dir, settings.max_file_bytes)
    get_run_logger().info("%s %s", "downloaded" if downloaded else "using the verified copy", path)
    return str(path)


def _local_source(source: str, settings: Settings) -> str:
    """A kaggle:OWNER/DATASET source becomes the downloaded zip; anything else is used as is."""
    dataset = download.kaggle_dataset(source)
    return fetch_dataset(dataset, settings) if dataset else source


# Stages publish their outputs atomically, so running one again after a failure is always safe.
@task(name="ingest", task_run_name="ingest {source}", tags=["stage:ingest"], retries=1, retry_delay_seconds=5)
def ingest(source: str, settings: Settings) -> dict[str, Any]:
    report = stages.run_ingest(source, settings, progress=get_run_logger().info)
    create_markdown_artifact(
        markdown=ingest_markdown(report), key="ingest-report", description="Ingest report"
    )
    return {k: v for k, v in report.items() if k != "per_file"}


@task(name="features", tags=["stage:features"], retries=1, retry_delay_seconds=5)
def features(settings: Settings) -> dict[str, Any]:
    return stages.run_features(settings, progress=get_run_logger().info)


@task(name="train", tags=["stage:train"], retries=1, retry_delay_seconds=10)
def train_model(settings: Settings) -> dict[str, Any]:
    from compute import train  # xgboost: imported by the stages that use it, not by an ETL run

    metrics = train.run_train(settings, progress=get_run_logger().info)
    create_markdown_artifact(
        markdown=training_markdown(metrics, settings.out),
        key="training-metrics",
        description="Model vs baseline",
    )
    return metrics


@task(name="package", tags=["stage:serve"], retries=1, retry_delay_seconds=5)
def package_model(settings: Settings) -> dict[str, str]:
    """Register the model in the BentoML model store and build the Bento that serves it."""
    from bento import package  # bentoml: imported by the stage that uses it, not by an ETL run

    model_tag = package.register_model(Layout(settings.out).model)
    bento_tag = package.build_bento(model_tag)
    get_run_logger().info(
        "Bento %s with model %s; serve it with: bentoml serve %s", bento_tag, model_tag, bento_tag
    )
    return {"model": model_tag, "bento": bento_tag}


@flow(name="stock-pipeline")
def stock_pipeline(
    source: str = str(SAMPLE_SOURCE),
    out: str = "output",
    ray_address: str | None = None,
    train_device: str | None = None,
    train_rounds: int | None = None,
    stop_after: Literal["features", "train", "package"] = "package",
    force: bool = False,
) -> dict[str, Any]:
    """Ingest `source` (a folder, a zip, or kaggle:OWNER/DATASET), compute rolling features, train the
    model, and build the Bento, all under `out` (or stop after an earlier stage)."""
    settings = _settings(out, ray_address, force, train_device=train_device, train_rounds=train_rounds)
    result: dict[str, Any] = {"ingest": ingest(_local_source(source, settings), settings)}
    result["features"] = features(settings)
    if stop_after in ("train", "package"):
        result["train"] = train_model(settings)
    if stop_after == "package":
        result["package"] = package_model(settings)
    return result


@flow(name="ingest-stage")
def ingest_flow(
    source: str = str(SAMPLE_SOURCE), out: str = "output", ray_address: str | None = None, force: bool = False
) -> dict:
    settings = _settings(out, ray_address, force)
    return ingest(_local_source(source, settings), settings)


@flow(name="features-stage")
def features_flow(out: str = "output", ray_address: str | None = None, force: bool = False) -> dict:
    return features(_settings(out, ray_address, force))


@flow(name="train-stage")
def train_flow(
    out: str = "output",
    ray_address: str | None = None,
    train_device: str | None = None,
    train_rounds: int | None = None,
    force: bool = False,
) -> dict:
    return train_model(
        _settings(out, ray_address, force, train_device=train_device, train_rounds=train_rounds)
    )
