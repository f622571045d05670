"""Where each stage writes under the output location (a path or a pyarrow filesystem URI)."""

from __future__ import annotations

from dataclasses import dataclass

from compute.storage import join, normalize

MODEL_FILE = "model.bin"  # XGBoost's own UBJSON format, never a pickle


@dataclass(frozen=True)
class Layout:
    root: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", normalize(self.root))

    @property
    def stage1(self) -> str:
        return join(self.root, "stage1")

    @property
    def stage2(self) -> str:
        return join(self.root, "stage2")

    @property
    def quarantine(self) -> str:
        return join(self.root, "quarantine")

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
    def logs(self) -> str:
        return join(self.root, "logs")

    @property
    def model(self) -> str:
        return join(self.root, "model")

    @property
    def model_file(self) -> str:
        return join(self.model, MODEL_FILE)


def part_name(number: int) -> str:
    """Part files are numbered; stage 2's part N is computed from stage 1's part N."""
    return f"part-{number:05d}.parquet"


def part_number(name: str) -> int:
    return int(name.removeprefix("part-").removesuffix(".parquet"))
