"""The engine's store in PostgreSQL: the cloud runner's, for more than one server's worth.

The engine's SQL is written once, with `?` placeholders (`sync.dbapi`); each connection
here is wrapped so that it takes that SQL and hands back rows that index by position and
by name, as `sqlite3.Row` does. Several runners may share the database (`pg_leases`): the
writes of a run's steps (`RunScoped`) are serialized per run by the lock on the run's lease
row; every other write transaction (the CLI's commands, telemetry watermarks, workflow
versions, a hand-off's child run) first takes one transaction-scoped advisory lock, so the
rules that read then write see one writer at a time, as under SQLite's BEGIN IMMEDIATE.
PostgreSQL makes each COMMIT durable before it returns (`synchronous_commit` on, its
default), so `PgWriter.durable()` has nothing left to do.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from edge_agent.errors import SchemaTooNew, StoreError
from edge_agent.store.backend import Then, WriteFn
from edge_agent.store.health import Backoff, StoreHealth
from edge_agent.store.leases import LeaseLost, RunScoped
from edge_agent.store.merge import Prepared, write_merged
from edge_agent.store.pg_errors import CommitUnknown, StoreTransient, connection_lost, transient
from edge_agent.store.pg_migrations import PG_MIGRATIONS
from sync.dbapi import Connection, redact, scrub

log = logging.getLogger(__name__)
T = TypeVar("T")
WRITE_LOCK = 0x65646765  # the advisory lock of every write that is not a run's step
Migration = tuple[int, Sequence[str]]


def _head(lock: bool) -> str:
    """A write transaction's first statement: the write lock (with `lock`) and the
    transaction's id, asked about if the COMMIT's answer is lost."""
    return (f"SELECT pg_advisory_xact_lock({WRITE_LOCK}), pg_current_xact_id()::text" if lock
            else "SELECT 1, pg_current_xact_id()::text")


def is_url(target: str) -> bool:
    return target.startswith(("postgresql://", "postgres://"))


class Row:
    """A result row: `row[0]`, `row["name"]`, `dict(row)`, unpacking, as `sqlite3.Row`."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: dict[str, int], values: Sequence[Any]) -> None:
        self._names, self._values = names, values

    def __getitem__(self, key: int | str) -> Any:
        return self._values[key if isinstance(key, int) else self._names[key]]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._names, self._values, strict=True))!r})"


def _row_factory(cursor: Any) -> Callable[[Sequence[Any]], Row]:
    names = {d.name: i for i, d in enumerate(cursor.description or ())}
    return lambda values: Row(names, values)


_translated: dict[str, str] = {}


def _sql(sql: str) -> str:
    """`?` placeholders as psycopg's `%s` (a literal `%` doubled)."""
    out = _translated.get(sql)
    if out is None:
        out = sql.replace("%", "%%").replace("?", "%s")
        if len(_translated) < 1024:
            _translated[sql] = out
    return out


class PgConnection:
    """A psycopg connection that speaks `sync.dbapi.Connection`. Nothing reads an outbox
    here (`sync.outbox.has_reader`): appends write nothing."""

    outbox_reader = False

    def __init__(self, raw: Any) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        if not parameters:  # no placeholders to translate, and `%` means itself
            return self.raw.execute(sql)
        return self.raw.execute(_sql(sql), tuple(parameters))

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Any:
        cur = self.raw.cursor()
        cur.executemany(_sql(sql), [tuple(p) for p in parameters])
        return cur

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus
        return bool(self.raw.info.transaction_status != TransactionStatus.IDLE)

    def close(self) -> None:
        self.raw.close()


