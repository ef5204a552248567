"""Spans derived from the durable records, after the fact, off the hot path.

Steps, tool calls, approvals and model turns are committed with their times and ids, so a
span can be built from them at any later moment, and none is lost to a crash: the exporter
keeps a watermark (the last step id it turned into spans) in the same database and moves it
in the same transaction that appends the encoded spans to the outbox. Span ids are derived
from the rows (a step's id, a tool call's id), so re-deriving yields the same ids; a run's
span id was stored when the run started, so a run resumed after a crash continues its trace.
A tool call the crash interrupted is a span with an error ("interrupted") and the operator's
later answer. A step handed to the cloud has a span for the handoff, from request to result,
whose id the device names in the request's traceparent: the cloud's child run hangs under it.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_agent.engine.journal import scope_matches
from edge_agent.telemetry.spans import CLIENT, Span
from sync.dbapi import Connection

MARK = "spans.last_step"
MARK_RUNS = "spans.last_finished"
HANDOFF_KEY = "handoff/"  # the journal key of a step handed to the cloud (cloud_handoff)
CLOUD = "cloud:"  # a node handed to the cloud names its target so (cloud_handoff.PREFIX)


def span_id(*parts: object) -> str:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:16]


def handoff_span_id(run_id: str, key: str) -> str:
    """The span of a step handed to the cloud, from the run and the request's key alone:
    the device names it in the request's traceparent before any row of it exists."""
    return span_id(run_id, "handoff", key)


def _mark(conn: Connection, name: str) -> float:
    row = conn.execute("SELECT value FROM telemetry_marks WHERE name = ?", (name,)).fetchone()
    return float(row[0]) if row else 0.0


def _set(conn: Connection, name: str, value: float) -> None:
    conn.execute("INSERT INTO telemetry_marks (name, value) VALUES (?, ?) ON CONFLICT (name)"
                 " DO UPDATE SET value = excluded.value", (name, value))


@dataclass
class SpanBatch:
    """Spans derived in a read snapshot, with the watermarks they start from and move to."""

    spans: list[Span]
    since: tuple[float, float]
    upto: tuple[float, float]
    full: bool  # the step limit was reached: more are waiting

    @property
    def moved(self) -> bool:
        return self.upto != self.since


