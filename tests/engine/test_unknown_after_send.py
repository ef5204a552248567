"""Side effects under ordinary operations: a busy port, a slow device, a timeout after the
request went out. A real engine on a real SQLite file, the relay board simulator on a real
pty (its ledger says what the device executed), real processes for the command kind."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest
from support.devices import SerialSim
from support.engine import Harness, fast_retry

from edge_agent.config.model import RetryPolicy
from edge_agent.engine import ToolBinding
from edge_agent.engine import queries as q
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.tools.registry import build_tool

RELAY_PARAMS = {"type": "object", "properties": {
    "channel": {"type": "integer", "minimum": 1, "maximum": 8},
    "state": {"enum": ["ON", "OFF"]}}, "required": ["channel", "state"]}


def relay_tool(sim: SerialSim, *, timeout_s: float, queue_timeout_s: float = 10.0,
               idempotent: bool = False) -> Any:
    return build_tool("relay", "serial", description="", params=RELAY_PARAMS,
                      result_schema=None, idempotent=idempotent, timeout_s=timeout_s,
                      options={"port": str(sim.link), "send": "SET {channel} {state}",
                               "expect": r"^OK (?P<channel>\d+) (?P<state>ON|OFF)$",
                               "error": r"^ERR (?P<reason>.*)$",
                               "queue_timeout_s": queue_timeout_s},
                      base_dir=sim.link.parent)


def relay_workflow(*, on_unknown: str | None = None, attempts: int = 1) -> Any:
    return (Workflow("w")
            .tool("a", "relay", args_from={"channel": "input.channel", "state": "input.state"},
                  next="done", on_unknown=on_unknown, retry=fast_retry(attempts))
            .end("done").build(tools={"relay": tool_config("relay", RELAY_PARAMS,
                                                           kind="serial")}))


@pytest.fixture
def sim(tmp_path: Path) -> Any:
    s = SerialSim(tmp_path)
    try:
        yield s
    finally:
        s.stop()


def test_busy_port_never_turns_an_executed_command_into_a_failed_run(
        db_path: Path, sim: SerialSim) -> None:
    """Observation 1: 14 concurrent runs, one relay board answering in 0.8 s, timeout 2 s.
    Before the fix the deadline ran while queueing for the port: runs failed after their
    command had been sent, and the board switched relays behind `failed` runs."""
    sim.fault("slow 0.8")
    tool = relay_tool(sim, timeout_s=2.0, queue_timeout_s=5.0)
    wf = relay_workflow()
    h = Harness(db_path, {"w": wf}, {"relay": ToolBinding(tool, retry=fast_retry(1))})
    inputs = [{"channel": ch, "state": st} for st in ("ON", "OFF") for ch in range(1, 8)]

    async def main() -> None:
        await h.start()
        try:
            rids = {h.queue("w", i): (i["channel"], i["state"]) for i in inputs}
            runs = {rid: await h.wait(rid, "completed", "failed", "waiting_approval", timeout=60)
                    for rid in rids}
            assert h.store is not None
            executed = [(e["channel"], e["state"]) for e in sim.ledger_lines()]
            assert len(executed) == len(set(executed))  # nothing executed twice
            by_status: dict[str, set[tuple[int, str]]] = {}
            for rid, run in runs.items():
                status = run.status
                calls = h.store.read(lambda c, rid=rid: q.tool_calls(c, rid))
                if any(c["status"] == "unknown" for c in calls):
                    status = "unknown"
                by_status.setdefault(status, set()).add(rids[rid])
            failed = by_status.get("failed", set())
            assert not failed & set(executed), (failed, executed)
            assert set(executed) <= by_status.get("completed", set()) | by_status.get(
                "unknown", set())
            assert by_status.get("completed") and failed  # the queue bound did its part
            for run in runs.values():
                if run.status == "failed":
                    assert "port_busy" in run.error and "nothing was sent" in run.error
        finally:
            await h.stop()
            tool.close()
    asyncio.run(main())


@pytest.mark.parametrize("on_unknown", [None, "fail"])
def test_timeout_after_sending_is_an_unknown_outcome(db_path: Path, sim: SerialSim,
                                                     on_unknown: str | None) -> None:
    """Observation 2: the board acts after the reply deadline. For a non-idempotent tool
    that is the journal rows a crash mid-call leaves: escalate (a person is asked) by
    default, or the node's policy."""
    sim.fault("slow 1.0")
    tool = relay_tool(sim, timeout_s=0.3)
    wf = relay_workflow(on_unknown=on_unknown, attempts=3)
    h = Harness(db_path, {"w": wf}, {"relay": ToolBinding(tool, retry=fast_retry(3))})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {"channel": 3, "state": "ON"})
            run = await h.wait(rid, "waiting_approval", "failed", "completed", timeout=20)
            assert h.store is not None
            calls = h.store.read(lambda c: q.tool_calls(c, rid))
            assert [c["status"] for c in calls] == ["unknown"]  # one call: never repeated
            assert [s["status"] for s in h.steps(rid)] == ["interrupted"]
            if on_unknown == "fail":
                assert run.status == "failed" and "unknown" in run.error
            else:
                assert run.status == "waiting_approval"
                appr = h.store.read(lambda c: q.pending_approval(c, rid))
                assert appr is not None and appr["kind"] == "unknown_outcome"
            await asyncio.sleep(1.2)
            assert [(e["channel"], e["state"]) for e in sim.ledger_lines()] == [(3, "ON")]
        finally:
            await h.stop()
            tool.close()
    asyncio.run(main())


