"""Every name the pipeline writes under its output location (a path or a pyarrow filesystem URI).

stage1/  quarantine/  stage2/  forecast_inputs/  forecast/  models/<version>/  model/
                                                              published folders (compute/publish.py)
models/history.json  the champion's history (compute/registry.py)
reports/ingest.json  reports/features.json  reports/learning_curve.png  reports/predicted_vs_actual.png
reports/backtest.png (when the backtest runs)  reports/drift.json  reports/drift.png
reports/forecast.json  reports/forecast.png
logs/training.log
"""

from __future__ import annotations

from dataclasses import dataclass

from compute.locations import normalize
from compute.storage import join

# The model folder's files. model.json records model.bin's SHA-256, so that a reader can check that
# the two belong together.
MODEL_FILE = "model.bin"  # XGBoost's own UBJSON format, never a pickle
METADATA_FILE = "model.json"
METRICS_FILE = "metrics.json"
CHAMPION_FILE = "champion.json"  # in model/ only: which version it is, and the champions before it
# The forecast folder's files.
FORECAST_TABLE = "forecast.parquet"  # a row per symbol forecast
NOT_FORECAST_TABLE = "not_forecast.parquet"  # a row per symbol without one, and why
WALK_FORWARD_TABLE = "walkforward.parquet"  # every walk-forward forecast, with its actual
FORECAST_RESULT = "forecast.json"  # the stage's result


@dataclass(frozen=True)
class Layout:
    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", normalize(self.root))

    # Published folders.
    @property
    def stage1(self) -> str:
        return join(self.root, "stage1")

    @property
    def quarantine(self) -> str:
        return join(self.root, "quarantine")

    @property
    def stage2(self) -> str:
        return join(self.root, "stage2")

    @property
    def forecast_inputs(self) -> str:
        """The forecast's inputs per stage-1 part, its market shares and symbol histories."""
        return join(self.root, "forecast_inputs")

    @property
    def forecast(self) -> str:
        """The next session's forecast per symbol, its walk-forward and model: what `serve` reads."""
        return join(self.root, "forecast")

    @property
    def model(self) -> str:
        """The champion: what `serve` and `package` read."""
        return join(self.root, "model")

    @property
    def models(self) -> str:
        """Every trained model, a folder per version."""
        return join(self.root, "models")

    def version(self, name: str) -> str:
        return join(self.models, name)

    @property
    def history(self) -> str:
        return join(self.models, "history.json")

    # Single files, each written whole.
    @property
    def reports(self) -> str:
        return join(self.root, "reports")

    @property
    def ingest_report(self) -> str:
        return join(self.reports, "ingest.json")

    @property
    def features_report(self) -> str:
        return join(self.reports, "features.json")

    @property
    def learning_curve(self) -> str:
        return join(self.reports, "learning_curve.png")

    @property
    def predicted_vs_actual(self) -> str:
        return join(self.reports, "predicted_vs_actual.png")

    @property
    def backtest_plot(self) -> str:
        return join(self.reports, "backtest.png")

    @property
    def drift_report(self) -> str:
        return join(self.reports, "drift.json")

    @property
    def drift_plot(self) -> str:
        return join(self.reports, "drift.png")

    @property
    def forecast_report(self) -> str:
        return join(self.reports, "forecast.json")

    @property
    def forecast_plot(self) -> str:
        return join(self.reports, "forecast.png")

    @property
    def logs(self) -> str:
        return join(self.root, "logs")

    @property
    def training_log(self) -> str:
        return join(self.logs, "training.log")


def part_name(number: int) -> str:
    """Part files are numbered; stage 2's part N is computed from stage 1's part N."""
    return f"part-{number:05d}.parquet"


def part_number(name: str) -> int:
    return int(name.removeprefix("part-").removesuffix(".parquet"))
