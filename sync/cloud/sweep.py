"""The ingest service's housekeeping, on a thread of its own: every second it marks the
commands whose expiry has passed `expired` (sync/cloud/commands.py) and writes the counters
of the process's bounded pools to the store, where `edge-agent-cloud status` reads them."""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

from sync.cloud.commands import Commands
from sync.cloud.work import Work, merge_stats

log = logging.getLogger(__name__)

STALE_S = 30.0  # counters older than this belong to a process that has stopped


def publish_stats(store: Any, process: str, stats: dict[str, Any]) -> None:
    with store.tx() as c:
        store._exec(c, "INSERT INTO work_stats (process, stats, updated_at) VALUES (?, ?, ?)"
                       " ON CONFLICT (process) DO UPDATE SET stats = excluded.stats,"
                       " updated_at = excluded.updated_at",
                    (process, json.dumps(stats), time.time()))


def read_stats(store: Any, now: float | None = None) -> dict[str, Any]:
    """The pools' counters summed over the ingest processes that wrote them lately."""
    now = time.time() if now is None else now
    with store.tx() as c:
        rows = store._exec(c, "SELECT stats FROM work_stats WHERE updated_at >= ?",
                           (now - STALE_S,)).fetchall()
    return {"processes": len(rows), **merge_stats([json.loads(r[0]) for r in rows])}


class Sweeper:
    """Runs `tick` every `every_s` until `shutdown`; a failing tick is logged, not fatal."""

    def __init__(self, store: Any, work: Work, process: str, every_s: float = 1.0) -> None:
        self.store = store
        self.work = work
        self.process = process
        self.every_s = every_s
        self.expired = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def tick(self, now: float | None = None) -> None:
        n = Commands(self.store).expire_due(now)
        if n:
            self.expired += n
            log.info("marked %d command(s) expired", n)
        publish_stats(self.store, self.process, self.work.stats())

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.tick()
            except Exception:
                log.exception("sweep: failed (tried again in %gs)", self.every_s)

    def shutdown(self) -> None:
        self._stop.set()
        self._thread.join(5)


__all__ = ["Sweeper", "publish_stats", "read_stats"]
