"""A step handed to the cloud: `handoff = "cloud:<name>"` on a workflow node.

The device owns its runs. Handing a step over moves that ownership for one step, and the
move is a *lease* carried by the run's replicated lease document (collection `runs.lease`,
key = run id, every field merged `manual`), guarded by the document's vector clock:

1. The device writes `{owner: "cloud", lease: KEY, state: "held", until: T}`, journals the
   request (`tool_calls`, status `requested`) and emits a `handoff.request` record on the
   control stream carrying the checkpoint (the run's context and the step's input), the
   trace context and the lease version itself, all in one transaction.
2. The cloud applies the lease version, runs the step, writes `{owner: "device",
   state: "done", result: DIGEST}` on top of it (so its version dominates the device's) and
   sends the result down as a signed `tool_result` command carrying that version.
3. While the step is out, the device's run only waits (durably: a restart waits for the
   rest of the timeout, not a new one). A result whose request is still `requested` is
   applied: the node's output is the cloud's result and the run goes on.
4. A step the cloud reports failed takes the node's `fallback` (or fails the run). A request
   the cloud refused unrun (`busy`: its hand-off pool, or this device's share of it, was
   full) takes the fallback at once; without one the device asks again after a backoff
   (2, 4, 8 ... 30 s) until `timeout_s` from the first request has passed.
   At `timeout_s` the device takes the lease back, `{owner: "device", state: "fallback"}`,
   written without having seen the cloud's version, and goes to the node's `fallback`.
   A cloud result arriving after that is *recorded, not applied*: its version is concurrent
   with the device's (the cloud writes it on top of the request's lease version alone), so
   the lease document keeps both as siblings (`edge-agent conflicts`), and the run gets a
   `conflict` step carrying the late result. A result without a lease version is refused:
   without it the clock guard could not decide.

Exactly one side advances the run: the device never advances while the lease names the
cloud, and it takes a cloud result only while its own request is open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from edge_agent.config.expressions import ExpressionError, evaluate
from edge_agent.config.model import NodeConfig, WorkflowConfig
from edge_agent.engine import queries as q
from edge_agent.engine.control import emit
from edge_agent.engine.ports import Driver, both
from edge_agent.engine.records import FAILED, Run, dumps
from edge_agent.engine.transitions import call_key
from edge_agent.telemetry.derive import handoff_span_id
from sync.dbapi import Connection
from sync.documents import Version
from sync.replica import Replica, SqliteDocStore

log = logging.getLogger(__name__)

LEASES = "runs.lease"  # the replicated lease document of each run that hands a step over
PREFIX = "cloud:"


def lease_replica(conn: Connection, node: str) -> Replica:
    return Replica(node, SqliteDocStore(conn))


def write_lease(conn: Connection, node: str, run_id: str,
                changes: dict[str, Any]) -> Version:
    """A device write of the run's lease document, replicated with the same commit."""
    version = lease_replica(conn, node).write(LEASES, run_id, changes)
    emit(conn, "control", "doc.version", version.encode())
    return version


def traceparent(run: Run, key: str) -> str | None:
    """The W3C traceparent of a handoff request: the run's trace, and as parent the span
    the device derives for this handoff (so the cloud's child run hangs under it)."""
    if not run.trace_id:
        return None
    return f"00-{run.trace_id}-{handoff_span_id(run.run_id, key)}-01"


