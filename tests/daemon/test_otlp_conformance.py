"""The own OTLP/HTTP exporter (sync/otlp.py) against the OTLP exporter specification: the
`OTEL_EXPORTER_OTLP_*` variables and the retry rules it lists, each observed on a real
HTTP(S) receiver on loopback (tests/support/otlp.py). The README's dependency table says
why the project keeps its own exporter rather than opentelemetry-exporter-otlp."""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from support.broker import free_port
from support.otlp import OtlpReceiver

from edge_agent.telemetry.spans import Span, encode
from sync.otlp import OtlpHttpExporter

SPANS = encode([Span("ab" * 16, "cd" * 8, None, "run", 1.79e9, 1.79e9 + 1)],
               service="t", device_id="d")


def export(env: dict[str, str], *, metrics: bool = False, **kw: Any) -> OtlpHttpExporter:
    """Send one payload, wait until the exporter has delivered or dropped it."""
    exp = OtlpHttpExporter(environ=env, **kw)
    try:
        if metrics:
            exp.metrics(b"")  # an empty ExportMetricsServiceRequest
        else:
            exp(SPANS)
        wait(lambda: exp.sent + exp.dropped == 1)
    finally:
        exp.shutdown()
    return exp


def wait(cond: Callable[[], bool], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end
        time.sleep(0.005)


def test_endpoints_general_then_per_signal() -> None:
    """ENDPOINT is a base (v1/traces, v1/metrics appended, with or without a trailing /);
    a signal's ENDPOINT is used as it is and takes precedence."""
    with OtlpReceiver() as rx:
        export({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint + "/"})
        export({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint}, metrics=True)
        export({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rx.endpoint + "/custom/path"})
    assert [r["path"] for r in rx.requests] == ["/v1/traces", "/v1/metrics", "/custom/path"]
    assert rx.spans[0]["name"] == "run"


def test_headers_compression_and_their_per_signal_forms() -> None:
    """HEADERS are URL-encoded `k=v` pairs; COMPRESSION gzip or none; each signal form
    replaces the general one."""
    with OtlpReceiver() as rx:
        general = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
                   "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0k,x-a=1",
                   "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}
        export(general)
        export({**general, "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-b=2",
                "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "none"})
    first, second = (r["headers"] for r in rx.requests)
    assert first["authorization"] == "Bearer t0k" and first["x-a"] == "1"
    assert first["Content-Encoding"] == "gzip"
    assert first["Content-Type"] == "application/x-protobuf"
    assert second["x-b"] == "2" and "x-a" not in second and "authorization" not in second
    assert "Content-Encoding" not in second and rx.requests[1]["body"] == SPANS


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_statuses_are_retried(status: int) -> None:
    with OtlpReceiver(answers=[(status, "0")]) as rx:
        exp = export({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint})
    assert (len(rx.requests), exp.sent, exp.retried) == (2, 1, 1)


@pytest.mark.parametrize("status", [400, 401, 404, 413])
def test_other_statuses_are_not_retried(status: int) -> None:
    with OtlpReceiver(answers=[(status, "0")]) as rx:
        exp = export({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint})
    assert (len(rx.requests), exp.dropped, exp.retried) == (1, 1, 0)


@pytest.mark.parametrize("after", ["1", "date"])
def test_retry_after_in_seconds_or_as_a_date_is_honoured(after: str) -> None:
    if after == "date":
        after = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: 1-2 s
    with OtlpReceiver(answers=[(503, after)]) as rx:
        export({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint}, backoff_s=0.01)
    first, second = (r["at"] for r in rx.requests)
    assert second - first >= 0.9  # the server's word, not the 10 ms backoff


def test_the_timeout_bounds_the_whole_export_of_a_payload() -> None:
    """TIMEOUT (milliseconds) is the time one payload may take, every try and wait
    included: a collector that answers 503 is given up within it."""
    with OtlpReceiver(answers=[(503, None)] * 10) as rx:
        start = time.monotonic()
        exp = export({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
                      "OTEL_EXPORTER_OTLP_TIMEOUT": "1500"}, backoff_s=0.2)
        took = time.monotonic() - start
    assert exp.dropped == 1 and 2 <= len(rx.requests) < 6 and took < 2.5  # unbounded: > 3.1


def test_a_slow_collector_is_given_up_at_the_timeout() -> None:
    with OtlpReceiver(delay_s=1.5) as rx:
        start = time.monotonic()
        exp = export({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
                      "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "300"})
        took = time.monotonic() - start
        assert exp.dropped == 1 and len(rx.requests) == 1 and took < 0.9


def test_a_refused_connection_is_retried_until_the_collector_is_up() -> None:
    port = free_port()
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    exp = OtlpHttpExporter(environ=env, backoff_s=0.2)
    try:
        exp(SPANS)
        wait(lambda: exp.retried >= 1)
        with OtlpReceiver(port=port) as rx:
            wait(lambda: exp.sent == 1)
            assert len(rx.spans) == 1
    finally:
        exp.shutdown()


def test_certificate_and_client_key_for_mutual_tls(tmp_path: Path) -> None:
    """CERTIFICATE is the CA that signs the collector; CLIENT_KEY and CLIENT_CERTIFICATE
    the exporter's own pair, which a collector that asks for one gets."""
    ca, client_ca = trustme.CA(), trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    server.verify_mode = ssl.CERT_REQUIRED
    client_ca.configure_trust(server)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    mine = client_ca.issue_cert("edge-device")
    mine.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    mine.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    with OtlpReceiver(tls=server) as rx:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
               "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "ca.pem")}
        refused = export(env, max_attempts=1)
        both = export({**env, "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY": str(tmp_path / "client.key"),
                       "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE":
                       str(tmp_path / "client.pem")})
    assert refused.dropped == 1 and both.sent == 1 and len(rx.spans) == 1


def test_another_protocol_is_said_and_http_protobuf_used(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    with OtlpReceiver() as rx, caplog.at_level(logging.WARNING, logger="sync.otlp"):
        exp = export({"OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
                      "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert exp.sent == 1 and "only http/protobuf" in caplog.text
