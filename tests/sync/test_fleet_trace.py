"""The cloud's trace of a run is the device's: a real engine runs a workflow with retries
and an approval gate, the records it wrote to its outbox (checkpoints, control, spans) are
stored in the cloud as batches, and `views.trace` gives the tree `edge-agent trace` gives."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from support.engine import Harness, LedgerError, LedgerTool, fast_retry, record_spans
from support.to_cloud import to_cloud

from edge_agent.cli.trace import build_trace
from edge_agent.engine import ToolBinding, decide_approval
from edge_agent.engine.graph import Workflow, tool_config
from sync.cloud import views
from sync.cloud.store import SqlCloudStore

STEP = ("node", "visit", "attempt", "status", "error", "error_kind")
CHILD = ("approval", "prompt", "decision", "by", "origin", "note", "tool", "status",
         "attempt")


def shape(trace: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What both trees must agree on: each step and its children, in order."""
    return [(tuple(s.get(k) for k in STEP),
             [tuple(c.get(k) for k in CHILD) for c in s["children"]]) for s in trace["steps"]]


def test_the_clouds_trace_of_a_run_with_a_decided_gate_is_the_devices(tmp_path: Path) -> None:
    tool = LedgerTool("stamp", tmp_path / "ledger.jsonl", fail=lambda n: LedgerError(
        "busy", kind="timeout", retryable=True) if n < 2 else None)
    wf = (Workflow("w").tool("a", "stamp", args={"part": "A"}, next="gate",
                             retry=fast_retry(5))
          .approval("gate", prompt="Ship lot 7?", next="done").end("done")
          .build(tools={"stamp": tool_config("stamp")}))
    h = Harness(tmp_path / "edge-agent.db", {"w": wf}, {"stamp": ToolBinding(tool)})
    cloud = SqlCloudStore(f"sqlite:///{tmp_path / 'cloud.db'}")

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            await h.wait(rid, "waiting_approval")
            decide_approval(h.writer.write, rid, approve=True, by="dana", origin="local",
                            note="lot checked")
            h.engine.wake(rid)
            await h.wait(rid, "completed")
            record_spans(h.writer)
            device = build_trace(h.store, rid)
            to_cloud(h.store, cloud, "press-1")
        finally:
            await h.stop()
        got = views.trace(cloud, "press-1", rid)
        assert [s["node"] for s in got["steps"]] == [s["node"] for s in device["steps"]]
        assert [s["node"] for s in got["steps"]].count("gate") == 1  # not waiting, then done
        assert shape(got) == shape(device)
        assert (got["status"], got["trace_id"]) == (device["status"], device["trace_id"])
        gate = next(s for s in got["steps"] if s["node"] == "gate")
        assert gate["status"] == "completed" and gate["duration_ms"] is not None
        assert gate["children"][-1]["decision"] == "approved"

    try:
        asyncio.run(main())
    finally:
        cloud.close()
