"""Each node kind, each join, retries, escalations, approvals, cancel — against a real SQLite file.

Retries recorded attempt by attempt, and a retry backoff and an approval timeout that survive
a restart, are in the store conformance suite (test_store_conformance.py), which runs them on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support.engine import (
    STAMP,
    Harness,
    LedgerError,
    LedgerTool,
    fast_retry,
    interrupted_call,
    ledger_lines,
)

from edge_agent.engine import ToolBinding, decide_approval, request_cancel
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.errors import ConfigError


def stamp_parts() -> Any:
    return (Workflow("stamp_parts")
            .tool("first", "stamp", args={"part": "A"}, next="check")
            .branch("check", [("input.count > 1", "second")], default="gate")
            .tool("second", "stamp", args={"part": "B"}, next="gate")
            .approval("gate", prompt="Ship it?", timeout_s=3600, next="done")
            .end("done")
            .build(tools={"stamp": tool_config("stamp", STAMP)}))


def run(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.mark.parametrize("count,parts", [(2, ["A", "B"]), (1, ["A"])])
def test_branch_then_approval_then_end(db_path: Path, ledger: Path, count: int,
                                       parts: list[str]) -> None:
    stamp = LedgerTool("stamp", ledger)
    h = Harness(db_path, {"stamp_parts": stamp_parts()}, {"stamp": ToolBinding(stamp)})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("stamp_parts", {"count": count})
            await h.wait(rid, "waiting_approval")
            assert [e["args"]["part"] for e in ledger_lines(ledger)] == parts
            decide_approval(h.writer.write, rid, approve=True, by="alice", note="ok",
                            patch={"shipped_by": "alice"})
            h.engine.wake(rid)
            done = await h.wait(rid, "completed")
            assert done.context["first"] == {"done": "stamp", "part": "A"}
            assert done.context["shipped_by"] == "alice"
            assert done.context["gate"]["by"] == "alice"
            nodes = [s["node"] for s in h.steps(rid)]
            assert nodes == ["first", "check"] + (["second"] if count > 1 else []) + \
                ["gate", "done"]
        finally:
            await h.stop()
    run(main())


def test_every_transition_appends_an_outbox_record(db_path: Path, ledger: Path) -> None:
    h = Harness(db_path, {"stamp_parts": stamp_parts()},
                {"stamp": ToolBinding(LedgerTool("stamp", ledger))})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("stamp_parts", {"count": 2})
            await h.wait(rid, "waiting_approval")
            kinds = [r[0] for r in h.store.conn.execute(
                "SELECT kind FROM outbox WHERE stream = 'checkpoints' ORDER BY seq")]
            assert kinds == ["run.queued", "run.started", "step.completed", "step.completed",
                             "step.completed"]
            control = [r[0] for r in h.store.conn.execute(
                "SELECT kind FROM outbox WHERE stream = 'control'")]
            assert control == ["approval.requested"]
        finally:
            await h.stop()
    run(main())


def test_non_retryable_error_fails_at_once(db_path: Path, ledger: Path) -> None:
    bad = LedgerTool("stamp", ledger, fail=lambda n: LedgerError("jammed", kind="device_error"))
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done", retry=fast_retry(5))
          .end("done").build(tools={"stamp": tool_config("stamp", STAMP)}))
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(bad)})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            r = await h.wait(rid, "failed")
            assert "jammed" in r.error and "device_error" in r.error
            assert bad.calls == 1
        finally:
            await h.stop()
    run(main())


def test_retry_on_names_the_kinds_that_retry(db_path: Path, ledger: Path) -> None:
    bad = LedgerTool("stamp", ledger, fail=lambda n: LedgerError("garbage", kind="bad_reply")
                     if n == 1 else None)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done",
                             retry=fast_retry(3, retry_on=frozenset({"bad_reply"})))
          .end("done").build(tools={"stamp": tool_config("stamp", STAMP)}))
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(bad)})

    async def main() -> None:
        await h.start()
        try:
            await h.wait(h.queue("w", {}), "completed")
            assert bad.calls == 2
        finally:
            await h.stop()
    run(main())


def test_exhausted_attempts_go_to_fallback(db_path: Path, ledger: Path) -> None:
    bad = LedgerTool("stamp", ledger, fail=lambda n: LedgerError("gone", kind="device_gone",
                                                                 retryable=True))
    ok = LedgerTool("alarm", ledger)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done", retry=fast_retry(2),
                             fallback="alarm")
          .tool("alarm", "alarm", args_from={"part": "error.kind"}, next="done")
          .end("done").build(tools={"stamp": tool_config("stamp", STAMP),
                                    "alarm": tool_config("alarm")}))
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(bad), "alarm": ToolBinding(ok)})

    async def main() -> None:
        await h.start()
        try:
            r = await h.wait(h.queue("w", {}), "completed")
            assert bad.calls == 2
            assert r.context["error"]["attempts"] == 2
            assert ledger_lines(ledger) == [{"tool": "alarm", "key": ledger_lines(ledger)[0]["key"],
                                             "args": {"part": "device_gone"}}]
        finally:
            await h.stop()
    run(main())


@pytest.mark.parametrize("decision", ["retry", "skip", "reject"])
def test_escalation_to_a_human(db_path: Path, ledger: Path, decision: str) -> None:
    calls = {"n": 0}

    def fail(n: int) -> LedgerError | None:
        return LedgerError("stuck", kind="timeout", retryable=True) if n <= 2 else None
    tool = LedgerTool("stamp", ledger, fail=fail)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done", retry=fast_retry(2),
                             escalate="approval")
          .end("done", output="a").build(tools={"stamp": tool_config("stamp", STAMP)}))
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(tool)})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            await h.wait(rid, "waiting_approval")
            appr = h.store.read(lambda c: q.pending_approval(c, rid))
            assert appr["kind"] == "escalation" and "2 attempt" in appr["prompt"]
            if decision == "reject":
                decide_approval(h.writer.write, rid, approve=False, by="bob")
                h.engine.wake(rid)
                r = await h.wait(rid, "failed")
                assert "escalation rejected by bob" in r.error
            elif decision == "skip":
                decide_approval(h.writer.write, rid, approve=True, by="bob",
                                patch={"skip_output": {"manual": True}})
                h.engine.wake(rid)
                r = await h.wait(rid, "completed")
                assert r.output == {"manual": True}
                assert tool.calls == 2
            else:
                decide_approval(h.writer.write, rid, approve=True, by="bob")
                h.engine.wake(rid)
                r = await h.wait(rid, "completed")
                assert tool.calls == 3 and r.output["part"] == "A"
            calls["n"] = tool.calls
        finally:
            await h.stop()
    run(main())


def test_approval_reject_cancels_or_routes(db_path: Path, ledger: Path) -> None:
    wf = (Workflow("w").approval("gate", prompt="go?", next="done").end("done").build())
    wf2 = (Workflow("w2").approval("gate", prompt="go?", next="done", on_reject="no")
           .end("done").end("no", output="'rejected'").build())
    h = Harness(db_path, {"w": wf, "w2": wf2}, {})

    async def main() -> None:
        await h.start()
        try:
            a, b = h.queue("w", {}), h.queue("w2", {})
            await h.wait(a, "waiting_approval")
            await h.wait(b, "waiting_approval")
            for rid in (a, b):
                decide_approval(h.writer.write, rid, approve=False, by="carol", note="bad weld")
                h.engine.wake(rid)
            ra = await h.wait(a, "cancelled")
            assert "rejected at gate by carol" in ra.error and "bad weld" in ra.error
            rb = await h.wait(b, "completed")
            assert rb.output == "rejected"
        finally:
            await h.stop()
    run(main())


@pytest.mark.parametrize("join,quorum,expect_status,succeeded", [
    ("all", None, "failed", None),
    ("any", None, "completed", None),
    ("first_success", None, "completed", ["fast"]),
    ("quorum", 2, "completed", None),
])
def test_parallel_joins(db_path: Path, ledger: Path, join: str, quorum: int | None,
                        expect_status: str, succeeded: list[str] | None) -> None:
    tools = {
        "fast": LedgerTool("fast", ledger, delay_s=0.01),
        "medium": LedgerTool("medium", ledger, delay_s=0.2),
        "slow": LedgerTool("slow", ledger, delay_s=1.0),
        "broken": LedgerTool("broken", ledger, delay_s=0.05,
                             fail=lambda n: LedgerError("nope", kind="device_error")),
    }
    wf = (Workflow("w")
          .parallel("p", ["fast", "medium", "slow", "broken"], join=join, quorum=quorum,
                    next="done")
          .tool("fast", "fast").tool("medium", "medium").tool("slow", "slow")
          .tool("broken", "broken")
          .end("done", output="p")
          .build(tools={n: tool_config(n) for n in tools}))
    h = Harness(db_path, {"w": wf}, {n: ToolBinding(t) for n, t in tools.items()})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            r = await h.wait(rid, expect_status)
            steps = {s["node"]: s["status"] for s in h.steps(rid)}
            if expect_status == "failed":
                assert "broken" in r.error
                assert steps["slow"] == "cancelled"
            else:
                if succeeded:
                    assert r.output["succeeded"] == succeeded
                assert steps["slow"] == "cancelled"
                assert "slow" not in r.context  # a cancelled branch leaves no result
                assert r.context["fast"]["done"] == "fast"
            if join == "quorum":
                assert sorted(r.output["succeeded"]) == ["fast", "medium"]
        finally:
            await h.stop()
    run(main())


def test_cancel_a_waiting_run(db_path: Path) -> None:
    wf = Workflow("w").approval("gate", prompt="go?", next="done").end("done").build()
    h = Harness(db_path, {"w": wf}, {})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            await h.wait(rid, "waiting_approval")
            request_cancel(h.writer.write, rid)
            h.engine.wake(rid)
            await h.wait(rid, "cancelled")
            assert h.store.read(lambda c: q.pending_approval(c, rid)) is None
        finally:
            await h.stop()
    run(main())


def test_wake_from_outside_the_process_sees_new_runs(db_path: Path, ledger: Path) -> None:
    """The CLI writes the database; the engine's wake(None) picks it up."""
    from edge_agent.engine import queue_run
    from edge_agent.store import Store
    wf = Workflow("w").tool("a", "stamp", args={"part": "Z"}, next="done").end("done").build(
        tools={"stamp": tool_config("stamp", STAMP)})
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(LedgerTool("stamp", ledger))})

    async def main() -> None:
        await h.start()
        try:
            other = Store(db_path)
            rid = queue_run(other.write, workflow="w", input={}, workflows={"w": wf})
            other.close()
            h.engine.wake(None)
            await h.wait(rid, "completed")
        finally:
            await h.stop()
    run(main())


