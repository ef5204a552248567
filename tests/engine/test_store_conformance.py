"""The engine's store conformance suite: every test here runs the real engine on both of its
stores, a SQLite file (the device's) and a fresh database in a throwaway PostgreSQL cluster
(the cloud runner's), and asserts the same behaviour of each: durability across a restart,
the tool journal, durable timers, approvals, and recovery from SIGKILL. On PostgreSQL the
suite runs a second time with two runners sharing the database (run leases)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.crash_loop import kill_at_random_moments
from support.engine import (
    STAMP,
    Harness,
    LedgerError,
    LedgerTool,
    SharedTarget,
    fast_retry,
    interrupted_call,
    ledger_lines,
    record_spans,
    spans_in,
)
from support.postgres import fresh_pg_url

from edge_agent.config.model import RetryPolicy
from edge_agent.engine import ToolBinding, decide_approval
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.errors import StoreError
from edge_agent.store.opening import open_database
from sync.outbox import has_reader

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["sqlite", "postgresql", "postgresql-2-runners"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The engine's database, empty: a SQLite file's path or a postgresql:// URL; with
    `postgresql-2-runners` the harness runs two engines sharing that database through run
    leases (a SIGKILLed child process is one runner: the harness that recovers is two)."""
    if request.param == "sqlite":
        return str(tmp_path / "edge-agent.db")
    url = fresh_pg_url(request.getfixturevalue("pg_cluster"))
    return SharedTarget(url) if request.param == "postgresql-2-runners" else url


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def gated() -> Any:
    return (Workflow("gated")
            .tool("first", "stamp", args={"part": "A"}, next="check")
            .branch("check", [("input.count > 1", "second")], default="gate")
            .tool("second", "stamp", args={"part": "B"}, next="gate")
            .approval("gate", prompt="Ship it?", timeout_s=3600, next="done",
                      on_reject="rejected")
            .end("rejected", output="'rejected'")
            .end("done")
            .build(tools={"stamp": tool_config("stamp", STAMP)}))


# durability ------------------------------------------------------------------------------------
def test_a_run_survives_a_restart_and_its_record_is_whole(target: str, ledger: Path) -> None:
    stamp = LedgerTool("stamp", ledger)
    h = Harness(target, {"gated": gated()}, {"stamp": ToolBinding(stamp)})

    async def main() -> None:
        await h.start()
        rid = h.queue("gated", {"count": 2})
        await h.wait(rid, "waiting_approval")
        await h.stop()  # a new process, a new engine: only the store remembers
        await h.start()
        try:
            assert (await h.wait(rid, "waiting_approval")).node == "gate"
            decide_approval(h.writer.write, rid, approve=True, by="alice",
                            patch={"shipped_by": "alice"})
            h.engine.wake(rid)
            done = await h.wait(rid, "completed")
            assert done.context["first"] == {"done": "stamp", "part": "A"}
            assert done.context["shipped_by"] == "alice"
            assert [s["node"] for s in h.steps(rid)] == ["first", "check", "second", "gate",
                                                          "done"]
            assert stamp.calls == 2 and len(ledger_lines(ledger)) == 2  # nothing redone
            kinds = [r[0] for r in h.store.conn.execute(
                "SELECT kind FROM outbox WHERE stream = 'checkpoints' ORDER BY seq")]
            if has_reader(h.store):
                assert kinds[:2] == ["run.queued", "run.started"]
                assert kinds[-1] == "run.finished"
            else:  # the cloud runner's database: nothing reads its outbox, nothing is kept
                assert kinds == []
        finally:
            await h.stop()
    run(main())


def test_many_runs_at_once_each_commit_every_step_once(target: str, ledger: Path) -> None:
    stamp = LedgerTool("stamp", ledger, idempotent=True)
    wf = (Workflow("w").tool("a", "stamp", args_from={"part": "string(input.n)"}, next="b")
          .tool("b", "stamp", args={"part": "B"}, next="done").end("done")
          .build(tools={"stamp": tool_config("stamp", STAMP)}))
    h = Harness(target, {"w": wf}, {"stamp": ToolBinding(stamp)})

    async def main() -> None:
        await h.start()
        try:
            rids = [h.queue("w", {"n": i}) for i in range(30)]
            for rid in rids:
                await h.wait(rid, "completed", timeout=30)
            counts = h.store.read(q.count_by_status)
            assert counts == {"completed": 30}
            for rid in rids:
                assert [s["node"] for s in h.steps(rid)] == ["a", "b", "done"]
            seqs = [r[0] for r in h.store.conn.execute(
                "SELECT seq FROM outbox WHERE stream = 'checkpoints' ORDER BY seq")]
            assert seqs == list(range(1, len(seqs) + 1))  # contiguous, none lost, none twice
            assert (len(seqs) >= 30 * 3) == has_reader(h.store)  # queued, started, finished
        finally:
            await h.stop()
    run(main())


