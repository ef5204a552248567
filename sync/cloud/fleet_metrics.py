"""`edge-agent-cloud metrics`: the device's `edge-agent metrics` figures, per device and for
the fleet, from the cloud's copy of the records the devices sent.

The figures and their names are the device's (edge_agent/telemetry/summary.py): `tools`
(per tool: calls, ok, failed, unknown, success_rate, duration_s), `retries` (total, runs,
by_node) and `steps` (per workflow, node and kind: failed, duration_s), each duration a
{count, p50, p95, max} of nearest-rank percentiles, for what started at or after `since`.
The checkpoint records say when a step ended, not when it began, and carry no tool call;
the spans a device sends on its `traces` stream carry both, as its own tables hold them
(a `step <node>` span per step row, an `execute_tool` span per call): the figures are
computed from those spans, so a device that sends no spans shows none.

Bounded: the runs the projection saw a record of since `since` (fleet_runs, by its
updated_at index) give, per device epoch, the seqs of the traces stream that hold their
records; only that seq range is read (by the records' primary key), and of it only the
`otlp.traces` records created since `since`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sync.cloud.run_records import SPANS, Span, spans_of
from sync.cloud.views import ViewError, _members
from sync.distribution import dist, percentile

STREAM = "traces"
# a call's final states, as the device counts them towards a tool's success rate
OK = ("ok", "confirmed")
FAILED = ("error", "assumed_failed", "timed_out")


def figures(spans: Iterable[Span], since: float) -> dict[str, Any]:
    """tools, retries and steps of the spans that started at or after `since`."""
    tool_s: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"ok": 0, "failed": 0,
                                                            "unknown": 0})
    step_s: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    failed: dict[tuple[str, str, str], int] = defaultdict(int)
    by_node: dict[str, int] = {}
    runs: set[str] = set()
    for _t, _s, _p, run_id, name, start, end, a in spans:
        if start < since:
            continue
        if a.get("gen_ai.operation.name") == "execute_tool":
            tool, status = str(a.get("gen_ai.tool.name")), a.get("edge_agent.outcome")
            outcome = "ok" if status in OK else "failed" if status in FAILED else "unknown"
            counts[tool][outcome] += 1
            if outcome != "unknown":
                tool_s[tool].append(max(0.0, end - start))
        elif name.startswith("step ") and "edge_agent.node" in a:
            node, status = str(a["edge_agent.node"]), a.get("edge_agent.step_status")
            key = (str(a.get("edge_agent.workflow")), node,
                   str(a.get("edge_agent.node_kind") or "?"))
            step_s[key].append(max(0.0, end - start))
            failed[key] += status == "failed"
            if int(a.get("edge_agent.attempt") or 1) > 1 and status != "handoff":
                by_node[node] = by_node.get(node, 0) + 1
                runs.add(str(run_id))
    tools = []
    for tool in sorted(counts):
        c = counts[tool]
        decided = c["ok"] + c["failed"]
        tools.append({"tool": tool, "calls": sum(c.values()), **c,
                      "success_rate": c["ok"] / decided if decided else None,
                      "duration_s": dist(tool_s[tool])})
    return {"tools": tools,
            "retries": {"total": sum(by_node.values()), "runs": len(runs), "by_node": by_node},
            "steps": [{"workflow": w, "node": n, "kind": k, "failed": failed[(w, n, k)],
                       "duration_s": dist(step_s[(w, n, k)])} for (w, n, k) in sorted(step_s)]}


def _devices(store: Any, device: str | None, group: str | None,
             groups: Mapping[str, Sequence[str]] | None) -> list[str] | None:
    """The devices asked for (None: all); an unknown device or group is an error."""
    if group is not None:
        return _members(group, groups)
    if device is None:
        return None
    with store.tx() as c:
        seen = store._exec(c, "SELECT 1 FROM epochs WHERE device = ? LIMIT 1",
                           (device,)).fetchone()
    if seen is None:
        raise ViewError(f"--device: no device {device!r}: the cloud holds no records of it")
    return [device]


def spans_since(store: Any, since: float, devices: Sequence[str] | None
                ) -> dict[str, list[Span]]:
    """Each device's spans in the `otlp.traces` records created since `since`, read from
    the seq range of the runs the projection saw a record of since then."""
    where, args = "updated_at >= ?", list[Any]([since])
    if devices is not None:
        where += f" AND device IN ({', '.join('?' * len(devices))})"
        args += devices
    ranges: dict[tuple[str, str], list[int]] = {}
    with store.tx() as c:
        for device, epoch, seqs in store._exec(
                c, f"SELECT device, epoch, seqs FROM fleet_runs WHERE {where}", args):
            span = json.loads(seqs).get(STREAM)
            if span is None:
                continue
            got = ranges.setdefault((device, epoch), list(span))
            got[0], got[1] = min(got[0], span[0]), max(got[1], span[1])
        out: dict[str, list[Span]] = {d: [] for d in devices or ()}
        for (device, epoch), (first, last) in sorted(ranges.items()):
            rows = store._exec(
                c, "SELECT payload FROM records WHERE device = ? AND epoch = ? AND stream = ?"
                   " AND seq BETWEEN ? AND ? AND kind = ? AND created_at >= ?",
                (device, epoch, STREAM, first, last, SPANS, since)).fetchall()
            mine = out.setdefault(device, [])
            for (payload,) in rows:
                try:
                    mine += spans_of(bytes(payload))
                except Exception:  # noqa: BLE001 - a device's bytes, counted when projected
                    continue
    return out


def metrics(store: Any, *, since: float, device: str | None = None,
            group: str | None = None, groups: Mapping[str, Sequence[str]] | None = None
            ) -> dict[str, Any]:
    """{since, fleet: {tools, retries, steps}, devices: [{device, tools, retries, steps}]}:
    the fleet's figures pool every device's spans (its percentiles are the fleet's)."""
    by_device = spans_since(store, since, _devices(store, device, group, groups))
    return {"since": since,
            "fleet": figures((s for spans in by_device.values() for s in spans), since),
            "devices": [{"device": d, **figures(spans, since)}
                        for d, spans in sorted(by_device.items())]}


__all__ = ["dist", "figures", "metrics", "percentile", "spans_since"]
