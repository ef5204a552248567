"""`edge-agent`: the device CLI. Each command is a few lines over the library."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence

from edge_agent import __version__
from edge_agent.cli import db
from edge_agent.cli.context import CliError, Context, parse_args
from edge_agent.cli.exit_codes import EXIT_CODES
from edge_agent.errors import ConfigError, EdgeAgentError
from sync.argv_text import undecodable


def _options(default: bool) -> argparse.ArgumentParser:
    """--config and --json, accepted before and after the command. The command's copies
    default to SUPPRESS, so `edge-agent --config X status` keeps X."""
    opts = argparse.ArgumentParser(add_help=False)
    opts.add_argument("--config", default=None if default else argparse.SUPPRESS,
                      help="config file (default $EDGE_AGENT_CONFIG or "
                      "/etc/edge-agent/config.toml)")
    opts.add_argument("--json", action="store_true",
                      default=False if default else argparse.SUPPRESS,
                      help="machine-readable output")
    return opts


def build_parser() -> argparse.ArgumentParser:
    common = _options(default=False)
    p = argparse.ArgumentParser(prog="edge-agent", parents=[_options(default=True)],
                                description="Durable agentic workflows on this device.")
    p.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help, description=help)

    add("run", "run the daemon (what systemd starts)")
    s = add("cloud-run", "run the engine on the cloud's machine (cloud-only workflows); with"
            " --cloud-config, also the ingest workers of that cloud.toml, whose [handoffs] may"
            " name workflow:NAME for steps devices hand over")
    s.add_argument("--cloud-config", metavar="CLOUD_TOML", help="the ingest's cloud.toml")
    s = add("status", "is the device in sync? daemon, sync streams, runs, approvals")
    s.add_argument("--watch", action="store_true", help="refresh until interrupted")
    s.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    s = add("start", "queue a run of WORKFLOW (starts when the daemon runs)")
    s.add_argument("workflow")
    s.add_argument("--input", help="the run's input as JSON")
    s = add("runs", "list runs, `runs show RUN_ID`, or `runs migrate RUN_ID --to-version V "
            "[--map OLD=NEW ...]` (move a run to another version of its workflow, checked)")
    s.add_argument("rest", nargs="*", metavar="show|migrate RUN_ID")
    s.add_argument("--state", help="only runs in this state")
    s.add_argument("--limit", type=int, default=50)
    s.add_argument("--to-version", metavar="V",
                   help="migrate: the version to move to (a prefix of it is enough)")
    s.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                   help="migrate: the run's node OLD is called NEW in that version (repeatable)")
    add("approvals", "pending approvals with their prompts")
    for name, text in (("approve", "approve the run's pending gate"),
                       ("reject", "reject the run's pending gate")):
        s = add(name, text)
        s.add_argument("run_id")
        s.add_argument("--note", help="why")
        s.add_argument("--by", default=getpass.getuser(), help="who decides (default: you)")
        if name == "approve":
            s.add_argument("--patch", help="JSON object merged into the run's context")
    s = add("cancel", "cancel a run")
    s.add_argument("run_id")
    s.add_argument("--by", default=getpass.getuser())
    s = add("metrics", "tool calls and success rate, retries, step durations p50/p95 by "
            "node and kind, agent time, tokens/s and time to first token (from the database)")
    s.add_argument("--since", default="1h", help="how far back: 15m, 1h, 7d (default 1h)")
    s = add("trace", "a run as a tree: steps, model calls, tool calls, retries, approvals")
    s.add_argument("run_id")
    s = add("config", "configuration commands")
    csub = s.add_subparsers(dest="config_command", required=True,
                            metavar="check|history|rollback")
    c = csub.add_parser("check", parents=[common], help="validate a config file (exit 78 if bad)")
    c.add_argument("path", nargs="?", help="file to check (default: --config)")
    csub.add_parser("history", parents=[common], help="deployments applied here, and when")
    csub.add_parser("rollback", parents=[common], help="return to the config held before the"
                    " current deployment (the daemon reloads)")
    s = add("tools", "tools: `tools list`, `tools call NAME --args JSON [--dry-run]`")
    tsub = s.add_subparsers(dest="tools_command", required=True, metavar="list|call")
    tsub.add_parser("list", parents=[common], help="declared tools")
    c = tsub.add_parser("call", parents=[common], help="call one tool now (not journaled)")
    c.add_argument("name")
    c.add_argument("--args", default="{}", help="arguments as JSON")
    c.add_argument("--dry-run", action="store_true", help="validate only, touch nothing")
    s = add("conflicts", "replicated documents with unresolved siblings")
    s.add_argument("rest", nargs="*", metavar="resolve KEY")
    s.add_argument("--take", help="keep this sibling version")
    s.add_argument("--value", help="resolve with this JSON value")
    s = add("sync", "sync commands: `sync now`; `sync init-key` makes [sync] device_key and"
            " prints its public key for the cloud's keyring")
    s.add_argument("action", choices=["now", "init-key"])
    s = add("model", "model commands: `model make-test-model PATH`")
    s.add_argument("action", choices=["make-test-model"])
    s.add_argument("path")
    s = add("install-service", "install the systemd unit, user, dirs, man page and example "
            "config")
    s.add_argument("--root", default="/", help="install below this root (for packaging)")
    s.add_argument("--no-reload", action="store_true", help="do not run systemctl")
    s.add_argument("--cloud-runner", action="store_true",
                   help="the cloud runner's service (edge-agent-runner: `cloud-run` with"
                   " /etc/edge-agent-runner/runner.toml) instead of the device's")
    s = add("uninstall-service", "stop the service and remove what install-service put "
            "there; the config and the database stay unless --purge")
    s.add_argument("--root", default="/", help="remove below this root (for packaging)")
    s.add_argument("--no-reload", action="store_true", help="do not run systemctl")
    s.add_argument("--purge", action="store_true",
                   help="also remove /etc/edge-agent and /var/lib/edge-agent (the database)")
    s.add_argument("--cloud-runner", action="store_true",
                   help="the cloud runner's service instead of the device's")
    db.register(add, common)
    return p


def manual() -> str:
    """edge-agent(1), written from the parser."""
    from sync.manpage import render
    return render(
        build_parser(), version=__version__,
        summary="durable agentic workflows on an edge device", exit_status=EXIT_CODES,
        environment=[
            ("EDGE_AGENT_CONFIG", "the config file when --config is not given"),
            ("EDGE_AGENT_DATA_DIR", "where the database lives (the unit sets /var/lib/edge-agent)"),
            ("EDGE_AGENT_RUNTIME_DIR",
             "where the control socket lives (the unit sets /run/edge-agent)"),
            ("JOURNAL_STREAM", "set by systemd: each log line carries its journald priority"),
            ("NO_COLOR", "no colour in the human-readable output")],
        files=[("/etc/edge-agent/config.toml", "the config (root:edge-agent 0640)"),
               ("/var/lib/edge-agent/", "the SQLite database"),
               ("/run/edge-agent/control.sock", "the daemon's control socket")],
        see_also=["edge-agent-cloud(1)", "systemctl(1)", "journalctl(1)"])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    ctx = Context(args.config, args.json)
    odd = undecodable(args)
    if odd is not None:
        return ctx.fail(odd, 64)
    try:
        return _dispatch(ctx, args)
    except ConfigError as exc:
        return ctx.fail(str(exc), ConfigError.exit_code, prefix="")
    except CliError as exc:
        return ctx.fail(str(exc), exc.code)
    except EdgeAgentError as exc:
        return ctx.fail(str(exc), int(getattr(exc, "exit_code", 1)))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `edge-agent status --watch | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def _dispatch(ctx: Context, args: argparse.Namespace) -> int:
    from edge_agent.cli import runs, status, trace
    cmd = args.command
    if cmd == "run":
        from edge_agent.daemon import run_daemon
        return run_daemon(args.config)
    if cmd == "cloud-run":
        from edge_agent.daemon.cloud_runner import run_cloud
        return run_cloud(args.config, args.cloud_config)
    if cmd == "config" and args.config_command != "check":
        from edge_agent.cli import deployed
        return (deployed.cmd_config_history if args.config_command == "history"
                else deployed.cmd_config_rollback)(ctx, args)
    if cmd == "config":
        return status.cmd_config_check(ctx, args)
    simple = {"status": status.cmd_status, "start": runs.cmd_start, "runs": runs.cmd_runs,
              "approvals": runs.cmd_approvals, "approve": runs.cmd_decide,
              "reject": runs.cmd_decide, "cancel": runs.cmd_cancel, "trace": trace.cmd_trace}
    if cmd in simple:
        return simple[cmd](ctx, args)
    if cmd == "sync" and args.action == "init-key":
        from edge_agent.cli.keys import cmd_init_key
        return cmd_init_key(ctx, args)
    if cmd == "metrics":
        from edge_agent.cli.metrics import cmd_metrics
        return cmd_metrics(ctx, args)
    if cmd == "sync":
        return status.cmd_sync_now(ctx, args)
    if cmd == "db":
        return db.cmd_db(ctx, args)
    from edge_agent.cli import extras
    if cmd == "install-service":
        return extras.cmd_install_service(ctx, args, manual())
    return extras.dispatch(ctx, args)


if __name__ == "__main__":
    sys.exit(main())
