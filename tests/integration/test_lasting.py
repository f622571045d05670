"""`stockpipe up` and `stockpipe down`: a lasting Prefect server and Ray cluster (the stock
`prefect server start` and `ray start --head`) that a later command uses instead of starting its
own, listed when up, and stopped with nothing left running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil

from compute.cluster import token
from flows import lasting
from tests.conftest import SAMPLE


def stockpipe(*args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "flows.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def get(url: str, body: dict | None = None, headers: dict[str, str] | None = None) -> object:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.load(answer)


def test_up_is_used_by_a_later_command_listed_and_stopped_by_down(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    # A user's machine: no server or cluster configured, Prefect's own files private to the test.
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    env.update(STOCKPIPE_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect-home"))

    started = stockpipe("up", env=env)
    assert started.returncode == 0, started.stderr
    services = lasting.found(home)
    assert services is not None
    assert f"Prefect server: {services.prefect_ui}" in started.stdout
    assert f"Ray cluster:    {services.ray_address}, dashboard {services.dashboard}" in started.stdout
    theirs = [psutil.Process(pid) for pid in services.pids.values()]
    try:
        again = stockpipe("up", env=env)
        assert again.returncode == 0 and again.stdout.startswith("already up")
        assert lasting.found(home) == services  # the same two, not two more

        timeline = tmp_path / "timeline.jsonl"
        run = stockpipe("run", "--stop-after", "features", "--source", str(SAMPLE), "--out", str(out),
                        env={**env, "STOCKPIPE_TIMELINE": str(timeline)})  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert (
            f"stockpipe: using the Prefect server {services.prefect_ui} and the Ray cluster "
            f"{services.ray_address} that `stockpipe up` started (`stockpipe down` stops them)"
        ) in run.stderr
        assert f"Ray dashboard: {services.dashboard} " in run.stderr
        phases = [json.loads(line)["phase"] for line in timeline.read_text().splitlines()]
        assert "ray" in phases and "prefect" not in phases  # joined Ray; no temporary server waited for
        # The run is recorded by the lasting server, and its Ray tasks ran on the lasting cluster.
        runs = get(
            f"{services.prefect_api}/flow_runs/filter",
            {"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
        )
        assert [r["parameters"]["stop_after"] for r in runs if r["parameters"].get("out") == str(out)] == [
            "features"
        ]
        tasks = get(
            f"{services.dashboard}/api/v0/tasks?limit=1000", headers={"Authorization": f"Bearer {token()}"}
        )
        names = {t["name"] for t in tasks["data"]["result"]["result"]}
        assert {"ingest", "features"} <= {name.split()[0] for name in names}, names
        processes = theirs + [c for p in theirs for c in p.children(recursive=True)]
    finally:
        stopped = stockpipe("down", env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.startswith("stopped the Prefect server and the Ray cluster")
    _, alive = psutil.wait_procs(processes, timeout=5)
    assert alive == []
    assert lasting.found(home) is None and not (home / lasting.STATE).exists()
    assert stockpipe("down", env=env).stdout.startswith("nothing to stop")
