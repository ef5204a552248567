"""Which store a target names: a `postgresql://` URL, else a SQLite file's path."""

from __future__ import annotations

from pathlib import Path

from edge_agent.store.backend import Database, Writer
from edge_agent.store.db import Store
from edge_agent.store.postgres import PgStore, PgWriter, is_url
from edge_agent.store.writer import GroupCommitter


def open_database(target: str | Path, *, synchronous: str = "FULL",
                  readonly: bool = False, retry: bool = False) -> Database:
    """The engine's database at `target`: a `postgresql://` URL (the cloud runner's
    PostgreSQL store), else the path of a SQLite file. With `retry` (a runner's store) a
    transient error once open is waited out, not raised (`PgStore.patiently`); the SQLite
    writer waits out a full disk either way."""
    if isinstance(target, str) and is_url(target):
        return PgStore(target, readonly=readonly, retry=retry)
    return Store(target, synchronous=synchronous, readonly=readonly)


def writer_for(db: Database) -> Writer:
    """The writer the engine commits through on `db`."""
    if isinstance(db, PgStore):
        return PgWriter(db)
    assert isinstance(db, Store)
    return GroupCommitter(db)


__all__ = ["open_database", "writer_for"]