def derive_spans(conn: Connection, *, kinds: Mapping[tuple[str, str], str] | None = None,
                 agents: Mapping[tuple[str, str], str] | None = None,
                 limit: int = 2000) -> SpanBatch:
    """Spans for steps committed since the watermark, and for runs finished since. Reads
    only: run it outside the write lock, then `commit_marks` in the transaction that
    appends the encoded spans to the outbox. `kinds` and `agents` map (workflow, node) to
    the node's kind and its first agent, from the config: an agent step gets an
    `invoke_agent` span (GenAI conventions) around its model turns and tool calls."""
    kinds = kinds or {}
    agents = agents or {}
    handed: dict[tuple[str, str, int], str] = {}  # the agent a handoff passed the step to
    segments: dict[tuple[str, str, int, int], int] = {}  # handoffs so far in a step
    since = (_mark(conn, MARK), _mark(conn, MARK_RUNS))
    last = int(since[0])
    rows = conn.execute(
        "SELECT s.*, r.trace_id, r.span_id AS run_span, r.workflow FROM steps s JOIN runs r"
        " ON r.run_id = s.run_id WHERE s.id > ? ORDER BY s.id LIMIT ?", (last, limit)).fetchall()
    related = _Related(conn, [s for s in rows if s["trace_id"] and s["run_span"]])
    spans: list[Span] = []
    for s in rows:
        last = s["id"]
        if not s["trace_id"] or not s["run_span"]:
            continue
        sid = span_id(s["run_id"], "step", s["id"])
        error = s["error"] if s["status"] in ("failed", "conflict", "interrupted") else None
        attrs: dict[str, Any] = {
            "edge_agent.run_id": s["run_id"], "edge_agent.workflow": s["workflow"],
            "edge_agent.node": s["node"], "edge_agent.attempt": s["attempt"],
            "edge_agent.step_status": s["status"],
            "edge_agent.node_kind": kinds.get((s["workflow"], s["node"]))}
        if s["status"] == "failed":
            attrs["edge_agent.error_kind"] = s["error_kind"]
            attrs["edge_agent.retry_reason"] = f"{s['error_kind']}: {s['error']}"
        if s["status"] == "handoff":
            out = json.loads(s["output"] or "{}")
            attrs["edge_agent.handoff.from"] = out.get("from")
            attrs["edge_agent.handoff.to"] = out.get("to")
        spans.append(Span(s["trace_id"], sid, s["run_span"], f"step {s['node']}",
                          s["started_at"], s["finished_at"], attrs, error))
        step = {"node": s["node"], "visit": s["visit"], "attempt": s["attempt"]}
        parent = sid
        # a step handed to the cloud runs no agent here: its handoff span is the step's child
        cloud = str(agents.get((s["workflow"], s["node"])) or
                    attrs.get("edge_agent.handoff.to") or "").startswith(CLOUD)
        if not cloud and (attrs["edge_agent.node_kind"] in ("agent", "handoff") or
                          s["status"] == "handoff"):
            where = (s["run_id"], s["node"], s["visit"])
            # each segment (the agent before a handoff, the one after) owns its own calls
            seg_key = (*where, s["attempt"])
            step["segment"] = segments.get(seg_key, 0)
            if s["status"] == "handoff":
                agent = attrs["edge_agent.handoff.from"]
                handed[where] = attrs["edge_agent.handoff.to"]
                segments[seg_key] = step["segment"] + 1
            else:
                agent = handed.pop(where, None) or agents.get((s["workflow"], s["node"]))
                segments.pop(seg_key, None)
            parent = span_id(s["run_id"], "agent", s["id"])
            spans.append(Span(s["trace_id"], parent, sid, f"invoke_agent {agent or ''}".strip(),
                              s["started_at"], s["finished_at"], {
                                  "gen_ai.operation.name": "invoke_agent",
                                  "gen_ai.agent.name": agent,
                                  "error.type": s["error_kind"] if error else None}, error))
        spans += _children(related, s, step, parent)
    run_spans, top = _finished_runs(conn, since[1])
    return SpanBatch(spans + run_spans, since, (float(last), top), len(rows) >= limit)


def commit_marks(conn: Connection, batch: SpanBatch) -> bool:
    """Move the watermarks inside the write transaction, only if nobody moved them since the
    batch was derived (so no span is recorded twice); False when the batch is stale."""
    if (_mark(conn, MARK), _mark(conn, MARK_RUNS)) != batch.since:
        return False
    _set(conn, MARK, batch.upto[0])
    _set(conn, MARK_RUNS, batch.upto[1])
    return True


