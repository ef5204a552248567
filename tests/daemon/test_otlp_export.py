"""OTLP/HTTP export: the standard environment variables, gzip, headers, and retries of
429/503 with backoff, against a real HTTP server on loopback."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from edge_agent.telemetry.export import OtlpHttpExporter, targets_from_env


class Collector:
    """Answers each POST with the next queued status (then 200), and keeps what it got."""

    def __init__(self, statuses: list[tuple[int, str | None]]) -> None:
        self.statuses = list(statuses)
        self.got: list[dict[str, Any]] = []
        me = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                me.got.append({"path": self.path, "headers": self.headers, "body": body,
                               "at": time.monotonic()})
                status, retry_after = me.statuses.pop(0) if me.statuses else (200, None)
                self.send_response(status)
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector(request: pytest.FixtureRequest) -> Iterator[Collector]:
    c = Collector(getattr(request, "param", []))
    yield c
    c.close()


def _wait(cond: Any, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end
        time.sleep(0.01)


def test_env_endpoint_headers_and_gzip(collector: Collector) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
           "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20abc,x-tenant=cell",
           "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "x-tenant=metrics"}
    exp = OtlpHttpExporter(environ=env)
    try:
        exp(b"spans")
        exp.metrics(b"points")
        _wait(lambda: exp.sent == 2)
    finally:
        exp.shutdown()
    by_path = {g["path"]: g for g in collector.got}
    traces, metrics = by_path["/v1/traces"], by_path["/v1/metrics"]
    assert gzip.decompress(traces["body"]) == b"spans"
    assert traces["headers"]["Content-Encoding"] == "gzip"
    assert traces["headers"]["Content-Type"] == "application/x-protobuf"
    assert traces["headers"]["authorization"] == "Bearer abc"
    assert traces["headers"]["x-tenant"] == "cell" and metrics["headers"]["x-tenant"] == "metrics"
    assert gzip.decompress(metrics["body"]) == b"points"


@pytest.mark.parametrize("collector", [[(503, "0"), (429, "0"), (200, None)]], indirect=True)
def test_retries_429_and_503(collector: Collector) -> None:
    exp = OtlpHttpExporter(collector.endpoint, environ={})
    try:
        exp(b"x")
        _wait(lambda: exp.sent == 1)
    finally:
        exp.shutdown()
    assert len(collector.got) == 3 and exp.retried == 2 and exp.dropped == 0


@pytest.mark.parametrize("collector", [[(503, None), (503, None)]], indirect=True)
def test_backoff_grows_without_retry_after(collector: Collector) -> None:
    exp = OtlpHttpExporter(collector.endpoint, environ={}, backoff_s=0.2)
    try:
        exp(b"x")
        _wait(lambda: exp.sent == 1)
    finally:
        exp.shutdown()
    at = [g["at"] for g in collector.got]
    assert len(at) == 3
    assert at[1] - at[0] >= 0.09 and at[2] - at[1] >= 0.19  # 0.2 then 0.4, jitter 0.5..1


@pytest.mark.parametrize("collector", [[(400, None)]], indirect=True)
def test_no_retry_on_a_client_error(collector: Collector) -> None:
    exp = OtlpHttpExporter(collector.endpoint, environ={"OTEL_EXPORTER_OTLP_COMPRESSION":
                                                        "none"})
    try:
        exp(b"x")
        _wait(lambda: exp.dropped == 1)
    finally:
        exp.shutdown()
    assert len(collector.got) == 1 and collector.got[0]["body"] == b"x"
    assert "Content-Encoding" not in collector.got[0]["headers"]


def test_targets_from_env() -> None:
    assert targets_from_env(None, {}) == {}
    t = targets_from_env(None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/",
                                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1/custom",
                                "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
                                "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "500"})
    assert t["traces"].url == "http://t:1/custom" and t["metrics"].url == "http://c:4318/v1/metrics"
    assert t["traces"].timeout_s == 2.5 and t["metrics"].timeout_s == 0.5
    # the config's endpoint is the base when it is set
    t = targets_from_env("http://cfg:4318", {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:1"})
    assert t["traces"].url == "http://cfg:4318/v1/traces"


def test_shutdown_stops_waiting() -> None:
    c = Collector([(503, "30")])
    exp = OtlpHttpExporter(c.endpoint, environ={})
    try:
        exp(b"x")
        _wait(lambda: len(c.got) == 1)
        start = time.monotonic()
        exp.shutdown()
        assert time.monotonic() - start < 2.5
    finally:
        c.close()