def test_idempotent_tool_timeout_stays_a_retryable_failure(db_path: Path,
                                                           sim: SerialSim) -> None:
    sim.fault("slow 1.0")
    tool = relay_tool(sim, timeout_s=0.3, idempotent=True)
    wf = relay_workflow(attempts=1)
    h = Harness(db_path, {"w": wf}, {"relay": ToolBinding(tool, retry=fast_retry(1))})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {"channel": 2, "state": "ON"})
            run = await h.wait(rid, "failed", "waiting_approval", timeout=20)
            assert run.status == "failed" and "timeout" in run.error
        finally:
            await h.stop()
            tool.close()
    asyncio.run(main())


def test_command_timeout_after_start_is_unknown_and_parallel_branches_too(
        db_path: Path, tmp_path: Path) -> None:
    """A process that started may have acted: its timeout is an unknown outcome, in a tool
    node and in a parallel branch alike; a program that cannot start is a plain failure."""
    stamp = tmp_path / "stamp.py"
    stamp.write_text("import sys, time\nopen(sys.argv[1], 'a').write('x')\ntime.sleep(30)\n")
    # an absolute path as a value: the schema's pattern is the operator's explicit consent
    params = {"type": "object", "properties": {"mark": {"type": "string", "pattern": "^/"}}}
    slow = build_tool("slow", "command", description="", params=params, result_schema=None,
                      idempotent=False, timeout_s=0.5, base_dir=tmp_path,
                      options={"argv": [sys.executable, str(stamp), "{mark}"]})
    missing = build_tool("missing", "command", description="", params=params,
                         result_schema=None, idempotent=False, timeout_s=0.5,
                         base_dir=tmp_path, options={"argv": ["./no-such-program", "{mark}"]})
    tools = {"slow": tool_config("slow", params, kind="command"),
             "missing": tool_config("missing", params, kind="command")}
    one = (Workflow("one").tool("a", "slow", args={"mark": str(tmp_path / "m1")}, next="done")
           .end("done").build(tools=tools))
    par = (Workflow("par").parallel("p", ["b1"], next="done")
           .tool("b1", "slow", args={"mark": str(tmp_path / "m2")})
           .end("done").build(tools=tools))
    gone = (Workflow("gone").tool("a", "missing", args={"mark": "/x"}, next="done")
            .end("done").build(tools=tools))
    no_retry = RetryPolicy(max_attempts=1)
    h = Harness(db_path, {"one": one, "par": par, "gone": gone},
                {"slow": ToolBinding(slow, retry=no_retry),
                 "missing": ToolBinding(missing, retry=no_retry)})

    async def main() -> None:
        await h.start()
        try:
            assert h.store is not None
            for wf in ("one", "par"):
                rid = h.queue(wf, {})
                await h.wait(rid, "waiting_approval", timeout=20)
                appr = h.store.read(lambda c, rid=rid: q.pending_approval(c, rid))
                assert appr is not None and appr["kind"] == "unknown_outcome"
                calls = h.store.read(lambda c, rid=rid: q.tool_calls(c, rid))
                assert [c["status"] for c in calls] == ["unknown"]
            rid = h.queue("gone", {})
            run = await h.wait(rid, "failed", "waiting_approval", timeout=20)
            assert run.status == "failed" and "cannot start" in run.error
            assert (tmp_path / "m1").read_text() == "x" and (tmp_path / "m2").read_text() == "x"
        finally:
            await h.stop()
    asyncio.run(main())
