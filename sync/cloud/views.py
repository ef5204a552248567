"""What an operator looks at, read from the fleet's projection (sync/cloud/projection.py).

Every view returns plain dicts and lists (JSON-able; times are Unix seconds, floats), so the
CLI (sync/cloud/views_cli.py) and the web console show the same data. `store` is a
SqlCloudStore (SQLite or PostgreSQL, the same code). The interface, kept stable:

    devices(store, *, groups=None) -> list[dict]
        device, groups, online, last_seen, first_seen, epoch, lag_s, epoch_resets,
        quarantined, skipped (what the projection skipped, by reason), runs (by status)
    runs(store, *, device=None, group=None, status=None, workflow=None, since=None,
         limit=100, groups=None) -> list[dict]
        newest first; `since`: Unix seconds (runs updated since); `group` needs `groups`
        (cloud.toml's [groups]: name -> devices)
    run(store, device, run_id) -> dict | None
        one run (its latest epoch on that device), as `runs` gives it, or None
    approvals(store, *, now=None) -> list[dict]
        every pending approval: device, epoch, run_id, workflow, approval_id, node, visit,
        kind, prompt, requested_at, age_s, expires_at; oldest first
    trace(store, device, run_id) -> dict
        the run's tree as the device's `edge-agent trace --json` gives it: run_id,
        workflow, version, status, trace_id, error, steps[{node, visit, attempt, status,
        error, error_kind, duration_ms, started_at, children[...]}]; raises ViewError
        (exit_code 1) for a run the cloud has not seen
    conflicts(store) -> list[dict]
        approval and hand-off conflicts devices reported, and resends the store refused
        (seq_conflict): device, run_id, kind, at, detail

A run is listed once the cloud has seen its start (`run.queued` or `run.started`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

RUN_FIELDS = ("device", "epoch", "run_id", "workflow", "version", "origin", "status", "node",
              "error", "queued_at", "started_at", "updated_at", "finished_at", "steps",
              "retries", "approval_id", "approval_node", "approval_visit", "approval_kind",
              "approval_prompt", "approval_at", "approval_expires_at")
LISTED = "(queued_at IS NOT NULL OR started_at IS NOT NULL)"
MAX_LIMIT = 10000
# the statuses a run shows (the device's own: edge_agent.engine.records.STATUSES)
STATUSES = ("queued", "running", "waiting_approval", "completed", "failed", "cancelled")


class ViewError(Exception):
    """A view cannot answer: an unknown group, an unknown run. `exit_code` for the CLI."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _run(row: Sequence[Any]) -> dict[str, Any]:
    r = dict(zip(RUN_FIELDS, row, strict=True))
    gate = None
    if r["approval_id"] is not None:
        gate = {"approval_id": int(r["approval_id"]), "node": r["approval_node"],
                "visit": r["approval_visit"], "kind": r["approval_kind"],
                "prompt": r["approval_prompt"], "requested_at": r["approval_at"],
                "expires_at": r["approval_expires_at"]}
    out = {k: r[k] for k in RUN_FIELDS if not k.startswith("approval_")}
    out["steps"], out["retries"] = int(out["steps"]), int(out["retries"])
    out["pending_approval"] = gate
    return out


def _members(group: str, groups: Mapping[str, Sequence[str]] | None) -> list[str]:
    if groups is None or group not in groups:
        known = ", ".join(sorted(groups or {})) or "none"
        raise ViewError(f"--group: no group {group!r} in [groups] (groups: {known})", 64)
    return list(groups[group])


def runs(store: Any, *, device: str | None = None, group: str | None = None,
         status: str | None = None, workflow: str | None = None, since: float | None = None,
         limit: int = 100, groups: Mapping[str, Sequence[str]] | None = None
         ) -> list[dict[str, Any]]:
    """Runs across the fleet, newest first (by the last record the cloud has of each)."""
    if not 0 < limit <= MAX_LIMIT:
        raise ViewError(f"--limit: between 1 and {MAX_LIMIT} (got {limit})", 64)
    if status is not None and status not in STATUSES:
        raise ViewError(f"--status: one of {', '.join(STATUSES)} (got {status!r})", 64)
    where, args = [LISTED], list[Any]()
    if device is not None:
        where.append("device = ?")
        args.append(device)
    if group is not None:
        members = _members(group, groups)
        if not members:
            return []
        where.append(f"device IN ({', '.join('?' * len(members))})")
        args.extend(members)
    if status is not None:
        where.append("status = ?")
        args.append(status)
    if workflow is not None:
        where.append("workflow = ?")
        args.append(workflow)
    if since is not None:
        where.append("updated_at >= ?")
        args.append(since)
    with store.tx() as c:
        rows = store._exec(c, f"SELECT {', '.join(RUN_FIELDS)} FROM fleet_runs WHERE"
                              f" {' AND '.join(where)} ORDER BY updated_at DESC LIMIT {limit}",
                           args).fetchall()
    return [_run(r) for r in rows]


def run(store: Any, device: str, run_id: str) -> dict[str, Any] | None:
    """One run of a device (the newest epoch's, should a reflashed device reuse an id)."""
    with store.tx() as c:
        row = store._exec(c, f"SELECT {', '.join(RUN_FIELDS)} FROM fleet_runs WHERE run_id = ?"
                             f" AND device = ? AND {LISTED} ORDER BY updated_at DESC LIMIT 1",
                          (run_id, device)).fetchone()
    return None if row is None else _run(row)


