"""`edge-agent-cloud deploy`, `deployments`, `deployment show|abort`: rollouts from the
command line, a few lines each over sync/cloud/deployments.py. The waves go out from the
ingest service (`edge-agent-cloud run`), whose driver reads the deployment from the store."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import stat
import sys
import threading
from collections.abc import Callable
from typing import Any

from sync.cloud import deployments as deps
from sync.cloud.config import CloudConfig
from sync.cloud.rollout_rules import DEFAULT_ABORT_IF, DEFAULT_WAVES, RolloutError

COMMANDS = ("deploy", "deployments", "deployment")


def register(sub: Any, common: argparse.ArgumentParser, duration: Any) -> None:
    s = sub.add_parser("deploy", parents=[common], help="roll a config fragment (tools, agents,"
                       " workflows) out to devices in waves, each gated on its health")
    s.add_argument("fragment", metavar="FRAGMENT.toml")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--devices", help="comma-separated device ids")
    which.add_argument("--group", help="a group of cloud.toml's [groups] table")
    s.add_argument("--version", dest="label", help="a label for people (default: the digest)")
    s.add_argument("--waves", default=DEFAULT_WAVES, help="cumulative device counts or shares"
                   " per wave, each larger than the one before (a share that rounds to the"
                   " count before adds no wave; devices the last leaves out form one more"
                   f" wave) (default {DEFAULT_WAVES.replace('%', '%%')})")
    s.add_argument("--bake", type=duration, default=600.0,
                   help="how long each wave runs before its gate is read (default 10m)")
    s.add_argument("--abort-if", default=DEFAULT_ABORT_IF, help="CEL over failed_rate, started,"
                   " failed, tool_failure_rate, offline, rejected, devices (default"
                   f" {DEFAULT_ABORT_IF!r})")
    s.add_argument("--min-runs", type=int, default=1, help="runs a wave must start on the new"
                   " version to be healthy (default 1; 0: no runs is healthy)")
    s.add_argument("--expires-in", type=duration, default=7 * 86400.0,
                   help="devices refuse it after this long (default 7d)")
    sub.add_parser("deployments", parents=[common], help="rollouts, newest first")
    s = sub.add_parser("deployment", parents=[common], help="`deployment show ID`: each"
                       " device's state; `deployment abort ID`: stop it")
    s.add_argument("action", choices=("show", "abort"))
    s.add_argument("id")


Fail = Callable[[argparse.Namespace, str, int], int]


def run(cfg: CloudConfig, args: argparse.Namespace, store: Any, fail: Fail) -> int:
    """`fail(args, message, code)` reports an error as every edge-agent-cloud command does."""
    try:
        if args.command == "deploy":
            return _deploy(cfg, args, store, fail)
        if args.command == "deployments":
            return _list(args, store)
        if args.action == "abort":
            if not deps.abort(store, args.id):
                held = deps.deployment(store, args.id)
                return fail(args, f"no deployment {args.id}" if held is None else
                            f"deployment {args.id} is not running (it is {held['state']})", 1)
            _out(args, {"id": args.id, "state": "aborted"}, f"{args.id} aborted")
            return 0
        return _show(args, store, fail)
    finally:
        store.close()


def _deploy(cfg: CloudConfig, args: argparse.Namespace, store: Any, fail: Fail) -> int:
    from sync.cloud.fleet import FleetError, select_devices
    try:
        devices = select_devices(cfg.groups, devices=args.devices, group=args.group)
        fragment = read_fragment(args.fragment)
        dep_id = deps.create(store, fragment=fragment, devices=devices, version=args.label,
                             waves=args.waves, bake_s=args.bake, abort_if=args.abort_if,
                             min_runs=args.min_runs, expires_in_s=args.expires_in)
    except (FleetError, RolloutError) as exc:
        return fail(args, str(exc), exc.exit_code)
    except (OSError, UnicodeDecodeError) as exc:
        return fail(args, f"{args.fragment}: cannot read: {exc}", 66)
    d = deps.deployment(store, dep_id)
    assert d is not None
    d["never_seen"] = unseen = deps.never_seen(store, devices)
    if unseen and not args.json:
        print(f"warning: the cloud has never seen {', '.join(unseen)}: the deployment waits"
              f" for {'it' if len(unseen) == 1 else 'them'} until it expires at "
              f"{_iso(d['expires_at'])}", file=sys.stderr)
    _out(args, d, f"{dep_id}  version {d['version']}  {len(devices)} device(s) in waves "
         f"{d['waves']}; edge-agent-cloud deployment show {dep_id}")
    return 0


def read_fragment(path: str) -> str:
    """The fragment's text: a regular file of at most one deployment's bytes, read without
    waiting on a FIFO or reading a device such as /dev/zero without end."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError("not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(deps.MAX_FRAGMENT_BYTES + 1)
    if len(data) > deps.MAX_FRAGMENT_BYTES:
        raise RolloutError(f"the fragment is over {deps.MAX_FRAGMENT_BYTES} bytes; a "
                           "deployment carries at most that (one signed command)")
    return data.decode()


def _list(args: argparse.Namespace, store: Any) -> int:
    rows = deps.deployments(store)
    lines = [f"{d['id']}  {_iso(d['created_at'])}  {d['version'][:20]:20} {d['state']:10} "
             f"wave {d['wave']}/{len(d['waves'])}  "
             + ", ".join(f"{n} {s}" for s, n in sorted(d["devices"].items())) for d in rows]
    _out(args, {"deployments": rows}, "\n".join(lines) or "(no deployments)")
    return 0


def _show(args: argparse.Namespace, store: Any, fail: Fail) -> int:
    d = deps.deployment(store, args.id)
    if d is None:
        return fail(args, f"no deployment {args.id}", 1)
    head = (f"{d['id']}  version {d['version']}  {d['state']}  wave {d['wave']}/"
            f"{len(d['waves'])}  bake {d['bake_s']:g}s  abort if {d['abort_if']}"
            + (f"\n  {d['reason']}" if d["reason"] else ""))
    lines = [f"  {x['device']:20} wave {x['wave']}  {x['shown']:12}"
             + (f" runs {x['health']['started']} failed {x['health']['failed']}"
                if x["health"] else "") + (f"  {x['reason']}" if x["reason"] else "")
             for x in d["devices"]]
    _out(args, d, "\n".join([head, *lines]))
    return 0


def start_driver(store: Any, sender: Any, stop: threading.Event) -> threading.Thread:
    """The wave driver of `edge-agent-cloud run`: its own store connection (closed when it
    stops), sending through one of the process's workers (the command's row is written by
    the driver's claim)."""

    def send(device: str, cid: str, args: dict[str, Any], ttl: float) -> None:
        sender.send_command(device, "deploy", args, expires_in_s=ttl, resend=cid)

    def loop() -> None:
        try:
            deps.drive(store, send, stop)
        finally:
            store.close()

    thread = threading.Thread(target=loop, name="deployments", daemon=True)
    thread.start()
    return thread


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _out(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, default=str) if args.json else text)
