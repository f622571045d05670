"""The `stock-pipeline` flow and its per-stage flows. Each task is one stage; Ray does the fan-out."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from compute import cluster, stages
from compute.report import ingest_markdown
from compute.settings import SAMPLE_SOURCE, Settings, get_settings


def _settings(out: str, ray_address: str | None) -> Settings:
    settings = get_settings(out=out, ray_address=ray_address)
    url = cluster.connect(settings)
    if url:
        get_run_logger().info("Ray dashboard: %s (token: `ray get-auth-token`)", url)
    return settings


@task(name="ingest", task_run_name="ingest {source}", tags=["stage:ingest"])
def ingest(source: str, settings: Settings) -> dict[str, Any]:
    report = stages.run_ingest(source, settings, progress=get_run_logger().info)
    create_markdown_artifact(
        markdown=ingest_markdown(report), key="ingest-report", description="Ingest report"
    )
    return {k: v for k, v in report.items() if k != "per_file"}


@task(name="features", tags=["stage:features"])
def features(settings: Settings) -> dict[str, Any]:
    return stages.run_features(settings, progress=get_run_logger().info)


@flow(name="stock-pipeline")
def stock_pipeline(
    source: str = str(SAMPLE_SOURCE), out: str = "output", ray_address: str | None = None
) -> dict[str, Any]:
    """Ingest every symbol file in `source`, then compute rolling features, under `out`."""
    settings = _settings(out, ray_address)
    report = ingest(source, settings)
    summary = features(settings)
    return {"ingest": report, "features": summary}


@flow(name="ingest-stage")
def ingest_flow(
    source: str = str(SAMPLE_SOURCE), out: str = "output", ray_address: str | None = None
) -> dict:
    return ingest(source, _settings(out, ray_address))


@flow(name="features-stage")
def features_flow(out: str = "output", ray_address: str | None = None) -> dict:
    return features(_settings(out, ray_address))
