"""Where runs are driven: a few worker threads taking ready work from one queue.

A run's step is short Python between two waits (its tool call, its commit). One thread per
run would park and wake a thread for every step, and with the GIL those threads mostly wait
for each other. Here a step that ends in a commit does not wait for it: the commit's
continuation goes back on the queue, and whichever worker is free drives the run on. A few
workers are running at a time (the engine asks for two), so a steady stream of steps costs
no wake-ups.

Code that waits (a tool's I/O, a model, a blocking commit, a parallel join) runs inside
`blocking()`: while it waits it does not count as running, and if work is queued another
worker is woken (or started, up to `max_workers`) to take it. A slow call never holds up the
other runs. Only a tool that declares it never waits (`blocks = False`: pure computation)
is called without that hand-over.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger(__name__)
Task = Callable[[], object]
_worker = threading.local()  # .active on the scheduler's own threads


class Scheduler:
    def __init__(self, *, workers: int, max_workers: int, name: str = "run",
                 between: Callable[[], None] | None = None) -> None:
        self.target = max(1, workers)
        self.max_workers = max(self.target, max_workers)
        self.name = name
        self.between = between or (lambda: None)  # called by a worker between two tasks
        self._ready: collections.deque[Task] = collections.deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)  # parked workers wait here
        self._threads: list[threading.Thread] = []
        self._parked = 0
        self._blocked = 0
        self._closed = False

    @property
    def _running(self) -> int:
        return len(self._threads) - self._parked - self._blocked

    # submitting -------------------------------------------------------------------------------
    def submit(self, task: Task) -> None:
        """Queue a task. After shutdown a task still runs, on a thread of its own: it is the
        continuation of work already under way, which must be allowed to settle (and not on
        the caller's thread, which may be the store's committer, in the middle of a batch)."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._ready.append(task)
                # a worker queueing work (a run's next step, after the commit it led) takes
                # that one itself when its task ends: wake another only for a second one
                if self._running < self.target and (len(self._ready) > 1 or
                                                    not getattr(_worker, "active", False)):
                    self._add_worker()
        if closed:
            threading.Thread(target=task, name=f"{self.name}-late", daemon=True).start()

    def _add_worker(self) -> None:
        """Wake a parked worker, or start one (lock held)."""
        if self._parked:
            self._wakeup.notify()
            self._parked -= 1  # counted as running from now: a second submit wakes another
            return
        if len(self._threads) >= self.max_workers:
            return
        t = threading.Thread(target=self._work, name=f"{self.name}-{len(self._threads)}",
                             daemon=True)
        self._threads.append(t)
        t.start()

    # waiting inside a task --------------------------------------------------------------------
    def blocking(self, blocks: bool = True) -> _Blocking:
        """`with scheduler.blocking():` around a wait; a no-op off the workers (or when
        `blocks` is False)."""
        return _Blocking(self if blocks and getattr(_worker, "active", False) else None)

    def _enter_blocking(self) -> None:
        with self._lock:
            self._blocked += 1
            if self._ready and self._running < self.target:
                self._add_worker()

    def _exit_blocking(self) -> None:
        with self._lock:
            self._blocked -= 1

    # workers ----------------------------------------------------------------------------------
    def _work(self) -> None:
        _worker.active = True
        between = self.between
        while True:
            between()
            woken = False
            with self._lock:
                # park when nothing is queued, or when more workers run than cores (one came
                # back from a wait); after shutdown, drain the queue and go
                while not (self._ready and (self._running <= self.target or self._closed)):
                    if self._closed:
                        return
                    self._parked += 1
                    # woken by _add_worker, which has already counted us as running again
                    # (Condition has no spurious wake-ups, so the count stays exact)
                    self._wakeup.wait()
                    woken = True
                task = self._ready.popleft()
            if woken:
                # a parked worker is woken by a commit's continuation, and the committer
                # goes straight on to its next batch: let that batch through first
                between()
            try:
                task()
            except BaseException:  # a task's failure is its own business
                log.exception("scheduled task failed")

    # lifecycle --------------------------------------------------------------------------------
    @property
    def workers(self) -> int:
        return len(self._threads)

    def shutdown(self) -> None:
        """Stop taking work; queued tasks still run, later ones run on their caller."""
        with self._lock:
            self._closed = True
            self._parked = 0
            self._wakeup.notify_all()


class _Blocking:
    __slots__ = ("sched",)

    def __init__(self, sched: Scheduler | None) -> None:
        self.sched = sched

    def __enter__(self) -> None:
        if self.sched is not None:
            self.sched._enter_blocking()

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.sched is not None:
            self.sched._exit_blocking()