def run_cloud_handoff(e: Driver, run: Run, wf: WorkflowConfig, node: NodeConfig
                      ) -> bool | float:
    """The node handler: request, wait, then apply the result or take the fallback."""
    assert node.agent is not None and node.agent.startswith(PREFIX)
    device = str(getattr(e, "device_id", None) or "device")
    target = node.agent[len(PREFIX):]
    state = dict(run.node_state)
    attempt = int(state.get("attempt", 1))
    scope = f"{node.name}#{run.visit(node.name)}"
    key = "handoff/" + call_key(run.run_id, scope, 0, 0, attempt)
    timeout = float(node.timeout_s or 60.0)
    now = e.clock()
    if state.get("handoff_key") != key:
        retry_at = float(state.get("handoff_retry_at") or 0)
        if now < retry_at:  # the cloud was busy: ask again then
            return retry_at
        try:
            value = evaluate(node.input, run.context) if node.input else run.context["input"]
        except ExpressionError as exc:
            e.finish(run.run_id, FAILED, error=f"{node.name}: {exc}")
            return False
        until = float(state.get("handoff_until") or now + timeout)  # from the first request
        due = min(now + timeout, until)
        parent = traceparent(run, key)

        def request(c: Connection) -> None:
            c.execute("INSERT INTO tool_calls (idem_key, attempt, run_id, node, tool, args,"
                      " status, started_at) VALUES (?, ?, ?, ?, ?, ?, 'requested', ?)"
                      " ON CONFLICT (idem_key, attempt) DO NOTHING",
                      (key, attempt, run.run_id, scope, node.agent, dumps({"input": value}),
                       now))
            lease = write_lease(c, device, run.run_id, {
                "owner": "cloud", "lease": key, "state": "held", "until": due})
            emit(c, "control", "handoff.request", {
                "run_id": run.run_id, "workflow": run.workflow, "node": node.name,
                "key": key, "target": target, "input": value, "context": run.context,
                "traceparent": parent, "timeout_at": due, "ts": now,
                "lease": lease.encode()})
        e.set_state(run, {**state, "attempt": attempt, "handoff_key": key,
                          "handoff_due": due, "handoff_until": until}, extra=request)
        log.info("handed step %s to the cloud (%s) for up to %gs", node.name, target,
                 timeout)
        return due
    row = e.read(lambda c: q.journal_get(c, key, attempt))
    if row is not None and row["status"] == "ok":
        def release(c: Connection) -> None:
            write_lease(c, device, run.run_id, {"owner": "device", "state": "applied"})
        return e.advance(run, node, output=row["result"], next_node=node.next,
                         attempt=attempt, started_at=row["started_at"], extra=release)
    failed = row is not None and row["status"] == "error"
    busy = failed and row is not None and row["error_kind"] == "busy"
    due = float(state.get("handoff_due", now))
    if now < due and not failed:
        return due
    if busy and not node.fallback:
        again = now + min(30.0, 2.0 ** attempt)
        if again < float(state.get("handoff_until") or due):
            log.info("step %s: the cloud is busy; asking again in %.0fs", node.name,
                     again - now)
            e.set_state(run, {**state, "attempt": attempt + 1, "handoff_retry_at": again})
            return again
    reason = ("the cloud was busy and did not run it" if busy
              else f"the cloud's {target} failed: {row['error']}" if failed and row is not None
              else f"no result from the cloud within {timeout:g}s")

    def take_back(c: Connection) -> None:
        c.execute("UPDATE tool_calls SET status = 'timed_out', finished_at = ? WHERE"
                  " idem_key = ? AND attempt = ? AND status = 'requested'", (now, key, attempt))
        if not failed or busy:  # a failed step came back with the lease already; a busy
            # cloud never took it
            write_lease(c, device, run.run_id, {"owner": "device", "state": "fallback"})
    if node.fallback:
        log.warning("step %s: %s; taking the fallback %s", node.name, reason, node.fallback)
        return e.advance(run, node, output={"fallback": node.fallback, "error": reason},
                         next_node=node.fallback, attempt=attempt, extra=take_back,
                         started_at=row["started_at"] if row is not None else None)
    e.finish(run.run_id, FAILED, error=f"{node.name}: {reason}", extra=both(take_back))
    return False


def decide_result(*, request: str, run_finished: bool, cloud_holds: bool) -> str:
    """What a cloud result does to the device: `apply` it as the node's output, ignore a
    `duplicate` (a resent command), or record it as `late` (a conflict, never applied).

    `request`: the journal status of the device's request; `cloud_holds`: whether the cloud's
    lease version dominates every version of the lease the device holds (a result without
    a version is refused before this is asked)."""
    if request in ("ok", "error"):
        return "duplicate"
    if request != "requested" or run_finished or not cloud_holds:
        return "late"
    return "apply"


