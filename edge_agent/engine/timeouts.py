"""Approval timeouts on the event loop: a heap of due times and one task. A run waiting
at a gate with a timeout costs a heap entry, no thread and no poll."""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class ApprovalTimeouts:
    def __init__(self, clock: Callable[[], float],
                 expire: Callable[[int], Awaitable[None]],
                 wake: Callable[[str], None]) -> None:
        self.clock = clock
        self._expire = expire  # decides a timed-out approval (in a worker)
        self._wake = wake  # then the run is looked at
        self._due: list[tuple[float, int, str]] = []
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop,
              pending: list[tuple[float, int, str]]) -> None:
        self._loop = loop
        self._changed = asyncio.Event()
        for entry in pending:
            heapq.heappush(self._due, entry)
        self._task = loop.create_task(self._run(), name="approval-timeouts")

    def stop(self) -> None:
        if self._task:
            self._task.cancel()

    def known(self) -> set[int]:
        return {approval_id for _, approval_id, _ in self._due}

    def schedule(self, at: float, approval_id: int, run_id: str) -> None:
        """Thread-safe: called by worker threads when they open an approval with a timeout."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._push, at, approval_id, run_id)

    def _push(self, at: float, approval_id: int, run_id: str) -> None:
        heapq.heappush(self._due, (at, approval_id, run_id))
        if self._changed is not None:
            self._changed.set()

    async def _run(self) -> None:
        assert self._changed is not None
        while True:
            self._changed.clear()
            delay = self._due[0][0] - self.clock() if self._due else 3600.0
            if delay > 0:
                try:
                    await asyncio.wait_for(self._changed.wait(), min(delay, 3600.0))
                except TimeoutError:
                    pass
                continue
            _, approval_id, run_id = heapq.heappop(self._due)
            try:
                await self._expire(approval_id)
            except Exception:  # keep the timer loop alive
                log.exception("approval %s timeout handling failed", approval_id)
            self._wake(run_id)
