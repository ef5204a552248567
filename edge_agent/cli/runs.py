"""Commands over runs: start, runs (list, show, migrate), approvals, approve, reject, cancel."""

from __future__ import annotations

import argparse
from typing import Any

from edge_agent.cli.context import CliError, Context
from edge_agent.cli.render import table, when
from edge_agent.engine import decide_approval, migrate_run, queue_run, request_cancel, versions
from edge_agent.engine import queries as q
from edge_agent.engine.records import STATUSES
from sync.json_arguments import JsonArgumentError, parse_json_argument


def _json_arg(text: str | None, name: str) -> Any:
    """A JSON argument as data the store can keep (sync.json_arguments); anything else is a
    usage error (64)."""
    if text is None:
        return None
    try:
        return parse_json_argument(name, text)
    except JsonArgumentError as exc:
        raise CliError(str(exc), 64) from None


def _poke(ctx: Context, run_id: str) -> bool:
    return ctx.daemon("wake", run_id=run_id) is not None


def cmd_start(ctx: Context, args: argparse.Namespace) -> int:
    payload = _json_arg(args.input, "--input")
    store = ctx.store(write=True)
    try:
        run_id = queue_run(store.write, workflow=args.workflow,
                           input={} if payload is None else payload,
                           workflows=ctx.config.workflows)
    finally:
        store.close()
    live = _poke(ctx, run_id)
    if not ctx.as_json and not live:
        ctx.note("daemon not running: the run is queued and starts when it runs")
    ctx.out({"run_id": run_id, "queued": True}, run_id)
    return 0


def cmd_runs(ctx: Context, args: argparse.Namespace) -> int:
    if args.rest:
        if args.rest[0] == "migrate" and len(args.rest) == 2:
            return _migrate(ctx, args.rest[1], args.to_version, args.map)
        if args.rest[0] != "show" or len(args.rest) != 2:
            raise CliError("usage: edge-agent runs [--state S] | edge-agent runs show RUN_ID | "
                           "edge-agent runs migrate RUN_ID --to-version V [--map OLD=NEW ...]",
                           64)
        return _show(ctx, args.rest[1])
    if args.state and args.state not in STATUSES:
        raise CliError(f"--state: must be one of {', '.join(STATUSES)} (got {args.state!r})", 64)
    store = ctx.store()
    try:
        runs = store.read(lambda c: q.list_runs(c, status=args.state, limit=args.limit))
    finally:
        store.close()
    rows = [r.summary() for r in runs]
    ctx.out({"runs": rows} if ctx.as_json else None, table(
        ["run_id", "workflow", "version", "status", "node", "created", "error"],
        [[r["run_id"], r["workflow"], r["version"] or "-", r["status"], r["node"] or "",
          when(r["created_at"]), (r["error"] or "")[:60]] for r in rows]))
    return 0


def _show(ctx: Context, run_id: str) -> int:
    store = ctx.store()
    try:
        run = store.read(lambda c: q.get_run(c, run_id))
        if run is None:
            raise CliError(f"no run {run_id!r}", 1)
        steps = store.read(lambda c: q.steps(c, run_id))
        approvals = store.read(lambda c: q.list_approvals(c, pending_only=False, run_id=run_id))
    finally:
        store.close()
    data = {**run.summary(), "origin": run.origin, "input": run.input, "context": run.context,
            "output": run.output,
            "node_state": run.node_state, "steps": steps, "approvals": approvals}
    text = "\n".join([
        f"run {run.run_id}  workflow {run.workflow}  version {run.summary()['version'] or '-'}"
        f"  status {run.status}",
        f"node {run.node or '-'}  created {when(run.created_at)}  error {run.error or '-'}",
        table(["node", "attempt", "status", "error"],
              [[s["node"], s["attempt"], s["status"], (s["error"] or "")[:70]] for s in steps]),
    ])
    ctx.out(data, text)
    return 0


def cmd_approvals(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.store()
    try:
        pending = store.read(lambda c: q.list_approvals(c, pending_only=True))
    finally:
        store.close()
    ctx.out({"approvals": pending}, table(
        ["run_id", "node", "kind", "prompt", "since", "timeout"],
        [[a["run_id"], a["node"], a["kind"], a["prompt"][:60], when(a["created_at"]),
          when(a["timeout_at"]) if a["timeout_at"] else "-"] for a in pending]))
    return 0


def cmd_decide(ctx: Context, args: argparse.Namespace) -> int:
    approve = args.command == "approve"
    patch = _json_arg(getattr(args, "patch", None), "--patch")
    if patch is not None and not isinstance(patch, dict):
        raise CliError("--patch: must be a JSON object", 64)
    store = ctx.store(write=True)
    try:
        result = decide_approval(store.write, args.run_id, approve=approve, by=args.by,
                                 origin="local", note=args.note, patch=patch)
    finally:
        store.close()
    _poke(ctx, args.run_id)
    ctx.out(result, f"{result['decision']} {args.run_id}")
    return 0


def cmd_cancel(ctx: Context, args: argparse.Namespace) -> int:
    store = ctx.store(write=True)
    try:
        run = request_cancel(store.write, args.run_id, by=args.by)
    finally:
        store.close()
    _poke(ctx, args.run_id)
    ctx.out({"run_id": run.run_id, "status": run.status, "cancel_requested": True},
            f"cancel requested for {run.run_id} (status {run.status})")
    return 0


def _migrate_in_daemon(ctx: Context, run_id: str, to_version: str,
                       mapping: dict[str, str]) -> dict[str, Any]:
    from edge_agent.daemon.control_socket import request
    try:
        answer = request(ctx.socket, "migrate", timeout=30.0, run_id=run_id,
                         to_version=to_version, map=mapping)
    except (OSError, ValueError, RuntimeError) as exc:
        raise CliError(f"runs migrate: the daemon did not answer ({exc}); nothing moved", 75
                       ) from None
    if "error" in answer:
        raise CliError(str(answer["error"]), int(answer["exit_code"]))
    return dict(answer["moved"])


def _migrate(ctx: Context, run_id: str, to_version: str | None, pairs: list[str]) -> int:
    """Move a run to another version of its workflow: checked in one transaction."""
    if not to_version:
        raise CliError("runs migrate: --to-version V is required", 64)
    mapping: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise CliError(f"--map: must be OLD=NEW (got {pair!r})", 64)
        mapping[old] = new
    # a run in the middle of a step moves only while no daemon is driving it: with the
    # daemon up, the daemon moves it, holding the run (a queued run's first step may be in
    # flight before anything of it is committed)
    from edge_agent.daemon.lock import lock_holder
    daemon_up = ctx.daemon("status") is not None
    daemon_down = not daemon_up and not lock_holder(ctx.config.device.data_dir)
    store = ctx.store(write=True)
    try:
        run = store.read(lambda c: q.get_run(c, run_id))
        current = ctx.config.workflows.get(run.workflow) if run is not None else None
        if daemon_up:
            if current is not None:  # the version this config names, known to the daemon
                store.write(lambda c: versions.register(c, current))
            result = _migrate_in_daemon(ctx, run_id, to_version, mapping)
        else:
            result = store.write(lambda c: migrate_run(
                c, run_id, to_version=to_version, mapping=mapping, current=current,
                allow_running=daemon_down))
    finally:
        store.close()
    _poke(ctx, run_id)
    ctx.out(result, f"moved {run_id} ({result['workflow']}) from version {result['from']} to "
            f"{result['to']}, at node {result['node'] or '(start)'}")
    return 0