def test_cycle_bound_and_runtime_expression_error(db_path: Path, ledger: Path) -> None:
    loop = (Workflow("loop").tool("a", "stamp", args={"part": "A"}, next="again", max_visits=3)
            .branch("again", [("true", "a")], default="done").end("done")
            .build(tools={"stamp": tool_config("stamp", STAMP)}))
    bad = (Workflow("bad").branch("b", [("input.missing > 1", "done")], default="done")
           .end("done").build())
    tool = LedgerTool("stamp", ledger)
    h = Harness(db_path, {"loop": loop, "bad": bad}, {"stamp": ToolBinding(tool)})

    async def main() -> None:
        await h.start()
        try:
            r = await h.wait(h.queue("loop", {}), "failed")
            assert "max_visits=3" in r.error and tool.calls == 3
            r = await h.wait(h.queue("bad", {}), "failed")
            assert "input.missing" in r.error
        finally:
            await h.stop()
    run(main())


def test_graph_validation_errors() -> None:
    tools = {"stamp": tool_config("stamp", STAMP)}
    cases = [
        (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="nowhere").end("done"),
         "names no node"),
        (Workflow("w").tool("a", "stamp", args={"part": 3}, next="done").end("done"),
         "do not match the parameters"),
        (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done"), "has no end node"),
        (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="b")
         .branch("b", [("true", "a")], default="done").end("done"), "cycle without a bound"),
        (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done").end("done")
         .end("orphan"), "unreachable"),
        (Workflow("w").branch("b", [("input.count >", "done")], default="done").end("done"),
         "invalid expression"),
        (Workflow("w").tool("a", "nosuch", next="done").end("done"), "names no [tools.*]"),
    ]
    for builder, expected in cases:
        with pytest.raises(ConfigError) as info:
            builder.build(tools=tools)
        assert expected in str(info.value), (expected, str(info.value))


