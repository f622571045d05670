"""The two pieces of ASGI the service adds to BentoML, driven by hand on an event loop: the
request timeout that leaves no timer behind, and the connection recycling."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from bento.connections import KeepAliveRequests
from bento.timeout import BENTOML_TIMEOUT as BentoMLTimeout
from bento.timeout import TimeoutMiddleware


def app_answering(delay: float = 0.0) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await asyncio.sleep(delay)
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": b"1"})

    return app


async def call(app: Any, client: tuple[str, int] = ("127.0.0.1", 5000)) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "path": "/predict", "client": client}, receive, send)
    return sent


def timers_left(middleware: Any, requests: int) -> int:
    """Timer handles still scheduled on the loop after `requests` quick requests."""

    async def run() -> int:
        for _ in range(requests):
            await call(middleware)
        loop = asyncio.get_running_loop()
        return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]

    return asyncio.run(run())


def test_bentomls_timeout_leaves_a_timer_per_request_and_ours_none() -> None:
    assert timers_left(BentoMLTimeout(app_answering(), timeout=30), 200) == 200  # the leak it fixes
    assert timers_left(TimeoutMiddleware(app_answering(), timeout=30), 200) == 0


def test_a_request_past_the_timeout_is_a_504_in_the_error_body() -> None:
    sent = asyncio.run(call(TimeoutMiddleware(app_answering(delay=5), timeout=0.05)))
    assert sent[0]["status"] == 504
    body = json.loads(sent[1]["body"])
    assert body == {"error": "Not able to process the request in 0.05 seconds", "problems": []}


def test_a_connection_is_asked_to_close_after_its_share_of_requests() -> None:
    middleware = KeepAliveRequests(app_answering(), requests=3)

    async def run() -> list[bool]:
        closes = []
        for _ in range(7):
            sent = await call(middleware)
            closes.append((b"connection", b"close") in sent[0]["headers"])
        other = await call(middleware, client=("127.0.0.1", 5001))  # another connection counts alone
        closes.append((b"connection", b"close") in other[0]["headers"])
        return closes

    assert asyncio.run(run()) == [False, False, True, False, False, True, False, False]
