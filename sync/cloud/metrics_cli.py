"""`edge-agent-cloud metrics [--device D | --group G] [--since 1h]`: the device's `edge-agent
metrics` figures (tools, retries, steps), per device and for the fleet, from the cloud's
copy of the devices' records (sync/cloud/fleet_metrics.py). Registered from cli.py."""

from __future__ import annotations

import argparse
from typing import Any


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.2f}s"


def render(name: str, f: dict[str, Any]) -> list[str]:
    r = f["retries"]
    by_node = ", ".join(f"{n} {c}" for n, c in sorted(r["by_node"].items()))
    lines = [f"{name}", f"  retries {r['total']} in {r['runs']} runs"
             + (f" ({by_node})" if by_node else "")]
    for t in f["tools"]:
        rate = "-" if t["success_rate"] is None else f"{t['success_rate']:.1%}"
        lines.append(f"  tool {t['tool']:20} calls {t['calls']:5} ok {t['ok']:5} failed"
                     f" {t['failed']:5} unknown {t['unknown']:4} success {rate:>6} p50"
                     f" {_s(t['duration_s']['p50']):>7} p95 {_s(t['duration_s']['p95']):>7}")
    for s in f["steps"]:
        d = s["duration_s"]
        lines.append(f"  step {s['workflow']}/{s['node']} ({s['kind']}) count {d['count']}"
                     f" failed {s['failed']} p50 {_s(d['p50'])} p95 {_s(d['p95'])}"
                     f" max {_s(d['max'])}")
    return lines


def cmd_metrics(cfg: Any, args: argparse.Namespace) -> int:
    from sync.cloud.fleet_metrics import metrics
    from sync.cloud.views_cli import _show, _store, iso
    store = _store(cfg)
    try:
        data = metrics(store, since=args.since, device=args.device, group=args.group,
                       groups=cfg.groups)
    finally:
        store.close()
    lines = [f"since {iso(data['since'])}", *render("fleet", data["fleet"])]
    for d in data["devices"]:
        lines += render(d["device"], d)
    return _show(args, data, "\n".join(lines))


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    from sync.cloud.views_cli import parse_since
    s = sub.add_parser("metrics", parents=[common], help="tool calls and success rate,"
                       " retries, step p50/p95, per device and for the fleet (the names of"
                       " the device's `edge-agent metrics`), from the spans devices sent")
    which = s.add_mutually_exclusive_group()
    which.add_argument("--device", help="one device")
    which.add_argument("--group", help="a group of cloud.toml's [groups] table")
    s.add_argument("--since", type=parse_since, default="1h",
                   help="started since: 1h (default), 2d, an ISO time or Unix seconds")
    s.set_defaults(handler=cmd_metrics)


__all__ = ["register"]
