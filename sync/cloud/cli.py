"""`edge-agent-cloud`: run the ingest, list devices, steer them."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from sync.cloud.config import CloudConfig, CloudConfigError, load_cloud_config
from sync.cloud.ingest import IngestWorker
from sync.cloud.store import CloudStoreError, SqlCloudStore


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def store_of(cfg: CloudConfig) -> SqlCloudStore:
    return SqlCloudStore(cfg.store_url, max_record_bytes=cfg.max_record_bytes)


def load_tools(cfg: CloudConfig) -> dict[str, Any]:
    import importlib
    out = {}
    for name, entry in cfg.tools:
        module, _, attr = entry.partition(":")
        out[name] = getattr(importlib.import_module(module), attr)
    return out


def worker(cfg: CloudConfig, store: SqlCloudStore, **kw: Any) -> IngestWorker:
    kw.setdefault("tools", load_tools(cfg))
    return IngestWorker(store, host=cfg.host, port=cfg.port, prefix=cfg.topic_prefix,
                        group=cfg.group, protocol=cfg.protocol, tls_ca=cfg.tls_ca,
                        tls_cert=cfg.tls_cert, tls_key=cfg.tls_key, username=cfg.username,
                        password=cfg.password, otlp_endpoint=cfg.otlp_endpoint,
                        collections=cfg.collections, **kw)


def cmd_run(cfg: CloudConfig, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    stores = [store_of(cfg) for _ in range(cfg.workers)]
    workers = [worker(cfg, s) for s in stores]
    for w in workers:
        w.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    logging.getLogger("edge-agent-cloud").info("ingest running: %d worker(s) on %s:%d",
                                               len(workers), cfg.host, cfg.port)
    stop.wait()
    for w in workers:
        w.shutdown()
    for s in stores:
        s.close()
    return 0


def cmd_status(cfg: CloudConfig, args: argparse.Namespace) -> int:
    store = store_of(cfg)
    try:
        devices = store.devices()
    finally:
        store.close()
    out = {"devices": [{**d, "last_seen": _iso(d["last_seen"]),
                        "first_seen": _iso(d["first_seen"]),
                        "epochs": [{**e, "first_seen": _iso(e["first_seen"])}
                                   for e in d["epochs"]],
                        "resets": [{**r, "at": _iso(r["at"])} for r in d["resets"]]}
                       for d in devices]}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for d in out["devices"]:
        streams = ", ".join(f"{s} {v['received_seq']}" for s, v in d["streams"].items())
        print(f"{d['device_id']:20} {'online' if d['online'] else 'offline':8} "
              f"last seen {d['last_seen']}  epoch {d['epoch'] or '(protocol 1)'}  {streams}")
        for r in d["resets"]:
            if r["upgrade"]:
                print(f"{'':20} upgraded to protocol 2 at {r['at']}, epoch {r['to']}")
            else:
                print(f"{'':20} database reset at {r['at']}, epoch {r['from']} to {r['to']}")
    if not out["devices"]:
        print("(no devices yet)")
    return 0


def cmd_send(cfg: CloudConfig, args: argparse.Namespace) -> int:
    if args.command == "start":
        try:
            payload = json.loads(args.input) if args.input else {}
        except json.JSONDecodeError as exc:
            print(f"--input: not valid JSON ({exc.msg})", file=sys.stderr)
            return 64
        cargs: dict[str, Any] = {"workflow": args.workflow, "input": payload}
    else:
        cargs = {"run_id": args.run_id, "note": args.note, "by": args.by}
    store = store_of(cfg)
    if args.command in ("approve", "reject"):
        seen = store.last_approval(args.device, args.run_id)
        if seen is not None:
            cargs["approval_id"] = seen  # the gate the cloud answers, as it last saw it
    return _deliver(cfg, store, args, lambda sender: sender.send_command(
        args.device, args.command, cargs, wait_s=10))


def cmd_doc(cfg: CloudConfig, args: argparse.Namespace) -> int:
    """`doc get` reads the cloud's replica; `doc set` writes it and sends the version down."""
    from sync.cloud.docs import CloudDocs
    collection, sep, key = args.key.rpartition("/")
    if not sep or not collection or not key:
        print(f"a document is COLLECTION/KEY (got {args.key!r})", file=sys.stderr)
        return 64
    store = store_of(cfg)
    if args.action == "get":
        try:
            doc = CloudDocs(store, cfg.collections).read(args.device, collection, key)
        finally:
            store.close()
        if doc is None:
            print(f"no document {args.key} for {args.device}", file=sys.stderr)
            return 1
        out = {"key": args.key, "value": doc.value, "siblings": doc.siblings}
        print(json.dumps(out, indent=2) if args.json else json.dumps(doc.value))
        return 0
    try:
        changes = json.loads(args.value or "")
        if not isinstance(changes, dict):
            raise ValueError("a JSON object of fields")
    except ValueError as exc:
        store.close()
        print(f"--value: {exc} (got {args.value!r})", file=sys.stderr)
        return 64
    return _deliver(cfg, store, args, lambda sender: sender.write_doc(
        args.device, collection, key, changes)[0])


