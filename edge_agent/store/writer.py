"""Group commit: concurrent writers share one transaction and one fsync.

A writer that finds nobody leading becomes the leader: it takes the queued writes, runs each
in its own savepoint inside one transaction, commits once and hands each writer its result;
writes given as prepared statements (`Prepared`, the engine's transitions) are merged
across writers instead, one statement per table for the whole batch, and run one by one
only if the merged form fails. Once its own write is committed the leader passes the lead
to the oldest writer waiting for its result, whose batch then holds whatever queued
meanwhile; writers that arrive while someone leads just wait for their own result: no lock
convoy, one wake-up each. A lone writer commits at once, on its own thread.

`write_then` queues a write without waiting: its continuation is called after the COMMIT
that holds it (the engine's runs go on from there). When only such writes are left behind a
leader, the committer thread takes the lead, so the leader goes back to its own work. A
result is handed back only after the COMMIT that holds it is on disk, so nothing is
reported done before it is durable.

Commit, then sync. With `synchronous=FULL` in WAL mode SQLite fsyncs the WAL inside COMMIT:
nobody learns that the commit is done until the disk has answered. Here the writer's
connection commits with `synchronous=NORMAL` (the frames are written to the WAL, not synced)
and the writer fdatasyncs the WAL file itself before it hands a result back: what FULL
does, and the same cost, but the moment between the two is the writer's to use. A write
queued with `write_then(..., durable=False)` gets its continuation at COMMIT: the engine
queues a run's transition that way when the run's next node is pure computation, so that
node runs while the fsync is under way; everything else, and every blocking write, is
handed back after the fsync. The committer thread syncs each batch itself before the next
(the next batch gathers meanwhile); a writer whose continuation ran at COMMIT leaves its
fsync to the sync thread and goes on; a writer waiting for its result syncs on its own
thread. One fsync covers every commit made before it began, and the sync thread lets
commits that nobody waits for gather (up to LAZY_S or LAZY_COMMITS, ended at once by a
commit somebody waits for), so a run of pure steps shares its fsyncs. The WAL is
append-only and replayed as a prefix, so a power cut takes only commits nothing outside
has been told of: a step with an effect outside the database runs only after the commit
before it is on disk. Readers on other connections can see a commit before its fsync
returns, so whatever leaves the device first calls `durable()` (the sync publisher does,
before each batch). Needs WAL mode and SQLite 3.33 or later (see `_commit`); otherwise
SQLite syncs inside COMMIT as configured.
"""
from __future__ import annotations

import collections
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from edge_agent.errors import StoreError, StoreFull
from edge_agent.store.db import Store, translate
from edge_agent.store.health import Backoff, StoreHealth
from edge_agent.store.merge import Prepared, merged

log = logging.getLogger(__name__)


WriteFn = Callable[[sqlite3.Connection], Any]
Then = Callable[[bool, Any], None]


# commits whose continuations already ran (a run's pure steps) wait this long, or for this
# many more, before the sync thread syncs them, unless a commit somebody waits for comes
LAZY_S = 0.002
LAZY_COMMITS = 16


class _Full(Exception):
    """A batch met a full disk: rolled back, to be written again once there is room."""

    def __init__(self, error: StoreFull) -> None:
        self.error = error
        super().__init__(str(error))


