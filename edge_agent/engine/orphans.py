"""Runners that share one database: every half lease, wake the runs in flight that no live
runner holds (a dead runner's, once its leases expire); the claim decides who gets each."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from edge_agent.store.leases import Leases

log = logging.getLogger(__name__)


class OrphanWatch:
    """The engine's watch for orphaned runs; started only when runners share the store."""

    def __init__(self, leases: Leases, in_pool: Callable[[Callable[[], list[str]]],
                                                          Awaitable[list[str]]],
                 wake: Callable[[str], None]) -> None:
        self.leases = leases
        self.in_pool = in_pool
        self.wake = wake
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.leases.shared:
            self._task = loop.create_task(self._watch(), name="orphans")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.leases.lease_s / 2)
            try:
                for run_id in await self.in_pool(self.leases.orphans):
                    self.wake(run_id)
            except Exception as exc:  # noqa: BLE001 - the next round looks again
                log.warning("looking for orphaned runs failed: %s", exc)

    def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
