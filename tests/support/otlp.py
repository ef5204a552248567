"""A test OTLP/HTTP receiver on loopback that decodes the protobuf it gets.

It can also play a collector in trouble: `answers` are the statuses (with an optional
Retry-After) given to the first requests, `delay_s` holds each answer back, and `tls`
serves HTTPS (with client certificates when the context asks for them). Every request is
kept in `requests` (path, headers, body as sent, arrival time)."""

from __future__ import annotations

import gzip
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_agent.telemetry.spans import decode


class OtlpReceiver:
    def __init__(self, answers: list[tuple[int, str | None]] | None = None,
                 delay_s: float = 0.0, tls: ssl.SSLContext | None = None,
                 port: int = 0) -> None:
        self.spans: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.answers = list(answers or [])
        self.delay_s = delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sent = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"path": self.path, "headers": self.headers,
                                          "body": sent, "at": time.monotonic()})
                status, retry_after = (receiver.answers.pop(0) if receiver.answers
                                       else (200, None))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                body = sent
                if self.headers.get("Content-Encoding") == "gzip":  # as a collector does
                    body = gzip.decompress(body)
                if status == 200 and self.path == "/v1/traces":
                    receiver.spans += decode(body)
                elif status == 200 and self.path == "/v1/metrics":
                    from edge_agent.telemetry.metrics import decode as decode_metrics
                    receiver.metrics.append(decode_metrics(body))
                try:
                    self.send_response(status)
                    if retry_after is not None:
                        self.send_header("Retry-After", retry_after)
                    self.send_header("Content-Type", "application/x-protobuf")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the exporter stopped waiting

            def log_message(self, *args: Any) -> None:
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.endpoint = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
