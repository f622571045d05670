"""The `stockpipe` command: help, and one-line errors for bad arguments (before anything starts)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


def stockpipe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("command", ["run", "ingest", "features"])
def test_help_explains_every_option(command: str) -> None:
    result = stockpipe(command, "--help")
    assert result.returncode == 0
    for option in ["--out", "--ray-address"] + (["--source"] if command != "features" else []):
        assert option in result.stdout


def a_file(tmp: Path) -> Path:
    path = tmp / "f"
    path.write_text("")
    return path


def bad_zip(tmp: Path) -> Path:
    path = tmp / "x.zip"
    zipfile.ZipFile(path, "w").close()
    return path


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda t: ["run", "--source", str(t / "nope")], "does not exist"),
        (lambda t: ["ingest", "--source", str(t)], "neither stocks/ nor etfs/"),
        (lambda t: ["ingest", "--source", str(bad_zip(t))], "contains no stocks/"),
        (lambda t: ["features", "--out", str(t)], "no stage 1 output"),
        (lambda t: ["run", "--out", str(a_file(t))], "not a directory"),
    ],
)
def test_bad_arguments_fail_with_one_line(tmp_path: Path, args, message: str) -> None:
    result = stockpipe(*args(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_what_a_command_needs_is_its_stage_output() -> None:
    from flows import cli
    from flows.stages import stages

    for name, command in cli.COMMANDS.items():
        if (needs := command.needs) is not None:
            made_by = stages()[needs.stage]
            assert needs.folder in (made_by.output_folder, "models"), name


def test_help_and_argument_errors_import_nothing_heavy(tmp_path: Path) -> None:
    """--help and an argument that cannot be used answer before Ray, Prefect or XGBoost load
    (python -X importtime lists every module imported)."""
    heavy = {"ray", "prefect", "xgboost", "bentoml", "pandas"}
    for args in (["--help"], ["run", "--help"], ["features", "--out", str(tmp_path)],
                 ["serve", "--out", str(tmp_path)], ["run", "--source", str(tmp_path / "nope")]):  # fmt: skip
        done = subprocess.run([sys.executable, "-X", "importtime", "-m", "flows.cli", *args],
                              capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        imported = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
                    if line.startswith("import time:")}  # fmt: skip
        said = done.stdout + done.stderr
        assert done.returncode in (0, 2) and "stockpipe" in said, (args, done.stderr[-500:])
        assert not imported & heavy, (args, imported & heavy)


def test_unknown_command_is_refused() -> None:
    result = stockpipe("fly")
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_the_stages_are_declared_once_and_every_list_of_them_follows() -> None:
    """flows/stages.py is the one list: the pipeline flow's stop_after, the CLI's --stop-after, and
    the line of a stopped run (each stage says what it leaves) all follow it."""
    import inspect
    import typing

    from compute.layout import Layout
    from compute.stop import Stopped
    from flows import cli, pipeline, stopping
    from flows.stages import NAMES, stages

    assert [stage.name for stage in stages().values()] == list(NAMES)
    later = list(NAMES)[1:]
    stop_after = inspect.signature(pipeline.stock_pipeline.fn).parameters["stop_after"]
    hinted = typing.get_type_hints(pipeline.stock_pipeline.fn)["stop_after"]
    assert list(typing.get_args(hinted)) == later and stop_after.default == later[-1]
    assert cli.STOP_AFTER.kwargs["choices"] == later
    assert list(pipeline.PipelineResult.model_fields) == list(NAMES)
    for name, stage in stages().items():
        stopped = Stopped("interrupted (Ctrl-C)", 130)
        stopped.stage = name
        layout = Layout("/nowhere")
        said = stopping.line(stopped, layout)
        assert said.startswith(f"interrupted (Ctrl-C) during {name}"), said
        assert (after := stage.after_stop(layout)) is None or f"during {name}: {after}; " in said, said