def apply_handoff_result(conn: Connection, device: str,
                         args: dict[str, Any]) -> dict[str, Any]:
    """The cloud's `tool_result` for a handed-off step, inside the sync's transaction.

    Applied only while the device's request is open and the cloud's lease version dominates
    the device's; otherwise recorded as a conflict (once)."""
    key = str(args["key"])
    row = conn.execute("SELECT run_id, node, status FROM tool_calls WHERE idem_key = ?"
                       " ORDER BY attempt DESC LIMIT 1", (key,)).fetchone()
    if row is None:
        raise ValueError(f"no handed-off step {key!r} on this device")
    run_id, scope, status = row[0], row[1], row[2]
    ok = bool(args.get("ok", True))
    if not ok and args.get("busy") is True:
        return _refused(conn, run_id, key, status, str(args.get("error") or "busy"))
    result = args.get("result")
    if ok and not isinstance(result, dict):
        raise ValueError("a handoff result is a JSON object")
    if args.get("version") is None:  # the clock guard is never skipped
        raise ValueError("a handoff result without the lease's version is refused")
    version = Version.decode(args["version"])
    replica = lease_replica(conn, device)
    replica.apply(version)
    cloud_holds = replica.frontier(LEASES, run_id) == (version,)
    run = q.get_run(conn, run_id)
    node = str(scope).partition("#")[0]
    visit = run.visit(node) if run is not None else 1
    action = decide_result(request=status, run_finished=run is None or run.finished,
                           cloud_holds=cloud_holds)
    if action == "duplicate" or (action == "late" and conn.execute(
            "SELECT 1 FROM steps WHERE run_id = ? AND status = 'conflict' AND error_kind ="
            " 'handoff_late' AND error LIKE ?", (run_id, f"%{key}%")).fetchone()):
        return {"run_id": run_id, "key": key, "applied": False, "duplicate": True}
    now = time.time()
    if action == "apply":
        meta = args.get("cloud")
        cloud: dict[str, Any] = meta if isinstance(meta, dict) else {}
        conn.execute("UPDATE tool_calls SET status = ?, result = ?, error = ?, error_kind = ?,"
                     " finished_at = ? WHERE idem_key = ? AND status = 'requested'",
                     ("ok" if ok else "error", json.dumps(result) if ok else None,
                      None if ok else str(args.get("error") or "cloud step failed"),
                      None if ok else "remote_error", now, key))
        q.insert_step(conn, run_id=run_id, node=node, visit=visit, attempt=1,
                      status="handoff", started_at=float(cloud.get("started_at", now)),
                      finished_at=float(cloud.get("finished_at", now)),
                      output={"from": "device", "to": f"cloud:{cloud.get('target', '?')}",
                              "cloud_run": cloud.get("child_run"),
                              "worker": cloud.get("worker"), "ok": ok})
        return {"run_id": run_id, "key": key, "applied": True}
    late = result if ok else {"error": args.get("error")}
    digest = hashlib.sha256(json.dumps(late, sort_keys=True).encode()).hexdigest()[:12]
    detail = (f"late cloud result for {node} ({status} locally): recorded, not applied"
              f" (result {digest}, request {key})")
    q.insert_step(conn, run_id=run_id, node=node, visit=visit, attempt=1, status="conflict",
                  error=detail, error_kind="handoff_late", output=late,
                  started_at=now, finished_at=now)
    emit(conn, "control", "handoff.conflict", {"run_id": run_id, "key": key, "node": node,
                                               "local": status, "ts": now})
    log.warning("run %s: %s", run_id, detail)
    return {"run_id": run_id, "key": key, "applied": False, "conflict": True}


def _refused(conn: Connection, run_id: str, key: str, status: str,
             error: str) -> dict[str, Any]:
    """The cloud refused the request unrun (`busy`): the step's handler takes the fallback
    or asks again. Only an open request is closed by it; the lease the cloud never took is
    taken back by the handler."""
    if status != "requested":
        return {"run_id": run_id, "key": key, "applied": False, "duplicate": True}
    conn.execute("UPDATE tool_calls SET status = 'error', error = ?, error_kind = 'busy',"
                 " finished_at = ? WHERE idem_key = ? AND status = 'requested'",
                 (error[:500], time.time(), key))
    return {"run_id": run_id, "key": key, "applied": False, "busy": True}


__all__ = ["LEASES", "PREFIX", "apply_handoff_result", "decide_result", "run_cloud_handoff",
           "write_lease"]
