"""Group commit: concurrent writers share one transaction and one fsync.

A writer that finds nobody leading becomes the leader: it takes the queued writes, runs each
in its own savepoint inside one transaction, commits once and hands each writer its result;
writes given as prepared statements (`Prepared`, the engine's transitions) are merged
across writers instead, one multi-row statement per kind, and run one by one only if the
merged form fails;
once its own write is committed it passes the lead to the oldest waiting writer, whose
batch then holds whatever queued meanwhile. Writers that arrive while someone leads
just wait for their own result: no lock convoy, one wake-up each. A lone writer commits at
once, on its own thread, with no hand-off. A result is handed back only after the COMMIT
that holds it, so nothing is reported done before it is durable.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

from sync.outbox import append, append_many

from edge_agent.errors import StoreError
from edge_agent.store.db import Store, translate

log = logging.getLogger(__name__)


class Prepared(NamedTuple):
    """A write as data: statements with their parameters, then outbox records
    (stream, kind, payload, byte bound or None for the stream's default). Running it twice
    from the start is harmless once the first run was rolled back, which is what lets the
    leader merge prepared writes without a savepoint each."""

    statements: Sequence[tuple[str, tuple[Any, ...]]]
    records: Sequence[tuple[str, str, bytes, int | None]] = ()

    def __call__(self, conn: sqlite3.Connection) -> None:
        for sql, params in self.statements:
            conn.execute(sql, params)
        for stream, kind, payload, limit in self.records:
            append(conn, stream, kind, payload, limit=limit)


WriteFn = Callable[[sqlite3.Connection], Any]


class _Unmergeable(Exception):
    """The merged form of a batch's prepared writes cannot be used; run them one by one."""


class _Slot:
    """One queued write: its function, its outcome, and the gate its writer waits at. The
    gate is a held lock released exactly once: for the result, or to hand over the lead
    (cheaper than an Event, whose Condition allocates a lock for every wait)."""

    __slots__ = ("fn", "done", "ok", "value", "lead", "gate")

    def __init__(self, fn: WriteFn) -> None:
        self.fn = fn
        self.done = False
        self.ok = False
        self.value: Any = None
        self.lead = False
        self.gate = threading.Lock()
        self.gate.acquire()

    def wait(self) -> None:
        self.gate.acquire()

    def settle(self, ok: bool, value: Any) -> None:
        self.ok, self.value, self.done = ok, value, True
        self.gate.release()

    def hand_lead(self) -> None:
        self.lead = True
        self.gate.release()


class GroupCommitter:
    def __init__(self, store: Store, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: collections.deque[_Slot] = collections.deque()
        self._mutex = threading.Lock()  # guards the queue and the leading flag
        self._leading = False
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._async_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-submit")
        self.commits = 0
        self.writes = 0

    def write(self, fn: WriteFn) -> Any:
        """Run fn in a committed transaction (shared with concurrent writers); blocking."""
        if self._closed:
            raise StoreError("store writer is shut down")
        slot = _Slot(fn)
        with self._mutex:
            self._queue.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            slot.wait()  # released once: with our result, or with the lead handed to us
            lead = slot.lead
        if lead:
            self._lead_until(slot)
        if slot.ok:
            return slot.value
        raise slot.value

    def _lead_until(self, own: _Slot) -> None:
        """Commit batches until our own write is in one, then pass the lead on."""
        while True:
            with self._mutex:
                if not self._queue:
                    self._leading = False
                    return
                if own.done:
                    self._queue[0].hand_lead()  # leading stays True: the lead passes on
                    return
                batch = [self._queue.popleft()
                         for _ in range(min(self.max_batch, len(self._queue)))]
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 - each writer raises it; the lead
                for slot in batch:        # is still released or passed on below
                    if not slot.done:
                        slot.settle(False, exc)

    @property
    def queued(self) -> int:
        """Writes waiting for the next batch."""
        return len(self._queue)

    def submit(self, fn: WriteFn) -> Future[Any]:
        """Non-blocking variant for the event loop: the write runs on a helper thread."""
        return self._async_pool.submit(self.write, fn)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._async_pool.shutdown(wait=True)
        with self._mutex:
            if self._conn is not None and not self._leading:
                self._conn.close()
                self._conn = None

    def _commit(self, batch: list[_Slot]) -> None:
        if self._conn is None:
            self._conn = self.store._open()
        conn = self._conn
        single = len(batch) == 1
        results: list[tuple[_Slot, bool, Any]] = []
        rest = batch
        try:
            conn.execute("BEGIN IMMEDIATE")
            prepared = [slot for slot in batch if isinstance(slot.fn, Prepared)]
            if len(prepared) > 1 and self._merged(conn, prepared):
                results += [(slot, True, None) for slot in prepared]
                rest = [slot for slot in batch if not isinstance(slot.fn, Prepared)]
                single = False
            for i, slot in enumerate(rest):
                if not single:
                    conn.execute(f"SAVEPOINT w{i}")
                try:
                    value = slot.fn(conn)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    if isinstance(exc, sqlite3.Error):
                        exc = translate(self.store.path, exc)
                    if single or not conn.in_transaction:
                        # the whole transaction is gone: one write, or one that SQLite
                        # rolled back entirely (a full disk), taking the batch with it
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        for other in batch:
                            if not other.done:
                                other.settle(False, exc)
                        return
                    conn.execute(f"ROLLBACK TO w{i}")
                    conn.execute(f"RELEASE w{i}")
                    results.append((slot, False, exc))
                else:
                    if not single:
                        conn.execute(f"RELEASE w{i}")
                    results.append((slot, True, value))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            err = translate(self.store.path, exc)
            for slot in batch:
                if not slot.done:
                    slot.settle(False, err)
            return
        self.commits += 1
        self.writes += len(results)
        for slot, ok, value in results:
            slot.settle(ok, value)

    @staticmethod
    def _merged(conn: sqlite3.Connection, slots: list[_Slot]) -> bool:
        """Run the batch's prepared writes as one multi-row statement per SQL text and one
        outbox append per stream, first in the transaction; False, with nothing of them
        written, when that fails (each then runs in its own savepoint, as any write)."""
        try:
            conn.execute("SAVEPOINT merged")
            try:
                rows: dict[str, list[tuple[Any, ...]]] = {}
                records: dict[tuple[str, int | None], list[tuple[str, bytes]]] = {}
                for slot in slots:
                    for sql, params in slot.fn.statements:
                        rows.setdefault(sql, []).append(params)
                    for stream, kind, payload, limit in slot.fn.records:
                        records.setdefault((stream, limit), []).append((kind, payload))
                if len({stream for stream, _ in records}) != len(records):
                    raise _Unmergeable  # one stream under two bounds
                for sql, params_list in rows.items():
                    conn.executemany(sql, params_list)
                for (stream, limit), recs in records.items():
                    if not append_many(conn, stream, recs, limit=limit):
                        raise _Unmergeable  # over the bound: each write meets the policy
            except Exception:  # noqa: BLE001 - any failure: each write runs alone instead
                if conn.in_transaction:
                    conn.execute("ROLLBACK TO merged")
                    conn.execute("RELEASE merged")
                else:  # SQLite rolled the transaction back (a full disk); nothing else ran
                    conn.execute("BEGIN IMMEDIATE")
                return False
            conn.execute("RELEASE merged")
            return True
        except sqlite3.Error:
            return False
