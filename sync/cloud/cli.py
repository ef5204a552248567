"""`edge-agent-cloud`: run the ingest, list devices, steer them."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from sync.cloud.arguments import ArgumentProblem, check_arguments
from sync.cloud.config import CloudConfig, CloudConfigError, load_cloud_config
from sync.cloud.store import CloudStoreError, SqlCloudStore
from sync.cloud.wiring import store_of, worker

__all__ = ["build_parser", "main", "manual", "store_of", "worker"]

EXPIRES = ("the device refuses it after this long (90s, 15m, 1h, 2d; default 24h): it"
           " answers 'expired' and does nothing")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def cmd_run(cfg: CloudConfig, args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    from sync.cloud.sweep import Sweeper
    from sync.cloud.work import Work
    stores = [store_of(cfg) for _ in range(cfg.workers + 1)]  # the last: the sweep's
    work = Work(cfg.limits)  # bounded pools, shared by the workers
    try:
        workers = [worker(cfg, s, work=work) for s in stores[:-1]]
    except CloudConfigError:
        for s in stores:
            s.close()
        raise
    for w in workers:
        w.start()
    sweeper = Sweeper(stores[-1], work, f"{os.uname().nodename}:{os.getpid()}")
    sweeper.start()
    stop = threading.Event()
    from sync.cloud.deploy_cli import start_driver
    start_driver(store_of(cfg), workers[0], stop)  # rollouts: waves, gates, rollbacks
    if cfg.insecure:
        logging.getLogger("edge-agent-cloud").warning(
            "mqtt.insecure = true: %s; for a lab broker only, never a fleet",
            "the broker may be anonymous" if cfg.signing_key else "the downlink is unsigned")
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    logging.getLogger("edge-agent-cloud").info("ingest running: %d worker(s) on %s:%d",
                                               len(workers), cfg.host, cfg.port)
    stop.wait()
    sweeper.shutdown()
    for w in workers:
        w.shutdown()
    work.shutdown()
    for s in stores:
        s.close()
    return 0


def cmd_status(cfg: CloudConfig, args: argparse.Namespace) -> int:
    from sync.cloud.sweep import read_stats
    store = store_of(cfg)
    try:
        devices = store.devices()
        work = read_stats(store)
    finally:
        store.close()
    out: dict[str, Any] = {"devices": [{**d, "last_seen": _iso(d["last_seen"]),
                        "first_seen": _iso(d["first_seen"]),
                        "epochs": [{**e, "first_seen": _iso(e["first_seen"])}
                                   for e in d["epochs"]],
                        "resets": [{**r, "at": _iso(r["at"])} for r in d["resets"]]}
                       for d in devices], "work": work}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    for d in out["devices"]:
        streams = ", ".join(f"{s} {v['received_seq']}" for s, v in d["streams"].items())
        print(f"{d['device_id']:20} {'online' if d['online'] else 'offline':8} "
              f"last seen {d['last_seen']}  {_epoch(d)}  {streams}")
        for r in d["resets"]:
            if r["upgrade"]:
                print(f"{'':20} upgraded to protocol 2 at {r['at']}, epoch {r['to']}")
            else:
                print(f"{'':20} database reset at {r['at']}, epoch {r['from']} to {r['to']}")
    if not out["devices"]:
        print("(no devices yet)")
    for pool, name in (("handoffs", "hand-offs"), ("tools", "remote tools")):
        w = work.get(pool)
        if w:
            print(f"{name}: {w['in_flight']} in flight, {w['busy']} answered busy"
                  f" ({w['workers']} worker(s))")
    return 0


def _epoch(d: dict[str, Any]) -> str:
    if d["epoch"] is None:
        return f"no epoch yet (nothing stored; {d['quarantined']} quarantined)"
    return f"epoch {d['epoch'] or '(protocol 1)'}"


def cmd_send(cfg: CloudConfig, args: argparse.Namespace) -> int:
    if args.command == "start":
        try:
            payload = json.loads(args.input) if args.input else {}
        except json.JSONDecodeError as exc:
            return _fail(args, f"--input: not valid JSON ({exc.msg})", 64)
        cargs: dict[str, Any] = {"workflow": args.workflow, "input": payload}
    else:
        cargs = {"run_id": args.run_id, "note": args.note, "by": args.by}
        if getattr(args, "patch", None) is not None:
            try:
                cargs["patch"] = json.loads(args.patch)
            except ValueError as exc:
                return _fail(args, f"--patch: not valid JSON ({exc})", 64)
            if not isinstance(cargs["patch"], dict):
                return _fail(args, f"--patch: must be a JSON object (got {args.patch})", 64)
    if args.command == "start" and args.device is None:
        return cmd_fleet_start(cfg, args, cargs)
    if args.command in ("approve", "reject"):  # naming the gate the cloud saw
        from sync.cloud.decide_cli import cmd_decide
        return cmd_decide(cfg, args, cargs.get("patch"))
    store = store_of(cfg)
    return _deliver(cfg, store, args, lambda sender: sender.send_command(
        args.device, args.command, cargs, wait_s=10, expires_in_s=args.expires_in))


def cmd_fleet_start(cfg: CloudConfig, args: argparse.Namespace, cargs: dict[str, Any]) -> int:
    """`start WORKFLOW --devices A,B` or `--group NAME`: one line of result per device."""
    from sync.cloud.fleet import FleetError, exit_code, select_devices, start_on
    try:
        devices = select_devices(cfg.groups, devices=args.devices, group=args.group)
    except FleetError as exc:
        return _fail(args, str(exc), exc.exit_code)
    store = store_of(cfg)
    sender = worker(cfg, store, worker_id=f"cli-{time.time_ns()}", tools={}, listen=False)
    failed = _connect(cfg, store, args, sender)
    if failed is not None:
        return failed
    sender.client.loop_start()
    try:
        results = start_on(devices, lambda d: sender.send_command(
            d, "start", cargs, wait_s=10, expires_in_s=args.expires_in), store.command,
            wait=args.wait, timeout=args.timeout)
    finally:
        sender.client.disconnect()
        sender.client.loop_stop()
        store.close()
    if args.json:
        print(json.dumps({"workflow": args.workflow,
                          "results": [r.as_dict() for r in results]}, default=str))
    else:
        print("\n".join(r.line() for r in results))
    return exit_code(results)


def cmd_groups(cfg: CloudConfig, args: argparse.Namespace) -> int:
    """The device groups of cloud.toml's [groups] table."""
    groups = {name: list(devices) for name, devices in sorted(cfg.groups.items())}
    if args.json:
        print(json.dumps({"groups": groups}))
    else:
        print("\n".join(f"{n:20} {', '.join(d)}" for n, d in groups.items())
              or "(no groups: add a [groups] table to cloud.toml)")
    return 0


