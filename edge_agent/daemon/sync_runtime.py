"""Wires the sync layer into the daemon: the outbox publisher and the downlink handler.

Commands from the cloud are applied in the sync's own transaction, together with the inbox
row that makes them exactly-once, then the engine is woken through the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

from edge_agent.config import Config
from edge_agent.engine import queue_run, request_cancel
from edge_agent.engine.conflicts import remote_decision
from sync.edge import EdgeSync
from sync.envelope import Command

log = logging.getLogger(__name__)


class DaemonSync:
    """EdgeSync with the daemon's lifecycle (async start/shutdown) and command handling."""

    def __init__(self, config: Config, daemon: Any) -> None:
        s = config.sync
        assert s is not None
        self.config = config
        self.daemon = daemon
        self.loop: asyncio.AbstractEventLoop | None = None
        password = None
        if s.password_file:
            password = Path(s.password_file).read_text().strip()
        elif s.password_env:
            import os
            password = os.environ.get(s.password_env)
        opener = None
        if s.cloud_keys:  # every downlink message must open with a pinned key
            from sync.signing import Opener
            opener = Opener(config.device.id, list(s.cloud_keys),
                            max_skew_s=s.max_clock_skew_s)
        uplink = None
        if s.device_key is not None:  # batches sealed by the device's own key
            from sync.signing import UPLINK_DOMAIN, UPLINK_TTL_S, Sealer, load_private_key
            try:
                key = load_private_key(s.device_key)
            except (OSError, ValueError) as exc:
                from edge_agent.errors import ConfigError
                from sync.config_reader import ConfigIssue
                raise ConfigError(str(config.path), [ConfigIssue(
                    "sync.device_key", f"cannot read the device's key ({exc}); edge-agent"
                    " sync init-key makes it", str(s.device_key))]) from exc
            uplink = Sealer(key, domain=UPLINK_DOMAIN, ttl_s=UPLINK_TTL_S)
        self.edge = EdgeSync(
            device_id=config.device.id, host=s.host, port=s.port, open_conn=self._open,
            handler=self._handle, after_command=self._after, prefix=s.topic_prefix,
            protocol=s.protocol, tls_ca=str(s.tls.ca) if s.tls and s.tls.ca else None,
            tls_cert=str(s.tls.cert) if s.tls and s.tls.cert else None,
            tls_key=str(s.tls.key) if s.tls and s.tls.key else None, username=s.username,
            password=password, batch_max_records=s.batch_max_records,
            batch_max_bytes=s.batch_max_bytes, linger_s=s.linger_s, window=s.window,
            compression=s.compression, keepalive_s=s.keepalive_s,
            ack_timeout_s=s.ack_timeout_s, outbox_limits=dict(s.outbox_max_bytes),
            max_record_bytes=s.max_record_bytes,
            durable=self._durable, opener=opener, uplink_sealer=uplink)

    @property
    def connected(self) -> bool:
        return self.edge.connected

    @property
    def broker(self) -> str:
        return self.edge.broker

    @property
    def last_sync(self) -> float | None:
        return self.edge.last_sync

    @property
    def downlink(self) -> dict[str, Any]:
        """Whether the downlink is verified, and what was refused, by reason."""
        return {"signed": self.edge.opener is not None,
                "rejected": dict(self.edge.stats.rejected)}

    @property
    def health(self) -> dict[str, Any]:
        """Whether the publisher's last round went through, and its last error."""
        e = self.edge
        return {"healthy": e.healthy, "last_error": e.last_error, "errors": e.stats.errors,
                "epoch": e.epoch}

    def notify(self) -> None:
        self.edge.notify()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        s = self.config.sync
        if s is not None and s.insecure:
            log.warning("sync.insecure = true: %s; for a lab broker only, never a fleet",
                        "downlink messages are verified but the broker may be anonymous"
                        if s.cloud_keys else "downlink messages are taken unsigned")
        self.edge.start()
        self._health = self.loop.create_task(self._deploy_health(), name="deploy-health")

    async def _deploy_health(self) -> None:
        """While a deployment bakes, its health goes up on the control stream."""
        from edge_agent.daemon.deployments import HealthReporter
        reporter = HealthReporter(self.config.device.data_dir, self.config.device.id)
        while True:
            await asyncio.sleep(1.0)
            try:
                entry = await asyncio.to_thread(reporter.due, time.time())
                if entry is not None:
                    healthy = bool(self.edge.healthy)
                    await asyncio.to_thread(self.daemon.writer.write, functools.partial(
                        _report, reporter, entry=entry, healthy=healthy))
                    self.notify()
            except Exception as exc:  # noqa: BLE001 - the next round tries again
                log.warning("deployment health report failed: %s", exc)

    async def shutdown(self) -> None:
        if getattr(self, "_health", None) is not None:
            self._health.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self.edge.shutdown)

    def _durable(self) -> None:
        writer = getattr(self.daemon, "writer", None)
        if writer is not None:
            writer.durable()

    def _open(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = self.daemon.store._open()
        conn.row_factory = sqlite3.Row
        return conn

    def _handle(self, conn: sqlite3.Connection, cmd: Command) -> dict[str, Any]:
        write = lambda fn: fn(conn)  # noqa: E731 - inside the sync's transaction
        a = cmd.args
        if cmd.type in ("approve", "reject"):
            rules = (self.config.sync.collections.get("approvals", {})
                     if self.config.sync else {})
            rule = dict(rules.get("fields", {})).get("decision", "reject_wins")
            return remote_decision(write, str(a["run_id"]), approve=cmd.type == "approve",
                                   by=str(a.get("by") or "cloud"), note=a.get("note"),
                                   patch=a.get("patch"), rule=rule,
                                   approval_id=a.get("approval_id"), node=a.get("node"),
                                   visit=a.get("visit"))
        if cmd.type == "cancel":
            run = request_cancel(write, str(a["run_id"]), by=str(a.get("by") or "cloud"))
            return {"run_id": run.run_id, "status": run.status}
        if cmd.type == "start":
            run_id = queue_run(write, workflow=str(a["workflow"]), input=a.get("input") or {},
                               workflows=self.daemon.config.workflows, origin="cloud",
                               run_id=str(a.get("run_id") or f"c-{cmd.id[:20]}"))
            return {"run_id": run_id}
        if cmd.type == "tool_result" and str(a.get("key", "")).startswith("handoff/"):
            from edge_agent.engine.cloud_handoff import apply_handoff_result
            return apply_handoff_result(conn, self.config.device.id, dict(a))
        if cmd.type == "tool_result":
            return record_tool_result(conn, str(a["key"]), ok=bool(a.get("ok", True)),
                                      result=a.get("result"), error=a.get("error"),
                                      busy=a.get("busy") is True)
        if cmd.type == "doc_update":
            from edge_agent.engine.remote_documents import apply_remote
            from sync.documents import Version
            return apply_remote(conn, self.config, Version.decode(a["version"]))
        if cmd.type == "doc_sync":
            from edge_agent.engine.remote_documents import sync_documents
            return sync_documents(conn, self.config, str(a["collection"]),
                                  list(a["buckets"]), int(a["n"]), list(a["versions"]))
        if cmd.type == "deploy":
            from edge_agent.daemon.deployments import handle_deploy
            return handle_deploy(conn, self.daemon.config, self.config.device.id, dict(a))
        raise ValueError(f"command type {cmd.type!r} is not handled by this device")

    def _after(self, cmd: Command, result: dict[str, Any]) -> None:
        engine = self.daemon.engine
        if self.loop is None or engine is None:
            return
        if cmd.type == "deploy":  # a new config in force: reloaded as on SIGHUP
            if (result.get("result") or {}).get("status") in ("applied", "rolled_back"):
                loop = self.loop
                loop.call_soon_threadsafe(lambda: loop.create_task(self.daemon.reload()))
            return
        inner = result.get("result") or {}
        if isinstance(inner, dict) and isinstance(inner.get("run"), dict):
            inner = inner["run"]  # a run's control document was followed
        run_id = inner.get("run_id") if isinstance(inner, dict) else None
        self.loop.call_soon_threadsafe(engine.wake, run_id)


def record_tool_result(conn: sqlite3.Connection, key: str, *, ok: bool, result: Any,
                       error: Any, busy: bool = False) -> dict[str, Any]:
    """The cloud's answer to a remote tool request; the waiting run is woken after commit.
    `busy`: the cloud refused it unrun (error kind `busy`: the step takes the tool's
    fallback, or retries by its policy)."""
    import json
    import time
    row = conn.execute("SELECT run_id, status FROM tool_calls WHERE idem_key = ? ORDER BY"
                       " attempt DESC LIMIT 1", (key,)).fetchone()
    if row is None:
        raise ValueError(f"no remote tool call {key!r} on this device")
    if row[1] != "requested":
        raise ValueError(f"remote tool call {key!r} is already {row[1]}")
    if ok and not isinstance(result, dict):
        raise ValueError("a tool result is a JSON object")
    conn.execute("UPDATE tool_calls SET status = ?, result = ?, error = ?, error_kind = ?,"
                 " finished_at = ? WHERE idem_key = ? AND status = 'requested'",
                 ("ok" if ok else "error", json.dumps(result) if ok else None,
                  None if ok else str(error or "remote tool failed"),
                  None if ok else "busy" if busy else "remote_error", time.time(), key))
    return {"run_id": row[0], "key": key}


def _report(reporter: Any, conn: sqlite3.Connection, *, entry: dict[str, Any],
            healthy: bool) -> None:
    reporter.report(conn, entry, healthy)


def make_sync(config: Config, daemon: Any) -> DaemonSync:
    return DaemonSync(config, daemon)
