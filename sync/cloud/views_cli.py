"""`edge-agent-cloud runs | approvals | trace | reindex`: the fleet's projection, read.

Thin: each command parses, calls sync.cloud.views (or projection.reindex) and prints.
Registered from sync/cloud/cli.py by `register(sub, common)`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import time
from typing import Any

from sync.cloud.views import ViewError


def parse_since(text: str) -> float:
    """`--since`: a duration back from now (90s, 15m, 1h, 2d), an ISO 8601 time, or Unix
    seconds; the Unix time it names."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    try:
        if text[-1:] in units and text[:-1].replace(".", "", 1).isdigit():
            return time.time() - float(text[:-1]) * units[text[-1]]
        if text.replace(".", "", 1).isdigit():
            return float(text)
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp()
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"a duration (90s, 15m, 1h, 2d), an ISO time or Unix"
                                     f" seconds (got {text!r})")


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _store(cfg: Any) -> Any:
    from sync.cloud.wiring import store_of
    return store_of(cfg)


def _show(args: argparse.Namespace, data: Any, text: str) -> int:
    print(json.dumps(data, default=str) if args.json else text)
    return 0


def cmd_runs(cfg: Any, args: argparse.Namespace) -> int:
    from sync.cloud.views import runs
    store = _store(cfg)
    try:
        rows = runs(store, device=args.device, group=args.group, status=args.status,
                    workflow=args.workflow, since=args.since, limit=args.limit,
                    groups=cfg.groups)
    finally:
        store.close()
    lines = []
    for r in rows:
        gate = r["pending_approval"]
        why = f"  waits: {gate['prompt']!r} (approval {gate['approval_id']})" if gate else ""
        err = f"  {(r['error'] or '')[:80]}" if r["error"] else ""
        lines.append(f"{r['device']:16} {r['run_id']:24} {r['workflow'] or '?':16} "
                     f"{r['status']:16} {r['node'] or '-':14} {iso(r['updated_at'])}"
                     f"{why}{err}")
    return _show(args, {"runs": rows}, "\n".join(lines) or "(no runs)")


def cmd_approvals(cfg: Any, args: argparse.Namespace) -> int:
    from sync.cloud.views import approvals
    store = _store(cfg)
    try:
        rows = approvals(store)
    finally:
        store.close()
    lines = [f"{a['device']:16} {a['run_id']:24} approval {a['approval_id']} at {a['node']}"
             f" (visit {a['visit'] if a['visit'] is not None else '?'})  {ago(a['age_s'])} ago"
             f"  expires {iso(a['expires_at'])}  {a['prompt']!r}" for a in rows]
    return _show(args, {"approvals": rows}, "\n".join(lines) or "(nothing waits)")


def cmd_trace(cfg: Any, args: argparse.Namespace) -> int:
    from sync.cloud.views import trace
    from sync.trace_render import render_trace
    store = _store(cfg)
    try:
        data = trace(store, args.device, args.run_id)
    finally:
        store.close()
    return _show(args, data, render_trace(data))


def cmd_reindex(cfg: Any, args: argparse.Namespace) -> int:
    from sync.cloud.projection import reindex
    store = _store(cfg)
    try:
        out = reindex(store, args.device)
    finally:
        store.close()
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(out["skipped"].items())) or "none"
    return _show(args, out, f"reindexed {out['devices']} device(s) from {out['records']}"
                            f" record(s); skipped: {skipped}")


def limit(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 0 < n <= 10000:
        raise argparse.ArgumentTypeError(f"between 1 and 10000 (got {text!r})")
    return n


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("runs", parents=[common], help="runs across the fleet, newest first"
                       " (from the cloud's projection of the devices' records)")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--device", help="one device")
    which.add_argument("--group", help="a group of cloud.toml's [groups] table")
    s.add_argument("--status", help="queued, running, waiting_approval, completed, failed,"
                   " cancelled")
    s.add_argument("--workflow")
    s.add_argument("--since", type=parse_since, help="updated since: 1h, 2d, an ISO time")
    s.add_argument("--limit", type=limit, default=100, help="at most N runs (default 100)")
    s.set_defaults(handler=cmd_runs)
    s = sub.add_parser("approvals", parents=[common], help="every approval a device waits"
                       " on: device, run, approval, gate, prompt, age, expiry")
    s.set_defaults(handler=cmd_approvals)
    s = sub.add_parser("trace", parents=[common], help="a run's tree (steps, tool calls,"
                       " model turns, retries, approvals, hand-offs) from the cloud's copy")
    s.add_argument("--device", required=True)
    s.add_argument("run_id")
    s.set_defaults(handler=cmd_trace)
    s = sub.add_parser("reindex", parents=[common], help="rebuild the projection (runs,"
                       " approvals, traces) from the stored records")
    s.add_argument("--device", help="only this device")
    s.set_defaults(handler=cmd_reindex)


ERRORS: tuple[type[Exception], ...] = (ViewError,)
__all__ = ["ERRORS", "parse_since", "register"]