# journal ---------------------------------------------------------------------------------------
def test_the_journal_records_each_attempt_and_each_call(target: str, ledger: Path) -> None:
    flaky = LedgerTool("stamp", ledger, fail=lambda n: LedgerError(
        "busy", kind="timeout", retryable=True) if n < 3 else None)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done", retry=fast_retry(5))
          .end("done").build(tools={"stamp": tool_config("stamp", STAMP)}))
    h = Harness(target, {"w": wf}, {"stamp": ToolBinding(flaky)})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            await h.wait(rid, "completed")
            steps = [(s["node"], s["attempt"], s["status"]) for s in h.steps(rid)]
            assert steps == [("a", 1, "failed"), ("a", 2, "failed"), ("a", 3, "completed"),
                             ("done", 1, "completed")]
            calls = h.store.read(lambda c: q.tool_calls(c, rid))
            assert [(c["attempt"], c["status"]) for c in calls] == [
                (1, "error"), (2, "error"), (3, "ok")]
            assert calls[-1]["result"] == {"done": "stamp", "part": "A"}
            assert len(ledger_lines(ledger)) == 1
            retries = h.store.conn.execute(
                "SELECT count(*) FROM outbox WHERE kind = 'step.retry'").fetchone()[0]
            assert retries == (2 if has_reader(h.store) else 0)
        finally:
            await h.stop()
    run(main())


def test_spans_are_derived_from_the_store(target: str, ledger: Path) -> None:
    h = Harness(target, {"gated": gated()}, {"stamp": ToolBinding(LedgerTool("stamp", ledger))})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("gated", {"count": 1})
            run_ = await h.wait(rid, "waiting_approval")
            record_spans(h.writer)
            spans = spans_in(h.store)
            names = {s["name"] for s in spans}
            assert {s["trace_id"] for s in spans} == {run_.trace_id}
            assert any("first" in n for n in names), names
        finally:
            await h.stop()
    run(main())


# timers ----------------------------------------------------------------------------------------
def test_a_retry_backoff_survives_a_restart(target: str, ledger: Path) -> None:
    tool = LedgerTool("stamp", ledger, fail=lambda n: LedgerError(
        "x", kind="timeout", retryable=True) if n == 1 else None)
    policy = RetryPolicy(max_attempts=2, initial_delay_s=1.0, multiplier=1, jitter=0.0)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done", retry=policy)
          .end("done").build(tools={"stamp": tool_config("stamp", STAMP)}))
    h = Harness(target, {"w": wf}, {"stamp": ToolBinding(tool)})

    async def main() -> None:
        await h.start()
        rid = h.queue("w", {})
        deadline = time.time() + 5
        while tool.calls < 1 and time.time() < deadline:
            await asyncio.sleep(0.01)
        failed_at = time.time()
        await asyncio.sleep(0.1)
        await h.stop()
        store = open_database(target, readonly=True)
        try:
            row = store.read(lambda c: q.get_run(c, rid))
        finally:
            store.close()
        assert row is not None and row.node_state["attempt"] == 2
        assert row.node_state["retry_at"] > failed_at
        await h.start()
        try:
            r = await h.wait(rid, "completed")
            assert 0.8 < r.finished_at - failed_at < 1.9  # the rest of the wait, not a new one
        finally:
            await h.stop()
    run(main())


def test_an_approval_timeout_survives_a_restart(target: str) -> None:
    wf = (Workflow("w").approval("gate", prompt="go?", next="done", timeout_s=1.0,
                                 on_timeout="approve").end("done").build())
    h = Harness(target, {"w": wf}, {})

    async def main() -> None:
        await h.start()
        rid = h.queue("w", {})
        await h.wait(rid, "waiting_approval")
        created = time.time()
        await h.stop()
        await asyncio.sleep(0.3)
        await h.start()
        try:
            r = await h.wait(rid, "completed", timeout=5)
            assert 0.6 < r.finished_at - created < 1.6  # the remainder, not a fresh second
            assert r.context["gate"]["origin"] == "timeout"
        finally:
            await h.stop()
    run(main())


