"""Spans are written with the durable records: one trace per run, across retries and restarts."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import msgpack
import pytest
from support.engine import (
    Harness,
    LedgerError,
    LedgerTool,
    fast_retry,
    record_spans,
    spans_in,
)

from edge_agent.engine import ToolBinding, decide_approval
from edge_agent.engine.cloud_handoff import LEASES, apply_handoff_result
from edge_agent.engine.graph import Workflow, tool_config
from sync.cloud.docs import CLOUD_NODE
from sync.documents import Version
from sync.replica import MemoryDocStore, Replica


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


def _handoff_workflow(**review: Any) -> Any:
    """`review` handed to the cloud (with `review`'s extra keys), then `done`; a `local`
    node to fall back to when `review` names one."""
    wf = Workflow("w").handoff("review", "cloud:reviewer", input="input", next="done")
    if "fallback" in review:
        wf.tool("local", "stamp", args={"part": "L"}, next="done")
    wf.end("done").table()["nodes"]["review"].update(review)
    return wf.build(tools={"stamp": tool_config("stamp")})


async def _request(h: Harness, rid: str) -> tuple[dict[str, Any], Replica]:
    """The run's handoff request as it left for the cloud, and the cloud's replica of the
    run's lease document holding the device's version."""
    for _ in range(500):
        rows = h.store.read(lambda c: c.execute(
            "SELECT kind, payload FROM outbox WHERE stream = 'control' ORDER BY seq"
        ).fetchall())
        if any(kind == "handoff.request" for kind, _ in rows):
            break
        await asyncio.sleep(0.01)
    cloud = Replica(CLOUD_NODE, MemoryDocStore())
    request: dict[str, Any] = {}
    for kind, payload in rows:
        record = msgpack.unpackb(bytes(payload))
        if kind == "doc.version":
            cloud.apply(Version.decode(record))
        elif kind == "handoff.request":
            request = record
    assert request, "no handoff request"
    return request, cloud


# what the daemon passes: a cloud handoff node's kind and agent, from the config
KINDS = {("w", "review"): "handoff", ("w", "local"): "tool", ("w", "done"): "end"}
AGENTS = {("w", "review"): "cloud:reviewer"}


def test_a_handed_off_step_emits_the_span_its_traceparent_names(db_path: Path,
                                                                 ledger: Path) -> None:
    """The device's request names, as parent, a span the device really emits: the handoff,
    from request to result, under the node's step span; so the cloud's child run hangs in
    the device run's trace."""
    from edge_agent.telemetry.record import record_spans as record
    h = Harness(db_path, {"w": _handoff_workflow()},
                {"stamp": ToolBinding(LedgerTool("stamp", ledger))})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {"doc": "seam 4"})
            request, cloud = await _request(h, rid)
            version = cloud.write(LEASES, rid, {"owner": "device", "state": "done"})
            answer = {"key": request["key"], "ok": True, "result": {"verdict": "ok"},
                      "version": version.encode(),
                      "cloud": {"target": "reviewer", "child_run": "h-1", "worker": "w1"}}
            assert h.writer.write(lambda c: apply_handoff_result(c, "dev", answer))["applied"]
            h.engine.wake(rid)
            await h.wait(rid, "completed")
            record(h.writer, service="test", device_id="d", kinds=KINDS, agents=AGENTS)
            spans = spans_in(h.store)
            call = h.store.read(lambda c: c.execute(
                "SELECT started_at, finished_at FROM tool_calls WHERE idem_key = ?",
                (request["key"],)).fetchone())
        finally:
            await h.stop()
        _, trace_id, parent, _ = request["traceparent"].split("-")
        by_id = {s["span_id"]: s for s in spans}
        assert len(by_id) == len(spans)  # no span twice
        handoff = by_id[parent]  # the span the traceparent names
        assert handoff["name"] == "execute_tool cloud:reviewer"
        assert handoff["trace_id"] == trace_id and handoff["error"] is None
        assert handoff["attributes"]["gen_ai.tool.call.id"] == request["key"]
        assert (handoff["start"], handoff["end"]) == pytest.approx(tuple(call), abs=1e-6)
        step = by_id[handoff["parent_id"]]
        assert step["name"] == "step review"
        assert step["attributes"]["edge_agent.step_status"] == "completed"
        assert by_id[step["parent_id"]]["name"] == "run w"
        assert sum(s["name"] == "execute_tool cloud:reviewer" for s in spans) == 1
        assert not [s for s in spans if s["name"].startswith("invoke_agent")]  # none ran here
    asyncio.run(main())


