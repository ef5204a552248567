"""`edge-agent config history` and `edge-agent config rollback`: what the cloud deployed here."""

from __future__ import annotations

import argparse
import datetime as dt

from edge_agent.cli.context import CliError, Context
from edge_agent.config import load_config


def cmd_config_history(ctx: Context, args: argparse.Namespace) -> int:
    from edge_agent.daemon.deployments import history
    entries = history(load_config(ctx.config_path, deployed=False))
    lines = [f"{_iso(e['at'])}  {e.get('action', ''):15} {str(e.get('digest'))[:12]:12} "
             f"version {e.get('version') or '-'}  deployment {e.get('deployment') or '-'}"
             f"  (was {str(e.get('previous'))[:12]})" for e in entries]
    ctx.out({"history": entries}, "\n".join(lines) or "(nothing deployed: the local file alone)")
    return 0


def cmd_config_rollback(ctx: Context, args: argparse.Namespace) -> int:
    """Back to the config held before the current deployment; the daemon reloads."""
    from edge_agent.daemon.deployments import rollback_locally
    try:
        entry = rollback_locally(load_config(ctx.config_path, deployed=False))
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    reloaded = ctx.daemon("reload") is not None
    ctx.out({**entry, "reloaded": reloaded},
            f"rolled back to {str(entry['digest'])[:12]} (was {str(entry['previous'])[:12]})"
            + ("; the daemon reloads" if reloaded else "; takes effect when the daemon starts"))
    return 0


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
