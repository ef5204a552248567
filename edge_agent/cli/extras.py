"""`tools`, `conflicts`, `model`, `install-service`: commands over the other rooms."""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from edge_agent.cli.context import CliError, Context
from edge_agent.cli.render import table


def dispatch(ctx: Context, args: argparse.Namespace) -> int:
    handler = {"tools": cmd_tools, "conflicts": cmd_conflicts, "model": cmd_model,
               "uninstall-service": cmd_install_service}[args.command]
    return handler(ctx, args)


def cmd_tools(ctx: Context, args: argparse.Namespace) -> int:
    cfg = ctx.config
    if args.tools_command == "list":
        rows: list[dict[str, Any]] = []
        for t in cfg.tools.values():
            # what the daemon does with it (runtime.build_tools): a remote tool, by kind or by
            # location, is executed by the cloud; the device runs only its fallback
            remote = t.kind == "remote" or t.location == "remote"
            rows.append({"name": t.name, "kind": t.kind, "idempotent": t.idempotent,
                         "location": "remote" if remote else "local",
                         "executed_by": "cloud" if remote else "device",
                         "fallback": t.options.get("fallback") if remote else None,
                         "timeout_s": t.timeout_s, "description": t.description,
                         "params": dict(t.params)})
        ctx.out({"tools": rows}, table(
            ["name", "kind", "idempotent", "location", "executed by", "description"],
            [[r["name"], r["kind"], r["idempotent"], r["location"],
              r["executed_by"] + (f" (fallback {r['fallback']})" if r["fallback"] else ""),
              r["description"][:50]] for r in rows]))
        return 0
    import jsonschema
    if args.name not in cfg.tools:
        raise CliError(f"no tool {args.name!r} (declared: {', '.join(sorted(cfg.tools))})", 1)
    try:
        call_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise CliError(f"--args: not valid JSON ({exc.msg})", 64) from None
    tc = cfg.tools[args.name]
    try:
        jsonschema.validate(call_args, dict(tc.params))
    except jsonschema.ValidationError as exc:
        raise CliError(f"--args do not match {args.name}'s parameters: {exc.message}", 65) \
            from None
    if args.dry_run:
        ctx.out({"tool": args.name, "args": call_args, "valid": True, "dry_run": True},
                f"{args.name}: arguments valid (dry run, nothing touched)")
        return 0
    from edge_agent.daemon.runtime import build_tools, close_tools
    from edge_agent.store.opening import open_database
    store = open_database(cfg.database) if cfg.tools[args.name].kind == "kv" else None
    tools = build_tools(cfg, store)
    try:
        key = f"cli-{args.name}-{uuid.uuid4().hex}"  # each call is a new request to the device
        result = tools[args.name].tool.call(call_args, idempotency_key=key)
    except Exception as exc:  # noqa: BLE001 - reported as a tool failure
        data: dict[str, Any] = {"tool": args.name, "ok": False, "error": str(exc),
                                "kind": getattr(exc, "kind", None),
                                "retryable": getattr(exc, "retryable", None)}
        ctx.out(data, f"{args.name} failed ({data['kind']}): {exc}")
        return 1
    finally:
        close_tools(tools)
        if store is not None:
            store.close()
    ctx.out({"tool": args.name, "ok": True, "result": result}, json.dumps(result, indent=2))
    return 0


def cmd_conflicts(ctx: Context, args: argparse.Namespace) -> int:
    from edge_agent.store.documents import list_conflicts, resolve_conflict
    if args.rest:
        if args.rest[0] != "resolve" or len(args.rest) != 2:
            raise CliError("usage: edge-agent conflicts resolve KEY --take VERSION|--value JSON",
                           64)
        if (args.take is None) == (args.value is None):
            raise CliError("give exactly one of --take VERSION or --value JSON", 64)
        value = None
        if args.value is not None:
            try:
                value = json.loads(args.value)
            except json.JSONDecodeError as exc:
                raise CliError(f"--value: not valid JSON ({exc.msg})", 64) from None
        store = ctx.store(write=True)
        try:
            result = resolve_conflict(store, ctx.config, args.rest[1], take=args.take,
                                      value=value)
        finally:
            store.close()
        ctx.daemon("sync_now")
        ctx.out(result, f"resolved {args.rest[1]}")
        return 0
    store = ctx.store()
    try:
        rows = list_conflicts(store)
    finally:
        store.close()
    ctx.out({"conflicts": rows}, table(
        ["key", "collection", "versions"],
        [[r["key"], r["collection"], ", ".join(v["version"] for v in r["siblings"])]
         for r in rows]))
    return 0


def cmd_model(ctx: Context, args: argparse.Namespace) -> int:
    from edge_agent.inference.testmodel import MissingExtra, make_test_model
    try:
        path = make_test_model(args.path)
    except MissingExtra as exc:
        return ctx.fail(str(exc), exc.exit_code)
    ctx.out({"path": str(path)}, f"wrote test model {path}")
    return 0


def cmd_install_service(ctx: Context, args: argparse.Namespace,
                        man_page: str | None = None) -> int:
    from edge_agent.daemon.install import install_service, uninstall_service
    from sync.install_root import InstallRootError
    try:
        if args.command == "uninstall-service":
            steps = uninstall_service(root=args.root, reload=not args.no_reload,
                                      purge=args.purge, cloud_runner=args.cloud_runner)
            ctx.out({"removed": steps}, "\n".join(steps))
            return 0
        steps = install_service(root=args.root, reload=not args.no_reload, man_page=man_page,
                                cloud_runner=args.cloud_runner)
    except InstallRootError as exc:
        return ctx.fail(str(exc), exc.exit_code)
    ctx.out({"installed": steps}, "\n".join(steps))
    return 0