def cmd_doc(cfg: CloudConfig, args: argparse.Namespace) -> int:
    """`doc get` reads the cloud's replica; `doc set` writes it and sends the version down."""
    from sync.cloud.docs import CloudDocs
    collection, sep, key = args.key.rpartition("/")
    if not sep or not collection or not key:
        return _fail(args, f"a document is COLLECTION/KEY (got {args.key!r})", 64)
    store = store_of(cfg)
    if args.action == "get":
        try:
            doc = CloudDocs(store, cfg.collections).read(args.device, collection, key)
        finally:
            store.close()
        if doc is None:
            return _fail(args, f"no document {args.key} for {args.device}", 1)
        out = {"key": args.key, "value": doc.value, "siblings": doc.siblings}
        print(json.dumps(out, indent=2) if args.json else json.dumps(doc.value))
        return 0
    try:
        changes = json.loads(args.value or "")
        if not isinstance(changes, dict):
            raise ValueError("a JSON object of fields")
    except ValueError as exc:
        store.close()
        return _fail(args, f"--value: {exc} (got {args.value!r})", 64)
    return _deliver(cfg, store, args, lambda sender: sender.write_doc(
        args.device, collection, key, changes, expires_in_s=args.expires_in)[0])


def _connect(cfg: CloudConfig, store: SqlCloudStore, args: argparse.Namespace,
             sender: Any) -> int | None:
    """Connect a sender; a broker that cannot be reached is an error (exit 1), not a
    traceback. Nothing has been sent then."""
    try:
        sender.client.connect(cfg.host, cfg.port, keepalive=30)
    except OSError as exc:
        store.close()
        return _fail(args, f"cannot reach the broker at {cfg.host}:{cfg.port} "
                     f"({exc.strerror or exc}); nothing was sent", 1)
    return None


def _deliver(cfg: CloudConfig, store: SqlCloudStore, args: argparse.Namespace,
             send: Any) -> int:
    """Send one command through a short-lived client; with --wait, until the device
    confirms it."""
    sender = worker(cfg, store, worker_id=f"cli-{time.time_ns()}", tools={}, listen=False)
    failed = _connect(cfg, store, args, sender)
    if failed is not None:
        return failed
    sender.client.loop_start()
    try:
        cid = send(sender)
        print(json.dumps({"command_id": cid}) if args.json else cid)
        if args.wait:
            deadline = time.time() + args.timeout
            while time.time() < deadline:
                c = store.command(cid)
                if c and c["state"] not in ("sent", "queued"):
                    print(json.dumps(c) if args.json else f"{c['state']}: {c['result']}")
                    return 0 if c["state"] == "confirmed" else 1
                time.sleep(0.2)
            c = store.command(cid) or {}
            where = ("queued until the device first connects" if c.get("state") == "queued"
                     else "the command waits in its session")
            return _fail(args, f"no confirmation within {args.timeout:g}s (the device may be "
                         f"offline; {where}; edge-agent-cloud commands shows it)", 2)
        return 0
    finally:
        sender.client.disconnect()
        sender.client.loop_stop()
        store.close()


