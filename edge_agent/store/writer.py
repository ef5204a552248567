"""Group commit: concurrent writers share one transaction and one fsync.

The first writer to arrive becomes the leader: it takes every queued write, runs each in its
own savepoint inside one transaction, commits once, and hands each writer its result. Writers
that queued meanwhile find their work already committed. A lone writer commits at once, on
its own thread, with no hand-off. A result is handed back only after the COMMIT that holds
it, so nothing is reported done before it is durable.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from edge_agent.errors import StoreError
from edge_agent.store.db import Store, translate

log = logging.getLogger(__name__)
WriteFn = Callable[[sqlite3.Connection], Any]


class GroupCommitter:
    def __init__(self, store: Store, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: collections.deque[tuple[WriteFn, Future[Any]]] = collections.deque()
        self._leader = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._async_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-submit")
        self.commits = 0
        self.writes = 0

    def write(self, fn: WriteFn) -> Any:
        """Run fn in a committed transaction (shared with concurrent writers); blocking."""
        fut: Future[Any] = Future()
        if self._closed:
            raise StoreError("store writer is shut down")
        self._queue.append((fn, fut))
        while not fut.done():
            with self._leader:
                if not fut.done():
                    self._lead()
        return fut.result()

    def submit(self, fn: WriteFn) -> Future[Any]:
        """Non-blocking variant for the event loop: the write runs on a helper thread."""
        return self._async_pool.submit(self.write, fn)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._async_pool.shutdown(wait=True)
        with self._leader:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _lead(self) -> None:
        batch: list[tuple[WriteFn, Future[Any]]] = []
        while self._queue and len(batch) < self.max_batch:
            batch.append(self._queue.popleft())
        if self._conn is None:
            self._conn = self.store._open()
        conn = self._conn
        results: list[tuple[Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for i, (fn, fut) in enumerate(batch):
                if len(batch) > 1:
                    conn.execute(f"SAVEPOINT w{i}")
                try:
                    value = fn(conn)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    if len(batch) > 1:
                        conn.execute(f"ROLLBACK TO w{i}")
                        conn.execute(f"RELEASE w{i}")
                    else:
                        conn.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.Error):
                        exc = translate(self.store.path, exc)
                    results.append((fut, False, exc))
                    if len(batch) == 1:
                        fut.set_exception(exc)
                        return
                else:
                    if len(batch) > 1:
                        conn.execute(f"RELEASE w{i}")
                    results.append((fut, True, value))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            err = translate(self.store.path, exc)
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(err)
            return
        self.commits += 1
        self.writes += len(batch)
        for fut, ok, value in results:
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
