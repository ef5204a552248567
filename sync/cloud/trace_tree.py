"""A run's tree from the cloud's copy of its records and spans, in the shape the device's
`edge-agent trace --json` gives (sync/trace_render.py prints both).

Steps come from the checkpoint records (`step.completed`, `step.retry`, a `run.finished`
that ends a step); approvals, hand-offs, remote tool requests and conflicts from the control
records; tool calls, model turns and each step's timing from the spans the device sent on
its traces stream (a step whose span the cloud lacks shows no duration). A gate or a
hand-off still open has no step yet: it shows as a step `waiting` / `handed_off`, which the
step's checkpoint replaces once it ends (one step, as the device shows it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from sync.cloud.run_records import SPANS, Span, bounded, one, spans_of
from sync.envelope import WireRecord

MAX_RECORDS = 100_000  # read back for one trace, at most


def read(store: Any, device: str, epoch: str, run_id: str, seqs: Mapping[str, list[int]]
         ) -> tuple[list[tuple[str, float, dict[str, Any]]], list[Span]]:
    """The run's records (kind, ts, fields) and its spans, from the seqs of each stream
    that hold them (the database skips, in C, any record that does not name the run)."""
    names = "position(? in payload) > 0" if store.dialect == "postgresql" else \
        "instr(payload, ?) > 0"
    events: list[tuple[str, float, dict[str, Any]]] = []
    spans: list[Span] = []
    ignored: Counter[str] = Counter()
    with store.tx() as c:
        for stream, (first, last) in sorted(seqs.items()):
            rows = store._exec(
                c, "SELECT seq, kind, payload, created_at FROM records WHERE device = ? AND"
                   f" epoch = ? AND stream = ? AND seq BETWEEN ? AND ? AND {names} ORDER BY"
                   f" seq LIMIT {MAX_RECORDS}",
                (device, epoch, stream, first, last, run_id.encode())).fetchall()
            for seq, kind, payload, created in rows:
                r = WireRecord(int(seq), kind, bytes(payload), float(created))
                if kind == SPANS:
                    spans += _spans(r.payload)
                    continue
                rec = one(r, ignored)
                if rec is not None and rec["run_id"] == run_id:
                    ts = rec.get("ts")
                    events.append((kind, float(ts) if isinstance(ts, int | float)
                                   else r.created_at, bounded(rec)))
    events.sort(key=lambda e: e[1])
    traces = {s[0] for s in spans if s[3] == run_id}
    return events, sorted((s for s in spans if s[0] in traces), key=lambda s: s[5])


def _spans(payload: bytes) -> list[Span]:
    try:
        return spans_of(payload)
    except Exception:  # noqa: BLE001 - counted when it was projected; nothing to show
        return []


def _ms(a: float, b: float) -> float:
    return round((b - a) * 1000, 1)


def build(head: Mapping[str, Any], events: Sequence[tuple[str, float, dict[str, Any]]],
          spans: Sequence[Span]) -> dict[str, Any]:
    steps: list[dict[str, Any]] = []  # each step: its fields and `children`
    open_steps: dict[Any, dict[str, Any]] = {}  # node -> a step no checkpoint ended yet

    def step_of(node: Any, *, status: str, ts: float) -> dict[str, Any]:
        found = [held for held in steps if held["node"] == node]
        if found:
            return found[-1]
        s: dict[str, Any] = {"node": node, "visit": None, "attempt": 1, "status": status,
                             "error": None, "error_kind": None, "duration_ms": None,
                             "started_at": ts, "children": []}
        steps.append(s)
        open_steps[node] = s
        return s

    approvals: dict[Any, dict[str, Any]] = {}
    for kind, ts, r in events:
        if kind in ("step.completed", "step.retry") or (kind == "run.finished"
                                                          and "attempt" in r):
            failed = kind == "step.retry"
            done = {"node": r.get("node"), "visit": r.get("visit"),
                    "attempt": int(r.get("attempt") or 1),
                    "status": "failed" if failed else str(r.get("status") or "completed"),
                    "error": r.get("error") if failed else None,
                    "error_kind": r.get("kind") if failed else None,
                    "duration_ms": None, "started_at": ts}
            held = open_steps.pop(r.get("node"), None)
            if held is not None:  # the gate (hand-off, remote call) it waited at, ended
                held.update(done)
            else:
                steps.append({**done, "children": []})
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
    later: dict[Any, Any] = {}  # node -> the visit of its next step that names one
    for st in reversed(steps):  # a retry's record names no visit: the one it retried
        if st["visit"] is None and st["status"] == "failed":
            st["visit"] = later.get(st["node"])
        elif st["visit"] is not None:
            later[st["node"]] = st["visit"]
    trace_id = _with_spans(steps, spans)
    for st in steps:  # as the device lists them: calls and turns, then approvals
        st["children"].sort(key=lambda c: "approval" in c)
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
        a = s[7]
        if s[4].startswith("run ") and a.get("edge_agent.run_id"):
            trace_id = s[0]
        if s[4].startswith("step ") and "edge_agent.node" in a:
            step_spans[(a["edge_agent.node"], int(a.get("edge_agent.attempt") or 1))] = s
    children: dict[str, list[Span]] = {}
    for s in spans:
        op = s[7].get("gen_ai.operation.name")
        if op in ("execute_tool", "chat"):
            parent = s[2]
            while parent is not None and parent in by_id and \
                    not by_id[parent][4].startswith("step "):
                parent = by_id[parent][2]
            if parent is not None:
                children.setdefault(parent, []).append(s)
    for st in steps:
        span = step_spans.get((st["node"], st["attempt"]))
        if span is None:
            continue
        trace_id = trace_id or span[0]
        st["duration_ms"], st["started_at"] = _ms(span[5], span[6]), span[5]
        for c in children.get(span[1], []):
            a = c[7]
            if a.get("gen_ai.operation.name") == "execute_tool":
                outcome = a.get("edge_agent.outcome")
                st["children"].append({
                    "tool": a.get("gen_ai.tool.name"), "args": None, "status": outcome,
                    "attempt": a.get("edge_agent.attempt"), "key": a.get("gen_ai.tool.call.id"),
                    "error": a.get("error.type") if outcome not in (None, "ok") else None,
                    "duration_ms": _ms(c[5], c[6])})
            else:
                st["children"].append({"model_turn": a.get("edge_agent.turn"), "scope": "",
                                       "summary": {"model": a.get("gen_ai.request.model"),
                                                   "tool": None, "completion_tokens":
                                                   a.get("gen_ai.usage.output_tokens"),
                                                   "duration_ms": _ms(c[5], c[6])}})
    return trace_id


__all__ = ["build", "read"]
