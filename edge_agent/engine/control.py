"""Operations on runs that anyone may perform, daemon or not: queue, decide, cancel.

They only write the database (state change and outbox record in one transaction); a running
engine notices and drives the run. That is what lets the CLI work while the daemon is down.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from sync.outbox import append

from edge_agent.engine import queries as q
from edge_agent.engine.records import TERMINAL, Run
from edge_agent.errors import NoPendingApproval, RunNotFound, WorkflowError

Write = Callable[[Callable[[sqlite3.Connection], Any]], Any]


def new_run_id() -> str:
    """Sortable by creation time, unique without coordination."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


def emit(conn: sqlite3.Connection, stream: str, kind: str, payload: Mapping[str, Any],
         limits: Mapping[str, int] | None = None) -> int:
    """Append one record to the outbox inside the caller's transaction."""
    return append(conn, stream, kind, pack(payload),
                  limit=limits.get(stream) if limits else None)


def pack(payload: Mapping[str, Any]) -> bytes:
    """An outbox record's payload, as it goes on the wire."""
    body: bytes = msgpack.packb(payload if type(payload) is dict else dict(payload),
                                default=str)
    return body


def queue_run(write: Write, *, workflow: str, input: Any, workflows: Mapping[str, Any],
              origin: str = "local", run_id: str | None = None) -> str:
    if workflow not in workflows:
        raise WorkflowError(f"no workflow named {workflow!r} (known: "
                            f"{', '.join(sorted(workflows)) or 'none'})")
    rid = run_id or new_run_id()
    trace_id = secrets.token_hex(16)

    def tx(conn: sqlite3.Connection) -> str:
        if q.get_run(conn, rid) is not None:
            return rid  # a repeated start with the same id is applied once
        now = time.time()
        q.insert_run(conn, run_id=rid, workflow=workflow, input=input, origin=origin, now=now,
                     trace_id=trace_id)
        emit(conn, "checkpoints", "run.queued", {"run_id": rid, "workflow": workflow,
                                                 "input": input, "origin": origin, "ts": now})
        return rid
    result: str = write(tx)
    return result


def decide_approval(write: Write, run_id: str, *, approve: bool, by: str, origin: str = "local",
                    note: str | None = None, patch: Any = None) -> dict[str, Any]:
    """Answer the run's pending approval. Raises NoPendingApproval if there is none."""
    def tx(conn: sqlite3.Connection) -> dict[str, Any]:
        run = q.get_run(conn, run_id)
        if run is None:
            raise RunNotFound(run_id)
        pending = q.pending_approval(conn, run_id)
        if pending is None:
            raise NoPendingApproval(run_id)
        now = time.time()
        status = "approved" if approve else "rejected"
        q.decide(conn, pending["id"], status=status, by=by, origin=origin, note=note,
                 patch=patch, now=now)
        emit(conn, "control", "approval.decided", {
            "run_id": run_id, "approval_id": pending["id"], "node": pending["node"],
            "decision": status, "by": by, "origin": origin, "note": note, "ts": now})
        return {"run_id": run_id, "approval_id": pending["id"], "decision": status}
    result: dict[str, Any] = write(tx)
    return result


def request_cancel(write: Write, run_id: str, *, by: str = "local") -> Run:
    def tx(conn: sqlite3.Connection) -> Run:
        run = q.get_run(conn, run_id)
        if run is None:
            raise RunNotFound(run_id)
        if run.status not in TERMINAL:
            now = time.time()
            conn.execute("UPDATE runs SET cancel_requested = 1, updated_at = ? WHERE run_id = ?",
                         (now, run_id))
            emit(conn, "control", "run.cancel_requested", {"run_id": run_id, "by": by, "ts": now})
        return q.get_run(conn, run_id)  # type: ignore[return-value]
    result: Run = write(tx)
    return result
