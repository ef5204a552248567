"""Builders the daemon and the CLI share: tools from config, the agent runner, sync status."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from edge_agent.config import Config
from edge_agent.engine.bindings import AgentRunner, RemoteTool, ToolBinding
from edge_agent.store.backend import Database

log = logging.getLogger(__name__)


def build_tools(cfg: Config, store: Database | None = None,
                reuse: Mapping[str, ToolBinding] | None = None) -> dict[str, ToolBinding]:
    """The configured tools; `kv` tools need the device store (without one they are left
    out, as for `edge-agent tools` run without the daemon's store). A tool in `reuse` is
    taken as it is, not built again (a reload keeps an unchanged tool and its open device)."""
    out: dict[str, ToolBinding] = {}
    if not cfg.tools:
        return out
    from edge_agent.tools.registry import build_tool
    for name, tc in cfg.tools.items():
        if reuse and name in reuse:
            out[name] = reuse[name]
            continue
        if tc.kind == "kv":
            if store is not None:
                from edge_agent.store.documents import KvState
                from edge_agent.tools.base import SchemaTool
                state = KvState(store, cfg, tc.options.get("collection", "kv"))
                out[name] = ToolBinding(SchemaTool(
                    name, state, description=tc.description, params=tc.params,
                    result_schema=tc.result, idempotent=True, timeout_s=tc.timeout_s),
                    retry=tc.retry, on_unknown=tc.on_unknown)
            continue
        if tc.location == "remote" or tc.kind == "remote":
            out[name] = ToolBinding(RemoteTool(name, idempotent=tc.idempotent,
                                               timeout_s=tc.timeout_s,
                                               fallback=tc.options.get("fallback")),
                                    retry=tc.retry, on_unknown=tc.on_unknown)
            continue
        tool = build_tool(name, tc.kind, description=tc.description, params=tc.params,
                          result_schema=tc.result, idempotent=tc.idempotent,
                          timeout_s=tc.timeout_s, options=tc.options, base_dir=cfg.base_dir)
        out[name] = ToolBinding(tool, retry=tc.retry, on_unknown=tc.on_unknown)
    return out


def close_tools(tools: Mapping[str, ToolBinding]) -> None:
    for binding in tools.values():
        close = getattr(binding.tool, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - closing must not stop a shutdown
                log.warning("closing tool %s: %s", getattr(binding.tool, "name", "?"), exc)


def build_agent_runner(cfg: Config, tools: Mapping[str, ToolBinding]) -> AgentRunner | None:
    if not cfg.agents:
        return None
    from edge_agent.agents.providers import make_agent_runner
    return make_agent_runner(cfg, tools)


def build_sync(cfg: Config, daemon: Any) -> Any:
    from edge_agent.daemon.sync_runtime import make_sync
    return make_sync(cfg, daemon)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def outbox_streams(store: Database) -> dict[str, dict[str, Any]]:
    from sync.outbox import Outbox
    stats = store.read(lambda c: Outbox(c).stats())
    return {name: {"pending": s.pending, "pending_bytes": s.pending_bytes,
                   "oldest_pending_age_s": s.oldest_pending_age_s, "acked_seq": s.acked_seq,
                   "last_seq": s.last_seq, "dropped": s.dropped}
            for name, s in stats.items()}


def sync_status(store: Database, sync: Any) -> dict[str, Any]:
    return {"configured": sync is not None,
            "connected": bool(sync is not None and sync.connected),
            "broker": getattr(sync, "broker", None),
            "last_sync": iso(getattr(sync, "last_sync", None)),
            **getattr(sync, "health", {"healthy": None, "last_error": None}),
            "streams": outbox_streams(store),
            "downlink": getattr(sync, "downlink", None)}