class _Out:
    def __init__(self, output: Any, handoff_to: str | None = None) -> None:
        self.output, self.handoff_to = output, handoff_to


def test_agent_handoff_is_a_checkpoint_and_tool_calls_are_journaled(db_path: Path,
                                                                     ledger: Path) -> None:
    from edge_agent.config.model import AgentConfig
    seen: list[tuple[str, str]] = []

    def runner(agent: str, message: str, ctx: Any) -> _Out:
        seen.append((agent, message))
        plan = ctx.remembered("turn:0", lambda: {"part": agent.upper()})
        ctx.call_tool("stamp", {"part": plan["part"]}, turn=0, index=0)
        if agent == "triage":
            return _Out({"summary": "needs a specialist"}, handoff_to="specialist")
        return _Out({"verdict": "pass", "from": message})
    agents = {n: AgentConfig(name=n, model="m", tools=("stamp",)) for n in ("triage",
                                                                           "specialist")}
    wf = (Workflow("w").agent("look", "triage", input="input.task", next="done")
          .end("done", output="look")
          .build(tools={"stamp": tool_config("stamp", STAMP)}, agents=agents))
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(LedgerTool("stamp", ledger))},
                agent_runner=runner)

    async def main() -> None:
        await h.start()
        try:
            r = await h.wait(h.queue("w", {"task": "inspect part 9"}), "completed")
            assert r.output == {"verdict": "pass", "from": '{"summary":"needs a specialist"}'}
            assert seen[0] == ("triage", "inspect part 9")
            steps = [(s["node"], s["status"]) for s in h.steps(r.run_id)]
            assert steps == [("look", "handoff"), ("look", "completed"), ("done", "completed")]
            handoff = h.steps(r.run_id)[0]["output"]
            assert handoff["from"] == "triage" and handoff["to"] == "specialist"
            assert [e["args"]["part"] for e in ledger_lines(ledger)] == ["TRIAGE", "SPECIALIST"]
        finally:
            await h.stop()
    run(main())


