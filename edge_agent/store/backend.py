"""The seam between the engine and its database, as Protocols.

Two implementations pass one conformance suite (`tests/engine/test_store_conformance.py`):
the device's SQLite file (`Store` with its group-committing `GroupCommitter`) and
PostgreSQL for the cloud runner (`PgStore` with `PgWriter`). The engine's SQL is written
once, to `sync.dbapi.Connection`: plain SQL both take.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sync.dbapi import Connection

T = TypeVar("T")
WriteFn = Callable[[Connection], Any]
Then = Callable[[bool, Any], None]


class Database(Protocol):
    """Reads on this thread's connection; one write transaction at a time."""

    def read(self, fn: Callable[[Connection], T]) -> T: ...

    def write(self, fn: WriteFn) -> Any: ...

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




def open_database(target: str | Path, *, synchronous: str = "FULL",
                  readonly: bool = False) -> Database:
    """The engine's database at `target`: a `postgresql://` URL (the cloud runner's
    PostgreSQL store), else the path of a SQLite file."""
    from edge_agent.store.postgres import PgStore, is_url
    if isinstance(target, str) and is_url(target):
        return PgStore(target, readonly=readonly)
    from edge_agent.store.db import Store
    return Store(target, synchronous=synchronous, readonly=readonly)


def writer_for(db: Database) -> Writer:
    """The writer the engine commits through on `db`."""
    from edge_agent.store.postgres import PgStore, PgWriter
    if isinstance(db, PgStore):
        return PgWriter(db)
    from edge_agent.store.db import Store
    from edge_agent.store.writer import GroupCommitter
    assert isinstance(db, Store)
    return GroupCommitter(db)


__all__ = ["Database", "Then", "WriteFn", "Writer", "open_database", "writer_for"]
