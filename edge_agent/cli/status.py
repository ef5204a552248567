"""`edge-agent status`, `config check`, `sync now`: how the device stands."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from edge_agent.cli.context import CliError, Context
from edge_agent.cli.metrics import kinds
from edge_agent.cli.render import table
from edge_agent.config import config_path, load_config
from edge_agent.config.model_files import check_model_files, model_warnings, unavailable_models
from edge_agent.config.model_memory import check_model_memory, model_memory, render_kv
from edge_agent.daemon.lock import lock_holder
from edge_agent.daemon.runtime import outbox_streams
from edge_agent.engine import queries as q
from edge_agent.errors import ConfigError, EdgeAgentError, StoreError
from edge_agent.store.opening import open_database
from edge_agent.telemetry.summary import collect, one_line


def collect_status(ctx: Context) -> dict[str, Any]:
    live = ctx.daemon("status")
    holder = lock_holder(ctx.config.device.data_dir)
    data: dict[str, Any] = {
        "daemon": {"running": live is not None or bool(holder), "pid": (live or {}).get("pid")
                   or (holder if holder and holder > 0 else None),
                   "uptime_s": (live or {}).get("uptime_s"), "version": (live or {}).get(
                       "version"), "config": str(ctx.config.path),
                   "answering": live is not None},
        "device_id": ctx.config.device.id,
    }
    if live is not None and live.get("sync"):
        sync = live["sync"]
    else:
        sync = {"configured": ctx.config.sync is not None, "connected": False,
                "broker": (f"{ctx.config.sync.host}:{ctx.config.sync.port}"
                           if ctx.config.sync else None),
                "last_sync": None, "healthy": None, "last_error": None, "streams": {}}
    data["store"] = (live or {}).get("store") or {"state": "ok", "last_error": None}
    data["runner"] = (live or {}).get("runner")  # its id among runners sharing a database
    counts, pending, conflicts, summary = {}, 0, 0, None
    if ctx.config.device.database or ctx.config.db_path.exists():
        try:
            store = ctx.store()
        except StoreError as exc:  # the database does not answer: said, not a traceback
            data["store"] = {**data["store"], "reachable": False, "error": str(exc)}
        else:
            try:
                counts = store.read(q.count_by_status)
                pending = len(store.read(lambda c: q.list_approvals(c, pending_only=True)))
                if not sync["streams"]:
                    sync["streams"] = outbox_streams(store)
                conflicts = _conflicts(store)
                summary = store.read(lambda c: collect(c, since=time.time() - 3600,
                                                       kinds=kinds(ctx)))
            except StoreError as exc:
                data["store"] = {**data["store"], "reachable": False, "error": str(exc)}
            finally:
                store.close()
    data["sync"] = sync
    data["runs"] = counts
    data["approvals_pending"] = pending
    data["conflicts"] = conflicts
    data["models"] = sorted(ctx.config.models)
    data["kv_cache"] = model_memory(ctx.config)
    data["models_unavailable"] = (live or {}).get("models_unavailable",
                                                  unavailable_models(ctx.config))
    data["last_hour"] = one_line(summary) if summary is not None else None
    return data


def _conflicts(store: Any) -> int:
    try:
        row = store.read(lambda c: c.execute(
            "SELECT count(*) FROM docs WHERE siblings != '{}'").fetchone())
    except Exception:  # noqa: BLE001 - a database from before replicated docs
        return 0
    return int(row[0])


def render_status(data: dict[str, Any]) -> str:
    d, s = data["daemon"], data["sync"]
    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")

    def paint(text: str, ok: bool) -> str:
        return f"\033[{32 if ok else 31}m{text}\033[0m" if color else text
    if d["answering"]:
        daemon = paint(f"running (pid {d['pid']}, up {int(d['uptime_s'] or 0)}s, "
                       f"v{d['version']})", True)
    elif d["running"]:
        daemon = paint(f"running (pid {d['pid']}) but not answering its socket", False)
    else:
        daemon = paint("not running (read from the database directly)", False)
    if not s["configured"]:
        sync = "not configured (offline: the outbox keeps everything within its bounds)"
    else:
        sync = paint(f"connected to {s['broker']}" if s["connected"] else
                     f"disconnected from {s['broker']}", s["connected"]) \
            + f", last sync {s['last_sync'] or 'never'}"
        down = s.get("downlink")
        if down:  # the live daemon's word on what it verified and refused
            refused = ", ".join(f"{k} {v}" for k, v in sorted(down["rejected"].items()))
            sync += (", downlink " + ("signed" if down["signed"] else "UNSIGNED (insecure)")
                     + (f", refused: {refused}" if refused else ""))
        if s.get("healthy") is False:
            sync += paint(f"  UNHEALTHY: {s.get('last_error')}", False)
    streams = table(["stream", "pending", "bytes", "oldest", "acked", "dropped"], [
        [n, v["pending"], v["pending_bytes"],
         "-" if v["oldest_pending_age_s"] is None else f"{v['oldest_pending_age_s']:.0f}s",
         v["acked_seq"], v["dropped"]] for n, v in s["streams"].items()])
    runs = ", ".join(f"{k} {v}" for k, v in sorted(data["runs"].items())) or "none"
    st = data.get("store") or {}
    store = "ok" if st.get("state", "ok") == "ok" else f"retrying ({st.get('last_error')})"
    if st.get("reachable") is False:
        store += f"; not reachable from here: {st.get('error')}"
    store = paint(store, store == "ok")
    if data.get("runner"):
        store += f"   runner {data['runner']}"
    # in sync: the cloud acked everything there is, which it never did before a first sync
    in_sync = s["configured"] and s["last_sync"] is not None and all(
        v["pending"] == 0 for v in s["streams"].values())
    return "\n".join([
        f"device    {data['device_id']}   config {d['config']}",
        f"daemon    {daemon}",
        f"sync      {sync}" + (paint("  [in sync]", True) if in_sync else ""),
        streams,
        f"store     {store}",
        f"runs      {runs}",
        (f"approvals {data['approvals_pending']} pending   conflicts {data['conflicts']}   "
         f"models {_models(data)}"),
        f"kv cache  {render_kv(data.get('kv_cache') or [])}",
        f"last hour {data.get('last_hour') or 'nothing yet'}   (edge-agent metrics for more)",
    ])


def _models(data: dict[str, Any]) -> str:
    gone = data.get("models_unavailable") or {}
    return ", ".join(f"{m} (UNAVAILABLE: {gone[m]})" if m in gone else m
                     for m in data["models"]) or "none"


def cmd_status(ctx: Context, args: argparse.Namespace) -> int:
    while True:
        data = collect_status(ctx)
        if args.watch and not ctx.as_json:
            print("\033[2J\033[H", end="")
        ctx.out(data, render_status(data))
        if not args.watch:
            return 0
        time.sleep(args.interval)


def cmd_config_check(ctx: Context, args: argparse.Namespace) -> int:
    path = args.path or ctx.config_path
    try:
        cfg = load_config(path)
        if issues := check_model_files(cfg) or check_model_memory(cfg):
            raise ConfigError(str(config_path(path)), issues)
    except ConfigError as exc:
        if ctx.as_json:
            ctx.out({"ok": False, "errors": [i.render(exc.file) for i in exc.issues]})
        else:
            print(exc)
        return ConfigError.exit_code
    changed = _runs_on_changed_workflows(cfg)
    lines = ["ok"] + [
        f"run {r['run_id']} ({r['workflow']}, {r['status']} at {r['node'] or '(start)'}) stays on "
        f"version {r['version'] or '(unpinned)'}; this config has "
        + (f"version {r['new_version']}, " if r["new_version"] else "no such workflow")
        + ("" if not r["new_version"] else "where its node exists" if r["node_exists"] else
           f"without its node: `edge-agent runs migrate {r['run_id']} --to-version "
           f"{r['new_version']} --map {r['node']}=NODE` moves it")
        for r in changed]
    warnings = model_warnings(cfg)
    lines += [f"warning: {w}" for w in warnings]
    ctx.out({"ok": True, "path": str(config_path(path)), "runs_on_changed_workflows": changed,
             "warnings": warnings}, "\n".join(lines))
    return 0


def _runs_on_changed_workflows(cfg: Any) -> list[dict[str, Any]]:
    """Runs in flight whose workflow this config changes, from the database the config's
    data_dir holds (none if there is none yet)."""
    from edge_agent.engine.versions import in_flight_on_changed
    if cfg.device.database is None and not cfg.db_path.exists():
        return []
    try:
        store = open_database(cfg.database, readonly=True)
    except EdgeAgentError as exc:  # a database this release cannot read: the config is ok
        print(f"edge-agent: runs in flight not checked: {exc}", file=sys.stderr)
        return []
    try:
        if cfg.device.database is None and store.read(lambda c: c.execute(
                "SELECT count(*) FROM sqlite_master WHERE name = 'workflow_versions'"
                ).fetchone()[0]) == 0:
            return []  # a database from before versions: its runs are pinned at next start
        result: list[dict[str, Any]] = store.read(
            lambda c: in_flight_on_changed(c, cfg.workflows))
        return result
    finally:
        store.close()


def cmd_sync_now(ctx: Context, args: argparse.Namespace) -> int:
    if ctx.config.sync is None:
        raise CliError("sync is not configured: add a [sync] table to the config", 1)
    reply = ctx.daemon("sync_now")
    if reply is None:
        raise CliError("the daemon is not running; records stay in the outbox until it runs", 1)
    ctx.out(reply, "sync requested")
    return 0
