"""`edge-agent-cloud console`: serve the web console; `console token add|list|revoke`."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
from typing import Any

from sync.cloud.console.settings import is_loopback, parse_listen
from sync.cloud.console.tokens import ROLES, TokenError, TokenFile


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register `console` and `console token ...` on the cloud CLI's subcommands."""
    s = sub.add_parser("console", parents=[common], help="serve the web console (devices,"
                       " runs, traces, approvals, deployments, conflicts); `console token` manages"
                       " logins")
    s.add_argument("--listen", help="HOST:PORT (default: [console] listen, else "
                   "127.0.0.1:8080)")
    s.add_argument("--insecure", action="store_true", help="serve without tokens (loopback"
                   " only; the same as [console] insecure = true)")
    s.set_defaults(handler=cmd_console)
    tok = s.add_subparsers(dest="console_command", metavar="token")
    t = tok.add_parser("token", help="the tokens that may log in: add, list, revoke")
    act = t.add_subparsers(dest="token_action", required=True, metavar="ACTION")
    a = act.add_parser("add", parents=[common], help="make a token for NAME; printed once,"
                       " only its hash is kept")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--role", choices=ROLES, required=True, help="viewer: look only; "
                   "operator: also approve and reject")
    act.add_parser("list", parents=[common], help="names, roles, creation times")
    r = act.add_parser("revoke", parents=[common], help="remove NAME's token; its sessions"
                       " end at their next request")
    r.add_argument("name", metavar="NAME")


def cmd_console(cfg: Any, args: argparse.Namespace) -> int:
    if args.console_command == "token":
        return _token(cfg, args)
    settings = cfg.console
    if args.listen is not None:
        where = parse_listen(args.listen)
        if where is None:
            return _fail(args, f"--listen: must be host:port (got {args.listen!r})", 64)
        settings = dataclasses.replace(settings, host=where[0], port=where[1])
    if args.insecure:
        settings = dataclasses.replace(settings, insecure=True)
    if settings.insecure and not is_loopback(settings.host):
        return _fail(args, f"{cfg.path}: console.insecure: is refused on anything but "
                     f"loopback (listen {settings.host}:{settings.port}); add tokens with "
                     "edge-agent-cloud console token add NAME --role operator", 78)
    from sync.cloud.console.serve import ConsoleError, serve
    try:
        return serve(cfg, settings)
    except (ConsoleError, TokenError) as exc:
        return _fail(args, str(exc), exc.exit_code)


def _token(cfg: Any, args: argparse.Namespace) -> int:
    tokens = TokenFile(cfg.console.tokens)
    try:
        if args.token_action == "add":
            token = tokens.add(args.name, args.role)
            if args.json:
                print(json.dumps({"name": args.name, "role": args.role, "token": token,
                                  "file": str(tokens.path)}))
            else:
                print(token)
                print(f"{args.name} ({args.role}): shown once; only its hash is kept in "
                      f"{tokens.path}", file=sys.stderr)
            return 0
        if args.token_action == "revoke":
            if not tokens.revoke(args.name):
                return _fail(args, f"no token named {args.name!r} in {tokens.path}", 1)
            print(json.dumps({"revoked": args.name}) if args.json else f"revoked {args.name}")
            return 0
        listing = tokens.listing()
    except TokenError as exc:
        return _fail(args, str(exc), exc.exit_code)
    if args.json:
        print(json.dumps({"tokens": listing}))
    else:
        for t in listing:
            when = dt.datetime.fromtimestamp(t["created"] or 0, dt.UTC).strftime("%Y-%m-%d")
            print(f"{t['name']:24} {t['role']:9} created {when}")
        if not listing:
            print("(no tokens: edge-agent-cloud console token add NAME --role operator)")
    return 0


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """An error on stderr, as every cloud command writes it (JSON under --json)."""
    text = json.dumps({"error": message, "exit_code": code}) if args.json else message
    print(text, file=sys.stderr)
    return code
