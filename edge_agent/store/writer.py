"""Group commit: concurrent writers share one transaction and one fsync.

Each submitted function runs in its own savepoint inside the batch's transaction, so one
failing function never takes the others down. A future resolves only after the COMMIT that
holds its writes, so nothing is reported done before it is durable.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from edge_agent.errors import StoreError
from edge_agent.store.db import Store, translate

log = logging.getLogger(__name__)
WriteFn = Callable[[sqlite3.Connection], Any]
_STOP = object()


class GroupCommitter:
    """One writer thread; batches whatever is queued while the previous commit ran."""

    def __init__(self, store: Store, *, max_batch: int = 256) -> None:
        self.store = store
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._closed = False
        self.commits = 0
        self.writes = 0
        self._thread.start()

    def submit(self, fn: WriteFn) -> Future[Any]:
        fut: Future[Any] = Future()
        if self._closed:
            fut.set_exception(StoreError("store writer is shut down"))
            return fut
        self._queue.put((fn, fut))
        return fut

    def write(self, fn: WriteFn) -> Any:
        """Blocking submit, for worker threads."""
        return self.submit(fn).result()

    def shutdown(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[tuple[WriteFn, Future[Any]]]) -> None:
        conn = self.store.conn
        results: list[tuple[Future[Any], bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for i, (fn, fut) in enumerate(batch):
                conn.execute(f"SAVEPOINT w{i}")
                try:
                    value = fn(conn)
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    conn.execute(f"ROLLBACK TO w{i}")
                    conn.execute(f"RELEASE w{i}")
                    if isinstance(exc, sqlite3.Error):
                        exc = translate(self.store.path, exc)
                    results.append((fut, False, exc))
                else:
                    conn.execute(f"RELEASE w{i}")
                    results.append((fut, True, value))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
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
