"""The device database: pragmas, nesting, migrations, full disk, two processes, group commit."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from edge_agent.errors import SchemaTooNew, StoreError, StoreFull
from edge_agent.store import GroupCommitter, Store

MIGRATIONS = [(1, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]),
              (2, ["ALTER TABLE t ADD COLUMN w TEXT"])]


def test_pragmas_and_schema(tmp_path: Path) -> None:
    s = Store(tmp_path / "a.db")
    try:
        c = s.conn
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert c.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert c.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"runs", "steps", "tool_calls", "approvals", "timers", "outbox"} <= tables
    finally:
        s.close()
    s = Store(tmp_path / "b.db", synchronous="NORMAL")
    assert s.conn.execute("PRAGMA synchronous").fetchone()[0] == 1
    s.close()


def test_atomic_nests_with_savepoints(tmp_path: Path) -> None:
    s = Store(tmp_path / "a.db", migrations=MIGRATIONS)
    with s.atomic() as c:
        c.execute("INSERT INTO t (v) VALUES ('outer')")
        with pytest.raises(RuntimeError), s.atomic() as c2:
            c2.execute("INSERT INTO t (v) VALUES ('inner')")
            raise RuntimeError("boom")
        with s.atomic() as c3:
            c3.execute("INSERT INTO t (v) VALUES ('inner2')")
    assert [r[0] for r in s.conn.execute("SELECT v FROM t ORDER BY id")] == ["outer", "inner2"]
    with pytest.raises(ValueError), s.atomic() as c:
        c.execute("INSERT INTO t (v) VALUES ('lost')")
        raise ValueError
    assert s.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    s.close()


def test_migrations_apply_once_and_refuse_newer(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    Store(path, migrations=MIGRATIONS[:1]).close()
    s = Store(path, migrations=MIGRATIONS)
    assert s.conn.execute("SELECT version FROM schema_version").fetchone()[0] == 2
    s.conn.execute("INSERT INTO t (v, w) VALUES ('x', 'y')")  # column from migration 2
    s.close()
    Store(path, migrations=MIGRATIONS).close()  # idempotent
    with pytest.raises(SchemaTooNew, match="schema version 2 is newer"):
        Store(path, migrations=MIGRATIONS[:1])
    with pytest.raises(SchemaTooNew):
        Store(path, migrations=MIGRATIONS[:1], readonly=True)


def test_failed_migration_leaves_nothing_half_done(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    Store(path, migrations=MIGRATIONS[:1]).close()
    broken = MIGRATIONS[:1] + [(2, ["ALTER TABLE t ADD COLUMN w TEXT", "SYNTAX ERROR HERE"])]
    with pytest.raises(StoreError):
        Store(path, migrations=broken)
    s = Store(path, migrations=MIGRATIONS)  # the good migration 2 still applies cleanly
    assert s.conn.execute("SELECT version FROM schema_version").fetchone()[0] == 2
    s.close()


def test_full_database_is_a_typed_error_and_recovers(tmp_path: Path) -> None:
    s = Store(tmp_path / "full.db", migrations=MIGRATIONS)
    s.write(lambda c: c.execute("INSERT INTO t (v) VALUES ('kept')"))
    pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
    s.conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(StoreFull) as info:
        for _ in range(1000):
            s.write(lambda c: c.execute("INSERT INTO t (v) VALUES (?)", ("x" * 4000,)))
    assert info.value.retryable and "full" in str(info.value)
    assert s.conn.execute("SELECT v FROM t WHERE id = 1").fetchone()[0] == "kept"
    assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    s.conn.execute("PRAGMA max_page_count = 1000000")
    s.write(lambda c: c.execute("INSERT INTO t (v) VALUES ('again')"))
    s.close()


def test_group_commit_shares_commits_and_isolates_failures(tmp_path: Path) -> None:
    s = Store(tmp_path / "g.db", migrations=MIGRATIONS)
    w = GroupCommitter(s)
    try:
        def bad(c: sqlite3.Connection) -> None:
            c.execute("INSERT INTO t (v) VALUES ('bad')")
            raise KeyError("nope")
        gate = threading.Event()  # holds the writer, so the writes below queue up behind it
        first = w.submit(lambda c: gate.wait(10))
        # 20 writers at once, 25 writes each (submit alone has two threads: only one write
        # would wait behind the gate at a time, and nothing could be shared)
        pool = ThreadPoolExecutor(max_workers=20)
        futures = [pool.submit(w.write, lambda c, i=i: c.execute(
            "INSERT INTO t (v) VALUES (?)", (str(i),))) for i in range(500)]
        failing = w.submit(bad)
        time.sleep(0.2)  # the writers are queued behind the gate
        gate.set()
        first.result(timeout=10)
        for f in futures:
            f.result(timeout=10)
        pool.shutdown()
        with pytest.raises(KeyError):
            failing.result(timeout=10)
        assert s.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 500
        assert s.conn.execute("SELECT count(*) FROM t WHERE v = 'bad'").fetchone()[0] == 0
        assert w._defer  # FULL in WAL mode: the writer syncs, outside the commit
        assert w.syncs < w.writes  # the writes really shared fsyncs
    finally:
        w.shutdown()
        s.close()


WRITER = textwrap.dedent("""
    import sys, time
    from edge_agent.store import Store
    s = Store(sys.argv[1], migrations=[(1, ["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"])])
    end = time.time() + float(sys.argv[2])
    n = 0
    while time.time() < end:
        with s.atomic() as c:
            c.execute("INSERT INTO t (v) VALUES (?)", (sys.argv[3],))
            c.execute("SELECT count(*) FROM t").fetchone()
        n += 1
    print(n)