def gates(store: Any, device: str, run_id: str) -> dict[int, dict[str, Any]]:
    """Every approval the cloud has seen on a run, by id: node, visit, prompt, decided."""
    with store.tx() as c:
        row = store._exec(c, "SELECT gates FROM fleet_runs WHERE run_id = ? AND device = ?"
                             " ORDER BY updated_at DESC LIMIT 1", (run_id, device)).fetchone()
    return {} if row is None else {int(k): v for k, v in json.loads(row[0]).items()}


def approvals(store: Any, *, now: float | None = None) -> list[dict[str, Any]]:
    """Every approval a device waits on, as the cloud last saw it; oldest first."""
    now = time.time() if now is None else now
    with store.tx() as c:
        rows = store._exec(c, f"SELECT {', '.join(RUN_FIELDS)} FROM fleet_runs WHERE"
                              f" approval_id IS NOT NULL AND {LISTED} ORDER BY approval_at"
                              ).fetchall()
    out = []
    for row in rows:
        r = _run(row)
        g = r["pending_approval"]
        out.append({"device": r["device"], "epoch": r["epoch"], "run_id": r["run_id"],
                    "workflow": r["workflow"], "approval_id": g["approval_id"],
                    "node": g["node"], "visit": g["visit"], "kind": g["kind"],
                    "prompt": g["prompt"], "requested_at": g["requested_at"],
                    "age_s": max(0.0, now - float(g["requested_at"] or now)),
                    "expires_at": g["expires_at"]})
    return out


def devices(store: Any, *, groups: Mapping[str, Sequence[str]] | None = None
            ) -> list[dict[str, Any]]:
    """Each device: online, last seen, lag (age of the newest record received on any of
    its current epoch's streams, in seconds), epoch resets, quarantined payloads, records
    the projection skipped, its runs by status, and the groups it belongs to."""
    member: dict[str, list[str]] = {}
    for name, devs in sorted((groups or {}).items()):
        for d in devs:
            member.setdefault(d, []).append(name)
    with store.tx() as c:
        quarantined = dict(store._exec(c, "SELECT device, count(*) FROM quarantine WHERE"
                                          " device IS NOT NULL GROUP BY device").fetchall())
        skipped: dict[str, dict[str, int]] = {}
        for d, reason, n in store._exec(c, "SELECT device, reason, count FROM fleet_skips"):
            skipped.setdefault(d, {})[reason] = int(n)
        counts: dict[str, dict[str, int]] = {}
        for d, status, n in store._exec(c, "SELECT device, status, count FROM"
                                           " fleet_device_runs WHERE count <> 0"):
            counts.setdefault(d, {})[status] = int(n)
    out = []
    for d in store.devices():
        name = d["device_id"]
        lags = [s["lag_s"] for s in d["streams"].values() if s["lag_s"] is not None]
        out.append({"device": name, "groups": member.get(name, []), "online": d["online"],
                    "first_seen": d["first_seen"], "last_seen": d["last_seen"],
                    "epoch": d["epoch"], "lag_s": min(lags) if lags else None,
                    "epoch_resets": len(d["resets"]), "resets": d["resets"],
                    "quarantined": int(quarantined.get(name, 0)),
                    "skipped": skipped.get(name, {}), "runs": counts.get(name, {})})
    return out


def conflicts(store: Any) -> list[dict[str, Any]]:
    """Conflicts devices reported (approval.conflict, handoff.conflict) and resends the
    store refused because their content differed from the record held (seq_conflict)."""
    with store.tx() as c:
        runs_with = store._exec(c, "SELECT device, run_id, gates, head FROM fleet_runs WHERE"
                                   " conflicts > 0 ORDER BY updated_at").fetchall()
        refused = store._exec(c, "SELECT device, reason, detail, received_at FROM quarantine"
                                 " WHERE reason = 'seq_conflict' ORDER BY id").fetchall()
    out = []
    for device, run_id, gates_json, head in runs_with:
        for aid, g in json.loads(gates_json).items():
            if "conflict" in g:
                out.append({"device": device, "run_id": run_id, "kind": "approval.conflict",
                            "at": g["conflict"]["at"],
                            "detail": {**g["conflict"], "approval_id": int(aid)}})
        for key, h in json.loads(head).get("handoffs", {}).items():
            out.append({"device": device, "run_id": run_id, "kind": "handoff.conflict",
                        "at": h["at"], "detail": {**h, "key": key}})
    out += [{"device": d, "run_id": None, "kind": reason, "at": at, "detail": detail}
            for d, reason, detail, at in refused]
    return out


def trace(store: Any, device: str, run_id: str) -> dict[str, Any]:
    """The run's tree, built from the cloud's copy of its records (read back from the
    seqs the projection noted for the run) and the spans among them."""
    from sync.cloud.trace_tree import build, read
    head = run(store, device, run_id)
    if head is None:
        raise ViewError(f"no run {run_id!r} of device {device!r} in the cloud's records")
    with store.tx() as c:
        row = store._exec(c, "SELECT seqs FROM fleet_runs WHERE device = ? AND run_id = ? AND"
                             " epoch = ?", (device, run_id, head["epoch"])).fetchone()
    events, spans = read(store, device, head["epoch"], run_id, json.loads(row[0]))
    return build(head, events, spans)


__all__ = ["ViewError", "approvals", "conflicts", "devices", "gates", "run", "runs", "trace"]