def test_unknown_outcome_after_a_crash_asks_a_human(db_path: Path, ledger: Path) -> None:
    """An intent with no result (the process died mid-call) is never silently repeated."""
    tool = LedgerTool("stamp", ledger)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="done").end("done")
          .build(tools={"stamp": tool_config("stamp", STAMP)}))
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(tool)})

    async def prepare(approve: bool) -> None:
        rid = interrupted_call(db_path, wf, {"part": "A"})
        await h.start()
        try:
            await h.wait(rid, "waiting_approval")
            appr = h.store.read(lambda c: q.pending_approval(c, rid))
            assert appr["kind"] == "unknown_outcome" and "take effect" in appr["prompt"]
            assert tool.calls == 0
            decide_approval(h.writer.write, rid, approve=approve, by="op")
            h.engine.wake(rid)
            r = await h.wait(rid, "completed")
            assert tool.calls == (0 if approve else 1)
            calls = h.store.read(lambda c: q.tool_calls(c, rid))
            assert calls[0]["status"] == ("confirmed" if approve else "assumed_failed")
            if not approve:
                assert calls[1]["status"] == "ok" and calls[1]["attempt"] == 2
            assert r.context["a"] == ({"outcome": "confirmed", "by": "op"} if approve
                                      else {"done": "stamp", "part": "A"})
        finally:
            await h.stop()
    run(prepare(True))
    db_path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    run(prepare(False))


