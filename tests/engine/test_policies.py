"""The policies that decide after a crash, a failure or a silence: `on_unknown = "fail"` and
`"assume_failed"` for an interrupted non-idempotent call, `on_timeout = "reject"` and
`"escalate"` for an approval nobody answered, the retry backoff, and what a run waiting for
a person costs (nothing). Real SQLite file, real engine."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.engine import (
    STAMP,
    Harness,
    LedgerError,
    LedgerTool,
    fast_retry,
    interrupted_call,
    ledger_lines,
)

from edge_agent.config import load_config
from edge_agent.config.model import RetryPolicy
from edge_agent.engine import ToolBinding, decide_approval
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.errors import ConfigError


def stamp_once(policy_attempts: int, on_unknown: str) -> Any:
    return (Workflow("w")
            .tool("a", "stamp", args={"part": "A"}, next="done", on_unknown=on_unknown,
                  retry=fast_retry(policy_attempts))
            .end("done").build(tools={"stamp": tool_config("stamp", STAMP)}))


def test_on_unknown_fail_fails_the_run_without_calling_again(db_path: Path,
                                                              ledger: Path) -> None:
    tool = LedgerTool("stamp", ledger)
    wf = stamp_once(3, "fail")
    rid = interrupted_call(db_path, wf, {"part": "A"})
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(tool)})

    async def main() -> None:
        await h.start()
        try:
            r = await h.wait(rid, "failed")
            assert "unknown" in r.error and "on_unknown = fail" in r.error
            assert tool.calls == 0 and ledger_lines(ledger) == []
            calls = h.store.read(lambda c: q.tool_calls(c, rid))
            assert [c["status"] for c in calls] == ["unknown"]
            assert h.store.read(lambda c: q.pending_approval(c, rid)) is None
            assert [s["status"] for s in h.steps(rid)] == ["interrupted"]
        finally:
            await h.stop()
    asyncio.run(main())


@pytest.mark.parametrize("attempts,expect", [(3, "completed"), (1, "failed")])
def test_on_unknown_assume_failed_retries_under_the_nodes_policy(
        db_path: Path, ledger: Path, attempts: int, expect: str) -> None:
    """assume_failed counts the interrupted call as a failed attempt: with attempts left the
    call runs again (once, under a new key), with none left the run fails: no loop."""
    tool = LedgerTool("stamp", ledger)
    wf = stamp_once(attempts, "assume_failed")
    rid = interrupted_call(db_path, wf, {"part": "A"})
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(tool)})

    async def main() -> None:
        await h.start()
        try:
            r = await h.wait(rid, expect)
            calls = h.store.read(lambda c: q.tool_calls(c, rid))
            assert calls[0]["status"] == "assumed_failed"
            if expect == "completed":
                assert tool.calls == 1 and len(ledger_lines(ledger)) == 1
                assert [c["status"] for c in calls] == ["assumed_failed", "ok"]
                assert calls[1]["attempt"] == 2 and calls[1]["idem_key"] != calls[0]["idem_key"]
                assert r.context["a"] == {"done": "stamp", "part": "A"}
            else:
                assert tool.calls == 0 and ledger_lines(ledger) == []
                assert "assumed failed" in r.error
        finally:
            await h.stop()
    asyncio.run(main())


@pytest.mark.parametrize("on_timeout", ["reject", "escalate"])
def test_approval_timeout_rejects_or_escalates(db_path: Path, on_timeout: str) -> None:
    wf = (Workflow("w").approval("gate", prompt="Ship it?", next="done", timeout_s=0.3,
                                 on_timeout=on_timeout).end("done").build())
    h = Harness(db_path, {"w": wf}, {})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {"count": 1})
            if on_timeout == "reject":
                r = await h.wait(rid, "cancelled", timeout=5)
                assert "rejected at gate by timeout" in r.error
                return
            # escalated: the gate stays shut, a person is asked again, with no timeout now
            deadline = time.monotonic() + 5
            while True:
                appr = h.store.read(lambda c: q.pending_approval(c, rid))
                if appr is not None and appr["kind"] == "escalation":
                    break
                assert time.monotonic() < deadline, appr
                await asyncio.sleep(0.02)
            assert appr["prompt"].startswith("(timed out, escalated) Ship it?")
            assert appr["timeout_at"] is None
            history = h.store.read(lambda c: q.list_approvals(c, pending_only=False,
                                                              run_id=rid))
            assert [(a["kind"], a["status"], a["decided_by"]) for a in history] == [
                ("gate", "escalated", "timeout"), ("escalation", "pending", None)]
            await asyncio.sleep(0.5)  # no second timeout fires
            assert (await h.wait(rid, "waiting_approval")).status == "waiting_approval"
            decide_approval(h.writer.write, rid, approve=True, by="shift lead", note="ok")
            h.engine.wake(rid)
            r = await h.wait(rid, "completed")
            assert r.context["gate"]["decision"] == "approved"
            assert r.context["gate"]["by"] == "shift lead"
        finally:
            await h.stop()
    asyncio.run(main())


def test_policies_in_toml_are_checked_at_load(tmp_path: Path) -> None:
    base = """
[device]
id = "d"
data_dir = "data"

[tools.stamp]
kind = "command"
argv = ["true"]
idempotent = false
on_unknown = "{tool}"

[workflows.w]
start = "a"

[workflows.w.nodes.a]
tool = "stamp"
on_unknown = "{node}"
next = "gate"

