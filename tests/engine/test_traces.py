"""Spans are written with the durable records: one trace per run, across retries and restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

from support.engine import (
    Harness,
    LedgerError,
    LedgerTool,
    fast_retry,
    record_spans,
    spans_in,
)

from edge_agent.engine import ToolBinding, decide_approval
from edge_agent.engine.graph import Workflow, tool_config


def test_one_trace_with_parent_links_retries_and_approval(db_path: Path, ledger: Path) -> None:
    tool = LedgerTool("stamp", ledger, fail=lambda n: LedgerError("busy", kind="timeout",
                                                                  retryable=True) if n < 3 else None)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="gate", retry=fast_retry(5))
          .approval("gate", prompt="ok?", next="done").end("done")
          .build(tools={"stamp": tool_config("stamp")}))
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(tool)})

    async def main() -> None:
        await h.start()
        rid = h.queue("w", {})
        await h.wait(rid, "waiting_approval")
        record_spans(h.writer)  # some spans go out before the restart
        await h.stop()  # a restart in the middle: the trace must continue
        await h.start()
        try:
            decide_approval(h.writer.write, rid, approve=True, by="dana", origin="cloud")
            h.engine.wake(rid)
            await h.wait(rid, "completed")
            record_spans(h.writer)
            record_spans(h.writer)  # a second pass adds nothing twice
            spans = spans_in(h.store)
        finally:
            await h.stop()
        assert len({s["trace_id"] for s in spans}) == 1
        assert len({s["span_id"] for s in spans}) == len(spans)
        by_id = {s["span_id"]: s for s in spans}
        run_span = next(s for s in spans if s["name"] == "run w")
        assert run_span["parent_id"] is None and run_span["error"] is None
        steps = [s for s in spans if s["name"].startswith("step ")]
        assert all(s["parent_id"] == run_span["span_id"] for s in steps)
        failed = [s for s in steps if s["name"] == "step a" and s["error"]]
        assert len(failed) == 2
        assert all(s["attributes"]["edge_agent.retry_reason"] == "timeout: busy" for s in failed)
        tools = [s for s in spans if s["name"] == "execute_tool stamp"]
        assert len(tools) == 3 and all(by_id[t["parent_id"]]["name"] == "step a" for t in tools)
        wait = next(s for s in spans if s["name"] == "approval wait")
        assert wait["attributes"]["edge_agent.approval.decided_by"] == "dana"
        assert wait["attributes"]["edge_agent.approval.origin"] == "cloud"
        assert by_id[wait["parent_id"]]["name"] == "step gate"
    asyncio.run(main())


def test_a_stale_batch_is_not_recorded_twice_and_big_backlogs_drain(db_path: Path,
                                                                     ledger: Path) -> None:
    from edge_agent.telemetry.derive import commit_marks, derive_spans
    k = 30
    wf = Workflow("w")
    for i in range(k):
        wf.tool(f"s{i}", "stamp", args={"part": str(i)}, next=f"s{i + 1}" if i + 1 < k else "done")
    wf = wf.end("done").build(tools={"stamp": tool_config("stamp")})
    h = Harness(db_path, {"w": wf}, {"stamp": ToolBinding(LedgerTool("stamp", ledger,
                                                                     idempotent=True))})

    async def main() -> None:
        await h.start()
        try:
            rids = [h.queue("w", {}) for _ in range(80)]  # 2,480 steps: more than one batch
            for rid in rids:
                await h.wait(rid, "completed", timeout=60)
            stale = h.store.read(derive_spans)  # derived, then overtaken by the recorder
            record_spans(h.writer)
            assert h.writer.write(lambda c: commit_marks(c, stale)) is False
            record_spans(h.writer)
            spans = spans_in(h.store)
        finally:
            await h.stop()
        assert stale.full and stale.spans
        assert len({s["span_id"] for s in spans}) == len(spans)
        assert sum(s["name"].startswith("step ") for s in spans) == 80 * (k + 1)
        assert sum(s["name"] == "run w" for s in spans) == 80
        assert sum(s["name"] == "execute_tool stamp" for s in spans) == 80 * k
    asyncio.run(main())


def test_an_idempotent_call_is_journaled_in_its_step_row(db_path: Path, ledger: Path) -> None:
    """No separate journal row, yet every reader sees the call: trace, spans, metrics."""
    from edge_agent.cli.trace import build_trace
    from edge_agent.engine import queries as q
    from edge_agent.telemetry.metrics import MetricsCollector, decode

    tool = LedgerTool("read", ledger, idempotent=True,
                      fail=lambda n: LedgerError("busy", kind="timeout", retryable=True)
                      if n == 1 else None)
    wf = (Workflow("w").tool("a", "read", args={"part": "A"}, next="done", retry=fast_retry(3))
          .end("done").build(tools={"read": tool_config("read")}))
    h = Harness(db_path, {"w": wf}, {"read": ToolBinding(tool)})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            await h.wait(rid, "completed")
            record_spans(h.writer)
            assert h.store.read(lambda c: c.execute(
                "SELECT count(*) FROM tool_calls").fetchone()[0]) == 0
            calls = h.store.read(lambda c: q.tool_calls(c, rid))
            assert [(c["status"], c["attempt"], c["source"]) for c in calls] == [
                ("error", 1, "step"), ("ok", 2, "step")]
            assert calls[0]["error"] == "busy" and calls[0]["error_kind"] == "timeout"
            assert calls[1]["args"] == {"part": "A"} and calls[1]["result"]["part"] == "A"
            assert calls[1]["idem_key"] == f"{rid}/a#1/0/0/a2"
            trace = build_trace(h.store, rid)
            children = [c for s in trace["steps"] for c in s["children"]]
            assert [(c["tool"], c["status"]) for c in children] == [("read", "error"),
                                                                    ("read", "ok")]
            spans = [s for s in spans_in(h.store) if s["name"] == "execute_tool read"]
            assert sorted(s["attributes"]["edge_agent.outcome"] for s in spans) == ["error",
                                                                                     "ok"]
            assert [s["error"] for s in spans if s["error"]] == ["busy"]
            metrics = decode(h.store.read(lambda c: MetricsCollector(device_id="d").collect(c)))
            counted = {p["attributes"]["edge_agent.outcome"]: p["value"]
                       for p in metrics["edge_agent.tool.calls"]}
            assert counted == {"ok": 1, "error": 1}
        finally:
            await h.stop()
    asyncio.run(main())
