"""A cloud decision that arrives after a local one: a concurrent write, merged by rule.

While a device is offline, its operator may answer a gate locally while the cloud answers
it too. When the cloud's decision arrives, both are concurrent versions of the same
approval; they resolve by the approvals collection's rule, conservatively `reject_wins`
(or `approve_wins`), the same way on every side. The run follows the resolved decision:
a local approval overturned by a concurrent reject cancels the run if it has not finished.
The conflict is recorded as a step (visible in `edge-agent trace`), logged, and sent on the
control stream; the cloud's command result carries the resolution.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edge_agent.engine import queries as q
from edge_agent.engine.control import Write, decide_approval, emit
from edge_agent.engine.records import TERMINAL
from edge_agent.errors import NoPendingApproval, RunNotFound, StaleCommand
from sync.dbapi import Connection

log = logging.getLogger(__name__)


def remote_decision(write: Write, run_id: str, *, approve: bool, by: str,
                    note: str | None = None, patch: Any = None, approval_id: int | None = None,
                    rule: str = "reject_wins", node: str | None = None,
                    visit: int | None = None) -> dict[str, Any]:
    """Apply a decision from the cloud. `approval_id` (with the gate's `node` and `visit`,
    when the cloud knows them) names the gate the cloud saw; without it, the run's pending
    gate. A decision naming a gate other than the one pending is refused (StaleCommand,
    carrying what is pending now): it never answers a gate nobody saw."""
    cloud = "approved" if approve else "rejected"

    def tx(conn: Connection) -> dict[str, Any]:
        run = q.get_run(conn, run_id)
        if run is None:
            raise RunNotFound(run_id)
        pending = q.pending_approval(conn, run_id)
        now_at = None if pending is None else {
            "approval_id": pending["id"], "node": pending["node"],
            "visit": run.visit(pending["node"]), "prompt": pending["prompt"]}
        named = {"approval_id": approval_id, "node": node, "visit": visit}
        if now_at is not None and (approval_id is None or (
                approval_id == now_at["approval_id"] and node in (None, now_at["node"])
                and visit in (None, now_at["visit"]))):
            return decide_approval(lambda fn: fn(conn), run_id, approve=approve, by=by,
                                   origin="cloud", note=note, patch=patch)
        rows = q.list_approvals(conn, pending_only=False, run_id=run_id)
        local = next((a for a in reversed(rows) if a["status"] in ("approved", "rejected")
                      and a["origin"] != "cloud"
                      and approval_id in (None, a["id"])), None)
        if local is None or (local["status"] == cloud and now_at is not None):
            if now_at is not None:  # a gate nobody named waits: never answer it
                raise StaleCommand(run_id, named, now_at)
            raise NoPendingApproval(run_id)
        if local["status"] == cloud:
            return {"run_id": run_id, "approval_id": local["id"], "decision": cloud,
                    "conflict": False}
        resolved = "rejected" if rule == "reject_wins" else "approved"
        now = time.time()
        detail = (f"approval conflict at {local['node']}: {local['status']} locally by "
                  f"{local['decided_by']}, {cloud} by {by} from the cloud; {rule} -> {resolved}")
        run = q.get_run(conn, run_id)
        assert run is not None
        q.insert_step(conn, run_id=run_id, node=local["node"], visit=run.visit(local["node"]),
                      attempt=1, status="conflict", error=detail, error_kind="approval_conflict",
                      started_at=now, finished_at=now)
        if resolved != local["status"]:
            conn.execute("UPDATE approvals SET status = ?, note = ? WHERE id = ?",
                         (resolved, f"{local['note'] or ''} [{detail}]".strip(), local["id"]))
            if run.status not in TERMINAL:
                conn.execute("UPDATE runs SET cancel_requested = 1, error = ?, updated_at = ?"
                             " WHERE run_id = ?", (detail, now, run_id))
        emit(conn, "control", "approval.conflict", {
            "run_id": run_id, "approval_id": local["id"], "node": local["node"],
            "local": local["status"], "cloud": cloud, "resolved": resolved, "rule": rule,
            "ts": now})
        log.warning("run %s: %s", run_id, detail)
        return {"run_id": run_id, "approval_id": local["id"], "decision": resolved,
                "conflict": True, "local": local["status"], "cloud": cloud}
    result: dict[str, Any] = write(tx)
    return result