@pytest.mark.parametrize("where", ["parallel branch", "agent"])
@pytest.mark.parametrize("approve", [True, False])
def test_unknown_outcome_inside_a_branch_or_an_agent_asks_a_human(
        db_path: Path, ledger: Path, where: str, approve: bool) -> None:
    """The same promise where the interrupted call belongs to a parallel branch or to an
    agent's loop: a person answers; approve = it happened, reject = the work is redone."""
    from edge_agent.config.model import AgentConfig
    from edge_agent.engine import queue_run
    from edge_agent.engine.journal import call_key
    from edge_agent.store import Store
    stamp, light = LedgerTool("stamp", ledger), LedgerTool("light", ledger, idempotent=True)

    def runner(agent: str, message: str, ctx: Any) -> _Out:
        return _Out(ctx.call_tool("stamp", {"part": "A"}, turn=0, index=0))
    tools = {"stamp": tool_config("stamp", STAMP), "light": tool_config("light")}
    if where == "agent":
        wf = (Workflow("w").agent("look", "inspector", next="done").end("done")
              .build(tools=tools, agents={"inspector": AgentConfig(
                  name="inspector", model="m", tools=("stamp",))}))
        node, scope, state = "look", "look#1.1.0", {"attempt": 1}
    else:
        wf = (Workflow("w").parallel("fan", ["a", "b"], join="all", next="done")
              .tool("a", "stamp", args={"part": "A"}).tool("b", "light").end("done")
              .build(tools=tools))
        node, scope, state = "fan", "fan/a#1", {}
    store = Store(db_path)
    rid = queue_run(store.write, workflow="w", input={}, workflows={"w": wf}, run_id="r1")
    now = time.time()
    key = call_key(rid, scope, 0, 0, 1)
    store.write(lambda c: (q.update_run(c, rid, now, status="running", node=node,
                                        visits={node: 1}, node_state=state),
                           q.journal_intent(c, key=key, attempt=1, run_id=rid, node=scope,
                                            tool="stamp", args={"part": "A"}, now=now)))
    store.close()  # as the crash left it: an intent without a result
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(stamp), "light": ToolBinding(light)},
                agent_runner=runner)

    async def main() -> None:
        await h.start()
        try:
            await h.wait(rid, "waiting_approval")
            appr = h.store.read(lambda c: q.pending_approval(c, rid))
            assert appr["kind"] == "unknown_outcome" and appr["context"]["key"] == key
            assert stamp.calls == 0
            decide_approval(h.writer.write, rid, approve=approve, by="op")
            h.engine.wake(rid)
            await h.wait(rid, "completed")
            assert stamp.calls == (0 if approve else 1)  # redone only when it did not happen
            calls = {c["idem_key"]: c["status"] for c in h.store.read(
                lambda c: q.tool_calls(c, rid)) if c["tool"] == "stamp"}
            assert calls[key] == ("confirmed" if approve else "assumed_failed")
            assert sorted(calls.values()) == (["confirmed"] if approve
                                              else ["assumed_failed", "ok"])
        finally:
            await h.stop()
    run(main())


