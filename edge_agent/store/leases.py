"""Which runs this engine may drive: the seam between the engine and a shared database.

On the device's SQLite file one engine drives every run (`SoleRunner`, the data-dir lock
keeps a second daemon out). On PostgreSQL several runners share one database
(`pg_leases.RunLeases`): a run is driven by the runner that holds its lease, each of its
writes carries a fence that fails when the lease is no longer this runner's, and a runner
that dies leaves its leases to expire and be taken over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from edge_agent.errors import StoreError
from sync.dbapi import Connection

Statement = tuple[str, tuple[Any, ...]]
WriteFn = Callable[[Connection], Any]


class LeaseLost(StoreError):
    """A write for a run whose lease another runner holds now: nothing was written, and the
    run is that runner's to drive (not an error of the run)."""

    def __init__(self, where: str, detail: str) -> None:
        self.where = where
        super().__init__(f"{where}: {detail}")


class RunScoped:
    """A write that touches one run and carries that run's fence: a store that serializes
    writes per run (PostgreSQL, by row locks) need not take its database-wide lock for it."""

    __slots__ = ("fn", "run_id")

    def __init__(self, fn: WriteFn, run_id: str) -> None:
        self.fn, self.run_id = fn, run_id

    def __call__(self, conn: Connection) -> Any:
        return self.fn(conn)


class Leases(Protocol):
    """What the engine asks before and while it drives a run."""

    shared: bool  # several runners on one database: look for orphaned runs now and then
    lease_s: float

    def claim(self, run_id: str) -> bool:
        """Take (or keep) the run's lease; False when another live runner holds it."""

    def fence(self, run_id: str) -> Statement | None:
        """The statement that goes first in each of the run's writes (None: no fence)."""

    def release(self, run_id: str) -> Statement | None:
        """The statement that gives the lease up, in the write that finishes the run."""

    def orphans(self) -> list[str]:
        """Runs in flight that no live runner holds (their runner died, or none took them)."""

    def close(self) -> None: ...


class SoleRunner:
    """One engine drives every run of its database (the device's SQLite file)."""

    shared = False
    lease_s = 0.0

    def claim(self, run_id: str) -> bool:
        return True

    def fence(self, run_id: str) -> Statement | None:
        return None

    def release(self, run_id: str) -> Statement | None:
        return None

    def orphans(self) -> list[str]:
        return []

    def close(self) -> None:
        """Nothing is held outside this process."""


def scoped(leases: Leases, run_id: str, fn: WriteFn) -> WriteFn:
    """fn with the run's fence first (as is, when there is no fence)."""
    fence = leases.fence(run_id)
    if fence is None:
        return fn

    def fenced(conn: Connection) -> Any:
        conn.execute(*fence)
        return fn(conn)
    return RunScoped(fenced, run_id)


__all__ = ["LeaseLost", "Leases", "RunScoped", "SoleRunner", "scoped"]
