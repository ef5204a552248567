"""Commit, then sync: the writer commits without waiting for the disk and fdatasyncs the WAL
itself before it hands a result back (see edge_agent/store/writer.py)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import StoreError
from edge_agent.store import GroupCommitter, Store
from edge_agent.store import writer as writer_module

MIGRATIONS = [(1, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])]
INSERT = "INSERT INTO t (v) VALUES (?)"


class HeldSync:
    """os.fdatasync with a gate: each sync waits until the test lets it through."""

    def __init__(self) -> None:
        self.real = os.fdatasync
        self.gate = threading.Event()
        self.started = threading.Event()
        self.count = 0
        self.fail: OSError | None = None

    def __call__(self, fd: int) -> None:
        self.started.set()
        assert self.gate.wait(10), "a sync was never let through"
        self.count += 1
        if self.fail is not None:
            raise self.fail
        self.real(fd)


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldSync:
    h = HeldSync()
    monkeypatch.setattr(writer_module.os, "fdatasync", h)
    return h


def count(s: Store) -> int:
    return int(s.conn.execute("SELECT count(*) FROM t").fetchone()[0])


def test_results_wait_for_the_fsync_and_early_continuations_do_not(
        tmp_path: Path, held: HeldSync) -> None:
    s = Store(tmp_path / "d.db", migrations=MIGRATIONS)
    w = GroupCommitter(s)
    try:
        # a blocking write returns only after its commit is on disk
        done = threading.Event()
        t = threading.Thread(target=lambda: (w.write(lambda c: c.execute(INSERT, ("a",))),
                                             done.set()))
        t.start()
        assert held.started.wait(5)
        assert w._defer and not done.wait(0.2)
        assert count(s) == 1  # committed (another connection sees it) but not yet handed back
        held.gate.set()
        assert done.wait(5)
        t.join(5)

        # a durable continuation waits for the fsync; an early one runs at COMMIT
        held.gate.clear()
        held.started.clear()
        events: list[str] = []
        landed = threading.Event()
        w.write_then(lambda c: c.execute(INSERT, ("b",)),
                     lambda ok, v: (events.append(f"early {ok}"), landed.set()), durable=False)
        assert landed.wait(5) and events == ["early True"]
        assert held.started.wait(5)  # its fsync is under way (the sync thread's)
        synced = threading.Event()
        w.write_then(lambda c: c.execute(INSERT, ("c",)),
                     lambda ok, v: (events.append(f"durable {ok}"), synced.set()))
        assert not synced.wait(0.2), "handed back before the fsync"
        held.gate.set()
        assert synced.wait(5) and events == ["early True", "durable True"]
        assert count(s) == 3 and w.syncs >= 2
    finally:
        held.gate.set()
        w.shutdown()
        s.close()


def test_durable_syncs_what_a_reader_may_have_seen(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(writer_module.os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    s = Store(tmp_path / "d.db", migrations=MIGRATIONS)
    w = GroupCommitter(s)
    try:
        w.durable()  # nothing committed: nothing to do
        assert calls == []
        w.write(lambda c: c.execute(INSERT, ("a",)))
        n = len(calls)
        assert n >= 1
        w.durable()  # everything committed is synced already: no fsync
        assert len(calls) == n
        w._begun += 1  # a COMMIT under way (numbered before it runs): its frames may be seen
        w.durable()
        assert len(calls) == n + 1
    finally:
        w.shutdown()
        s.close()


def test_a_failed_fsync_fails_its_writes_and_every_later_one(tmp_path: Path,
                                                             held: HeldSync) -> None:
    s = Store(tmp_path / "d.db", migrations=MIGRATIONS)
    w = GroupCommitter(s)
    held.fail = OSError(5, "Input/output error")
    held.gate.set()
    try:
        with pytest.raises(StoreError, match="could not make commits durable"):
            w.write(lambda c: c.execute(INSERT, ("a",)))
        # the kernel may have dropped the pages: no later write is promised either, and the
        # daemon's watchdog (a write) stops, so it is restarted and recovers from the disk
        with pytest.raises(StoreError, match="could not make commits durable"):
            w.write(lambda c: c.execute(INSERT, ("b",)))
        with pytest.raises(StoreError):
            w.write_then(lambda c: None, lambda ok, v: None)
        with pytest.raises(StoreError):
            w._begun += 1
            w.durable()
    finally:
        w.shutdown()
        s.close()


def test_normal_synchronous_commits_as_configured(tmp_path: Path) -> None:
    """With synchronous=NORMAL nothing is synced per commit: the writer does not either."""
    s = Store(tmp_path / "d.db", migrations=MIGRATIONS, synchronous="NORMAL")
    w = GroupCommitter(s)
    try:
        w.write(lambda c: c.execute(INSERT, ("a",)))
        assert not w._defer and w.syncs == 0
        w.durable()  # a no-op
    finally:
        w.shutdown()
        s.close()


def test_many_writers_share_fsyncs_and_all_land(tmp_path: Path) -> None:
    s = Store(tmp_path / "d.db", migrations=MIGRATIONS)
    w = GroupCommitter(s)
    got: list[Any] = []
    lock = threading.Lock()

    def writer(t: int) -> None:
        for i in range(100):
            w.write(lambda c, i=i: c.execute(INSERT, (f"{t}-{i}",)))
            with lock:
                got.append((t, i))
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
            assert not th.is_alive()
        assert len(got) == 800 and count(s) == 800
        assert w.syncs < w.writes  # fsyncs were shared
    finally:
        w.shutdown()
        s.close()
    syncer = w._syncer
    if syncer is not None:
        syncer.join(5)
        assert not syncer.is_alive()  # no thread left behind


def test_nothing_is_handed_back_that_a_power_cut_could_take(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """What survives a power cut is what the last fsync covered: here, a copy of the database
    and its WAL taken as each fsync begins. Whenever a result is handed back (a blocking
    write returns, a durable continuation runs), the copy of the latest fsync to complete
    must already hold that write; early continuations may run before it does."""
    import shutil
    import sqlite3

    path = tmp_path / "d.db"
    snaps: list[Path] = []
    snap_lock = threading.Lock()
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        with snap_lock:
            d = tmp_path / f"snap{len(snaps) + 100000}"
            d.mkdir()
            for suffix in ("", "-wal"):  # the bytes the fsync is about to make durable
                shutil.copyfile(f"{path}{suffix}", d / f"d.db{suffix}")
        real(fd)
        with snap_lock:
            snaps.append(d)
    monkeypatch.setattr(writer_module.os, "fdatasync", fdatasync)
    s = Store(path, migrations=MIGRATIONS)
    w = GroupCommitter(s)
    handed: list[tuple[str, int]] = []  # (value, fsyncs completed when it was handed back)
    lock = threading.Lock()

    def told(v: str) -> None:
        with lock, snap_lock:
            handed.append((v, len(snaps)))

    def writer(t: int) -> None:
        for i in range(40):
            v = f"{t}-{i}"
            if i % 3 == 0:
                w.write(lambda c, v=v: c.execute(INSERT, (v,)))
                told(v)
            elif i % 3 == 1:
                done = threading.Event()
                w.write_then(lambda c, v=v: c.execute(INSERT, (v,)),
                             lambda ok, _, v=v: (told(v), done.set()))
                assert done.wait(10)
            else:
                done = threading.Event()
                w.write_then(lambda c, v=v: c.execute(INSERT, (v,)),
                             lambda ok, _: done.set(), durable=False)
                assert done.wait(10)
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
            assert not th.is_alive()
    finally:
        w.shutdown()
        s.close()
    assert len(handed) == 4 * 27 and snaps
    for v, k in handed:
        assert k > 0, f"{v} was handed back before any fsync"
        conn = sqlite3.connect(snaps[k - 1] / "d.db")  # recovers from the copied WAL
        try:
            assert conn.execute("SELECT count(*) FROM t WHERE v = ?", (v,)).fetchone()[0] == 1, \
                f"{v} was handed back but a power cut after fsync {k} would lose it"
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()


def test_commits_nobody_waits_for_gather_until_somebody_does(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Commits whose continuations ran at COMMIT (a run's pure steps) are synced in a group:
    the sync thread waits for more (up to LAZY_S or LAZY_COMMITS) unless a commit that
    somebody waits for arrives, which it syncs with them at once."""
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(writer_module.os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))
    monkeypatch.setattr(writer_module, "LAZY_S", 30.0)
    monkeypatch.setattr(writer_module, "LAZY_COMMITS", 4)
    s = Store(tmp_path / "d.db", migrations=MIGRATIONS)
    w = GroupCommitter(s)
    try:
        w.write(lambda c: None)
        n = len(calls)

        def early(v: str) -> None:
            done = threading.Event()
            w.write_then(lambda c: c.execute(INSERT, (v,)), lambda ok, _: done.set(),
                         durable=False)
            assert done.wait(5)
        early("a")
        early("b")
        threading.Event().wait(0.3)
        assert len(calls) == n  # gathering: nobody waits for a or b
        w.write(lambda c: c.execute(INSERT, ("c",)))  # somebody waits: all three synced now
        assert len(calls) == n + 1 and w._synced == w._begun
        for v in "defg":  # four commits nobody waits for: synced without waiting LAZY_S
            early(v)
        for _ in range(500):
            if w._synced == w._begun:
                break
            threading.Event().wait(0.01)
        assert w._synced == w._begun and count(s) == 7
    finally:
        w.shutdown()
        s.close()