[workflows.w.nodes.gate]
approval = {{ prompt = "go?", timeout_s = 5, on_timeout = "{timeout}" }}
next = "done"

[workflows.w.nodes.done]
end = true
"""
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(base.format(tool="fail", node="assume_failed", timeout="escalate"))
    loaded = load_config(cfg)
    assert loaded.tools["stamp"].on_unknown == "fail"
    nodes = loaded.workflows["w"].nodes
    assert nodes["a"].on_unknown == "assume_failed"
    assert nodes["gate"].approval.on_timeout == "escalate"
    for tool, node, timeout, key, bad in [
            ("maybe", "fail", "reject", "tools.stamp.on_unknown", "maybe"),
            ("fail", "retry", "reject", "workflows.w.nodes.a.on_unknown", "retry"),
            ("fail", "fail", "later", "workflows.w.nodes.gate.approval.on_timeout", "later")]:
        cfg.write_text(base.format(tool=tool, node=node, timeout=timeout))
        with pytest.raises(ConfigError) as info:
            load_config(cfg)
        assert key in str(info.value) and repr(bad) in str(info.value), str(info.value)


@settings(max_examples=300, deadline=None)
@given(initial=st.floats(0.001, 100), multiplier=st.floats(1.0, 10), cap=st.floats(0.001, 600),
       jitter=st.floats(0.0, 1.0), attempt=st.integers(1, 60), rand=st.floats(0.0, 0.999999))
def test_backoff_grows_by_the_multiplier_up_to_the_cap_within_the_jitter(
        initial: float, multiplier: float, cap: float, jitter: float, attempt: int,
        rand: float) -> None:
    policy = RetryPolicy(max_attempts=100, initial_delay_s=initial, multiplier=multiplier,
                         max_delay_s=cap, jitter=jitter)
    base = min(cap, initial * multiplier ** (attempt - 1))
    delay = policy.delay(attempt, rand)
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9
    assert delay <= cap * (1 + jitter) + 1e-9
    steady = RetryPolicy(max_attempts=100, initial_delay_s=initial, multiplier=multiplier,
                         max_delay_s=cap, jitter=0.0)
    assert steady.delay(attempt + 1) >= steady.delay(attempt)


def test_retry_waits_follow_the_policy_and_are_recorded(db_path: Path, ledger: Path) -> None:
    """initial 0.05 s, x2, capped at 0.08 s, no jitter: the waits are 0.05, 0.08, 0.08, each
    recorded with its attempt and error kind, and the run really waited them."""
    flaky = LedgerTool("stamp", ledger, fail=lambda n: LedgerError(
        "busy", kind="timeout", retryable=True) if n < 4 else None)
    policy = RetryPolicy(max_attempts=4, initial_delay_s=0.05, multiplier=2.0, max_delay_s=0.08,
                         jitter=0.0)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done", retry=policy)
          .end("done").build(tools={"stamp": tool_config("stamp", STAMP)}))
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(flaky)})

    async def main() -> None:
        await h.start()
        try:
            started = time.monotonic()
            rid = h.queue("w", {})
            await h.wait(rid, "completed")
            assert time.monotonic() - started >= 0.05 + 0.08 + 0.08
            retries = [msgpack.unpackb(p) for (p,) in h.store.conn.execute(
                "SELECT payload FROM outbox WHERE kind = 'step.retry' ORDER BY seq")]
            assert [(r["attempt"], r["kind"], round(r["delay_s"], 3)) for r in retries] == [
                (1, "timeout", 0.05), (2, "timeout", 0.08), (3, "timeout", 0.08)]
            assert [s["status"] for s in h.steps(rid) if s["node"] == "a"] == [
                "failed", "failed", "failed", "completed"]
        finally:
            await h.stop()
    asyncio.run(main())


def test_runs_waiting_for_approval_hold_no_thread_and_no_polling(db_path: Path) -> None:
    """Eighty runs at a gate with an hour's timeout: no thread is kept for any of them (the
    engine's workers are all parked, a handful for eighty runs), and while they wait nothing
    touches the database (a timeout is a timer on the event loop, not a poll)."""
    wf = (Workflow("w").approval("gate", prompt="go?", next="done", timeout_s=3600)
          .end("done").build())
    h = Harness(db_path, {"w": wf}, {})

    async def main() -> None:
        await h.start()
        try:
            rids = [h.queue("w", {}) for _ in range(80)]
            for rid in rids:
                await h.wait(rid, "waiting_approval")
            await asyncio.sleep(0.2)
            sched = h.engine.sched
            assert sched._blocked == 0 and sched._running == 0, (sched._blocked, sched._running)
            assert threading.active_count() < 12, [t.name for t in threading.enumerate()]
            # every statement on the engine's connections, and on any it opens meanwhile
            statements: list[str] = []
            conns = list(h.store._conns) + [h.writer._conn]
            opened = h.store._open

            def traced_open() -> Any:
                conn = opened()
                conn.set_trace_callback(statements.append)
                conns.append(conn)
                return conn
            for conn in conns:
                conn.set_trace_callback(statements.append)
            h.store._open = traced_open  # type: ignore[method-assign]
            try:
                await asyncio.sleep(1.0)
            finally:
                h.store._open = opened  # type: ignore[method-assign]
                for conn in conns:
                    conn.set_trace_callback(None)
            assert statements == []
            decide_approval(h.writer.write, rids[7], approve=True, by="op")
            h.engine.wake(rids[7])
            await h.wait(rids[7], "completed")
        finally:
            await h.stop()
    asyncio.run(main())