# approvals -------------------------------------------------------------------------------------
def test_approvals_are_decided_once_and_a_rejection_routes(target: str, ledger: Path) -> None:
    h = Harness(target, {"gated": gated()}, {"stamp": ToolBinding(LedgerTool("stamp", ledger))})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("gated", {"count": 1})
            await h.wait(rid, "waiting_approval")
            pending = h.store.read(lambda c: q.list_approvals(c, run_id=rid))
            assert [(a["node"], a["status"]) for a in pending] == [("gate", "pending")]
            aid = pending[0]["id"]
            assert h.writer.write(lambda c: q.decide(
                c, aid, status="rejected", by="bob", origin="local", note="scratched",
                patch=None, now=time.time()))
            assert not h.writer.write(lambda c: q.decide(  # decided already
                c, aid, status="approved", by="eve", origin="local", note=None, patch=None,
                now=time.time()))
            h.engine.wake(rid)
            r = await h.wait(rid, "completed")
            assert r.output == "rejected" and r.context["gate"]["by"] == "bob"
            assert h.store.read(lambda c: q.pending_approval(c, rid)) is None
        finally:
            await h.stop()
    run(main())


# crash recovery --------------------------------------------------------------------------------
def test_an_interrupted_call_asks_a_human_and_is_not_repeated(target: str,
                                                              ledger: Path) -> None:
    tool = LedgerTool("stamp", ledger)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done").end("done")
          .build(tools={"stamp": tool_config("stamp", STAMP)}))
    rid = interrupted_call(target, wf, {"part": "A"})
    h = Harness(target, {"w": wf}, {"stamp": ToolBinding(tool)})

    async def main() -> None:
        await h.start()
        try:
            await h.wait(rid, "waiting_approval")
            appr = h.store.read(lambda c: q.pending_approval(c, rid))
            assert appr["kind"] == "unknown_outcome" and tool.calls == 0
            decide_approval(h.writer.write, rid, approve=False, by="op")
            h.engine.wake(rid)
            await h.wait(rid, "completed")
            calls = h.store.read(lambda c: q.tool_calls(c, rid))
            assert [(c["attempt"], c["status"]) for c in calls] == [
                (1, "assumed_failed"), (2, "ok")]
            assert tool.calls == 1
        finally:
            await h.stop()
    run(main())


def test_a_sigkill_mid_call_leaves_an_unknown_outcome(target: str, ledger: Path) -> None:
    """A real process, killed while its non-idempotent call is under way: the next start
    finds the intent without a result and asks a person, never calling again unasked."""
    env = {**os.environ, "PYTHONPATH": str(TESTS) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-m", "support.slow_call_child", target,
                              str(ledger)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        started = ledger.with_suffix(".started")
        deadline = time.monotonic() + 60
        while not started.exists():
            assert child.poll() is None, child.stderr.read().decode()[-2000:] \
                if child.stderr else ""
            assert time.monotonic() < deadline, "the child never began its call"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    tool = LedgerTool("stamp", ledger)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done").end("done")
          .build(tools={"stamp": tool_config("stamp", STAMP)}))
    h = Harness(target, {"w": wf}, {"stamp": ToolBinding(tool)})

    async def main() -> None:
        await h.start()
        try:
            await h.wait("r1", "waiting_approval")
            assert h.store.read(lambda c: q.pending_approval(c, "r1"))["kind"] == \
                "unknown_outcome"
            decide_approval(h.writer.write, "r1", approve=True, by="op")  # it did happen
            h.engine.wake("r1")
            r = await h.wait("r1", "completed")
            assert r.context["a"] == {"outcome": "confirmed", "by": "op"}
            assert tool.calls == 0  # applied once: by the killed process, never again
        finally:
            await h.stop()
    run(main())


def test_sigkill_at_random_moments(target: str, tmp_path: Path) -> None:
    """The crash loop of test_crash.py on this store: 12 runs of a workflow with retries,
    an agent and a parallel join, killed at random moments until they all complete."""
    kill_at_random_moments(tmp_path, int(os.environ.get("CONFORMANCE_KILLS", "12")),
                           target=target)


def test_a_store_it_cannot_reach_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"^postgresql://edge:\*\*\*@127\.0\.0\.1:9/x\?"
                       r"connect_timeout=2: cannot connect") as err:
        open_database("postgresql://edge:secret@127.0.0.1:9/x?connect_timeout=2")
    assert "secret" not in str(err.value)