def cmd_keys(cfg: CloudConfig, args: argparse.Namespace) -> int:
    """`keys init` makes the signing key; `keys show` prints its public key to pin."""
    from sync.cloud.keys import init_key, show_key
    assert cfg.signing_key is not None
    try:
        public = init_key(cfg.signing_key) if args.action == "init" else show_key(cfg.signing_key)
    except FileExistsError:
        return _fail(args, f"signing.key: {cfg.signing_key} exists; keys init never overwrites"
                     " a key (keys show prints its public key)", 73)
    except (OSError, ValueError) as exc:
        return _fail(args, f"signing.key: {cfg.signing_key}: {exc}", 66)
    if args.json:
        print(json.dumps({"key": cfg.signing_key, "public_key": public}))
    else:
        print(public)
        print(f'pin it on each device: [sync] cloud_keys = ["{public}"]', file=sys.stderr)
    return 0


def duration(text: str) -> float:
    """`90`, `90s`, `15m`, `1h`, `2d`: seconds, for --expires-in."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    num, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        seconds = float(num) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"a duration like 90s, 15m, 1h, 2d (got {text!r})"
                                         ) from None
    if not 0 < seconds <= 30 * 86400:
        raise argparse.ArgumentTypeError(f"between 1s and 30d (got {text!r})")
    return seconds
def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """argparse, except that with --json a usage error is a JSON object on stderr (exit 2)."""
    import contextlib
    import io
    words = list(sys.argv[1:] if argv is None else argv)
    if "--json" not in words:
        return parser.parse_args(words)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(words)
    except SystemExit as exc:
        if not exc.code:
            raise
        lines = captured.getvalue().strip().splitlines()
        print(json.dumps({"error": lines[-1] if lines else "invalid arguments",
                          "exit_code": exc.code}), file=sys.stderr)
        raise


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """An error on stderr: a JSON object under --json, else the plain message."""
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_code": code}), file=sys.stderr)
    else:
        print(message, file=sys.stderr)
    return code


def cmd_install_service(args: argparse.Namespace) -> int:
    from sync.cloud.install import install_service, uninstall_service
    from sync.install_root import InstallRootError
    try:
        if args.command == "uninstall-service":
            done = uninstall_service(root=args.root, reload=not args.no_reload, purge=args.purge)
        else:
            done = install_service(root=args.root, reload=not args.no_reload, man_page=manual())
    except InstallRootError as exc:
        return _fail(args, f"edge-agent-cloud: {exc}", exc.exit_code)
    print(json.dumps({"done": done}) if args.json else "\n".join(done))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("edge-agent")
    except PackageNotFoundError:
        return "unknown"


def manual() -> str:
    """edge-agent-cloud(1), written from the parser."""
    from sync.cloud.exit_codes import EXIT_CODES
    from sync.manpage import render
    return render(
        build_parser(), version=_version(),
        summary="fleet ingest: devices' MQTT streams into a database, commands back",
        exit_status=EXIT_CODES,
        files=[("/etc/edge-agent-cloud/cloud.toml",
                "the config (root:edge-agent-cloud 0640)"),
               ("/var/lib/edge-agent-cloud/", "the ingest's state (SQLite store)")],
        see_also=["edge-agent(1)", "mosquitto(8)", "systemctl(1)"])


CONFIG_ENV = "EDGE_AGENT_CLOUD_CONFIG"
DEFAULT_CONFIG = "/etc/edge-agent-cloud/cloud.toml"  # where install-service puts it


def cloud_config_path(explicit: str | None) -> str:
    """--config, else $EDGE_AGENT_CLOUD_CONFIG, else the installed service's config."""
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG


