"""Runs are driven by a few workers: a step's commit does not park a thread, a wait hands
the queue to another worker, continuations reach the committer, nothing leaks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from support.engine import Harness

from edge_agent.engine import ToolBinding
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.engine.scheduler import Scheduler
from edge_agent.errors import StoreError
from edge_agent.store import GroupCommitter, Prepared, Store
from edge_agent.store.merge import _multi_row


class Gate:
    """A tool that waits until the test opens it (I/O that takes a while)."""

    idempotent = True

    def __init__(self) -> None:
        self.name = "gate"
        self.open = threading.Event()
        self.waiting = 0
        self._lock = threading.Lock()

    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        with self._lock:
            self.waiting += 1
        assert self.open.wait(20)
        return {"opened": True}


class Compute:
    """Pure computation: declares that it never waits."""

    idempotent = True
    blocks = False
    name = "compute"

    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        return {"n": int(args.get("n", 0)) + 1}


def _chain(name: str, tool: str, k: int) -> Workflow:
    wf = Workflow(name)
    for i in range(k):
        wf.tool(f"s{i}", tool, next=f"s{i + 1}" if i + 1 < k else "done")
    wf.end("done")
    return wf


def test_runs_blocked_in_slow_calls_do_not_hold_up_the_others(db_path: Path) -> None:
    """More runs wait in a slow call than there are cores; runs of quick steps still finish
    meanwhile, because each wait hands the queue to another worker."""
    gate = Gate()
    tools = {"gate": tool_config("gate"), "compute": tool_config("compute")}
    workflows = {"slow": _chain("slow", "gate", 1).build(tools=tools),
                 "quick": _chain("quick", "compute", 5).build(tools=tools)}
    h = Harness(db_path, workflows, {"gate": ToolBinding(gate), "compute": ToolBinding(Compute())})

    async def main() -> None:
        engine = await h.start()
        try:
            slow = [h.queue("slow", {}) for _ in range(6)]
            deadline = time.monotonic() + 10
            while gate.waiting < 6 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert gate.waiting == 6  # six workers blocked at once, on a scheduler of ~2
            quick = [h.queue("quick", {}) for _ in range(8)]
            for rid in quick:
                await h.wait(rid, "completed")
                assert [s["node"] for s in h.steps(rid)] == [f"s{i}" for i in range(5)] + \
                    ["done"]
            for rid in slow:  # still in their call: nothing of them committed yet (an
                assert h.steps(rid) == []  # idempotent first node carries the run's start)
            gate.open.set()
            for rid in slow:
                await h.wait(rid, "completed")
            assert engine.sched.workers <= 32
        finally:
            gate.open.set()
            await h.stop()
    asyncio.run(main())


def test_a_blocking_task_hands_the_queue_on_and_workers_leave_at_shutdown() -> None:
    s = Scheduler(workers=1, max_workers=3)
    released = threading.Event()
    ran: list[str] = []
    b_done = threading.Event()

    def a() -> None:
        with s.blocking():
            released.wait(10)
        ran.append("a")

    def b() -> None:
        ran.append("b")
        b_done.set()
    s.submit(a)
    time.sleep(0.05)
    s.submit(b)
    assert b_done.wait(5), "b waited behind a blocked task"
    assert ran == ["b"] and s.workers == 2
    released.set()
    deadline = time.monotonic() + 5
    while ran != ["b", "a"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ran == ["b", "a"]
    threads = list(s._threads)
    s.shutdown()
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    # a continuation of work under way still runs after shutdown, on a thread of its own
    # (the caller may be the store's committer, which must not run a run's steps)
    where: list[str] = []
    ran_late = threading.Event()
    s.submit(lambda: (where.append(threading.current_thread().name), ran_late.set()))
    assert ran_late.wait(5)
    assert where == ["run-late"]


def test_a_woken_worker_lets_a_batch_through_before_its_task() -> None:
    """A parked worker woken by a commit's continuation calls `between` (the writer's
    let_through) before running the task, not only before it parked."""
    events: list[str] = []
    s = Scheduler(workers=1, max_workers=1, between=lambda: events.append("between"))
    done = threading.Event()
    s.submit(lambda: events.append("a"))
    deadline = time.monotonic() + 5
    while s._parked == 0 and time.monotonic() < deadline:  # the worker parks after a
        time.sleep(0.005)
    events.append("submit b")
    s.submit(lambda: (events.append("b"), done.set()))
    assert done.wait(5)
    s.shutdown()
    after = events[events.index("submit b"):]
    assert after[:2] == ["submit b", "between"] and "b" in after, events


def test_blocking_outside_the_workers_changes_nothing() -> None:
    s = Scheduler(workers=1, max_workers=2)
    with s.blocking():
        assert s._blocked == 0
    s.shutdown()


def test_write_then_continues_after_the_commit_and_the_committer_takes_over(
        tmp_path: Path) -> None:
    store = Store(tmp_path / "w.db")
    w = GroupCommitter(store)
    insert = "INSERT INTO telemetry_marks (name, value) VALUES (?, ?)"
    try:
        # nobody committing: the caller commits at once, and the continuation has run when
        # write_then returns, after the row is durable
        seen: list[tuple[bool, Any, bool]] = []

        def then(ok: bool, value: Any) -> None:
            n = store.read(lambda c: c.execute("SELECT count(*) FROM telemetry_marks WHERE"
                                               " name = 'a'").fetchone()[0])
            seen.append((ok, value, n == 1))
        w.write_then(Prepared([(insert, ("a", 1))]), then)
        assert seen == [(True, None, True)]

        # an error reaches the continuation, typed
        errors: list[Any] = []
        w.write_then(Prepared([(insert, ("a", 2))]), lambda ok, v: errors.append((ok, v)))
        assert len(errors) == 1 and errors[0][0] is False
        assert isinstance(errors[0][1], StoreError)

        # while a writer leads, continuations queue without waiting; once the leader's own
        # write is done, it goes back to its caller and the committer thread commits them
        gate, leading = threading.Event(), threading.Event()
        holder = threading.Thread(target=lambda: w.write(
            lambda c: (leading.set(), gate.wait(10))))
        holder.start()
        assert leading.wait(10)
        where: list[str] = []
        done = threading.Event()

        def later(ok: bool, value: Any) -> None:
            where.append(threading.current_thread().name)
            if len(where) == 3:
                done.set()
        t0 = time.monotonic()
        for i in range(3):
            w.write_then(Prepared([(insert, (f"b{i}", i))]), later)
        assert time.monotonic() - t0 < 1.0 and where == []  # queued, not waited for
        gate.set()
        holder.join(10)
        assert done.wait(10)
        # handed back by the store's own threads (committed by the committer, synced by it
        # or by the sync thread), never by the writer that led before
        assert len(where) == 3 and set(where) <= {"store-commit", "store-sync"}, where
        assert store.read(lambda c: c.execute("SELECT count(*) FROM telemetry_marks WHERE"
                                              " name LIKE 'b%'").fetchone()[0]) == 3
        committer = w._committer
        assert committer is not None and committer.is_alive()
    finally:
        w.shutdown()
        store.close()
    committer.join(5)
    assert not committer.is_alive()  # no thread left behind by a writer that is shut down


def test_multi_row_statements_write_what_row_by_row_statements_write(tmp_path: Path) -> None:
    """The merged forms (multi-row INSERT, UPDATE ... FROM VALUES) leave the same rows as
    the one-row statements run one by one; a batch naming one run twice, or a statement of
    another shape, runs row by row."""
    def fresh(name: str) -> Store:
        s = Store(tmp_path / name)
        for i in range(4):
            s.conn.execute("INSERT INTO runs (run_id, workflow, status, input, context,"
                           " created_at, updated_at) VALUES (?, 'w', 'running', '{}', '{}',"
                           " 0, 0)", (f"r{i}",))
        return s
    steps = [q.step_insert(run_id=f"r{i}", node="n", visit=1, attempt=1, status="completed",
                           output={"i": i, "quote": "it's"}, started_at=1.5, finished_at=2.25,
                           call=("t", f"k{i}", {"a": [i]})) for i in range(4)]
    moves = [q.checkpoint_update(f"r{i}", 3.0 + i, node=f"m{i}", context={"x": i},
                                 visits={"m": i}, status=None if i % 2 else "running")
             for i in range(4)]
    a, b = fresh("a.db"), fresh("b.db")
    try:
        for sql, params in steps + moves:
            a.conn.execute(sql, params)
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for sql, params in steps + moves:
            groups.setdefault(sql, []).append(params)
        merged = 0
        for sql, rows in groups.items():
            multi = _multi_row(sql, rows)
            if multi is None:
                b.conn.executemany(sql, rows)
            else:
                merged += 1
                b.conn.execute(*multi)
        assert merged == 3  # the steps, and both shapes of the checkpoint update
        for table, order in (("steps", "id"), ("runs", "run_id")):
            rows_a = [tuple(r) for r in a.conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
            rows_b = [tuple(r) for r in b.conn.execute(f"SELECT * FROM {table} ORDER BY {order}")]
            assert rows_a == rows_b
    finally:
        a.close()
        b.close()
    twice = [moves[0][1], moves[0][1]]
    assert _multi_row(moves[0][0], twice) is None
    assert _multi_row("DELETE FROM runs WHERE run_id = ?", [("a",), ("b",)]) is None
    assert _multi_row(steps[0][0], [steps[0][1]]) is None  # one row: as it is