def _deliver(cfg: CloudConfig, store: SqlCloudStore, args: argparse.Namespace,
             send: Any) -> int:
    """Send one command through a short-lived client; with --wait, until the device
    confirms it."""
    sender = worker(cfg, store, worker_id=f"cli-{time.time_ns()}")
    sender.client.connect(cfg.host, cfg.port, keepalive=30)
    sender.client.loop_start()
    try:
        cid = send(sender)
        print(json.dumps({"command_id": cid}) if args.json else cid)
        if args.wait:
            deadline = time.time() + args.timeout
            while time.time() < deadline:
                c = store.command(cid)
                if c and c["state"] != "sent":
                    print(json.dumps(c) if args.json else f"{c['state']}: {c['result']}")
                    return 0 if c["state"] == "confirmed" else 1
                time.sleep(0.2)
            print(f"no confirmation within {args.timeout:g}s (the device may be offline; the"
                  " command waits in its session)", file=sys.stderr)
            return 2
        return 0
    finally:
        sender.client.disconnect()
        sender.client.loop_stop()
        store.close()


def cmd_install_service(args: argparse.Namespace) -> int:
    from sync.cloud.install import install_service
    print("\n".join(install_service(root=args.root, reload=not args.no_reload)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="cloud.toml")
    common.add_argument("--json", action="store_true")
    p = argparse.ArgumentParser(prog="edge-agent-cloud", description="fleet ingest service")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the ingest workers")
    s = sub.add_parser("install-service", help="install the cloud unit, user, dirs and "
                       "example config")
    s.add_argument("--root", default="/", help="install below this root (for packaging)")
    s.add_argument("--no-reload", action="store_true", help="do not run systemctl")
    sub.add_parser("status", parents=[common], help="devices, online state, stream positions")
    for name in ("approve", "reject", "cancel"):
        s = sub.add_parser(name, parents=[common], help=f"{name} a run on a device")
        s.add_argument("--device", required=True)
        s.add_argument("run_id")
        s.add_argument("--note")
        s.add_argument("--by", default="cloud")
        s.add_argument("--wait", action="store_true", help="wait until the device confirms")
        s.add_argument("--timeout", type=float, default=30.0)
    s = sub.add_parser("doc", parents=[common],
                       help="a device's replicated document: `doc get|set COLLECTION/KEY`")
    s.add_argument("action", choices=("get", "set"))
    s.add_argument("key", metavar="COLLECTION/KEY")
    s.add_argument("--device", required=True)
    s.add_argument("--value", help="set: a JSON object of the fields to write")
    s.add_argument("--wait", action="store_true", help="wait until the device confirms")
    s.add_argument("--timeout", type=float, default=30.0)
    s = sub.add_parser("start", parents=[common], help="start a workflow on a device")
    s.add_argument("--device", required=True)
    s.add_argument("workflow")
    s.add_argument("--input")
    s.add_argument("--wait", action="store_true")
    s.add_argument("--timeout", type=float, default=30.0)
    args = p.parse_args(argv)
    if args.command == "install-service":
        return cmd_install_service(args)
    try:
        cfg = load_cloud_config(args.config)
    except CloudConfigError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    handler = {"run": cmd_run, "status": cmd_status, "doc": cmd_doc}.get(args.command,
                                                                         cmd_send)
    try:
        return handler(cfg, args)
    except CloudStoreError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