def test_start_and_end_ride_on_the_neighbouring_commit(db_path: Path, ledger: Path) -> None:
    """A start node with nothing to fence commits the run's start with its own step, and a
    step followed by `end` completes the run in the same commit; a fenced tool's start keeps
    its own commit, which carries the first call's intent."""
    read = LedgerTool("read", ledger, idempotent=True)
    flaky = LedgerTool("flaky", ledger, idempotent=True, fail=lambda n: LedgerError(
        "busy", kind="timeout", retryable=True) if n == 1 else None)
    tools = {n: tool_config(n, STAMP) for n in ("read", "flaky", "stamp")}
    wfs = {
        "two": (Workflow("two").tool("a", "read", args={"part": "A"}, next="b")
                .tool("b", "read", args={"part": "B"}, next="done").end("done").build(tools=tools)),
        "retry": (Workflow("retry").tool("a", "flaky", args={"part": "A"}, next="done",
                                         retry=fast_retry(3)).end("done").build(tools=tools)),
        "fenced": (Workflow("fenced").tool("a", "stamp", args={"part": "A"}, next="done")
                   .end("done").build(tools=tools)),
        "bad_end": (Workflow("bad_end").tool("a", "read", args={"part": "A"}, next="done")
                    .end("done", output="input.missing").build(tools=tools)),
    }
    h = Harness(db_path, wfs, {"read": ToolBinding(read), "flaky": ToolBinding(flaky),
                               "stamp": ToolBinding(LedgerTool("stamp", ledger))})

    async def commits_for(workflow: str, status: str) -> tuple[int, Any]:
        assert h.writer is not None
        rid = h.queue(workflow, {})
        before = h.writer.commits
        run_ = await h.wait(rid, status)
        await asyncio.sleep(0.05)  # nothing more is written after the final state
        return h.writer.commits - before, run_

    async def main() -> None:
        await h.start()
        try:
            n, r = await commits_for("two", "completed")
            assert n == 2  # a (with the start), b (with the end)
            assert r.output == {"a": {"done": "read", "part": "A"},
                                "b": {"done": "read", "part": "B"}}
            assert [(s["node"], s["status"]) for s in h.steps(r.run_id)] == [
                ("a", "completed"), ("b", "completed"), ("done", "completed")]
            records = [msgpack.unpackb(p) for (p,) in h.store.conn.execute(
                "SELECT payload FROM outbox WHERE stream = 'checkpoints' ORDER BY seq")
                if msgpack.unpackb(p)["run_id"] == r.run_id]
            assert [(x.get("node"), x.get("run_status")) for x in records] == [
                (None, None), ("a", None), ("a", None), ("b", None), ("done", "completed")]
            assert records[1]["ts"] <= records[2]["ts"]

            n, r = await commits_for("retry", "completed")
            assert n == 2  # the failed attempt (with the start), the retry (with the end)
            assert [(s["node"], s["status"]) for s in h.steps(r.run_id)] == [
                ("a", "failed"), ("a", "completed"), ("done", "completed")]

            n, r = await commits_for("fenced", "completed")
            assert n == 2  # the start with the first call's intent, the result (with the end)

            n, r = await commits_for("bad_end", "failed")
            assert "input.missing" in r.error
            assert [(s["node"], s["status"]) for s in h.steps(r.run_id)] == [("a", "completed")]
        finally:
            await h.stop()
    run(main())


