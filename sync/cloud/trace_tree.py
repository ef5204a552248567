"""A run's tree from the cloud's copy of its records and spans, in the shape the device's
`edge-agent trace --json` gives (sync/trace_render.py prints both).

Steps come from the checkpoint records (`step.completed`, `step.retry`, a `run.finished`
that ends a step); approvals, hand-offs, remote tool requests and conflicts from the control
records; tool calls, model turns and each step's timing from the spans the device sent on
its traces stream (a step whose span the cloud lacks shows no duration). A gate or a
hand-off still open has no step yet: it shows as a step `waiting` / `handed_off`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Span = tuple[str, str, str | None, str, float, float, dict[str, Any]]


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 1)


def build(head: Mapping[str, Any], events: Sequence[tuple[str, float, dict[str, Any]]],
          spans: Sequence[Span]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []  # each step: its fields and `children`

    def step_of(node: Any, *, status: str, ts: float) -> dict[str, Any]:
        found = [held for held in steps if held["node"] == node]
        if found:
            return found[-1]
        s: dict[str, Any] = {"node": node, "visit": None, "attempt": 1, "status": status,
                             "error": None, "error_kind": None, "duration_ms": None,
                             "started_at": ts, "children": []}
        steps.append(s)
        return s

    approvals: dict[Any, dict[str, Any]] = {}
    for kind, ts, r in events:
        if kind in ("step.completed", "step.retry") or (kind == "run.finished"
                                                          and "attempt" in r):
            failed = kind == "step.retry"
            steps.append({"node": r.get("node"), "visit": r.get("visit"),
                          "attempt": int(r.get("attempt") or 1),
                          "status": "failed" if failed else str(r.get("status") or "completed"),
                          "error": r.get("error") if failed else None,
                          "error_kind": r.get("kind") if failed else None,
                          "duration_ms": None, "started_at": ts, "children": []})
        elif kind == "approval.requested":
            s = step_of(r.get("node"), status="waiting", ts=ts)
            child: dict[str, Any] = {"approval": r.get("kind") or "approval", "prompt": r.get("prompt"),
                     "decision": "pending", "by": None, "origin": None, "note": None,
                     "approval_id": r.get("approval_id")}
            approvals[r.get("approval_id")] = child
            s["children"].append(child)
        elif kind == "approval.decided":
            decided = approvals.get(r.get("approval_id"))
            if decided is not None:
                decided.update(decision=r.get("decision"), by=r.get("by"),
                             origin=r.get("origin"), note=r.get("note"))
        elif kind == "handoff.request":
            step_of(r.get("node"), status="handed_off", ts=ts)["children"].append(
                {"handoff": r.get("target"), "key": r.get("key"), "status": "requested"})
        elif kind == "tool.request":
            step_of(r.get("node"), status="running", ts=ts)["children"].append(
                {"tool": r.get("tool"), "args": r.get("args"), "status": "requested (remote)",
                 "attempt": None, "error": None, "key": r.get("key"), "duration_ms": None})
        elif kind == "agent.handoff":
            step_of(r.get("node"), status="running", ts=ts)["children"].append(
                {"agent_handoff": r.get("from"), "to": r.get("to")})
        elif kind in ("approval.conflict", "handoff.conflict"):
            text = (f"{r.get('local')} on the device, {r.get('cloud')} from the cloud;"
                    f" {r.get('rule')} -> {r.get('resolved')}" if kind == "approval.conflict"
                    else f"a late cloud result for {r.get('key')} (device: {r.get('local')})")
            step_of(r.get("node"), status="conflict", ts=ts)["children"].append(
                {"conflict": text})
    trace_id = _with_spans(steps, spans)
    return {"run_id": head["run_id"], "workflow": head["workflow"],
            "version": head.get("version"), "status": head["status"], "trace_id": trace_id,
            "error": head.get("error"), "steps": steps, "device": head["device"],
            "epoch": head["epoch"]}


def _with_spans(steps: list[dict[str, Any]], spans: Sequence[Span]) -> str | None:
    """Timings of steps and their tool calls and model turns, from the device's spans."""
    by_id = {s[1]: s for s in spans}
    step_spans: dict[tuple[Any, int], Span] = {}
    trace_id = None
    for s in spans:
        a = s[6]
        if s[3].startswith("run ") and a.get("edge_agent.run_id"):
            trace_id = s[0]
        if s[3].startswith("step ") and "edge_agent.node" in a:
            step_spans[(a["edge_agent.node"], int(a.get("edge_agent.attempt") or 1))] = s
    children: dict[str, list[Span]] = {}
    for s in spans:
        op = s[6].get("gen_ai.operation.name")
        if op in ("execute_tool", "chat"):
            parent = s[2]
            while parent is not None and parent in by_id and \
                    not by_id[parent][3].startswith("step "):
                parent = by_id[parent][2]
            if parent is not None:
                children.setdefault(parent, []).append(s)
    for st in steps:
        span = step_spans.get((st["node"], st["attempt"]))
        if span is None:
            continue
        trace_id = trace_id or span[0]
        st["duration_ms"], st["started_at"] = _ms(span[4], span[5]), span[4]
        for c in children.get(span[1], []):
            a = c[6]
            if a.get("gen_ai.operation.name") == "execute_tool":
                outcome = a.get("edge_agent.outcome")
                st["children"].append({
                    "tool": a.get("gen_ai.tool.name"), "args": None, "status": outcome,
                    "attempt": a.get("edge_agent.attempt"), "key": a.get("gen_ai.tool.call.id"),
                    "error": a.get("error.type") if outcome not in (None, "ok") else None,
                    "duration_ms": _ms(c[4], c[5])})
            else:
                st["children"].append({"model_turn": a.get("edge_agent.turn"), "scope": "",
                                       "summary": {"model": a.get("gen_ai.request.model"),
                                                   "tool": None, "completion_tokens":
                                                   a.get("gen_ai.usage.output_tokens"),
                                                   "duration_ms": _ms(c[4], c[5])}})
    return trace_id


__all__ = ["build"]
