"""`edge-agent-cloud commands [--device D] [--state S] [--json]`: the commands the cloud has
sent and the state of each (sync/cloud/commands.py)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from sync.cloud.commands import STATES, Commands


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    s = sub.add_parser("commands", parents=[common], help="commands sent to devices and the"
                       " state of each: queued, sent, confirmed, failed, expired")
    s.add_argument("--device", help="only this device's")
    s.add_argument("--state", choices=STATES, help="only those in this state")
    s.add_argument("--limit", type=int, default=100, help="at most this many, newest first")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def cmd_commands(cfg: Any, args: argparse.Namespace) -> int:
    from sync.cloud.store import SqlCloudStore
    store = SqlCloudStore(cfg.store_url, max_record_bytes=cfg.max_record_bytes)
    try:
        rows = Commands(store).listing(args.device, args.state, max(1, args.limit))
    finally:
        store.close()
    out = [{**r, **{k: _iso(r[k]) for k in ("created_at", "sent_at", "expires_at",
                                             "answered_at")}} for r in rows]
    if args.json:
        print(json.dumps({"commands": out}, default=str))
        return 0
    for r in out:
        print(f"{r['id'][:12]}  {r['device']:20} {r['type']:12} {r['state']:10}"
              f" {r['created_at']}  expires {r['expires_at']}")
    if not out:
        print("(no commands)")
    return 0
