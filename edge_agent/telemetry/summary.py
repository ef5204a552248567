"""The device's own view of its metrics, computed from the durable records (no exporter, no
collector): tool calls and their success rate, retries, step durations by node and kind,
agent execution time, and the model's tokens/s and time to first token.

`edge-agent metrics` prints it; `edge-agent status` shows `one_line`. Reads only.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from sync.dbapi import Connection
from sync.distribution import dist

# A call's final states: what counts towards a tool's success rate.
_OK = ("ok", "confirmed")
_FAILED = ("error", "assumed_failed", "timed_out")


def collect(conn: Connection, *, since: float,
            kinds: Mapping[tuple[str, str], str] | None = None) -> dict[str, Any]:
    """Everything `edge-agent metrics` shows, for what started at or after `since`.
    `kinds` maps (workflow, node) to the node's kind, from the config."""
    kinds = kinds or {}
    return {"since": since, "tools": _tools(conn, since), "retries": _retries(conn, since),
            "steps": _steps(conn, since, kinds), "agents": _agents(conn, since, kinds),
            "models": _models(conn, since)}


def _tools(conn: Connection, since: float) -> list[dict[str, Any]]:
    durations: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "failed": 0,
                                                            "unknown": 0})
    for tool, status, started, finished in conn.execute(
            "SELECT tool, status, started_at, finished_at FROM calls WHERE started_at >= ?"
            " AND status NOT IN ('intent', 'requested')", (since,)):
        outcome = "ok" if status in _OK else "failed" if status in _FAILED else "unknown"
        counts[tool][outcome] += 1
        if finished is not None and outcome != "unknown":
            durations[tool].append(max(0.0, finished - started))
    out = []
    for tool in sorted(counts):
        c = counts[tool]
        decided = c["ok"] + c["failed"]
        out.append({"tool": tool, "calls": sum(c.values()), **c,
                    "success_rate": c["ok"] / decided if decided else None,
                    "duration_s": dist(durations[tool])})
    return out


def _retries(conn: Connection, since: float) -> dict[str, Any]:
    """Attempts after the first, per node, and the runs that needed them."""
    by_node: dict[str, int] = {}
    runs: set[str] = set()
    for run_id, node, n in conn.execute(
            "SELECT run_id, node, count(*) FROM steps WHERE started_at >= ? AND attempt > 1"
            " AND status != 'handoff' GROUP BY run_id, node", (since,)):
        by_node[node] = by_node.get(node, 0) + n
        runs.add(run_id)
    return {"total": sum(by_node.values()), "runs": len(runs), "by_node": by_node}


def _steps(conn: Connection, since: float,
           kinds: Mapping[tuple[str, str], str]) -> list[dict[str, Any]]:
    durations: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    failed: dict[tuple[str, str, str], int] = defaultdict(int)
    for workflow, node, status, started, finished in conn.execute(
            "SELECT r.workflow, s.node, s.status, s.started_at, s.finished_at FROM steps s"
            " JOIN runs r ON r.run_id = s.run_id WHERE s.started_at >= ?", (since,)):
        key = (workflow, node, kinds.get((workflow, node), "?"))
        durations[key].append(max(0.0, finished - started))
        failed[key] += status == "failed"
    return [{"workflow": w, "node": n, "kind": k, "failed": failed[(w, n, k)],
             "duration_s": dist(durations[(w, n, k)])}
            for (w, n, k) in sorted(durations)]


def _agents(conn: Connection, since: float,
            kinds: Mapping[tuple[str, str], str]) -> dict[str, Any]:
    """Wall time of agent steps (every turn and tool call of the agent, handoffs included)
    and how many handoffs there were."""
    times: list[float] = []
    handoffs = 0
    for workflow, node, status, started, finished in conn.execute(
            "SELECT r.workflow, s.node, s.status, s.started_at, s.finished_at FROM steps s"
            " JOIN runs r ON r.run_id = s.run_id WHERE s.started_at >= ?", (since,)):
        if kinds.get((workflow, node)) not in ("agent", "handoff"):
            continue
        if status == "handoff":
            handoffs += 1
        else:
            times.append(max(0.0, finished - started))
    return {"handoffs": handoffs, "execution_s": dist(times)}


def _models(conn: Connection, since: float) -> list[dict[str, Any]]:
    """Per model: turns, tokens in and out, tokens/s and time to first token."""
    per: dict[str, dict[str, Any]] = {}
    for (value,) in conn.execute("SELECT value FROM memo WHERE created_at >= ?", (since,)):
        try:
            comp = (json.loads(value) or {}).get("completion") or {}
        except (ValueError, AttributeError):
            continue
        model = comp.get("model")
        if not model:
            continue
        m = per.setdefault(model, {"turns": 0, "input_tokens": 0, "output_tokens": 0,
                                   "tps": [], "ttft": []})
        m["turns"] += 1
        m["input_tokens"] += int(comp.get("prompt_tokens") or 0)
        m["output_tokens"] += int(comp.get("completion_tokens") or 0)
        if comp.get("tokens_per_s"):
            m["tps"].append(float(comp["tokens_per_s"]))
        if comp.get("ttft_s") is not None:
            m["ttft"].append(float(comp["ttft_s"]))
    return [{"model": name, "turns": m["turns"], "input_tokens": m["input_tokens"],
             "output_tokens": m["output_tokens"], "tokens_per_s": dist(m["tps"]),
             "time_to_first_token_s": dist(m["ttft"])} for name, m in sorted(per.items())]


def one_line(data: Mapping[str, Any]) -> str:
    """`status`'s summary: calls and success, retries, the slowest step p95, tokens/s."""
    calls = sum(t["calls"] for t in data["tools"])
    ok = sum(t["ok"] for t in data["tools"])
    decided = ok + sum(t["failed"] for t in data["tools"])
    parts = [f"{calls} tool calls" + (f" ({ok / decided:.1%} ok)" if decided else "")]
    parts.append(f"{data['retries']['total']} retries")
    p95s = [s["duration_s"]["p95"] for s in data["steps"] if s["duration_s"]["p95"] is not None]
    if p95s:
        parts.append(f"slowest step p95 {max(p95s):.2f}s")
    tps = [m["tokens_per_s"]["p50"] for m in data["models"] if m["tokens_per_s"]["p50"]]
    if tps:
        parts.append(f"{max(tps):.1f} tokens/s")
    return ", ".join(parts)


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `1h`, `7d` (or plain seconds) as seconds; ValueError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    text = text.strip().lower()
    scale = units.get(text[-1:])
    number = text[:-1] if scale else text
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a positive duration: a number of seconds, or a number with "
                         f"s, m, h, d or w, like 90s, 15m, 1h, 7d or 2w (got {text!r})")
    return value
