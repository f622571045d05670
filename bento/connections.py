"""Spread persistent connections over the worker processes.

BentoML's workers share one listening socket, and a client that opens its connections together
(a load balancer, a benchmark) can find all of them accepted by one worker while the other idles:
with wrk at c=8 or c=32, one run in two or three measured half the throughput. Like nginx's
`keepalive_requests`, every connection is asked to close after a number of requests
(`Connection: close` on that response); the client reconnects, and the new connection goes to
whichever worker accepts it first, so a lopsided split does not last.
"""

from __future__ import annotations

from typing import Any

MAX_CONNECTIONS_TRACKED = 10_000  # a client's own close leaves its count behind: forget them all then


class KeepAliveRequests:
    def __init__(self, app: Any, requests: int = 100) -> None:
        self.app = app
        self.requests = requests
        self.served: dict[Any, int] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("client"):
            return await self.app(scope, receive, send)
        connection = tuple(scope["client"])
        served = self.served.get(connection, 0) + 1
        if served < self.requests:
            if len(self.served) >= MAX_CONNECTIONS_TRACKED:
                self.served.clear()
            self.served[connection] = served
            return await self.app(scope, receive, send)
        self.served.pop(connection, None)

        async def send_closing(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, send_closing)
