"""OTLP/HTTP export of payloads that are already OTLP protobuf: best effort, bounded, never
blocks the caller. Used by the device (spans and metrics it derived, sent directly while
online; the outbox's streams stay the reliable path) and by the cloud ingest (re-exporting
what devices sent).

The package opentelemetry-exporter-otlp takes SDK span objects only, so it would rebuild and
re-encode every span the records already hold as protobuf (measured in
bench/otlp_exporters.py; the README's dependency table gives the figures). This one follows
the OTLP exporter specification instead, checked by tests/daemon/test_otlp_conformance.py:
the `OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, compression, timeout, certificate,
client key and certificate, each also in its `_TRACES_`/`_METRICS_` form, which takes
precedence), gzip by default, `OTEL_EXPORTER_OTLP_TIMEOUT` as the bound of one payload's
whole export (every attempt and wait), and retries of 429, 502, 503, 504 and of connection
failures with jittered exponential backoff that honours `Retry-After` (seconds or an HTTP
date).
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import queue
import random
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

log = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 502, 503, 504})
SIGNALS = ("traces", "metrics")


@dataclass(frozen=True)
class OtlpTarget:
    """Where and how one signal is sent."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    gzip: bool = True
    timeout_s: float = 10.0
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None


def _headers(text: str) -> dict[str, str]:
    """`k=v,k2=v2` with URL-encoded values (the spec's W3C-baggage-like format)."""
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = urllib.parse.unquote(value.strip())
    return out


def targets_from_env(endpoint: str | None,
                     environ: Mapping[str, str] | None = None) -> dict[str, OtlpTarget]:
    """The targets for traces and metrics: `endpoint` (the config's) or
    OTEL_EXPORTER_OTLP_ENDPOINT as the base (`/v1/traces` appended), a signal's own
    OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT used as it is; {} when neither names one."""
    env = os.environ if environ is None else environ
    base = endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    out = {}
    for signal in SIGNALS:
        up = signal.upper()

        def get(name: str, default: str | None = None, up: str = up) -> str | None:
            return env.get(f"OTEL_EXPORTER_OTLP_{up}_{name}",
                           env.get(f"OTEL_EXPORTER_OTLP_{name}", default))
        url = env.get(f"OTEL_EXPORTER_OTLP_{up}_ENDPOINT")
        if not url and base:
            url = base.rstrip("/") + f"/v1/{signal}"
        if not url:
            continue
        headers = _headers(get("HEADERS", "") or "")  # the signal's own replaces the general
        compression = (get("COMPRESSION", "gzip") or "gzip").strip().lower()
        try:
            timeout_s = float(get("TIMEOUT", "10000") or 10000) / 1000
        except ValueError:
            log.warning("OTEL_EXPORTER_OTLP_TIMEOUT is not a number of milliseconds; using 10s")
            timeout_s = 10.0
        out[signal] = OtlpTarget(url, headers, compression != "none", max(timeout_s, 0.001),
                                 get("CERTIFICATE"), get("CLIENT_KEY"),
                                 get("CLIENT_CERTIFICATE"))
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip().lower()
    if out and protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: only http/protobuf is spoken here; using"
                    " it", protocol)
    return out


def _tls(target: OtlpTarget) -> ssl.SSLContext | None:
    """The TLS context of an https target: its CA file, and its client key and certificate
    (mutual TLS) when both are named."""
    if not target.url.startswith("https:"):
        return None
    context = ssl.create_default_context(cafile=target.certificate)
    if target.client_certificate and target.client_key:
        context.load_cert_chain(target.client_certificate, target.client_key)
    return context


class OtlpHttpExporter:
    """A thread that posts queued payloads; a full queue drops (and counts) the newest."""

    def __init__(self, endpoint: str | None = None, *, max_queue: int = 1000,
                 timeout_s: float | None = None, environ: Mapping[str, str] | None = None,
                 max_attempts: int = 6, backoff_s: float = 1.0, max_backoff_s: float = 30.0
                 ) -> None:
        self.targets = targets_from_env(endpoint, environ)
        if timeout_s is not None:
            self.targets = {k: dataclasses.replace(t, timeout_s=timeout_s)
                            for k, t in self.targets.items()}
        self.url = self.targets["traces"].url if "traces" in self.targets else None
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._queue: queue.Queue[tuple[OtlpTarget, bytes] | None] = queue.Queue(max_queue)
        self._stop = threading.Event()
        self.dropped = 0
        self.sent = 0
        self.retried = 0
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, endpoint: str | None = None) -> OtlpHttpExporter | None:
        """An exporter when the config or the environment names an endpoint, else None."""
        return cls(endpoint) if targets_from_env(endpoint) else None

    def __call__(self, payload: bytes) -> None:
        self._put("traces", payload)

    def metrics(self, payload: bytes) -> None:
        self._put("metrics", payload)

    def _put(self, signal: str, payload: bytes) -> None:
        target = self.targets.get(signal)
        if target is None:
            return
        try:
            self._queue.put_nowait((target, payload))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            target, payload = item
            if self._send(target, payload):
                self.sent += 1
            else:
                self.dropped += 1

    def _send(self, target: OtlpTarget, payload: bytes) -> bool:
        """One payload, retried while the target's timeout lasts (it bounds the whole
        export: every attempt and every wait, as the specification says)."""
        deadline = time.monotonic() + target.timeout_s
        body = gzip.compress(payload) if target.gzip else payload
        headers = {**target.headers, "Content-Type": "application/x-protobuf"}
        if target.gzip:
            headers["Content-Encoding"] = "gzip"
        try:
            context = _tls(target)
        except OSError as exc:  # ssl.SSLError too: a missing or unreadable file
            log.warning("OTLP export to %s: TLS files unusable: %s", target.url, exc)
            return False
        for attempt in range(1, self.max_attempts + 1):
            req = urllib.request.Request(target.url, data=body, method="POST", headers=headers)
            left = deadline - time.monotonic()
            try:
                with urllib.request.urlopen(req, timeout=max(left, 0.001), context=context):
                    return True
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRYABLE:
                    log.debug("OTLP export to %s refused: HTTP %d", target.url, exc.code)
                    return False
                wait = self._wait(attempt, exc.headers.get("Retry-After"))
                why = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                wait, why = self._wait(attempt, None), str(exc)
            if attempt == self.max_attempts or wait >= deadline - time.monotonic():
                log.debug("OTLP export to %s given up (%s, %d attempt(s))", target.url, why,
                          attempt)
                return False
            self.retried += 1
            if self._stop.wait(wait):  # shutting down: no more waiting
                return False
        return False

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with jitter, or the server's Retry-After (seconds or an HTTP
        date) if given."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff_s)
            except ValueError:
                pass
            try:
                at = parsedate_to_datetime(retry_after).timestamp()
                return min(max(at - time.time(), 0.0), self.max_backoff_s)
            except (TypeError, ValueError):
                pass
        delay = min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s)
        return float(delay * random.uniform(0.5, 1.0))  # jitter

    def shutdown(self) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=2)
