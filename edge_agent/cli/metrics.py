"""`edge-agent metrics`: tool success, retries, step durations, agent time, tokens/s."""

from __future__ import annotations

import argparse
import time
from typing import Any

from edge_agent.cli.context import CliError, Context
from edge_agent.cli.render import table
from edge_agent.config.model_memory import model_memory, render_kv
from edge_agent.telemetry.summary import collect, parse_duration


def kinds(ctx: Context) -> dict[tuple[str, str], str]:
    return {(w.name, n.name): n.kind for w in ctx.config.workflows.values()
            for n in w.nodes.values()}


def cmd_metrics(ctx: Context, args: argparse.Namespace) -> int:
    try:
        window = parse_duration(args.since)
    except ValueError as exc:
        raise CliError(f"--since: {exc}", 64) from None
    store = ctx.store()
    try:
        data = store.read(lambda c: collect(c, since=time.time() - window, kinds=kinds(ctx)))
    finally:
        store.close()
    data["window"] = args.since
    data["kv_cache"] = model_memory(ctx.config)
    ctx.out(data, render(data))
    return 0


def _s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f}ms" if v < 1 else f"{v:.2f}s"


def _n(v: float | None, fmt: str = "{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def render(data: dict[str, Any]) -> str:
    tools = table(["tool", "calls", "ok", "failed", "unknown", "success", "p50", "p95"], [
        [t["tool"], t["calls"], t["ok"], t["failed"], t["unknown"],
         _n(t["success_rate"], "{:.1%}"), _s(t["duration_s"]["p50"]),
         _s(t["duration_s"]["p95"])] for t in data["tools"]])
    steps = table(["workflow", "node", "kind", "count", "failed", "p50", "p95", "max"], [
        [s["workflow"], s["node"], s["kind"], s["duration_s"]["count"], s["failed"],
         _s(s["duration_s"]["p50"]), _s(s["duration_s"]["p95"]), _s(s["duration_s"]["max"])]
        for s in data["steps"]])
    models = table(["model", "turns", "tokens in", "tokens out", "tokens/s p50", "ttft p50",
                    "ttft p95"], [
        [m["model"], m["turns"], m["input_tokens"], m["output_tokens"],
         _n(m["tokens_per_s"]["p50"]), _s(m["time_to_first_token_s"]["p50"]),
         _s(m["time_to_first_token_s"]["p95"])] for m in data["models"]])
    r, a = data["retries"], data["agents"]
    by_node = ", ".join(f"{n} {c}" for n, c in sorted(r["by_node"].items()))
    return "\n".join([
        f"since {data['window']} ago", "", "tools", tools, "",
        f"retries   {r['total']} in {r['runs']} runs" + (f" ({by_node})" if by_node else ""),
        (f"agents    {a['execution_s']['count']} executions, p50 "
         f"{_s(a['execution_s']['p50'])}, p95 {_s(a['execution_s']['p95'])}, "
         f"{a['handoffs']} handoffs"), "",
        "steps", steps, "", "models", models,
        f"kv cache  {render_kv(data.get('kv_cache') or [])}"])
