"""Deployments on the device: a signed `deploy` command replaces tables of the config that
`[sync] remote_config` lets the cloud replace, after the same checks as `config check`.

The command (already verified: signature, device, expiry, replay) is handled in the sync's
transaction, with its inbox row and its `deploy.result` record; the daemon reloads after the
commit, as on SIGHUP. Runs in flight keep their pinned workflow version. For the bake time
the daemon then sends `deploy.health` records (runs started and failed since the apply,
tool failure rate, whether sync is healthy) on the control stream, which the cloud's health
gate reads. See sync/PROTOCOL.md, "Deployments".
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgpack

from edge_agent.config import Config, load_config
from edge_agent.config.deployed import LOCAL, DeployedState, FragmentError, digest, parse_fragment
from edge_agent.config.model_files import check_model_files
from edge_agent.errors import ConfigError
from sync.outbox import Outbox

log = logging.getLogger(__name__)
HEALTH_MIN_INTERVAL_S = 1.0
HEALTH_MAX_INTERVAL_S = 30.0


def handle_deploy(conn: sqlite3.Connection, config: Config, device: str,
                  args: dict[str, Any]) -> dict[str, Any]:
    """Apply or roll back a deployment; the answer also goes up as a `deploy.result` record
    in the caller's transaction. Never raises for a fragment it refuses: that is an answer."""
    action = str(args.get("action") or "apply")
    if action == "rollback":
        result = _rollback(config, args)
    elif action == "apply":
        result = _apply(conn, config, args)
    else:
        result = {"status": "rejected", "reasons": [f"unknown action {action!r}"]}
    record = {"deployment": str(args.get("deployment") or ""), "device": device,
              "action": action, "version": args.get("version"), "at": time.time(), **result}
    Outbox(conn).append("control", "deploy.result", msgpack.packb(record, default=str))
    log.info("deployment %s (%s): %s %s", record["deployment"], action, result["status"],
             "; ".join(result.get("reasons", [])))
    return result


def _apply(conn: sqlite3.Connection, config: Config, args: dict[str, Any]) -> dict[str, Any]:
    text = str(args.get("fragment") or "")
    if digest(text) != args.get("sha256"):
        return _rejected(["the fragment does not match its SHA-256"])
    allowed = config.sync.remote_config if config.sync else ()
    if not allowed:
        return _rejected(["this device takes no deployment: [sync] remote_config is empty"])
    try:
        fragment = parse_fragment(text, allowed)
    except FragmentError as exc:
        return _rejected(exc.reasons)
    state = DeployedState(config.device.data_dir)
    sha, held = digest(text), state.current()
    if held == sha:
        return {"status": "applied", "digest": sha, "previous": state.previous() or LOCAL,
                "already": True}
    try:  # exactly what `config check` checks, on the config this would make
        candidate = load_config(config.path, candidate=fragment)
        if issues := check_model_files(candidate):
            raise ConfigError(str(config.path), issues)
    except ConfigError as exc:
        return _rejected([i.render("config") for i in exc.issues])
    from edge_agent.engine.versions import in_flight_on_changed
    changed = in_flight_on_changed(conn, candidate.workflows)
    state.store_fragment(text)
    bake = float(args.get("bake_s") or 0)
    state.switch(sha, {"deployment": args.get("deployment"), "version": args.get("version"),
                       "action": "apply", "bake_until": time.time() + bake})
    return {"status": "applied", "digest": sha, "previous": held or LOCAL,
            "runs_on_changed_workflows": changed}


def _rollback(config: Config, args: dict[str, Any]) -> dict[str, Any]:
    """Back to `to` (the digest held before), only while the deployment's own digest is the
    one in force: a device that has moved on, or never applied it, keeps what it runs."""
    state = DeployedState(config.device.data_dir)
    held, of = state.current(), str(args.get("digest") or "")
    if held != of:
        return {"status": "unchanged", "digest": held or LOCAL,
                "reasons": [f"this device does not run {of[:12]} (it runs "
                            f"{(held or LOCAL)[:12]})"]}
    to = args.get("to")
    target = None if to in (None, "", LOCAL) else str(to)
    if target is not None:
        try:
            state.fragment_text(target)
        except (OSError, ValueError) as exc:
            return _rejected([f"cannot return to {target[:12]}: {exc}"])
    state.switch(target, {"deployment": args.get("deployment"), "action": "rollback"})
    return {"status": "rolled_back", "digest": target or LOCAL, "previous": held}


def _rejected(reasons: list[str]) -> dict[str, Any]:
    return {"status": "rejected", "reasons": reasons}


def rollback_locally(config: Config) -> dict[str, Any]:
    """`edge-agent config rollback`: the config held before the current one."""
    state = DeployedState(config.device.data_dir)
    held = state.current()
    if held is None:
        raise ValueError("no deployment is in force: the local file alone is the config")
    to = state.previous()
    entry = state.switch(to, {"deployment": None, "action": "local rollback"})
    return entry


def history(config: Config) -> list[dict[str, Any]]:
    return list(DeployedState(config.device.data_dir).read().get("history", []))


def health(conn: sqlite3.Connection, since: float) -> dict[str, Any]:
    """Runs started (and failed) since the apply, on the config it brought, and tool calls."""
    started, failed = conn.execute(
        "SELECT count(*), coalesce(sum(status = 'failed'), 0) FROM runs WHERE created_at >= ?",
        (since,)).fetchone()
    calls, errors = conn.execute(
        "SELECT count(*), coalesce(sum(status = 'error'), 0) FROM tool_calls"
        " WHERE started_at >= ?", (since,)).fetchone()
    return {"started": int(started), "failed": int(failed), "tool_calls": int(calls),
            "tool_failures": int(errors)}


class HealthReporter:
    """While a deployment bakes, a `deploy.health` record every few seconds (and one more
    just after the bake). The bake's end is in the marker, so a restart goes on reporting."""

    def __init__(self, data_dir: Path, device: str) -> None:
        self.state = DeployedState(data_dir)
        self.device = device
        self._last = 0.0

    def due(self, now: float) -> dict[str, Any] | None:
        """The apply being baked, if a report is due now."""
        st = self.state.read()
        history = st.get("history") or []
        if not history or history[-1].get("action") != "apply":
            return None
        entry: dict[str, Any] = history[-1]
        bake_until, at = float(entry.get("bake_until") or 0), float(entry["at"])
        every = min(HEALTH_MAX_INTERVAL_S, max(HEALTH_MIN_INTERVAL_S, (bake_until - at) / 5))
        if now > bake_until + every or now - self._last < every:
            return None
        self._last = now
        return entry

    def report(self, conn: sqlite3.Connection, entry: dict[str, Any],
               sync_healthy: bool) -> None:
        now = time.time()
        record = {"deployment": entry.get("deployment"), "device": self.device,
                  "digest": entry.get("digest"), "at": now,
                  "final": now >= float(entry.get("bake_until") or 0),
                  "sync_healthy": sync_healthy, **health(conn, float(entry["at"]))}
        Outbox(conn).append("control", "deploy.health", msgpack.packb(record, default=str))
