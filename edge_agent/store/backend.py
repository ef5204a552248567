"""The seam between the engine and its database, as Protocols.

Two implementations pass one conformance suite (`tests/engine/test_store_conformance.py`):
the device's SQLite file (`Store` with its group-committing `GroupCommitter`) and
PostgreSQL for the cloud runner (`PgStore` with `PgWriter`). The engine's SQL is written
once, to `sync.dbapi.Connection`: plain SQL both take. `edge_agent.store.opening` picks
the implementation for a target.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

from edge_agent.store.health import StoreHealth
from sync.dbapi import Connection

T = TypeVar("T")
WriteFn = Callable[[Connection], Any]
Then = Callable[[bool, Any], None]


class Database(Protocol):
    """Reads on this thread's connection; one write transaction at a time."""

    def read(self, fn: Callable[[Connection], T]) -> T: ...

    def write(self, fn: WriteFn) -> Any: ...

    def changes(self) -> Any:
        """A value that changes when another connection commits (and may on our own)."""

    def close(self) -> None: ...


class Writer(Protocol):
    """How the engine commits its transitions."""

    @property
    def store(self) -> Database: ...

    def write(self, fn: WriteFn) -> Any:
        """Run fn in a transaction; return its value once the commit is durable."""

    def write_then(self, fn: WriteFn, then: Then, *, durable: bool = True) -> None:
        """Commit fn, then call `then(ok, value)` (maybe on this thread, before returning)."""

    def submit(self, fn: WriteFn) -> Future[Any]: ...

    def let_through(self) -> None: ...

    def durable(self) -> None:
        """Return once every commit another connection may have seen is durable."""

    def shutdown(self) -> None: ...

    @property
    def health(self) -> StoreHealth:
        """`ok`, or `retrying` a transient error (for `status`)."""



__all__ = ["Database", "Then", "WriteFn", "Writer"]
