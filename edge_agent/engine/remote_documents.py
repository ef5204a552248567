"""What a replicated document from the cloud does to the device's runs: a version of a
run's control document (`runs.control`) is followed by the run (cancel, priority, context
patch), and the cloud's `doc_sync` exchanges versions bucket by bucket. The store keeps the
documents; acting on runs is the engine's."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from edge_agent.engine import queries as q
from edge_agent.engine.control import request_cancel
from edge_agent.engine.records import QUEUED, WAITING
from edge_agent.store.documents import record_version, replica
from sync.antientropy import bucket_of
from sync.dbapi import Connection
from sync.documents import Version

if TYPE_CHECKING:
    from edge_agent.config import Config


def apply_remote(conn: Connection, config: Config, version: Version) -> dict[str, Any]:
    """A version from the cloud; a run's control document is then followed by the run."""
    r = replica(conn, config)
    changed = r.apply(version)
    out: dict[str, Any] = {"applied": changed}
    if changed and version.collection == "runs.control":
        resolved = r.read(version.collection, version.key)
        if resolved is not None:
            out["run"] = follow_run_control(conn, version.key, resolved.value)
    return out


def follow_run_control(conn: Connection, run_id: str,
                       fields: dict[str, Any]) -> dict[str, Any]:
    """Make the run match its control document: `cancel_requested` (merged by max: once
    asked, it stays asked), `priority`, and `context_patch` (merged into the context of a
    run that is queued or waiting; a running step would write over it, so it is refused)."""
    run = q.get_run(conn, run_id)
    if run is None:
        return {"run_id": run_id, "error": "no such run on this device"}
    done: dict[str, Any] = {"run_id": run_id}
    now = time.time()
    if fields.get("cancel_requested") and not run.finished and not run.cancel_requested:
        request_cancel(lambda fn: fn(conn), run_id, by="cloud")  # inside this transaction
        done["cancel_requested"] = True
    if isinstance(fields.get("priority"), int) and not run.finished:
        conn.execute("UPDATE runs SET priority = ?, updated_at = ? WHERE run_id = ?",
                     (fields["priority"], now, run_id))
        done["priority"] = fields["priority"]
    patch = fields.get("context_patch")
    if isinstance(patch, dict) and patch:
        if run.status in (QUEUED, WAITING):
            q.update_run(conn, run_id, now, context={**run.context, **patch})
            done["context_patch"] = sorted(patch)
        else:
            done["context_patch_refused"] = f"the run is {run.status}"
    return done


def sync_documents(conn: Connection, config: Config, collection: str,
                   buckets: list[int], n: int, versions: list[Any]) -> dict[str, Any]:
    """The cloud's `doc_sync`: take its versions in the buckets that differ, and send ours
    there back, so both sides end with the union."""
    if not 0 < n <= 256 or not all(isinstance(b, int) and 0 <= b < n for b in buckets):
        raise ValueError(f"doc_sync: buckets {buckets!r} of {n!r} are malformed")
    taken = sum(bool(apply_remote(conn, config, Version.decode(v))["applied"])
                for v in versions)
    r = replica(conn, config)
    wanted = set(buckets)
    sent = 0
    for (key,) in conn.execute("SELECT key FROM docs WHERE collection = ?", (collection,)):
        if bucket_of(key, n) in wanted:
            for version in r.frontier(collection, key):
                record_version(conn, version)
                sent += 1
    return {"collection": collection, "taken": taken, "sent": sent}
