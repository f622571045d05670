"""Starting Prefect's temporary server and Ray side by side, for a command that will need both.

A cold `stockpipe run` otherwise starts them one after the other: Prefect's temporary server
when the flow begins, Ray when the first stage finds work. Side by side they take about 7 s
instead of 10 s here.
"""

from __future__ import annotations

import threading
from contextlib import suppress

from compute import cluster
from compute.settings import Settings


def start_prefect_and_ray(settings: Settings) -> None:
    """Start Prefect's temporary server (unless PREFECT_API_URL names a server) on a thread while
    this thread starts or joins Ray; return when both are up. Ray errors are raised."""
    thread = threading.Thread(target=_start_prefect_server, name="prefect-server-start", daemon=True)
    thread.start()
    try:
        cluster.connect(settings, progress=lambda _: None)  # the stages announce the dashboard
    finally:
        thread.join()


def _start_prefect_server() -> None:
    # What Prefect's client does on first use when no server is configured; the flow's client
    # then finds this server running.
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    with suppress(Exception):  # the flow's own attempt then fails and reports why
        SubprocessASGIServer().start()
