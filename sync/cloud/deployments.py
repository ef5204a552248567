"""Rollouts: a config fragment sent to many devices in waves, each wave going on after its
bake time only while its health gate holds, the failing wave rolled back by itself.

All of a deployment's state is in the cloud store (tables `deployments` and
`deployment_devices`): the wave driver is a periodic step (`tick`) of every ingest process
that reads and writes only the store, so a deployment goes on whichever worker is alive.
Every move is a conditional UPDATE (compare and set on the wave or the send time), so two
drivers never both take the same step; a command is sent under a fixed id per deployment,
device and action, so a send repeated after a crash is applied once by the device.

Devices answer with `deploy.result` and, while baking, `deploy.health` records on their
control stream (sync/PROTOCOL.md, "Deployments"); the ingest hands them to
`record_result` / `record_health`. The rules (waves, gate, what a person sees) are pure
functions in sync/cloud/rollout_rules.py. `deployments(store)` and `deployment(store, id)`
are the plain queries views read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from sync.cloud.rollout_rules import (
    DEFAULT_ABORT_IF,
    RolloutError,
    answered_state,
    check_gate,
    gate,
    plan_waves,
    shown_state,
)
from sync.cloud.store import SqlCloudStore, clean

log = logging.getLogger(__name__)
MAX_FRAGMENT_BYTES = 48 << 10  # one signed command (64 KiB) with room for its other fields
MAX_LABEL = 128  # a version label is for people, and travels in the same signed command
RESEND_S = 30.0  # a command not answered is published again this often (and at reconnect)
TICK_S = 1.0
Send = Callable[[str, str, dict[str, Any], float], None]  # device, command id, args, ttl_s


def create(store: SqlCloudStore, *, fragment: str, devices: Sequence[str],
           version: str | None = None, waves: str = "100%", bake_s: float = 600.0,
           abort_if: str = DEFAULT_ABORT_IF, min_runs: int = 1,
           expires_in_s: float = 7 * 86400, now: float | None = None) -> str:
    """Record a deployment (its first wave goes out at the driver's next tick)."""
    size = len(fragment.encode())
    if size > MAX_FRAGMENT_BYTES:
        raise RolloutError(f"the fragment is {size} bytes; a deployment carries at most "
                           f"{MAX_FRAGMENT_BYTES} (one signed command)")
    try:
        parsed = tomllib.loads(fragment)
    except tomllib.TOMLDecodeError as exc:
        raise RolloutError(f"the fragment is not TOML: {exc}") from exc
    if not parsed:
        raise RolloutError("the fragment is empty (no table, no key): nothing to deploy")
    if version is not None and not 0 < len(version) <= MAX_LABEL:
        raise RolloutError(f"--version: 1 to {MAX_LABEL} characters (got {len(version)})")
    if min_runs < 0:
        raise RolloutError(f"--min-runs: must be >= 0 (got {min_runs})")
    check_gate(abort_if)
    plan = plan_waves(waves, len(devices))
    now = time.time() if now is None else now
    dep_id = uuid.uuid4().hex[:12]
    sha = hashlib.sha256(fragment.encode()).hexdigest()
    with store.tx() as c:
        store._exec(c, "INSERT INTO deployments (id, created_at, version, sha256, fragment,"
                       " waves, bake_s, abort_if, min_runs, expires_at, state, wave,"
                       " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'running', -1, ?)",
                    (dep_id, now, version or sha[:12], sha, fragment, json.dumps(plan),
                     bake_s, abort_if, min_runs, now + expires_in_s, now))
        for i, device in enumerate(devices):
            wave = next(w for w, upto in enumerate(plan) if i < upto)
            store._exec(c, "INSERT INTO deployment_devices (deployment, device, wave, state,"
                           " updated_at) VALUES (?, ?, ?, 'waiting', ?)",
                        (dep_id, device, wave, now))
    return dep_id


def never_seen(store: SqlCloudStore, devices: Sequence[str]) -> list[str]:
    """Those of `devices` the cloud has never heard from (a deployment waits for them until
    it expires)."""
    with store.tx() as c:
        known = {r[0] for r in store._exec(c, "SELECT device FROM devices").fetchall()}
    return [d for d in devices if d not in known]


def abort(store: SqlCloudStore, dep_id: str, now: float | None = None) -> bool:
    """Stop a running deployment: no further wave, nothing more sent. Devices that applied
    it keep it (`deployment show` says which); False if it was not running."""
    now = time.time() if now is None else now
    with store.tx() as c:
        cur = store._exec(c, "UPDATE deployments SET state = 'aborted', reason = ?,"
                             " updated_at = ? WHERE id = ? AND state = 'running'",
                          ("aborted by an operator", now, dep_id))
        return bool(cur.rowcount)


# the driver --------------------------------------------------------------------------------
def tick(store: SqlCloudStore, send: Send, now: float | None = None) -> None:
    """One step of every running deployment, then the commands that are due."""
    now = time.time() if now is None else now
    with store.tx() as c:
        running = store._exec(c, "SELECT id, wave, wave_started_at, bake_s, waves, abort_if,"
                                 " min_runs, expires_at FROM deployments WHERE state ="
                                 " 'running'").fetchall()
    for row in running:
        _step(store, row, now)
    _send_due(store, send, now)


def _step(store: SqlCloudStore, row: Any, now: float) -> None:
    dep_id, wave, started_at, bake_s, waves, abort_if, min_runs, expires_at = row
    last = len(json.loads(waves)) - 1
    if now > expires_at:
        _finish(store, dep_id, wave, "expired", "expired before every wave went out", now)
        return
    if wave >= 0 and now < started_at + bake_s:
        return  # baking
    if wave >= 0:
        holds, why, m = gate(abort_if, int(min_runs), _devices(store, dep_id, wave))
        if not holds:
            _fail(store, dep_id, wave, f"wave {wave + 1}: {why}", now)
            return
        log.info("deployment %s: wave %d healthy (%s)", dep_id, wave + 1, m)
        if wave == last:
            _finish(store, dep_id, wave, "completed", None, now)
            return
    with store.tx() as c:  # the next wave, once
        cur = store._exec(c, "UPDATE deployments SET wave = ?, wave_started_at = ?,"
                             " updated_at = ? WHERE id = ? AND wave = ? AND state = 'running'",
                          (wave + 1, now, now, dep_id, wave))
        if cur.rowcount:
            store._exec(c, "UPDATE deployment_devices SET state = 'pending', sent_at = NULL,"
                           " updated_at = ? WHERE deployment = ? AND wave = ? AND state ="
                           " 'waiting'", (now, dep_id, wave + 1))
            log.info("deployment %s: wave %d of %d goes out", dep_id, wave + 2, last + 1)


def _devices(store: SqlCloudStore, dep_id: str, wave: int) -> list[dict[str, Any]]:
    with store.tx() as c:
        rows = store._exec(c, "SELECT state, health FROM deployment_devices WHERE"
                              " deployment = ? AND wave = ?", (dep_id, wave)).fetchall()
    return [{"state": s, "health": json.loads(h) if h else None} for s, h in rows]


def _finish(store: SqlCloudStore, dep_id: str, wave: int, state: str, reason: str | None,
            now: float) -> None:
    with store.tx() as c:
        store._exec(c, "UPDATE deployments SET state = ?, reason = ?, updated_at = ? WHERE"
                       " id = ? AND wave = ? AND state = 'running'",
                    (state, reason, now, dep_id, wave))


def _fail(store: SqlCloudStore, dep_id: str, wave: int, reason: str, now: float) -> None:
    """Stop, and tell the wave's devices that applied it to go back to what they held."""
    with store.tx() as c:
        cur = store._exec(c, "UPDATE deployments SET state = 'failed', reason = ?,"
                             " updated_at = ? WHERE id = ? AND wave = ? AND state = 'running'",
                          (clean(reason), now, dep_id, wave))
        if cur.rowcount:
            store._exec(c, "UPDATE deployment_devices SET state = 'rollback_pending',"
                           " sent_at = NULL, updated_at = ? WHERE deployment = ? AND wave = ?"
                           " AND state = 'applied'", (now, dep_id, wave))
    log.warning("deployment %s stopped: %s", dep_id, reason)


def _send_due(store: SqlCloudStore, send: Send, now: float) -> None:
    """Deploy commands of pending devices (running or completed deployments not expired) and
    rollbacks, never sent or not answered within RESEND_S: claimed by one driver in one
    transaction (with their rows in `commands`), then published."""
    due = "(x.sent_at IS NULL OR x.sent_at < ?) AND x.state IN ('pending', 'rollback_pending')"
    with store.tx() as c:
        claimed = store._exec(
            c, f"UPDATE deployment_devices SET sent_at = ? WHERE {due.replace('x.', '')} AND"
               " (deployment, device) IN (SELECT x.deployment, x.device FROM"
               " deployment_devices x JOIN deployments d ON d.id = x.deployment WHERE"
               f" {due} AND (x.state = 'rollback_pending' OR (d.state IN ('running',"
               " 'completed') AND d.expires_at > ?))) RETURNING deployment, device, state,"
               " previous", (now, now - RESEND_S, now - RESEND_S, now)).fetchall()
        ids = sorted({r[0] for r in claimed})
        details = {r[0]: r[1:] for r in store._exec(
            c, "SELECT id, version, sha256, fragment, bake_s, expires_at FROM deployments"
               f" WHERE id IN ({', '.join('?' * len(ids))})", ids).fetchall()} if ids else {}
        out = []
        for dep_id, device, state, prev in claimed:
            version, sha, fragment, bake_s, expires_at = details[dep_id]
            if state == "pending":
                args = {"deployment": dep_id, "action": "apply", "version": version,
                        "sha256": sha, "fragment": fragment, "bake_s": bake_s}
                cid, ttl = f"deploy-{dep_id}-{device}", max(1.0, expires_at - now)
            else:
                args = {"deployment": dep_id, "action": "rollback", "digest": sha,
                        "to": prev or "local"}
                cid, ttl = f"rollback-{dep_id}-{device}", 7 * 86400.0
            store._exec(c, "INSERT INTO commands (id, device, type, args, state, created_at)"
                           " VALUES (?, ?, 'deploy', ?, 'sent', ?) ON CONFLICT (id) DO NOTHING",
                        (cid, device, json.dumps(args), now))
            out.append((device, cid, args, ttl))
    for device, cid, args, ttl in out:
        try:
            send(device, cid, args, ttl)
        except Exception as exc:  # noqa: BLE001 - sent again at the next round
            log.warning("deployment %s: sending to %s failed: %s", args["deployment"],
                        device, exc)


def device_online(store: SqlCloudStore, device: str) -> None:
    """A device (re)connected: what it has not answered goes out again at the next tick (a
    broker restarted without persistence has lost its session)."""
    with store.tx() as c:
        store._exec(c, "UPDATE deployment_devices SET sent_at = NULL WHERE device = ? AND"
                       " state IN ('pending', 'rollback_pending')", (device,))


def drive(store: SqlCloudStore, send: Send, stop: threading.Event,
          every: float = TICK_S) -> None:
    """The ingest service's periodic step; never dies of one bad round."""
    while not stop.wait(every):
        try:
            tick(store, send)
        except Exception:  # the next round tries again
            log.exception("deployments: a driver round failed")


# what devices report -----------------------------------------------------------------------
def record_result(store: SqlCloudStore, device: str, payload: bytes) -> None:
    """A `deploy.result` record from `device`'s own stream."""
    r = msgpack.unpackb(payload, raw=False)
    dep_id, status, now = str(r["deployment"]), str(r["status"]), time.time()
    reason = clean("; ".join(str(x) for x in r.get("reasons") or []) or None)
    with store.tx() as c:
        row = store._exec(c, "SELECT d.state, x.state FROM deployment_devices x JOIN"
                             " deployments d ON d.id = x.deployment WHERE x.deployment = ?"
                             " AND x.device = ?", (dep_id, device)).fetchone()
        if row is None:
            return
        new = answered_state(row[0], row[1], str(r.get("action") or "apply"), status)
        if new is None:
            return
        store._exec(c, "UPDATE deployment_devices SET state = ?, reason = ?, previous ="
                       " coalesce(?, previous), sent_at = CASE WHEN ? = 'rollback_pending'"
                       " THEN NULL ELSE sent_at END, updated_at = ? WHERE deployment = ? AND"
                       " device = ?",
                    (new, reason, r.get("previous") if r.get("action") != "rollback"
                     else None, new, now, dep_id, device))


def record_health(store: SqlCloudStore, device: str, payload: bytes) -> None:
    """A `deploy.health` record: the latest one of each device is what its wave's gate reads."""
    r = msgpack.unpackb(payload, raw=False)
    health = {k: r.get(k) for k in ("started", "failed", "tool_calls", "tool_failures",
                                    "sync_healthy", "final", "at")}
    with store.tx() as c:
        store._exec(c, "UPDATE deployment_devices SET health = ?, updated_at = ? WHERE"
                       " deployment = ? AND device = ?",
                    (json.dumps(health), time.time(), str(r["deployment"]), device))


# queries -----------------------------------------------------------------------------------
_FIELDS = ("id", "created_at", "version", "sha256", "waves", "bake_s", "abort_if",
           "min_runs", "expires_at", "state", "wave", "wave_started_at", "reason",
           "updated_at")


def deployments(store: SqlCloudStore) -> list[dict[str, Any]]:
    """Every deployment, newest first, with its devices counted by state."""
    with store.tx() as c:
        rows = store._exec(c, f"SELECT {', '.join(_FIELDS)} FROM deployments ORDER BY"
                              " created_at DESC").fetchall()
        counts = store._exec(c, "SELECT deployment, state, count(*) FROM deployment_devices"
                                " GROUP BY deployment, state").fetchall()
    out = []
    for row in rows:
        d = _deployment(row)
        d["devices"] = {s: int(n) for dep, s, n in counts if dep == d["id"]}
        out.append(d)
    return out


def deployment(store: SqlCloudStore, dep_id: str, now: float | None = None
               ) -> dict[str, Any] | None:
    """One deployment and each of its devices: state, reason, latest health."""
    with store.tx() as c:
        row = store._exec(c, f"SELECT {', '.join(_FIELDS)} FROM deployments WHERE id = ?",
                          (dep_id,)).fetchone()
        if row is None:
            return None
        devs = store._exec(c, "SELECT x.device, x.wave, x.state, x.reason, x.previous,"
                              " x.health, x.updated_at, v.online FROM deployment_devices x"
                              " LEFT JOIN devices v ON v.device = x.device WHERE"
                              " x.deployment = ? ORDER BY x.wave, x.device", (dep_id,)
                           ).fetchall()
    d = _deployment(row)
    d["devices"] = []
    expired = (time.time() if now is None else now) > d["expires_at"]
    for device, wave, state, reason, previous, health, updated, online in devs:
        h = json.loads(health) if health else None
        d["devices"].append({"device": device, "wave": int(wave) + 1, "state": state,
                             "shown": shown_state(state, h, None if online is None
                                                  else bool(online), expired),
                             "reason": reason, "previous": previous, "health": h,
                             "updated_at": updated})
    return d


def _deployment(row: Any) -> dict[str, Any]:
    d = dict(zip(_FIELDS, row, strict=True))
    d["waves"] = json.loads(d["waves"])
    d["wave"] = int(d["wave"]) + 1  # 0: not started; 1 ..: the wave out now
    return d