@pytest.mark.parametrize("fallback", ["local", None])
def test_a_handoff_the_device_took_back_is_an_error_span(db_path: Path, ledger: Path,
                                                         fallback: str | None) -> None:
    """Timed out: under the step that took the fallback, or, with none, under the run the
    timeout failed (no step row closes that handoff, yet the cloud's child names it)."""
    review: dict[str, Any] = {"timeout_s": 0.2, **({"fallback": fallback} if fallback else {})}
    h = Harness(db_path, {"w": _handoff_workflow(**review)},
                {"stamp": ToolBinding(LedgerTool("stamp", ledger))})

    async def main() -> None:
        await h.start()
        try:
            rid = h.queue("w", {})
            request, _ = await _request(h, rid)
            await h.wait(rid, "completed" if fallback else "failed")
            record_spans(h.writer)
            spans = spans_in(h.store)
        finally:
            await h.stop()
        by_id = {s["span_id"]: s for s in spans}
        handoff = by_id[request["traceparent"].split("-")[2]]
        assert handoff["error"] == "no result from the cloud in time"
        assert handoff["attributes"]["edge_agent.outcome"] == "timed_out"
        assert by_id[handoff["parent_id"]]["name"] == ("step review" if fallback else "run w")
        assert len(by_id) == len(spans)
    asyncio.run(main())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_cloud_child_run_hangs_under_the_device_handoff_span(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """`workflow:NAME` on the cloud (its engine on either store): the child run keeps the
    traceparent's span as the parent of its root span (runs.parent_span), so its spans join
    the device run's trace."""
    from support.postgres import fresh_pg_url

    from edge_agent.config import load_config
    from edge_agent.daemon.cloud_runner import CloudStepFailed, WorkflowTarget
    from sync.cloud.handoffs import child_run_id

    database = "" if backend == "sqlite" else \
        f'database = "{fresh_pg_url(request.getfixturevalue("pg_cluster"))}"\n'
    cfg = tmp_path / "cloud-agent.toml"
    cfg.write_text(f'[device]\nid = "cloud"\ndata_dir = "{tmp_path / "data"}"\n'
                   f'runtime_dir = "{tmp_path / "run"}"\n{database}[workflows.review]\n'
                   'start = "done"\n[workflows.review.nodes.done]\nend = true\n')
    config = load_config(cfg)
    trace_id, parent = "ab" * 16, "cd" * 8
    request = {"key": "handoff/r1/review#1/0/0/a1", "traceparent": f"00-{trace_id}-{parent}-01"}
    stopping = threading.Event()
    stopping.set()  # queue the child run, then return at once: the engine below runs it
    with pytest.raises(CloudStepFailed):
        WorkflowTarget(config, "review", stopping)(input={}, context={}, request=request)
    h = Harness(config.database, config.workflows, {})
    rid = child_run_id(request["key"])

    async def main() -> None:
        await h.start()
        try:
            h.engine.wake(rid)
            await h.wait(rid, "completed")
            record_spans(h.writer)
            spans = spans_in(h.store)
        finally:
            await h.stop()
        root = next(s for s in spans if s["name"] == "run review")
        assert (root["trace_id"], root["parent_id"]) == (trace_id, parent)
        assert {s["trace_id"] for s in spans} == {trace_id}
    asyncio.run(main())