class _Slot:
    """One queued write: its function, its outcome, and the gate its writer waits at. The
    gate is a held lock released exactly once: for the result, or to hand over the lead
    (cheaper than an Event, whose Condition allocates a lock for every wait)."""

    __slots__ = ("committed", "done", "early", "fn", "gate", "lead", "ok", "then", "value")

    def __init__(self, fn: WriteFn, then: Then | None = None, early: bool = False) -> None:
        self.fn = fn
        self.done = False
        self.committed = False  # in a COMMIT whose fsync is still to come
        self.early = early  # its continuation runs at COMMIT, before the fsync
        self.ok = False
        self.value: Any = None
        self.lead = False
        self.then = then
        if then is None:
            self.gate = threading.Lock()
            self.gate.acquire()

    def wait(self) -> None:
        self.gate.acquire()

    def settle(self, ok: bool, value: Any) -> None:
        self.ok, self.value, self.done = ok, value, True
        if self.then is None:
            self.gate.release()
            return
        try:
            self.then(ok, value)
        except Exception:  # a continuation must not break the batch
            log.exception("write continuation failed")

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
        self._pressing = False
        self._press = threading.Lock()  # held while a batch is written (see let_through)
        self._committer: threading.Thread | None = None
        self._handed = False  # the lead is with the committer (or on its way to it)
        self._committing = False  # the committer thread is leading (it syncs each batch)
        self._committer_gate = threading.Lock()
        self._committer_gate.acquire()
        self._async_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="store-submit")
        # commit, then sync (see the module's docstring): on with FULL in WAL mode
        self._defer = False
        self._sync_lock = threading.Lock()
        self._waiter_queued = threading.Condition(self._sync_lock)
        self._unsynced: list[tuple[int, list[tuple[_Slot, bool, Any]]]] = []
        self._syncing = False
        self._begun = 0      # COMMITs started (numbered before each one runs)
        self._synced = 0     # every COMMIT up to this number is on disk
        self._broken: StoreError | None = None  # an fsync failed: nothing is promised now
        self._wal_fd: int | None = None
        self._syncer: threading.Thread | None = None
        self._syncer_gate = threading.Lock()
        self._syncer_gate.acquire()
        self.commits = 0
        self.writes = 0
        self.syncs = 0
        self.health = StoreHealth()  # `retrying` while a full disk holds the writes back

    def write(self, fn: WriteFn) -> Any:
        """Run fn in a committed transaction (shared with concurrent writers); blocking."""
        self._check()
        slot = _Slot(fn)
        with self._mutex:
            self._queue.append(slot)
            lead = not self._leading
            self._leading = True
        if not lead:
            slot.wait()  # released with our result, or with the lead handed to us
            lead = slot.lead
        if lead:
            self._lead_until(slot)
            if not slot.done:
                slot.wait()  # committed: released again once the commit is on disk
        if slot.ok:
            return slot.value
        raise slot.value

    def write_then(self, fn: WriteFn, then: Then, *, durable: bool = True) -> None:
        """Queue fn without waiting: `then(ok, value)` is called once, after the COMMIT that
        holds it is on disk (or with the error), on whichever thread committed or synced it.
        It must be quick: the continuation of a run is handed to a scheduler, not run there.
        If nobody is committing, the caller commits now, on its own thread.

        With `durable=False` the continuation runs as soon as the COMMIT returns, before
        its fsync: for a caller whose next move has no effect outside the database (a run's
        next step that is pure computation). Commits reach the disk in the order they were
        made, and the caller's next durable write is handed back only once everything
        before it is on disk too, so nothing outside waits on a commit that is not."""
        self._check()
        slot = _Slot(fn, then, early=not durable)
        with self._mutex:
            self._queue.append(slot)
            lead = not self._leading
            self._leading = True
        if lead:
            self._lead_until(slot)

    def _lead_until(self, own: _Slot | None) -> None:
        """Commit batches until our own write is in one, then pass the lead on: to the
        oldest writer waiting for its result, or, with only continuations queued, to the
        committer thread (a writer whose own write is done has its own work to get back to:
        the event loop, other runs). The committer (`own` None) leads until the queue is
        empty, syncing each batch before the next. Then the commits are synced: here when
        this writer waits for its result or nothing else is queued (no hand-off for a lone
        writer), else by the sync thread (a writer whose continuation runs at COMMIT, or
        whose lead passes on, has work to get back to)."""
        inline = True
        while True:
            with self._mutex:
                if not self._queue:
                    self._leading = False
                    break
                if own is not None and (own.done or own.committed):
                    # leading stays True: the lead passes on
                    inline = own.then is None
                    waiter = next((s for s in self._queue if s.then is None), None)
                    if waiter is not None:
                        waiter.hand_lead()
                        break
                    if not self._closed:  # after shutdown the last leader drains the queue
                        self._wake_committer()
                        break
                batch = [self._queue.popleft()
                         for _ in range(min(self.max_batch, len(self._queue)))]
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 - each writer raises it; the lead
                for slot in batch:        # is still released or passed on below
                    if not slot.done:
                        slot.settle(False, exc)
            if self._defer and own is None:
                # the committer syncs each batch itself: the runs whose continuations ran at
                # COMMIT work out their next steps meanwhile, and the next batch gathers them
                self._sync(inline=True)
        if self._defer:
            # a writer whose continuation already ran at COMMIT has its work to get back to
            self._sync(inline=inline and not (own is not None and own.early), own=own)

    def let_through(self) -> None:
        """Called by threads between pieces of Python work: while a batch is being written
        (the part that needs the GIL between its calls into SQLite) wait for it, briefly, so
        the commit everyone waits for is not queued behind them for the GIL."""
        if self._pressing and self._press.acquire(timeout=0.002):
            self._press.release()

    def _wake_committer(self) -> None:
        """Hand the lead to the committer thread (mutex held; started on first use)."""
        if self._committer is None:
            self._committer = threading.Thread(target=self._commit_loop, daemon=True,
                                               name="store-commit")
            self._committer.start()
        self._handed = True
        self._committer_gate.release()

    def _commit_loop(self) -> None:
        while True:
            self._committer_gate.acquire()  # released once per hand-over, or at shutdown
            with self._mutex:
                handed, self._handed = self._handed, False
            if handed:
                self._committing = True
                try:
                    self._lead_until(None)
                finally:
                    self._committing = False
            if self._closed:
                return

    # commit, then sync ------------------------------------------------------------------------
    def _check(self) -> None:
        if self._closed:
            raise StoreError("store writer is shut down")
        if self._broken is not None:
            raise self._broken

    def _sync(self, *, inline: bool, own: _Slot | None = None) -> None:
        """See that the commits not yet on disk get synced: on this thread (until `own` is
        handed back), or by the sync thread. A sync already running takes them on its next
        round."""
        with self._sync_lock:
            if self._syncing or not self._unsynced:
                if self._syncing and inline:
                    # this writer would sync now: the sync thread, if gathering, syncs now
                    self._waiter_queued.notify()
                return
            self._syncing = True
            if not inline and not self._closed:  # after shutdown the sync thread may be gone
                self._hand_sync()
                return
        self._sync_rounds(own)

    def _hand_sync(self) -> None:
        """Let the sync thread carry on (sync lock held; started on first use)."""
        if self._syncer is None:
            self._syncer = threading.Thread(target=self._sync_thread, daemon=True,
                                            name="store-sync")
            self._syncer.start()
        self._syncer_gate.release()

    def _sync_thread(self) -> None:
        while True:
            self._syncer_gate.acquire()  # released once per hand-over, or at shutdown
            if self._syncing:
                self._sync_rounds(lazy=True)
            if self._closed and not self._syncing:
                return

    def _sync_rounds(self, own: _Slot | None = None, lazy: bool = False) -> None:
        """fdatasync the WAL until no commit is left unsynced, handing out the results of the
        commits each fsync covered (their continuations run here). A writer syncing for its
        own result leaves the rounds after it to the sync thread: it has work to get back to.
        The sync thread (`lazy`) lets commits that nobody waits for (their continuations ran
        at COMMIT) gather for up to LAZY_S or LAZY_COMMITS before it syncs them: fewer
        fsyncs, and fewer trips through the GIL for the thread that is making them."""
        gathered = False
        while True:
            with self._sync_lock:
                if own is not None and own.done and self._unsynced and not self._closed:
                    self._hand_sync()  # still syncing: the sync thread goes on
                    return
                if lazy and not gathered and self._unsynced and not self._closed and \
                        not self._committing and len(self._unsynced) < LAZY_COMMITS and \
                        not any(results for _, results in self._unsynced):
                    gathered = True
                    self._waiter_queued.wait(LAZY_S)  # a commit somebody waits for ends it
                    continue
                gathered = False
                taken, self._unsynced = self._unsynced, []
                if not taken:
                    self._syncing = False
                    return
            error = self._broken
            if error is None:
                try:
                    os.fdatasync(self._wal())
                except OSError as exc:
                    # an fsync that failed once cannot be trusted again (the kernel may have
                    # dropped the pages): every later write fails, and the daemon's watchdog
                    # stops, so it restarts and recovers from what is on disk
                    error = self._broken = StoreError(
                        f"{self.store.path}: could not make commits durable: {exc}")
                    log.critical("%s", error)
            with self._sync_lock:
                self.syncs += 1
                if error is None:
                    self._synced = taken[-1][0]
            for _, results in taken:
                for slot, ok, value in results:
                    if error is None:
                        slot.settle(ok, value)
                    else:
                        slot.settle(False, error)

    def _wal(self) -> int:
        """A descriptor of the WAL file. SQLite removes the WAL only when the last connection
        to the database closes, and the writer's stays open until shutdown, so one opened
        after the first commit is the WAL for the writer's lifetime. (Not checked on each
        sync: a stat of the file just before its fdatasync makes the fdatasync slower.)"""
        fd = self._wal_fd
        if fd is None:
            with self._sync_lock:
                if self._wal_fd is None:
                    self._wal_fd = os.open(self.store.path + "-wal",
                                           os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                fd = self._wal_fd
        return fd

    def durable(self) -> None:
        """Return once every commit that another connection may have seen is on disk. Call
        it between reading what this writer wrote and sending it off the device. Costs
        nothing when every commit is synced already, one fsync when not."""
        if not self._defer:
            return
        with self._sync_lock:
            if self._synced >= self._begun:
                return
        if self._broken is not None:
            raise self._broken
        try:
            os.fdatasync(self._wal())  # covers every frame written before it began
        except OSError as exc:
            raise StoreError(f"{self.store.path}: could not make commits durable: {exc}") \
                from exc

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
            if self._committer is not None and not self._handed:
                self._committer_gate.release()  # it is waiting for a lead: let it go
            with self._sync_lock:
                if self._syncer is not None and not self._syncing:
                    self._syncer_gate.release()  # it is waiting for a sync: let it go
                self._waiter_queued.notify_all()  # or gathering commits: sync them now
                syncing = self._syncing
            if self._conn is not None and not self._leading and not syncing:
                self._conn.close()
                self._conn = None
                if self._wal_fd is not None:
                    os.close(self._wal_fd)
                    self._wal_fd = None

    def _commit(self, batch: list[_Slot]) -> None:
        if self._conn is None:
            conn = self.store._open()
            # commit, then sync needs WAL mode, and a SQLite that syncs the WAL header when
            # it restarts the WAL under NORMAL too (as under FULL); older ones sync in COMMIT
            if self.store.synchronous.upper() in ("FULL", "EXTRA") and \
                    sqlite3.sqlite_version_info >= (3, 33) and \
                    conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                conn.execute("PRAGMA synchronous=NORMAL")  # the writer syncs (see above)
                self._defer = True
            self._conn = conn
        conn = self._conn
        backoff: Backoff | None = None
        while True:
            self._press.acquire()
            self._pressing = True
            try:
                self._write_batch(conn, batch)
            except _Full as full:
                # a full disk: SQLite rolled the batch back and the same batch is written
                # again once there is room; its writers wait, and no run fails for it
                if self._closed:
                    for slot in batch:
                        slot.settle(False, full.error)
                    return
                if backoff is None:
                    backoff = Backoff()
                    log.warning("%s; retrying until there is room", full.error)
                self.health.retrying(f"disk full: {full.error}")
            else:
                if backoff is not None:
                    log.warning("%s: writing again after a full disk", self.store.path)
                    self.health.ok()
                return
            finally:
                if self._pressing:
                    self._pressing = False
                    self._press.release()
            backoff.wait()

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Slot]) -> None:
        single = len(batch) == 1
        results: list[tuple[_Slot, bool, Any]] = []
        rest = batch
        try:
            conn.execute("BEGIN IMMEDIATE")
            prepared = [slot for slot in batch if isinstance(slot.fn, Prepared)]
            if len(prepared) > 1 and merged(conn, [slot.fn for slot in prepared
                                                   if isinstance(slot.fn, Prepared)]):
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
                    if isinstance(exc, StoreFull):  # not the write's fault: all again
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise _Full(exc) from None
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
            self._pressing = False
            self._press.release()
            if self._defer:
                with self._sync_lock:
                    self._begun += 1  # before COMMIT: from here readers may see it
                    number = self._begun
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            err = translate(self.store.path, exc)
            if isinstance(err, StoreFull):
                raise _Full(err) from None
            for slot in batch:
                if not slot.done:
                    slot.settle(False, err)
            return
        self.commits += 1
        self.writes += len(results)
        if self._defer:  # handed back once the fsync that covers this COMMIT returns
            later = []
            for slot, ok, value in results:
                slot.committed = True
                if slot.early:
                    slot.settle(ok, value)  # its next move needs the COMMIT, not the disk
                else:
                    later.append((slot, ok, value))
            with self._sync_lock:
                self._unsynced.append((number, later))  # synced even when nobody waits
                if later or len(self._unsynced) >= LAZY_COMMITS:
                    self._waiter_queued.notify()  # the sync thread, if gathering: sync now
            return
        for slot, ok, value in results:
            slot.settle(ok, value)
