"""OTLP/HTTP export of payloads that are already OTLP protobuf: best effort, bounded, never
blocks the caller. Used by the device (spans and metrics it derived, sent directly while
online; the outbox's streams stay the reliable path) and by the cloud ingest (re-exporting
what devices sent).

The SDK's exporter wants SDK span objects, so it does not fit bytes encoded from the durable
records; this one follows the OTLP/HTTP exporter spec instead: the standard
`OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, compression, timeout, certificate, and
their `_TRACES_`/`_METRICS_` forms), gzip by default, and retries of 429, 502, 503 and 504
with exponential backoff that honours `Retry-After`.
"""

from __future__ import annotations

import gzip
import logging
import os
import queue
import random
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

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
        headers = {**_headers(env.get("OTEL_EXPORTER_OTLP_HEADERS", "")),
                   **_headers(env.get(f"OTEL_EXPORTER_OTLP_{up}_HEADERS", ""))}
        compression = (get("COMPRESSION", "gzip") or "gzip").strip().lower()
        try:
            timeout_s = float(get("TIMEOUT", "10000") or 10000) / 1000
        except ValueError:
            log.warning("OTEL_EXPORTER_OTLP_TIMEOUT is not a number of milliseconds; using 10s")
            timeout_s = 10.0
        out[signal] = OtlpTarget(url, headers, compression != "none", max(timeout_s, 0.001),
                                 get("CERTIFICATE"))
    return out


class OtlpHttpExporter:
    """A thread that posts queued payloads; a full queue drops (and counts) the newest."""

    def __init__(self, endpoint: str | None = None, *, max_queue: int = 1000,
                 timeout_s: float | None = None, environ: Mapping[str, str] | None = None,
                 max_attempts: int = 6, backoff_s: float = 1.0, max_backoff_s: float = 30.0
                 ) -> None:
        self.targets = targets_from_env(endpoint, environ)
        if timeout_s is not None:
            self.targets = {k: OtlpTarget(t.url, t.headers, t.gzip, timeout_s, t.certificate)
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
        body = gzip.compress(payload) if target.gzip else payload
        headers = {**target.headers, "Content-Type": "application/x-protobuf"}
        if target.gzip:
            headers["Content-Encoding"] = "gzip"
        context = (ssl.create_default_context(cafile=target.certificate)
                   if target.certificate and target.url.startswith("https:") else None)
        for attempt in range(1, self.max_attempts + 1):
            req = urllib.request.Request(target.url, data=body, method="POST", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=target.timeout_s, context=context):
                    return True
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRYABLE or attempt == self.max_attempts:
                    log.debug("OTLP export to %s refused: HTTP %d", target.url, exc.code)
                    return False
                wait = self._wait(attempt, exc.headers.get("Retry-After"))
            except (urllib.error.URLError, OSError) as exc:
                if attempt == self.max_attempts:
                    log.debug("OTLP export to %s failed: %s", target.url, exc)
                    return False
                wait = self._wait(attempt, None)
            self.retried += 1
            if self._stop.wait(wait):  # shutting down: no more waiting
                return False
        return False

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with jitter, or the server's Retry-After (seconds) if given."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.max_backoff_s)
            except ValueError:
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
