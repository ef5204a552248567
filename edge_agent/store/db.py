"""The device database: one SQLite file in WAL mode, shared by the daemon and the CLI.

Writers use BEGIN IMMEDIATE and a generous busy_timeout, so a second process waits its turn
instead of seeing "database is locked". `atomic()` nests with savepoints.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.errors import SchemaTooNew, StoreError, StoreFull
from edge_agent.store.files import SERVICE_GROUP, check_data_dir, check_db_files, create_db_file

log = logging.getLogger(__name__)
T = TypeVar("T")

BUSY_TIMEOUT_MS = 30_000
Migration = tuple[int, Sequence[str]]


def translate(path: str, exc: sqlite3.Error) -> StoreError:
    """Turn sqlite3's errors into ours, keeping the full-disk case apart."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc):
        return StoreFull(path)
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB) or "malformed" in str(exc):
        return StoreError(f"{path}: the database is damaged ({exc}); stop edge-agent, keep a "
                          "copy of the file, then restore a backup or rebuild it with "
                          "sqlite3's .recover")
    return StoreError(f"{path}: {exc}")


class Store:
    """One database file; a connection per thread; numbered migrations at open."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL",
                 migrations: Sequence[Migration] | None = None, readonly: bool = False,
                 service_group: str = SERVICE_GROUP) -> None:
        self.path = str(path)
        self.synchronous = synchronous
        self.readonly = readonly
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        if migrations is None:
            from edge_agent.store.migrations import MIGRATIONS
            migrations = MIGRATIONS
        self.schema_version = max((v for v, _ in migrations), default=0)
        if readonly:
            check_data_dir(Path(self.path).parent, writing=False)
            check_db_files(Path(self.path))
            self._check_version(self.conn)
        else:
            try:
                Path(self.path).parent.mkdir(mode=0o750, parents=True, exist_ok=True)
                check_data_dir(Path(self.path).parent, writing=True)
                check_db_files(Path(self.path))
                create_db_file(Path(self.path), service_group)
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot create the database: "
                                 f"{exc.strerror or exc}") from exc
            self._migrate(migrations)

    # connections -----------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                       isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
            else:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=BUSY_TIMEOUT_MS / 1000)
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc
        conn.row_factory = sqlite3.Row
        with self._lock:
            self._conns.append(conn)
        return conn

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._open()
            self._local.depth = 0
        return conn

    def changes(self) -> Any:
        """SQLite's data_version on this thread's connection: moves on others' commits."""
        return self.read(lambda c: c.execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(sqlite3.Error):
                c.close()
        self._local = threading.local()

    # transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE); nested calls become savepoints."""
        conn = self.conn
        depth = self._local.depth
        name = f"sp{depth}"
        try:
            conn.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT {name}")
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc
        self._local.depth = depth + 1
        try:
            yield conn
        except BaseException:
            self._local.depth = depth
            with contextlib.suppress(sqlite3.Error):
                if depth == 0:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute(f"ROLLBACK TO {name}")
                    conn.execute(f"RELEASE {name}")
            raise
        self._local.depth = depth
        try:
            conn.execute("COMMIT" if depth == 0 else f"RELEASE {name}")
        except sqlite3.Error as exc:
            if depth == 0:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise translate(self.path, exc) from exc

    def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run fn inside one transaction, translating SQLite errors."""
        try:
            with self.atomic() as conn:
                return fn(conn)
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return fn(self.conn)
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

    # migrations ------------------------------------------------------------------------------
    def _check_version(self, conn: sqlite3.Connection) -> int:
        try:
            row = conn.execute("SELECT version FROM schema_version").fetchone()
        except sqlite3.OperationalError:
            return 0
        found = int(row[0]) if row else 0
        if found > self.schema_version:
            raise SchemaTooNew(self.path, found, self.schema_version)
        return found

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        conn = self.conn
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc
        for version, statements in sorted(migrations, key=lambda m: m[0]):
            def apply(c: sqlite3.Connection, version: int = version,
                      statements: Sequence[str] = statements) -> None:
                if self._check_version(c) >= version:
                    return  # another process got there first
                for sql in statements:
                    c.execute(sql)
                c.execute("DELETE FROM schema_version")
                c.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                log.info("applied migration %d to %s", version, self.path)
            self.write(apply)
        self._check_version(conn)