def build_parser() -> argparse.ArgumentParser:
    """The command line; also the source of the edge-agent-cloud(1) man page."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=None,
                        help=f"cloud.toml (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})")
    common.add_argument("--json", action="store_true", help="machine-readable output; "
                        "errors as a JSON object on stderr")
    p = argparse.ArgumentParser(prog="edge-agent-cloud", description="Fleet ingest service: "
                                "receives what every device did over MQTT, keeps it in a "
                                "database, and sends devices commands.")
    p.add_argument("--version", action="version", version=f"edge-agent-cloud {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the ingest workers (imports the "
                   "[tools] modules: remote tools the cloud executes)")
    for name, text in (("install-service", ("install the cloud unit, user, dirs, man page "
                                            "and example config")),
                       ("uninstall-service", ("remove what install-service put there; the "
                                              "config and state stay unless --purge"))):
        s = sub.add_parser(name, help=text)
        s.add_argument("--root", default="/", help="below this root (for packaging)")
        s.add_argument("--no-reload", action="store_true", help="do not run systemctl")
        s.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "uninstall-service":
            s.add_argument("--purge", action="store_true",
                           help="also remove the config and the state directory")
    sub.add_parser("status", parents=[common], help="devices, online state, stream positions")
    for name in ("approve", "reject", "cancel"):
        s = sub.add_parser(name, parents=[common], help=f"{name} a run on a device")
        s.add_argument("--device", required=True)
        s.add_argument("run_id")
        s.add_argument("--note")
        s.add_argument("--by", default="cloud")
        s.add_argument("--wait", action="store_true", help="wait until the device confirms")
        s.add_argument("--timeout", type=float, default=30.0)
        s.add_argument("--expires-in", type=duration, help=EXPIRES)
        if name == "approve":
            s.add_argument("--patch", help="JSON object merged into the run's context")
        if name != "cancel":
            s.add_argument("--approval", type=int, help="the approval id to answer (default:"
                           " the one the cloud sees pending on the run)")
    s = sub.add_parser("doc", parents=[common],
                       help="a device's replicated document: `doc get|set COLLECTION/KEY`")
    s.add_argument("action", choices=("get", "set"))
    s.add_argument("key", metavar="COLLECTION/KEY")
    s.add_argument("--device", required=True)
    s.add_argument("--value", help="set: a JSON object of the fields to write")
    s.add_argument("--wait", action="store_true", help="wait until the device confirms")
    s.add_argument("--timeout", type=float, default=30.0)
    s.add_argument("--expires-in", type=duration, help=EXPIRES)
    s = sub.add_parser("start", parents=[common], help="start a workflow on a device, on"
                       " --devices A,B,... or on a [groups] --group; one line per device")
    which = s.add_mutually_exclusive_group(required=True)
    which.add_argument("--device", help="one device")
    which.add_argument("--devices", help="comma-separated device ids")
    which.add_argument("--group", help="a group of cloud.toml's [groups] table")
    s.add_argument("workflow")
    s.add_argument("--input")
    s.add_argument("--wait", action="store_true")
    s.add_argument("--timeout", type=float, default=30.0)
    s.add_argument("--expires-in", type=duration, help=EXPIRES)
    sub.add_parser("groups", parents=[common], help="the device groups of [groups]")
    s = sub.add_parser("keys", parents=[common], help="the downlink signing key: `keys init`"
                       " makes it ([signing] key), `keys show` prints its public key")
    s.add_argument("action", choices=("init", "show"))
    from sync.cloud import export, metrics_cli, views_cli
    from sync.cloud.console import cli as console
    from sync.cloud.deploy_cli import register as register_deploy
    for view in (views_cli, export, metrics_cli, console):  # the fleet's projection: runs, approvals, ...
        view.register(sub, common)
    register_deploy(sub, common, duration)  # rollouts: deploy, deployments, deployment
    from sync.cloud.commands_cli import add_parser as add_commands
    add_commands(sub, common)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(build_parser(), argv)
    try:
        check_arguments(args)
    except ArgumentProblem as exc:
        return _fail(args, str(exc), exc.exit_code)
    if args.command in ("install-service", "uninstall-service"):
        return cmd_install_service(args)
    try:
        args.config = cloud_config_path(args.config)
        cfg = load_cloud_config(args.config, need_key=args.command != "keys")
    except CloudConfigError as exc:
        return _fail(args, str(exc), exc.exit_code)
    if args.command in ("deploy", "deployments", "deployment"):
        from sync.cloud.deploy_cli import run
        return run(cfg, args, store_of(cfg), _fail)
    from sync.cloud.commands_cli import cmd_commands
    handler = getattr(args, "handler", None) or {
        "run": cmd_run, "status": cmd_status, "doc": cmd_doc, "keys": cmd_keys,
        "groups": cmd_groups, "commands": cmd_commands}.get(args.command, cmd_send)
    from sync.cloud import decide_cli, views_cli
    try:
        return handler(cfg, args)
    except views_cli.ERRORS + decide_cli.ERRORS as exc:
        return _fail(args, str(exc), getattr(exc, "exit_code", 1))
    except CloudConfigError as exc:
        return _fail(args, str(exc), exc.exit_code)
    except CloudStoreError as exc:
        return _fail(args, f"{args.config}: {exc}", exc.exit_code)


if __name__ == "__main__":
    sys.exit(main())
