"""Direct OTLP/HTTP export while online: best effort, bounded, never blocks a step.

The outbox's traces stream is the reliable path; this only makes spans visible sooner when
the device can reach a collector itself.
"""

from __future__ import annotations

import logging
import queue
import threading
import urllib.error
import urllib.request

log = logging.getLogger(__name__)


class OtlpHttpExporter:
    def __init__(self, endpoint: str, *, max_queue: int = 1000, timeout_s: float = 5.0) -> None:
        self.url = endpoint.rstrip("/") + "/v1/traces"
        self.metrics_url = endpoint.rstrip("/") + "/v1/metrics"
        self.timeout_s = timeout_s
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(max_queue)
        self.dropped = 0
        self.sent = 0
        self._thread = threading.Thread(target=self._run, name="otlp-export", daemon=True)
        self._thread.start()

    def __call__(self, payload: bytes) -> None:
        self._put(self.url, payload)

    def metrics(self, payload: bytes) -> None:
        self._put(self.metrics_url, payload)

    def _put(self, url: str, payload: bytes) -> None:
        try:
            self._queue.put_nowait((url, payload))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            url, payload = item
            req = urllib.request.Request(url, data=payload, method="POST", headers={
                "Content-Type": "application/x-protobuf"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s):
                    self.sent += 1
            except (urllib.error.URLError, OSError) as exc:
                self.dropped += 1
                log.debug("OTLP export to %s failed: %s", self.url, exc)

    def shutdown(self) -> None:
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=2)
