"""Spans derived from the durable records, after the fact, off the hot path.

Steps, tool calls, approvals and model turns are committed with their times and ids, so a
span can be built from them at any later moment, and none is lost to a crash: the exporter
keeps a watermark (the last step id it turned into spans) in the same database and moves it
in the same transaction that appends the encoded spans to the outbox. Span ids are derived
from the rows (a step's id, a tool call's id), so re-deriving yields the same ids; a run's
span id was stored when the run started, so a run resumed after a crash continues its trace.
A tool call the crash interrupted is a span with an error ("interrupted") and the operator's
later answer.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from edge_agent.engine.journal import scope_matches
from edge_agent.telemetry.spans import Span

MARK = "spans.last_step"
MARK_RUNS = "spans.last_finished"


def span_id(*parts: object) -> str:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _mark(conn: sqlite3.Connection, name: str) -> float:
    row = conn.execute("SELECT value FROM telemetry_marks WHERE name = ?", (name,)).fetchone()
    return float(row[0]) if row else 0.0


def _set(conn: sqlite3.Connection, name: str, value: float) -> None:
    conn.execute("INSERT INTO telemetry_marks (name, value) VALUES (?, ?) ON CONFLICT (name)"
                 " DO UPDATE SET value = excluded.value", (name, value))


def derive_spans(conn: sqlite3.Connection, *, kinds: Mapping[tuple[str, str], str] | None = None,
                 limit: int = 2000) -> list[Span]:
    """Spans for steps committed since the watermark, and for runs finished since; moves the
    watermarks (call inside the transaction that records the spans)."""
    kinds = kinds or {}
    last = int(_mark(conn, MARK))
    rows = conn.execute(
        "SELECT s.*, r.trace_id, r.span_id AS run_span, r.workflow FROM steps s JOIN runs r"
        " ON r.run_id = s.run_id WHERE s.id > ? ORDER BY s.id LIMIT ?", (last, limit)).fetchall()
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
        spans += _children(conn, s, step, sid)
    _set(conn, MARK, last)
    spans += _finished_runs(conn)
    return spans


def _children(conn: sqlite3.Connection, s: sqlite3.Row, step: dict[str, Any],
              parent: str) -> list[Span]:
    out: list[Span] = []
    for c in conn.execute("SELECT * FROM tool_calls WHERE run_id = ? AND started_at >= ? - 1"
                          " AND started_at <= ? ORDER BY id",
                          (s["run_id"], s["started_at"], s["finished_at"])):
        if not scope_matches(c["node"], step, c["attempt"]):
            continue
        status = c["status"]
        error = c["error"] if status == "error" else (
            "interrupted: the process stopped during this call" if status in
            ("intent", "unknown", "assumed_failed", "confirmed") else None)
        out.append(Span(s["trace_id"], span_id(s["run_id"], "call", c["id"]), parent,
                        f"tool {c['tool']}", c["started_at"], c["finished_at"] or
                        s["finished_at"], {"edge_agent.run_id": s["run_id"],
                                           "edge_agent.tool": c["tool"],
                                           "edge_agent.attempt": c["attempt"],
                                           "edge_agent.outcome": status,
                                           "edge_agent.idempotency_key": c["idem_key"]},
                        error))
    for m in conn.execute("SELECT scope, key, value, created_at FROM memo WHERE run_id = ?"
                          " AND created_at >= ? AND created_at <= ?",
                          (s["run_id"], s["started_at"], s["finished_at"])):
        if not scope_matches(m["scope"], step):
            continue
        comp = (json.loads(m["value"]) or {}).get("completion") or {}
        model = comp.get("model", "?")
        start = m["created_at"] - float(comp.get("ttft_s") or 0) - \
            (comp.get("completion_tokens") or 0) / max(comp.get("tokens_per_s") or 1e9, 1e-9)
        out.append(Span(s["trace_id"], span_id(s["run_id"], "turn", m["scope"], m["key"]),
                        parent, f"chat {model}", start, m["created_at"], {
                            "gen_ai.operation.name": "chat", "gen_ai.request.model": model,
                            "gen_ai.usage.input_tokens": comp.get("prompt_tokens"),
                            "gen_ai.usage.output_tokens": comp.get("completion_tokens"),
                            "gen_ai.response.finish_reasons": comp.get("finish_reason"),
                            "edge_agent.turn": m["key"]}))
    for a in conn.execute("SELECT * FROM approvals WHERE run_id = ? AND node = ? AND"
                          " decided_at IS NOT NULL AND decided_at <= ? + 1 AND decided_at >= ?",
                          (s["run_id"], s["node"], s["finished_at"], s["started_at"] - 1)):
        out.append(Span(s["trace_id"], span_id(s["run_id"], "approval", a["id"]), parent,
                        "approval wait", a["created_at"], a["decided_at"], {
                            "edge_agent.approval.kind": a["kind"],
                            "edge_agent.approval.decision": a["status"],
                            "edge_agent.approval.decided_by": a["decided_by"],
                            "edge_agent.approval.origin": a["origin"],
                            "edge_agent.approval.note": a["note"]}))
    return out


def _finished_runs(conn: sqlite3.Connection) -> list[Span]:
    since = _mark(conn, MARK_RUNS)
    out: list[Span] = []
    top = since
    for r in conn.execute("SELECT * FROM runs WHERE finished_at IS NOT NULL AND finished_at > ?"
                          " ORDER BY finished_at", (since,)):
        top = max(top, r["finished_at"])
        if not r["trace_id"] or not r["span_id"]:
            continue
        out.append(Span(r["trace_id"], r["span_id"], None, f"run {r['workflow']}",
                        r["created_at"], r["finished_at"], {
                            "edge_agent.run_id": r["run_id"],
                            "edge_agent.workflow": r["workflow"],
                            "edge_agent.run_status": r["status"],
                            "edge_agent.origin": r["origin"]},
                        r["error"] if r["status"] == "failed" else None))
    _set(conn, MARK_RUNS, top)
    return out