class PgStore:
    """One PostgreSQL database; a connection per thread; numbered migrations at open."""

    outbox_reader = False  # see PgConnection

    def __init__(self, url: str, *, migrations: Sequence[Migration] = PG_MIGRATIONS,
                 readonly: bool = False, retry: bool = False) -> None:
        try:
            import psycopg  # noqa: F401 - the cloud extra
        except ImportError as exc:
            raise StoreError("a postgresql:// store needs psycopg: install edge-agent[cloud]"
                             ) from exc
        self.url = url
        self.path = redact(url)  # what messages name, as Store.path
        self.readonly = readonly
        self._local = threading.local()
        self._conns: list[PgConnection] = []
        self._lock = threading.Lock()
        self.health = StoreHealth()
        self.retry = False  # opening fails fast: a wrong URL is not waited out
        self._closing = False
        self.schema_version = max((v for v, _ in migrations), default=0)
        self._migrations = migrations
        self._fresh = False
        if readonly:  # a database nothing has migrated yet reads as an empty one
            self._fresh = self.read(self._check_version) == 0
        else:
            self._migrate(migrations)
        self.retry = retry

    def translate(self, exc: Exception) -> StoreError:
        """psycopg's error as ours, naming the database (its password redacted); a transient
        one (`pg_errors.transient`) as `StoreTransient`."""
        if getattr(exc, "sqlstate", None) == "EA001":
            return LeaseLost(self.path, scrub(str(exc).strip(), self.url))
        reason = transient(exc)
        if reason is not None:
            return StoreTransient(self.path, scrub(reason, self.url))
        return StoreError(f"{self.path}: {scrub(str(exc).strip(), self.url) or type(exc).__name__}")

    # waiting out transient errors ------------------------------------------------------------
    @property
    def patient(self) -> bool:
        """Whether a transient error is waited out (the runner's store, until it closes)
        rather than raised (the CLI's, which should say so at once)."""
        return self.retry and not self._closing

    def wait_out(self, exc: StoreTransient, backoff: Backoff) -> None:
        """One pause of a transient error: this thread's connection goes (the next use
        opens a fresh one), `status` says what is waited out, then the backoff's wait."""
        self._forget()
        if self.health.state == "ok":
            log.warning("store: %s; retrying until it answers", exc.reason)
        self.health.retrying(exc.reason)
        backoff.wait()

    def recovered(self) -> None:
        if self.health.state != "ok":
            log.warning("store: answering again after %d retries", self.health.retries)
        self.health.ok()

    def patiently(self, once: Callable[[], T]) -> T:
        """`once()`, tried again after each transient error while the store is patient."""
        backoff: Backoff | None = None
        while True:
            try:
                value = once()
            except StoreTransient as exc:
                if not self.patient or int(getattr(self._local, "depth", 0)):
                    raise  # the CLI's store, or inside a transaction: the caller decides
                backoff = backoff or Backoff()
                self.wait_out(exc, backoff)
                continue
            if backoff is not None:
                self.recovered()
            return value

    def _forget(self) -> None:
        """Drop this thread's connection (lost, or in a state nobody should reuse)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn, self._local.depth = None, 0
        if conn is not None:
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            with contextlib.suppress(Exception):
                conn.close()

    # connections -----------------------------------------------------------------------------
    def _open(self) -> PgConnection:
        import psycopg
        try:
            raw = psycopg.connect(self.url, autocommit=True, row_factory=_row_factory)
        except psycopg.Error as exc:
            what = "connection lost: cannot reconnect" if self.patient else "cannot connect"
            reason = scrub(" ".join(str(exc).split()), self.url)
            raise StoreTransient(self.path, f"{what}: {reason}") from exc
        conn = PgConnection(raw)
        with self._lock:
            self._conns.append(conn)
        return conn

    @property
    def conn(self) -> PgConnection:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.raw.closed:
            conn = self._local.conn = self._open()
            self._local.depth = 0
        return conn

    def changes(self) -> Any:
        """Where PostgreSQL's WAL ends: moves with every commit, ours included."""
        return self.read(lambda c: c.execute("SELECT pg_current_wal_insert_lsn()::text")
                         .fetchone()[0])

    def close(self) -> None:
        self._closing = True  # a wait for the database ends with its error
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()
        self._local = threading.local()

    # transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def atomic(self, lock: bool = True) -> Iterator[PgConnection]:
        """A write transaction (with `lock`, one such writer at a time); nested calls become
        savepoints."""
        import psycopg
        conn = self.conn
        depth = self._local.depth
        name = f"sp{depth}"
        xid = None
        try:
            if depth == 0:  # one round trip: simple query protocol, two statements
                cur = conn.execute(f"BEGIN; {_head(lock)}")
                cur.nextset()
                xid = cur.fetchone()[1]  # asked about if the COMMIT's answer is lost
            else:
                conn.execute(f"SAVEPOINT {name}")
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                if depth == 0 and conn.in_transaction:
                    conn.execute("ROLLBACK")
            raise self.translate(exc) from exc
        self._local.depth = depth + 1
        try:
            yield conn
        except BaseException:
            self._local.depth = depth
            with contextlib.suppress(psycopg.Error):
                if depth == 0:
                    conn.execute("ROLLBACK")
                else:
                    conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
                    conn.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self._local.depth = depth
        if depth == 0:
            assert xid is not None
            self._finish(conn, xid)
            return
        try:
            conn.execute(f"RELEASE SAVEPOINT {name}")
        except psycopg.Error as exc:
            raise self.translate(exc) from exc

    def _finish(self, conn: PgConnection, xid: str) -> None:
        """COMMIT; `CommitUnknown` when the connection is lost before its answer."""
        import psycopg
        try:
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            with contextlib.suppress(psycopg.Error):
                conn.execute("ROLLBACK")
            if connection_lost(exc):
                raise CommitUnknown(xid, self.translate(exc)) from exc
            raise self.translate(exc) from exc

    def _answered(self, unknown: CommitUnknown, value: Any) -> Any:
        """A COMMIT whose answer was lost: a patient store asks the server (once it answers)
        whether that transaction committed, and hands back the write's value if it did."""
        if self.patient and self._committed(unknown.xid):
            return value
        raise unknown.error from None

    def transaction(self, fn: WriteFn, lock: bool = True) -> Any:
        """fn in one transaction, PostgreSQL's errors translated. When the connection is lost
        during COMMIT, a patient store asks the server (once it answers) whether that
        transaction committed, and hands back fn's value if it did: a write is never made
        twice, nor lost, for want of COMMIT's answer."""
        import psycopg
        value: Any = None
        try:
            with self.atomic(lock) as conn:
                value = fn(conn)
        except psycopg.Error as exc:
            raise self.translate(exc) from exc
        except CommitUnknown as unknown:
            return self._answered(unknown, value)
        return value

    def pipelined(self, fn: WriteFn, lock: bool = True) -> Any:
        """fn, a write that only sends statements (it reads no result back: the engine's
        prepared transitions), in one transaction of two round trips: BEGIN, the lock and
        transaction id and fn's statements go out together in psycopg's pipeline mode, then
        COMMIT, with `transaction`'s rules for a COMMIT whose answer is lost."""
        import psycopg
        if int(getattr(self._local, "depth", 0)):
            return self.transaction(fn, lock)  # inside a transaction: as any write
        conn = self.conn
        self._local.depth = 1
        try:
            with conn.raw.pipeline():
                conn.raw.execute("BEGIN")
                head = conn.raw.execute(_head(lock))
                value = fn(conn)
            xid = head.fetchone()[1]
        except BaseException as exc:
            with contextlib.suppress(psycopg.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            if isinstance(exc, psycopg.Error):
                raise self.translate(exc) from exc
            raise
        finally:
            self._local.depth = 0
        try:
            self._finish(conn, xid)
        except CommitUnknown as unknown:
            return self._answered(unknown, value)
        return value

    def _committed(self, xid: str) -> bool:
        while True:
            status = self.read(lambda c: c.execute(
                "SELECT pg_xact_status(?::xid8)", (xid,)).fetchone()[0])
            if status != "in progress":  # the old session may still be finishing it
                log.info("store: the transaction whose COMMIT went unanswered %s",
                         "committed" if status == "committed" else "did not commit")
                return bool(status == "committed")
            time.sleep(0.05)

    def write(self, fn: WriteFn) -> Any:
        """Run fn inside one transaction, translating PostgreSQL's errors (a transient one
        waited out while the store is patient)."""
        return self.patiently(lambda: self.transaction(fn, not isinstance(fn, RunScoped)))

    def read(self, fn: Callable[[Connection], T]) -> T:
        import psycopg

        def once() -> T:
            try:
                if self._fresh:
                    return self._read_fresh(fn)
                return fn(self.conn)
            except psycopg.Error as exc:
                raise self.translate(exc) from exc
        return self.patiently(once)

    def _read_fresh(self, fn: Callable[[Connection], T]) -> T:
        """Read a database nothing has migrated yet (the engine never ran on it) as the
        empty one it is: the tables are made inside a transaction that is rolled back, so a
        read-only command writes nothing, and once someone migrated it reads it plainly."""
        conn = self.conn
        if self._check_version(conn) > 0:
            self._fresh = False
            return fn(conn)
        conn.execute("BEGIN")
        try:
            for _, statements in sorted(self._migrations, key=lambda m: m[0]):
                for sql in statements:
                    conn.execute(sql)
            return fn(conn)
        finally:
            conn.execute("ROLLBACK")

    # migrations ------------------------------------------------------------------------------
    def _check_version(self, conn: Connection) -> int:
        exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
        row = conn.execute("SELECT version FROM schema_version").fetchone() if exists else None
        found = int(row[0]) if row else 0
        if found > self.schema_version:
            raise SchemaTooNew(self.path, found, self.schema_version)
        return found

    def _migrate(self, migrations: Sequence[Migration]) -> None:
        def apply(c: Connection) -> None:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            for version, statements in sorted(migrations, key=lambda m: m[0]):
                if self._check_version(c) >= version:
                    continue  # another process got there first
                for sql in statements:
                    c.execute(sql)
                c.execute("DELETE FROM schema_version")
                c.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                log.info("applied migration %d to %s", version, self.path)
            self._check_version(c)
        self.write(apply)


class _Write:
    __slots__ = ("done", "fn", "ok", "settled", "then", "value")

    def __init__(self, fn: WriteFn, then: Then | None = None) -> None:
        self.fn, self.then, self.done, self.ok = fn, then, False, False
        self.value: Any = None
        self.settled = threading.Event()

    def settle(self, ok: bool, value: Any) -> None:
        self.ok, self.value, self.done = ok, value, True
        self.settled.set()
        if self.then is not None:
            try:
                self.then(ok, value)
            except Exception:  # a continuation must not break the batch
                log.exception("write continuation failed")


def _prepared(w: _Write) -> Prepared | None:
    """The write's statements as data, when it is a prepared write (fenced or not)."""
    inner = w.fn.fn if isinstance(w.fn, RunScoped) else w.fn
    return inner if isinstance(inner, Prepared) else None


class PgWriter:
    """The engine's writer over a `PgStore`, committing concurrent writes together.

    Writes queue; whoever holds the lead lock commits everything queued in one transaction
    (one COMMIT, one WAL flush), so a writer that waited for the lock usually finds its
    write committed already. `write_then` does not wait: when somebody leads, its write
    joins the next batch and its continuation runs on the leader's thread after the COMMIT
    (PostgreSQL has made it durable by then); when nobody does, it commits on the caller's
    thread; a blocking writer whose write another leader took waits for its own result, not
    in a convoy on the lead. Prepared writes (the engine's transitions) are merged, one
    statement per table for the whole batch (`merge.write_merged`: the lease fences in one
    statement too); any other write runs in its own savepoint, so its failure is its own.
    When the merged writes fail, the transaction is rolled back and each write of the batch
    runs alone."""

    def __init__(self, store: PgStore, *, max_batch: int = 256) -> None:
        self._store = store
        self.max_batch = max_batch
        self._queue: collections.deque[_Write] = collections.deque()
        self._mutex = threading.Lock()  # guards the queue
        self._lead = threading.Lock()  # held by the writer committing batches
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-submit")
        self.commits = 0
        self.writes = 0

    @property
    def store(self) -> PgStore:
        return self._store

    @property
    def health(self) -> StoreHealth:
        return self._store.health

    def write(self, fn: WriteFn) -> Any:
        """Run fn in a committed transaction (shared with concurrent writers); blocking."""
        own = _Write(fn)
        with self._mutex:
            self._queue.append(own)
        while not own.done:
            if not self._lead.acquire(blocking=False):
                # somebody leads, and will take this write (or leaves it for us): wait for
                # our own result, not in a convoy on the lead
                own.settled.wait(0.05)
                continue
            try:
                while not own.done and (batch := self._take()):
                    self._commit(batch)
            finally:
                self._lead.release()
        self._drain()  # writes queued without waiting while we led
        if own.ok:
            return own.value
        raise own.value

    def write_then(self, fn: WriteFn, then: Then, *, durable: bool = True) -> None:
        """Queue fn; `then(ok, value)` is called once, after its COMMIT, on whichever thread
        committed it (this one when nobody else was committing)."""
        with self._mutex:
            self._queue.append(_Write(fn, then))
        self._drain()

    def _take(self) -> list[_Write]:
        with self._mutex:
            return [self._queue.popleft() for _ in range(min(len(self._queue), self.max_batch))]

    def _drain(self) -> None:
        """Commit what is queued, unless somebody leads (who then will)."""
        while True:
            if not self._lead.acquire(blocking=False):
                return
            try:
                while batch := self._take():
                    self._commit(batch)
            finally:
                self._lead.release()
            with self._mutex:  # queued between our last look and the release?
                if not self._queue:
                    return

    def _commit(self, batch: list[_Write]) -> None:
        """One transaction for the batch. A transient error (a lost connection, a full disk, a
        serialization failure) rolls it back and the same batch is tried again, after a
        pause, for as long as the error lasts: the writers wait, their runs pause, and none
        of them fails for it. Any other error: each write alone, its error its own."""
        store = self._store
        backoff: Backoff | None = None
        while True:
            try:
                lock = not all(isinstance(w.fn, RunScoped) for w in batch)
                if all(_prepared(w) is not None for w in batch):  # statements only
                    outcomes = store.pipelined(lambda conn: self._body(batch, conn), lock)
                else:
                    outcomes = store.transaction(lambda conn: self._body(batch, conn), lock)
            except StoreTransient as exc:
                if store.patient:
                    backoff = backoff or Backoff()
                    store.wait_out(exc, backoff)
                    continue
                failure: Exception = exc
            except Exception as exc:  # noqa: BLE001 - handed to the writers
                failure = exc
            else:
                break
            if len(batch) == 1:
                batch[0].settle(False, failure)
                return
            for w in batch:  # the batch failed as a whole: each write on its own
                try:
                    value = store.write(w.fn)
                except Exception as one:  # noqa: BLE001
                    w.settle(False, one)
                else:
                    self.commits += 1
                    w.settle(True, value)
            return
        if backoff is not None:
            store.recovered()
        self.commits += 1
        self.writes += len(batch)
        for w, (ok, value) in zip(batch, outcomes, strict=True):
            w.settle(ok, value)

    def _body(self, batch: list[_Write], conn: Connection) -> list[tuple[bool, Any]]:
        import psycopg
        store = self._store
        prepared = {i: p for i, w in enumerate(batch) if (p := _prepared(w)) is not None}
        outcomes: dict[int, tuple[bool, Any]] = {}
        if len(prepared) > 1:  # the transitions of many runs: a statement per table
            write_merged(conn, list(prepared.values()))  # a failure: each alone, above
            outcomes = dict.fromkeys(prepared, (True, None))
        for i, w in enumerate(batch):
            if i in outcomes:
                continue
            if len(batch) == 1 or i in prepared:
                outcomes[i] = (True, w.fn(conn))  # a failure: each alone, above
                continue
            try:
                with store.atomic() as sp:
                    outcomes[i] = (True, w.fn(sp))
            except psycopg.Error as exc:
                if transient(exc) is not None:
                    raise  # not this write's fault: the batch is tried again
                outcomes[i] = (False, store.translate(exc))
            except StoreTransient:
                raise
            except Exception as exc:  # noqa: BLE001 - the write's own outcome
                outcomes[i] = (False, exc)
        return [outcomes[i] for i in range(len(batch))]

    def submit(self, fn: WriteFn) -> Future[Any]:
        return self._pool.submit(self.write, fn)

    def let_through(self) -> None:
        """Nothing to let through: no batch is held open between writers here."""

    def durable(self) -> None:
        """Every COMMIT here was durable when it returned."""

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


__all__ = ["PgConnection", "PgStore", "PgWriter", "Row", "is_url", "redact"]
