"""An HTTP proxy on loopback that puts an object store's faults between a client and its server
(moto, in the tests): it forwards every request, except the ones its rule picks, which it answers
with S3's `503 SlowDown` (throttling) or by resetting the connection (a TCP RST, as a dropped
link or a load balancer's reset). The rule sees the request's method, path and number, and which
attempt at it this is (the AWS SDK's `amz-sdk-request: attempt=N` header)."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal, NamedTuple

Fault = Literal["slow_down", "reset"] | None


class Request(NamedTuple):
    method: str
    path: str
    number: int  # 1, 2, ... in the order the proxy saw them
    attempt: int  # 1 for a first try, 2 and on for the client's retries


Rule = Callable[[Request], Fault]

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultyProxy:
    def __init__(self, upstream_port: int, rule: Rule) -> None:
        self.rule = rule
        self.count = 0
        self.faults: list[tuple[str, str, str]] = []  # (fault, method, path) of each injected one
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def _body(self) -> bytes | None:
                """The request's body as sent: Content-Length bytes, or the chunked encoding
                whole (the AWS SDK streams uploads in chunks with a checksum trailer)."""
                if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                    length = int(self.headers.get("Content-Length") or 0)
                    return self.rfile.read(length) if length else None
                raw = bytearray()
                while True:
                    line = self.rfile.readline()
                    raw += line
                    size = int(line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        break
                    raw += self.rfile.read(size + 2)  # the chunk and its CRLF
                while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
                    raw += line  # trailers
                return bytes(raw + b"\r\n")

            def _relay(self) -> None:
                with proxy._lock:
                    proxy.count += 1
                    number = proxy.count
                body = self._body()
                said = self.headers.get("amz-sdk-request", "")  # e.g. "ttl=...; attempt=2"
                fields = dict(item.strip().partition("=")[::2] for item in said.split(";"))
                attempt = int(fields.get("attempt") or 1)
                fault = proxy.rule(Request(self.command, self.path, number, attempt))
                if fault:
                    with proxy._lock:
                        proxy.faults.append((fault, self.command, self.path))
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault == "slow_down":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=60)
                try:
                    # The body is here already (the client had its 100 Continue from this server).
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "expect"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    payload = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                # A HEAD's answer has no body but says how long the object is.
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(payload)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="faulty-proxy", daemon=True)

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
