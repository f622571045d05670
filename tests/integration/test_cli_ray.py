"""`stockpipe` against a Ray cluster that is not there: one line, at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness.procs import free_port


def test_unreachable_ray_cluster_fails_with_a_clear_message(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    out = str(tmp_path / "out")
    command = [sys.executable, "-m", "flows.cli", "run", "--out", out, "--ray-address", address]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert f"stockpipe: error: cannot reach the Ray cluster at {address}: nothing answers" in result.stderr
    assert "Traceback" not in result.stderr
