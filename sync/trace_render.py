"""A run's trace as a tree of text, the same on the device (`edge-agent trace`) and in the
cloud (`edge-agent-cloud trace`): both build the same dict (run_id, workflow, version,
status, trace_id, error, steps[{node, attempt, status, error, error_kind, duration_ms,
children}]) and print it here."""

from __future__ import annotations

from typing import Any


def _child(c: dict[str, Any]) -> str:
    if "tool" in c:
        return f"tool {c['tool']} {c['status']}" + (f": {c['error']}" if c.get("error") else "")
    if "model_turn" in c:
        m = c["summary"]
        return (f"model {m.get('model', '?')} {c['model_turn']} -> {m.get('tool')}"
                + (f" ({m.get('completion_tokens')} tokens, "
                   f"{m.get('tokens_per_s')} tok/s, ttft "
                   f"{1000 * (m.get('ttft_s') or 0):.0f} ms)" if m.get('model') else ""))
    if "cloud_run" in c:
        return (f"handed to {c['to']}: cloud run {c['cloud_run']} on "
                f"{c['worker'] or '?'} {'ok' if c['ok'] else 'failed'}")
    if "handoff" in c:
        return f"handed to {c['handoff']}: {c['status']}"
    if "agent_handoff" in c:
        return f"agent {c['agent_handoff']} handed to {c['to']}"
    if "conflict" in c:
        return f"conflict: {c['conflict']}"
    return (f"approval ({c['approval']}) {c['decision']} by {c['by'] or '-'}"
            f" from {c['origin'] or '-'}" + (f": {c['note']}" if c["note"] else ""))


def render_trace(t: dict[str, Any]) -> str:
    version = f" version {t['version']}" if t.get("version") else ""
    lines = [f"run {t['run_id']} ({t['workflow']}{version}) {t['status']}  trace {t['trace_id']}"]
    for i, s in enumerate(t["steps"]):
        last = i == len(t["steps"]) - 1
        branch = "└─" if last else "├─"
        reason = f"  {s['error_kind']}: {s['error']}" if s["error"] else ""
        retry = f" attempt {s['attempt']}" if s["attempt"] > 1 or s["status"] == "failed" else ""
        took = "?" if s["duration_ms"] is None else s["duration_ms"]
        lines.append(f"{branch} {s['node']}{retry} [{s['status']}] {took}ms{reason}")
        pad = "   " if last else "│  "
        for j, c in enumerate(s["children"]):
            twig = "└─" if j == len(s["children"]) - 1 else "├─"
            lines.append(f"{pad}{twig} {_child(c)}")
    if t["error"]:
        lines.append(f"error: {t['error']}")
    return "\n".join(lines)