""")


def test_two_processes_never_see_database_is_locked(tmp_path: Path) -> None:
    path = tmp_path / "two.db"
    Store(path, migrations=MIGRATIONS[:1]).close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), "3", name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in ("daemon", "cli")]
    reads = 0
    errors: list[str] = []

    def reader() -> None:
        nonlocal reads
        s = Store(path, migrations=MIGRATIONS[:1], readonly=True)
        try:
            while any(p.poll() is None for p in procs):
                s.conn.execute("SELECT count(*) FROM t").fetchone()
                reads += 1
        except Exception as exc:  # noqa: BLE001
            errors.append(str(exc))
        finally:
            s.close()
    t = threading.Thread(target=reader)
    t.start()
    outs = [p.communicate(timeout=60) for p in procs]
    t.join()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err
        assert int(out) > 2  # each wrote all along (7 in 3 s under a full suite's load)
    assert not errors and reads > 10
    s = Store(path, migrations=MIGRATIONS[:1])
    total = s.conn.execute("SELECT count(*) FROM t").fetchone()[0]
    assert total == sum(int(o) for o, _ in outs)
    s.close()


def test_group_commit_under_sixteen_writers_settles_every_write(tmp_path: Path) -> None:
    """Leadership passes from writer to writer; every write gets its own outcome, once."""
    s = Store(tmp_path / "g16.db", migrations=MIGRATIONS)
    w = GroupCommitter(s)
    outcomes: dict[tuple[int, int], str] = {}

    def writer(t: int) -> None:
        for i in range(150):
            def fn(c: sqlite3.Connection, t: int = t, i: int = i) -> int:
                c.execute("INSERT INTO t (v) VALUES (?)", (f"{t}-{i}",))
                if i % 37 == 0:
                    raise ValueError("refused")
                return i
            try:
                outcomes[(t, i)] = f"ok:{w.write(fn)}"
            except ValueError:
                outcomes[(t, i)] = "refused"
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(16)]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
            assert not th.is_alive(), "a writer hangs"
        refused = {k for k, v in outcomes.items() if v == "refused"}
        assert len(outcomes) == 16 * 150
        assert refused == {(t, i) for t in range(16) for i in range(0, 150, 37)}
        assert all(v == f"ok:{k[1]}" for k, v in outcomes.items() if k not in refused)
        rows = {v for (v,) in s.conn.execute("SELECT v FROM t")}
        assert rows == {f"{t}-{i}" for (t, i) in outcomes if (t, i) not in refused}
        assert w.syncs < w.writes / 2  # the writes really shared fsyncs
    finally:
        w.shutdown()
        s.close()


def test_a_database_of_the_previous_schema_upgrades_with_its_calls_intact(
        tmp_path: Path) -> None:
    """Migration 4 (calls journaled in step rows) on a file written by the previous release."""
    from edge_agent.engine import queries as q
    from edge_agent.store.migrations import MIGRATIONS as REAL

    path = tmp_path / "old.db"
    old = Store(path, migrations=REAL[:3])
    with old.atomic() as c:
        q.insert_run(c, run_id="r1", workflow="w", input={}, origin="local", now=1.0)
        c.execute("INSERT INTO steps (run_id, node, visit, attempt, status, output, started_at,"
                  " finished_at) VALUES ('r1', 'a', 1, 1, 'completed', '{\"ok\":true}', 1, 2)")
        q.journal_result(c, key="r1/a#1/0/0/a1", attempt=1, run_id="r1", node="a#1",
                         tool="read", args={"x": 1}, status="ok", result={"ok": True},
                         error=None, error_kind=None, started_at=1.0, now=2.0)
    old.close()
    s = Store(path)
    try:
        assert s.conn.execute("SELECT version FROM schema_version").fetchone()[0] == \
            max(v for v, _ in REAL)
        with s.atomic() as c:
            q.insert_step(c, run_id="r1", node="b", visit=1, attempt=1, status="completed",
                          output={"ok": 2}, started_at=3.0, finished_at=4.0,
                          call=("read", "r1/b#1/0/0/a1", {"x": 2}))
        calls = s.read(lambda c: q.tool_calls(c, "r1"))
        assert [(c["source"], c["node"], c["idem_key"], c["args"], c["result"]) for c in calls] \
            == [("journal", "a#1", "r1/a#1/0/0/a1", {"x": 1}, {"ok": True}),
                ("step", "b#1", "r1/b#1/0/0/a1", {"x": 2}, {"ok": 2})]
        assert [st["tool"] for st in s.read(lambda c: q.steps(c, "r1"))] == [None, "read"]
    finally:
        s.close()


def _held_batch(w: GroupCommitter, writes: list[Any]) -> list[Any]:
    """Write from one thread each while the leader is busy, so the writes reach it as one
    batch; their outcomes (value or exception) in order."""
    import time

    gate = threading.Event()
    out: list[Any] = [None] * len(writes)

    def one(i: int, fn: Any) -> None:
        try:
            out[i] = w.write(fn)
        except Exception as exc:  # noqa: BLE001 - the outcome is what is checked
            out[i] = exc
    leading = threading.Event()
    holder = threading.Thread(target=lambda: w.write(
        lambda c: (leading.set(), gate.wait(10))))
    holder.start()
    assert leading.wait(10)  # the holder's write runs: the next batch is held open
    threads = [threading.Thread(target=one, args=(i, fn)) for i, fn in enumerate(writes)]
    for i, t in enumerate(threads):
        t.start()
        deadline = time.monotonic() + 10
        while w.queued < i + 1 and time.monotonic() < deadline:  # queued in this order
            time.sleep(0.001)
    gate.set()
    for t in [holder, *threads]:
        t.join(10)
    return out


def test_prepared_writes_merge_across_writers_and_fall_back_one_by_one(
        tmp_path: Path) -> None:
    """Prepared writes of one batch run as multi-row statements; when the merged form fails
    (a bad row, the outbox bound) each write runs alone and meets its own outcome."""
    from edge_agent.store import Prepared
    from sync.outbox import OutboxFull

    s = Store(tmp_path / "p.db")
    w = GroupCommitter(s)

    def write(i: int, payload: bytes = b"x" * 10, limit: int | None = None,
              prefix: str = "m") -> Prepared:
        return Prepared([("INSERT INTO telemetry_marks (name, value) VALUES (?, ?)",
                          (f"{prefix}{i}", i))], [("checkpoints", "k", payload, limit)])

    def seqs() -> list[tuple[int, str]]:
        return s.conn.execute("SELECT seq, kind FROM outbox WHERE stream = 'checkpoints'"
                              " ORDER BY seq").fetchall()
    try:
        commits = w.commits
        assert _held_batch(w, [write(i) for i in range(6)]) == [None] * 6
        assert w.commits - commits == 2  # the held write, then all six in one commit
        assert [r[0] for r in seqs()] == list(range(1, 7))
        assert s.conn.execute("SELECT count(*) FROM telemetry_marks").fetchone()[0] == 6

        # one row breaks the merged insert (a duplicate key): the others still commit
        out = _held_batch(w, [write(10), write(0), write(11)])
        assert out[0] is None and out[2] is None and isinstance(out[1], StoreError)
        assert [r[0] for r in seqs()] == list(range(1, 9))  # gap-free: 7 and 8 only

        # together over the bound, one by one under it: the first fits, the others refuse
        pending = s.conn.execute("SELECT pending_bytes FROM outbox_streams WHERE stream ="
                                 " 'checkpoints'").fetchone()[0]
        out = _held_batch(w, [write(i, b"y" * 100, limit=pending + 150, prefix="big")
                              for i in range(3)])
        assert out[0] is None and all(isinstance(e, OutboxFull) for e in out[1:])
        assert [r[0] for r in seqs()] == list(range(1, 10))
        assert s.conn.execute("SELECT count(*) FROM telemetry_marks WHERE name LIKE 'big%'"
                              ).fetchone()[0] == 1  # a refused write left no row behind
    finally:
        w.shutdown()
        s.close()


def test_a_batch_on_a_full_disk_waits_for_room_then_commits(tmp_path: Path) -> None:
    """A full disk (SQLITE_FULL) is not the writes' fault: the writer rolls the batch back,
    says `retrying (disk full: ...)` in its health, and writes the same batch again once
    there is room; no writer gets an error (issue 26, obs. 5, on the SQLite store)."""
    import time

    from edge_agent.store import Prepared

    s = Store(tmp_path / "pf.db")
    w = GroupCommitter(s)
    try:
        pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
        w.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}"))
        big = [Prepared([("INSERT INTO telemetry_marks (name, value) VALUES (?, ?)",
                          (f"{i}" + "x" * 6000, i))]) for i in range(4)]
        plain = [lambda c, p=p: p(c) for p in big]  # as plain functions: a savepoint each
        for writes in (big[:2], plain[2:]):
            out: list[Any] = []
            t = threading.Thread(target=lambda writes=writes: out.append(_held_batch(w, writes)))
            t.start()
            deadline = time.monotonic() + 10
            while w.health.state != "retrying" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert w.health.state == "retrying" and "disk full" in str(w.health.last_error)
            time.sleep(0.3)
            assert t.is_alive() and not out  # waiting for room, not failed
            assert w._conn is not None  # room again (the limit is the writer connection's)
            w._conn.execute("PRAGMA max_page_count = 1000000")
            t.join(10)
            assert out == [[None, None]], out
            assert w.health.state == "ok"
            w.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages + 2}"))
        assert s.conn.execute("SELECT count(*) FROM telemetry_marks WHERE value < 4"
                              ).fetchone()[0] == 4
        assert s.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        w.shutdown()
        s.close()
