"""Bounded, fair executors for the cloud's work on behalf of devices (remote tools, handed-off
steps), so that ingest never waits on it.

A pool has a fixed number of threads, a bounded queue, and a limit on how many tasks of one
device may be queued or running at once. A task over either limit is refused at once
(`submit` returns False) and the caller answers the device `busy`: nothing queues without
bound, and one device can hold at most `per_device` of the pool's slots whatever it sends.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
BUSY = "busy"  # the error of a request the cloud refused unrun; the device may ask again


@dataclass(frozen=True)
class Limits:
    """`[limits]` of cloud.toml."""

    handoff_workers: int = 4
    tool_workers: int = 4
    per_device_in_flight: int = 4
    max_queued: int = 64  # per pool, across devices


class WorkPool:
    """`workers` threads over a queue of at most `max_queued` tasks; per device at most
    `per_device` tasks queued or running."""

    def __init__(self, name: str, *, workers: int, per_device: int, max_queued: int) -> None:
        self.name = name
        self.workers = workers
        self.per_device = per_device
        self._queue: queue.Queue[tuple[str, Callable[[], Any]] | None] = queue.Queue(
            maxsize=max_queued)
        self._lock = threading.Lock()
        self._in_flight: Counter[str] = Counter()  # device -> queued or running
        self.busy: Counter[str] = Counter()  # device -> requests refused
        self.done = 0
        self._threads: list[threading.Thread] = []

    def submit(self, device: str, task: Callable[[], Any]) -> bool:
        """Queue `task` for `device`; False (nothing queued) when the device or the pool is
        at its limit."""
        with self._lock:
            if self._in_flight[device] >= self.per_device:
                self.busy[device] += 1
                return False
            try:
                self._queue.put_nowait((device, task))
            except queue.Full:
                self.busy[device] += 1
                return False
            self._in_flight[device] += 1
            if len(self._threads) < self.workers:  # started as needed, never more
                t = threading.Thread(target=self._work, daemon=True,
                                     name=f"{self.name}-{len(self._threads)}")
                self._threads.append(t)
                t.start()
        return True

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            device, task = item
            try:
                task()
            except Exception:
                log.exception("%s: a task for %s failed", self.name, device)
            finally:
                with self._lock:
                    self._in_flight[device] -= 1
                    if self._in_flight[device] <= 0:
                        del self._in_flight[device]
                    self.done += 1

    def idle(self) -> bool:
        with self._lock:
            return not self._in_flight

    def stats(self) -> dict[str, Any]:
        """What `edge-agent-cloud status --json` shows: totals and, per device, the requests
        in flight and the `busy` answers."""
        with self._lock:
            devices = {d: {"in_flight": self._in_flight.get(d, 0), "busy": self.busy.get(d, 0)}
                       for d in sorted(set(self._in_flight) | set(self.busy))}
            return {"workers": self.workers, "threads": len(self._threads),
                    "per_device_in_flight": self.per_device,
                    "in_flight": sum(self._in_flight.values()), "queued": self._queue.qsize(),
                    "busy": sum(self.busy.values()), "done": self.done, "devices": devices}

    def shutdown(self, wait_s: float = 5.0) -> None:
        """Drop what is queued (those devices fall back on their timeout), let each thread
        finish its current task, and stop."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                with self._lock:
                    self._in_flight[item[0]] -= 1
        for _ in self._threads:
            try:
                self._queue.put(None, timeout=1.0)
            except queue.Full:
                break
        for t in self._threads:
            t.join(wait_s / max(1, len(self._threads)))


class FairQueue(Generic[T]):
    """A bounded queue served round-robin by key (the device): one item of each waiting
    device in turn, so a device that sends much waits behind itself, not others behind it.
    `put` blocks while `maxsize` items wait (the MQTT client's thread then holds the broker
    back); `get` returns None once closed and empty."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._queues: OrderedDict[str, deque[T]] = OrderedDict()
        self._size = 0
        self._closed = False
        self._cond = threading.Condition()

    def put(self, key: str, item: T) -> None:
        with self._cond:
            while self._size >= self.maxsize and not self._closed:
                self._cond.wait()
            self._queues.setdefault(key, deque()).append(item)
            self._size += 1
            self._cond.notify_all()

    def get(self) -> T | None:
        with self._cond:
            while not self._size and not self._closed:
                self._cond.wait()
            if not self._size:
                return None
            key, waiting = next(iter(self._queues.items()))
            item = waiting.popleft()
            if waiting:
                self._queues.move_to_end(key)  # its next item after everyone else's
            else:
                del self._queues[key]
            self._size -= 1
            self._cond.notify_all()
            return item

    def qsize(self) -> int:
        with self._cond:
            return self._size

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Work:
    """The pools of one ingest process, shared by its workers."""

    def __init__(self, limits: Limits | None = None) -> None:
        lim = limits or Limits()
        self.limits = lim
        self.handoffs = WorkPool("handoff", workers=lim.handoff_workers,
                                 per_device=lim.per_device_in_flight, max_queued=lim.max_queued)
        self.tools = WorkPool("tool", workers=lim.tool_workers,
                              per_device=lim.per_device_in_flight, max_queued=lim.max_queued)

    def stats(self) -> dict[str, Any]:
        return {"handoffs": self.handoffs.stats(), "tools": self.tools.stats()}

    def shutdown(self) -> None:
        self.handoffs.shutdown()
        self.tools.shutdown()


def merge_stats(many: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several processes' `Work.stats()` (several ingest services on one store)."""
    out: dict[str, Any] = {}
    for stats in many:
        for pool, s in stats.items():
            if not isinstance(s, dict):
                continue
            total = out.setdefault(pool, {"workers": 0, "in_flight": 0, "queued": 0, "busy": 0,
                                          "done": 0, "devices": {}})
            for k in ("workers", "in_flight", "queued", "busy", "done"):
                total[k] += int(s.get(k, 0))
            for d, v in dict(s.get("devices", {})).items():
                mine = total["devices"].setdefault(d, {"in_flight": 0, "busy": 0})
                mine["in_flight"] += int(v.get("in_flight", 0))
                mine["busy"] += int(v.get("busy", 0))
    return out


__all__ = ["BUSY", "FairQueue", "Limits", "Work", "WorkPool", "merge_stats"]