class _Related:
    """Tool calls, model turns and decided approvals of a batch's runs, fetched with one
    query each and kept sorted by time for each run."""

    def __init__(self, conn: Connection, steps: list[Any]) -> None:
        self.calls: dict[str, list[Any]] = {}
        self.turns: dict[str, list[Any]] = {}
        self.approvals: dict[str, list[Any]] = {}
        run_ids = sorted({s["run_id"] for s in steps})
        if not run_ids:
            return
        lo = min(s["started_at"] for s in steps) - 1
        hi = max(s["finished_at"] for s in steps) + 1
        for i in range(0, len(run_ids), 500):
            chunk = run_ids[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for table, sql in (
                    (self.calls, (f"SELECT * FROM tool_calls WHERE run_id IN ({marks}) AND"
                                  " started_at >= ? AND started_at <= ?")),
                    (self.turns, ("SELECT run_id, scope, key, value, created_at FROM memo"
                                  f" WHERE run_id IN ({marks}) AND created_at >= ? AND"
                                  " created_at <= ?")),
                    (self.approvals, (f"SELECT * FROM approvals WHERE run_id IN ({marks})"
                                      " AND decided_at >= ? AND decided_at <= ?"))):
                for row in conn.execute(sql, (*chunk, lo, hi)):
                    table.setdefault(row["run_id"], []).append(row)
        for table, by in ((self.calls, "started_at"), (self.turns, "created_at"),
                          (self.approvals, "decided_at")):
            def order(r: Any, k: str = by) -> tuple[Any, Any]:
                return (r[k], r[0])
            for rows in table.values():
                rows.sort(key=order)

    @staticmethod
    def between(rows: list[Any] | None, key: str, lo: float, hi: float
                ) -> list[Any]:
        if not rows:
            return []
        start = bisect.bisect_left(rows, lo, key=lambda r: r[key])
        end = bisect.bisect_right(rows, hi, key=lambda r: r[key])
        return rows[start:end]


def _children(related: _Related, s: Any, step: dict[str, Any],
              parent: str) -> list[Span]:
    def call_span(sid: str, tool: str, start: float, end: float, attempt: int, outcome: str,
                  key: str, error: str | None) -> Span:
        return Span(s["trace_id"], sid, parent, f"execute_tool {tool}", start, end, {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": key, "edge_agent.run_id": s["run_id"],
            "edge_agent.attempt": attempt, "edge_agent.outcome": outcome,
            "edge_agent.idempotency_key": key,
            "error.type": (s["error_kind"] or "error") if error else None}, error)

    out: list[Span] = []
    if s["tool"] is not None:  # an idempotent call, journaled in its step row
        ok = s["status"] == "completed"
        out.append(call_span(span_id(s["run_id"], "stepcall", s["id"]), s["tool"],
                             s["started_at"], s["finished_at"], s["attempt"],
                             "ok" if ok else "error", s["call_key"],
                             None if ok else s["error"]))
    calls = related.between(related.calls.get(s["run_id"]), "started_at",
                            s["started_at"] - 1, s["finished_at"])
    for c in sorted(calls, key=lambda r: r["id"]):
        if not scope_matches(c["node"], step, c["attempt"]) or not _in_segment(c["node"], step):
            continue
        if c["idem_key"].startswith(HANDOFF_KEY):
            if s["status"] not in ("handoff", "conflict"):  # the row the node advanced with
                out.append(_handoff_span(s["trace_id"], s["run_id"], c, parent,
                                         s["finished_at"]))
            continue
        status = c["status"]
        error = c["error"] if status == "error" else (
            "interrupted: the process stopped during this call" if status in
            ("intent", "unknown", "assumed_failed", "confirmed") else None)
        out.append(call_span(span_id(s["run_id"], "call", c["id"]), c["tool"],
                             c["started_at"], c["finished_at"] or s["finished_at"],
                             c["attempt"], status, c["idem_key"], error))
    for m in related.between(related.turns.get(s["run_id"]), "created_at", s["started_at"],
                             s["finished_at"]):
        if not scope_matches(m["scope"], step) or not _in_segment(m["scope"], step):
            continue
        comp = (json.loads(m["value"]) or {}).get("completion") or {}
        model = comp.get("model", "?")
        start = m["created_at"] - float(comp.get("ttft_s") or 0) - \
            (comp.get("completion_tokens") or 0) / max(comp.get("tokens_per_s") or 1e9, 1e-9)
        reason = comp.get("finish_reason")
        out.append(Span(s["trace_id"], span_id(s["run_id"], "turn", m["scope"], m["key"]),
                        parent, f"chat {model}", start, m["created_at"], {
                            "gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                            "gen_ai.provider.name": comp.get("provider"),
                            "gen_ai.usage.input_tokens": comp.get("prompt_tokens"),
                            "gen_ai.usage.output_tokens": comp.get("completion_tokens"),
                            "gen_ai.response.finish_reasons": [reason] if reason else None,
                            "edge_agent.turn": m["key"]}, kind=CLIENT))
    for a in related.between(related.approvals.get(s["run_id"]), "decided_at",
                             s["started_at"] - 1, s["finished_at"] + 1):
        if a["node"] != s["node"]:
            continue
        out.append(Span(s["trace_id"], span_id(s["run_id"], "approval", a["id"]), parent,
                        "approval wait", a["created_at"], a["decided_at"], {
                            "edge_agent.approval.kind": a["kind"],
                            "edge_agent.approval.decision": a["status"],
                            "edge_agent.approval.decided_by": a["decided_by"],
                            "edge_agent.approval.origin": a["origin"],
                            "edge_agent.approval.note": a["note"]}))
    return out


def _handoff_span(trace_id: str, run_id: str, c: Any, parent: str, end: float) -> Span:
    """The handoff of a step to the cloud, from the device's request to the result it
    applied (or to taking the lease back): a client span, parent of the cloud's child run."""
    status = c["status"]
    error = c["error"] if status == "error" else {
        "timed_out": "no result from the cloud in time",
        "requested": "the run ended while the cloud held the step"}.get(status)
    return Span(trace_id, handoff_span_id(run_id, c["idem_key"]), parent,
                f"execute_tool {c['tool']}", c["started_at"], c["finished_at"] or end,
                {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": c["tool"],
                 "gen_ai.tool.call.id": c["idem_key"], "edge_agent.run_id": run_id,
                 "edge_agent.attempt": c["attempt"], "edge_agent.outcome": status,
                 "edge_agent.handoff.from": "device", "edge_agent.handoff.to": c["tool"],
                 "error.type": (c["error_kind"] or status) if error else None},
                error, kind=CLIENT)


def _in_segment(scope: str, step: dict[str, Any]) -> bool:
    """An agent's scope `node#visit.attempt.segment` belongs to the step row of that segment
    (a handoff row ends one segment; the next row holds the rest)."""
    if "segment" not in step:
        return True
    parts = scope.split("/")[-1].partition("#")[2].split(".")
    return len(parts) < 3 or not parts[2].isdigit() or int(parts[2]) == step["segment"]


def _finished_runs(conn: Connection, since: float) -> tuple[list[Span], float]:
    out: list[Span] = []
    top = since
    for r in conn.execute("SELECT * FROM runs WHERE finished_at IS NOT NULL AND finished_at > ?"
                          " ORDER BY finished_at", (since,)).fetchall():
        top = max(top, r["finished_at"])
        if not r["trace_id"] or not r["span_id"]:
            continue
        # a child run of a step handed over from a device hangs under the device's handoff
        out.append(Span(r["trace_id"], r["span_id"], r["parent_span"], f"run {r['workflow']}",
                        r["created_at"], r["finished_at"], {
                            "edge_agent.run_id": r["run_id"],
                            "edge_agent.workflow": r["workflow"],
                            "edge_agent.run_status": r["status"],
                            "edge_agent.origin": r["origin"]},
                        r["error"] if r["status"] == "failed" else None))
        if r["status"] != "completed":
            out += _open_handoffs(conn, r)
    return out, top


def _open_handoffs(conn: Connection, r: Any) -> list[Span]:
    """Handoffs that no step row of their node closed: the run failed on the step (no
    fallback) or was cancelled while the cloud held it. Their spans hang under the run's,
    so the cloud's child run still has its parent in the trace."""
    calls = conn.execute(
        "SELECT * FROM tool_calls c WHERE c.run_id = ? AND c.idem_key LIKE ? AND NOT EXISTS"
        " (SELECT 1 FROM steps s WHERE s.run_id = c.run_id AND s.attempt = c.attempt AND"
        " s.node || '#' || s.visit = c.node AND s.status NOT IN ('handoff', 'conflict'))",
        (r["run_id"], HANDOFF_KEY + "%")).fetchall()
    return [_handoff_span(r["trace_id"], r["run_id"], c, r["span_id"], r["finished_at"])
            for c in calls]
