"""`edge-agent trace RUN_ID`: the run as a tree, from the local store, offline."""

from __future__ import annotations

import argparse
from typing import Any

from edge_agent.cli.context import CliError, Context
from edge_agent.engine import queries as q
from edge_agent.engine.journal import scope_matches
from edge_agent.engine.records import loads
from sync.trace_render import render_trace


def build_trace(store: Any, run_id: str) -> dict[str, Any]:
    run = store.read(lambda c: q.get_run(c, run_id))
    if run is None:
        raise CliError(f"no run {run_id!r}", 1)
    steps = store.read(lambda c: q.steps(c, run_id))
    calls = store.read(lambda c: q.tool_calls(c, run_id))
    approvals = store.read(lambda c: q.list_approvals(c, pending_only=False, run_id=run_id))
    turns = store.read(lambda c: [dict(r) for r in c.execute(
        "SELECT scope, key, value, created_at FROM memo WHERE run_id = ? ORDER BY created_at",
        (run_id,))])
    nodes: list[dict[str, Any]] = []
    for s in steps:
        item = {"node": s["node"], "visit": s["visit"], "attempt": s["attempt"],
                "status": s["status"], "error": s["error"], "error_kind": s["error_kind"],
                "duration_ms": round((s["finished_at"] - s["started_at"]) * 1000, 1),
                "started_at": s["started_at"], "children": []}
        for c in calls:
            if scope_matches(c["node"], s, c["attempt"]):
                item["children"].append({
                    "tool": c["tool"], "args": c["args"], "status": c["status"],
                    "attempt": c["attempt"], "error": c["error"], "key": c["idem_key"],
                    "duration_ms": None if c["finished_at"] is None else
                    round((c["finished_at"] - c["started_at"]) * 1000, 1)})
        for t in turns:
            if scope_matches(t["scope"], s):
                value = loads(t["value"]) or {}
                summary = {"tool": value.get("tool"), **(value.get("completion") or {})}
                item["children"].append({"model_turn": t["key"], "scope": t["scope"],
                                         "summary": summary})
        out = s.get("output")
        if s["status"] == "handoff" and isinstance(out, dict) and out.get("cloud_run"):
            item["children"].append({"cloud_run": out["cloud_run"], "to": out.get("to"),
                                     "worker": out.get("worker"), "ok": out.get("ok")})
        for a in approvals:
            if a["node"] == s["node"]:
                item["children"].append({"approval": a["kind"], "prompt": a["prompt"],
                                         "decision": a["status"], "by": a["decided_by"],
                                         "origin": a["origin"], "note": a["note"]})
        nodes.append(item)
    return {"run_id": run.run_id, "workflow": run.workflow,
            "version": run.summary()["version"], "status": run.status,
            "trace_id": run.trace_id, "error": run.error, "steps": nodes}


def cmd_trace(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.store()
    try:
        data = build_trace(store, args.run_id)
    finally:
        store.close()
    ctx.out(data, render_trace(data))
    return 0
