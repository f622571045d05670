"""What `stockpipe` prints: a progress bar per stage on a terminal, plain lines otherwise, a
warning when symbols lack metadata, and one line, at once, for a Ray cluster that is not there."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

from harness.procs import free_port
from tests.conftest import SAMPLE

BAR = "\u2501"  # the bar rich draws


def stockpipe_env() -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONUNBUFFERED": "1"}


def address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_a_terminal_gets_a_progress_bar_per_stage_and_a_pipe_plain_lines(
    ray_session: str | None, prefect_harness: None, tmp_path: Path
) -> None:
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "flows.cli", "run", "--stop-after", "features", "--force",
               "--source", str(SAMPLE), "--out", out, "--ray-address", address()]  # fmt: skip
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, env=stockpipe_env(), stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the command is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=120) == 0
    on_terminal = b"".join(chunks).decode(errors="replace")
    for stage in ("ingest", "features"):
        assert any(stage in line and BAR in line and "6/6" in line for line in on_terminal.splitlines()), (
            stage
        )

    # Piped, and with a timeline (bench/etl.py's): every phase once, in the order they happen.
    timeline = tmp_path / "timeline.jsonl"
    env = {**stockpipe_env(), "STOCKPIPE_TIMELINE": str(timeline)}
    piped = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
    assert BAR not in piped.stdout + piped.stderr
    assert "ingest: 6/6 tasks done" in piped.stderr and "features: 6/6 tasks done" in piped.stderr
    marks = [json.loads(line) for line in timeline.read_text().splitlines()]
    phases = [m["phase"] for m in marks]
    # Prefect's server is configured here, so its phase is not waited for; Ray and the flows'
    # imports start side by side, in either order.
    assert phases[0] == "imports" and sorted(phases[1:3]) == ["flow-imports", "ray"]
    assert phases[3:] == ["flow", "first-task", "flow-end", "shutdown"]
    assert [m["at"] for m in marks] == sorted(m["at"] for m in marks)


def test_symbols_without_metadata_are_warned_about_in_the_summary(
    ray_session: str | None,
    prefect_harness: None,
    bad_source: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    command = [sys.executable, "-m", "flows.cli", "ingest", "--source", str(bad_source), "--out", str(out),
               "--ray-address", address()]  # fmt: skip
    result = subprocess.run(
        command, env=stockpipe_env(), capture_output=True, text=True, timeout=120, check=True
    )
    assert (
        "  warning: 2 of 4 ingested symbols have no row in the metadata file, so their Security Name is "
        f"null: AVDG, TRUNC (all of them: symbols_without_metadata in {out}/reports/ingest.json)"
    ) in result.stdout


def test_unreachable_ray_cluster_fails_with_a_clear_message(tmp_path: Path) -> None:
    unreachable = f"127.0.0.1:{free_port()}"  # nothing listens there
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        "--out",
        str(tmp_path / "out"),
        "--ray-address",
        unreachable,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert (
        f"stockpipe: error: cannot reach the Ray cluster at {unreachable}: nothing answers" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_the_source_and_the_output_come_from_the_environment_when_no_flag_gives_them(
    ray_session: str | None, prefect_harness: None, tmp_path: Path
) -> None:
    """STOCKPIPE_SOURCE and STOCKPIPE_OUT, as docs/configuration.md says: five of the sample's
    files, ingested where STOCKPIPE_OUT points (a flag's default once hid the variable)."""
    import json
    import shutil

    source = tmp_path / "five"
    (source / "stocks").mkdir(parents=True)
    for name in ("AAPL", "AMZN", "BAC", "ACC", "ATAC"):
        shutil.copy(SAMPLE / "stocks" / f"{name}.csv", source / "stocks")
    shutil.copy(SAMPLE / "symbols_valid_meta.csv", source)
    env = {**stockpipe_env(), "STOCKPIPE_SOURCE": str(source), "STOCKPIPE_OUT": str(tmp_path / "out")}
    command = [sys.executable, "-m", "flows.cli", "ingest", "--ray-address", address()]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "reports" / "ingest.json").read_text())
    assert report["source"] == str(source) and report["files"]["ingested"] == 5, report["files"]
