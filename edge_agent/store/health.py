"""How the engine's store stands, for `edge-agent status`: `ok`, or `retrying` a transient
error (a lost connection, a full disk, a serialization failure) and which one.

A transient store error pauses the work that met it: the writer or reader waits with
`Backoff` and tries again, and the runs go on once the database answers. Nothing fails a
run for it; `status` says what the store is waiting out.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

FIRST_DELAY_S = 0.05
MAX_DELAY_S = 2.0


class StoreHealth:
    """The store's state, shared by every thread that reads or writes through it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.state = "ok"
        self.last_error: str | None = None
        self.since: float | None = None  # when the current trouble began
        self.retries = 0  # transient errors waited out, in all
        self.recovered_at: float | None = None

    def retrying(self, error: str) -> None:
        with self._lock:
            if self.state != "retrying":
                self.state, self.since = "retrying", time.time()
            self.last_error = error
            self.retries += 1

    def ok(self) -> None:
        if self.state == "ok":
            return
        with self._lock:
            self.state, self.since, self.recovered_at = "ok", None, time.time()

    def line(self) -> str:
        return "ok" if self.state == "ok" else f"retrying ({self.last_error})"

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "last_error": self.last_error, "since": self.since,
                "retries": self.retries, "recovered_at": self.recovered_at}


class Backoff:
    """Bounded exponential backoff: 50 ms doubling to 2 s, with jitter, for as long as the
    trouble lasts (a transient error is waited out, not given up on)."""

    def __init__(self, first: float = FIRST_DELAY_S, cap: float = MAX_DELAY_S) -> None:
        self.delay, self.cap = first, cap

    def wait(self, stop: threading.Event | None = None) -> None:
        pause = self.delay * (0.5 + random.random() / 2)
        self.delay = min(self.cap, self.delay * 2)
        if stop is None:
            time.sleep(pause)
        else:
            stop.wait(pause)


__all__ = ["Backoff", "StoreHealth"]
