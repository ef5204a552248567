"""Operations on runs that anyone may perform, daemon or not: queue, decide, cancel, migrate.

They only write the database (state change and outbox record in one transaction); a running
engine notices and drives the run. That is what lets the CLI work while the daemon is down.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack

from edge_agent.config.model import WorkflowConfig
from edge_agent.engine import queries as q
from edge_agent.engine import versions
from edge_agent.engine.records import TERMINAL, WAITING, Run
from edge_agent.errors import NoPendingApproval, RunNotFound, WorkflowError
from sync.dbapi import Connection
from sync.outbox import append

Write = Callable[[Callable[[Connection], Any]], Any]


def new_run_id() -> str:
    """Sortable by creation time, unique without coordination."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(6)}"


def emit(conn: Connection, stream: str, kind: str, payload: Mapping[str, Any],
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
    definition = workflows[workflow] if isinstance(workflows[workflow], WorkflowConfig) else None
    trace_id = secrets.token_hex(16)

    def tx(conn: Connection) -> str:
        if q.get_run(conn, rid) is not None:
            return rid  # a repeated start with the same id is applied once
        now = time.time()
        # pinned to the definition it starts with (see engine.versions)
        version = versions.register(conn, definition, now) if definition is not None else None
        q.insert_run(conn, run_id=rid, workflow=workflow, input=input, origin=origin, now=now,
                     trace_id=trace_id, version=version)
        emit(conn, "checkpoints", "run.queued", {"run_id": rid, "workflow": workflow,
                                                 "version": versions.short(version), "input": input,
                                                 "origin": origin, "ts": now})
        return rid
    result: str = write(tx)
    return result


def decide_approval(write: Write, run_id: str, *, approve: bool, by: str, origin: str = "local",
                    note: str | None = None, patch: Any = None) -> dict[str, Any]:
    """Answer the run's pending approval. Raises NoPendingApproval if there is none."""
    def tx(conn: Connection) -> dict[str, Any]:
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
    def tx(conn: Connection) -> Run:
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


# moving a run --------------------------------------------------------------------------------
class VersionError(WorkflowError):
    """A run cannot be moved to the version asked for; the message says why."""


class RunBusy(VersionError):
    """A step of the run is in flight in the daemon: try again once it waits."""

    exit_code = 75  # EX_TEMPFAIL

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} has a step in flight: move it while it waits (at an "
                         "approval, or sleeping before a retry), or with the daemon stopped; "
                         "try again", run_id=None)


def _resolve(conn: Connection, workflow: str, wanted: str,
             current: WorkflowConfig | None) -> str:
    known = versions.stored(conn, workflow)
    if current is not None and versions.version_of(current) not in known:
        known.append(versions.version_of(current))
    found = [v for v in known if v.startswith(wanted.lower())] if wanted else []
    if len(found) != 1:
        listed = ", ".join(v[:versions.SHORT] for v in known) or "none"
        why = "is ambiguous" if found else "names no version"
        raise VersionError(f"--to-version {wanted!r} {why} of workflow {workflow!r} (known: "
                           f"{listed})")
    if current is not None and found[0] == versions.version_of(current):
        versions.register(conn, current)
    return found[0]


def migrate_run(conn: Connection, run_id: str, *, to_version: str,
                mapping: Mapping[str, str], current: WorkflowConfig | None,
                allow_running: bool = False, by: str = "local") -> dict[str, Any]:
    """Move an unfinished run to another version of its workflow, in the caller's
    transaction. Checked: the current node (renamed by `mapping`) must exist in the target
    version with the same kind, and a run in the middle of a step is not moved (it can be
    while it waits for a person, before it starts, or with the daemon stopped)."""
    run = q.get_run(conn, run_id)
    if run is None:
        raise RunNotFound(run_id)
    if run.finished:
        raise VersionError(f"run {run_id} is {run.status}: only a run in flight can move")
    if run.status not in (WAITING, "queued") and not allow_running:
        raise VersionError(f"run {run_id} is {run.status} at {run.node!r}: move it while it "
                           "waits (at an approval, or before it starts), or with the daemon "
                           "stopped")
    target_version = _resolve(conn, run.workflow, to_version, current)
    target = versions.load(conn, run.workflow, target_version)
    assert target is not None
    named = f"version {versions.short(target_version)} of {run.workflow!r}"
    for old, new in mapping.items():
        if new not in target.nodes:
            raise VersionError(f"--map {old}={new}: {named} has no node {new!r}")
    node = run.node
    if node is not None:
        moved_to = mapping.get(node, node)
        if moved_to not in target.nodes:
            raise VersionError(
                f"run {run_id} is at node {node!r}, which {named} does not have: name its new "
                f"place with --map {node}=NODE (nodes: {', '.join(sorted(target.nodes))})")
        pinned = versions.load(conn, run.workflow, run.version) if run.version else None
        before = pinned.nodes.get(node) if pinned is not None else None
        after = target.nodes[moved_to]
        if before is not None and before.kind != after.kind and run.node_state:
            raise VersionError(
                f"run {run_id} is in the middle of {before.kind} node {node!r}; "
                f"{moved_to!r} is a {after.kind} node in {named}")
        node = moved_to
    visits = {mapping.get(k, k): v for k, v in run.visits.items()}
    now = time.time()
    q.update_run(conn, run_id, now, version=target_version, node=node, visits=visits)
    result = {"run_id": run_id, "workflow": run.workflow, "from": versions.short(run.version),
              "to": versions.short(target_version), "node": node, "was_at": run.node}
    emit(conn, "checkpoints", "run.migrated", {**result, "by": by, "ts": now})
    return result