def test_an_agent_call_that_failed_retryably_before_a_crash_is_retried_after_it(
        db_path: Path, ledger: Path) -> None:
    """The crash left an agent's call journaled as a retryable failure, but not the node's
    failed attempt: the replay raises the error as it was (retryable), so the node retries
    instead of failing the run on an error that was never final."""
    from edge_agent.config.model import AgentConfig
    from edge_agent.engine import queue_run
    from edge_agent.engine.journal import call_key
    from edge_agent.store import Store
    stamp = LedgerTool("stamp", ledger)

    def runner(agent: str, message: str, ctx: Any) -> _Out:
        return _Out(ctx.call_tool("stamp", {"part": "A"}, turn=0, index=0))
    tools = {"stamp": tool_config("stamp", STAMP)}
    wf = (Workflow("w").agent("look", "inspector", next="done", retry=fast_retry(3)).end("done")
          .build(tools=tools, agents={"inspector": AgentConfig(
              name="inspector", model="m", tools=("stamp",))}))
    store = Store(db_path)
    rid = queue_run(store.write, workflow="w", input={}, workflows={"w": wf}, run_id="r1")
    now = time.time()
    key = call_key(rid, "look#1.1.0", 0, 0, 1)
    store.write(lambda c: (q.update_run(c, rid, now, status="running", node="look",
                                        visits={"look": 1}, node_state={"attempt": 1}),
                           q.journal_result(c, key=key, attempt=1, run_id=rid,
                                            node="look#1.1.0", tool="stamp",
                                            args={"part": "A"}, status="error",
                                            result={"retryable": True}, error="transient",
                                            error_kind="timeout", started_at=now, now=now)))
    store.close()
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(stamp)}, agent_runner=runner)

    async def main() -> None:
        await h.start()
        try:
            run = await h.wait(rid, "completed", "failed")
            assert run.status == "completed", run.error
            assert stamp.calls == 1  # the second attempt's call; the first is not redone
            assert [s["attempt"] for s in h.steps(rid) if s["node"] == "look"] == [1, 2]
        finally:
            await h.stop()
    run(main())


def _parallel_of(ledger: Path, names: dict[str, LedgerTool], *, join: str,
                 fallback: str | None = None) -> tuple[Any, dict[str, ToolBinding]]:
    wf = Workflow("w").parallel("p", list(names), join=join, next="done", fallback=fallback)
    for n in names:
        wf = wf.tool(n, n)
    if fallback:
        wf = wf.tool(fallback, "recover", args_from={"part": "string(error.node)"},
                     next="done")
        names = {**names, "recover": LedgerTool("recover", ledger)}
    built = wf.end("done").build(tools={n: tool_config(n, STAMP if n == "recover" else None)
                                        for n in names})
    return built, {n: ToolBinding(t) for n, t in names.items()}


def test_join_any_means_any_success(db_path: Path, ledger: Path) -> None:
    """A failed branch that finishes first does not complete the run: the join waits for a
    success, and fails when every branch failed."""
    broken = LedgerError("nope", kind="device_error")
    for names, status in (
            ({"broken": LedgerTool("broken", ledger, fail=lambda n: broken),
              "slow": LedgerTool("slow", ledger, delay_s=0.3)}, "completed"),
            ({"broken": LedgerTool("broken", ledger, fail=lambda n: broken),
              "worse": LedgerTool("worse", ledger, delay_s=0.1, fail=lambda n: broken)},
             "failed")):
        wf, tools = _parallel_of(ledger, names, join="any")
        h = Harness(db_path, {"w": wf}, tools)

        async def main() -> None:
            await h.start()
            try:
                rid = h.queue("w", {})
                r = await h.wait(rid, status)
                p = next(s for s in h.steps(rid) if s["node"] == "p") if status == "completed" \
                    else None
                if p is not None:
                    assert p["output"]["succeeded"] == ["slow"]
                    assert p["output"]["failed"] == ["broken"]
                else:
                    assert "join 'any' not met" in r.error
            finally:
                await h.stop()
        run(main())


def test_parallel_fallback_takes_over_when_the_join_fails(db_path: Path, ledger: Path) -> None:
    broken = LedgerError("nope", kind="device_error")
    wf, tools = _parallel_of(ledger, {"broken": LedgerTool("broken", ledger,
                                                           fail=lambda n: broken)},
                             join="all", fallback="recover")
    assert wf.nodes["p"].fallback == "recover"
    h = Harness(db_path, {"w": wf}, tools)

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            r = await h.wait(rid, "completed")
            assert r.context["error"]["node"] == "p"
            assert "broken: nope" in r.context["error"]["error"]
            assert [(s["node"], s["status"]) for s in h.steps(rid)] == [
                ("broken", "failed"), ("p", "failed"), ("recover", "completed"),
                ("done", "completed")]
            assert [e["tool"] for e in ledger_lines(ledger)] == ["recover"]
        finally:
            await h.stop()
    run(main())
