"""`make bench`: every benchmark, each figure beside its anchor measured in the same run,
then one summary table (the README's table comes from it).

Peers (DBOS, LangGraph) are installed into their own virtualenvs under .bench-venvs/. The
crash soak is long and runs on its own: `python -m bench.crash_soak`.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import sys
from collections.abc import Callable
from typing import Any

BENCHES = [("durable steps", "engine", ["-m", "bench.engine_steps"]),
           ("engine on PostgreSQL", "stores", ["-m", "bench.engine_stores"]),
           ("sync throughput", "sync", ["-m", "bench.sync_throughput"]),
           ("fleet into PostgreSQL", "fleet", ["-m", "bench.fleet"]),
           ("fleet queries", "queries", ["-m", "bench.fleet_queries"]),
           ("rollout to 1,000 devices", "rollout", ["-m", "bench.rollout"]),
           ("one device floods the cloud", "flood", ["-m", "bench.cloud_flood"]),
           ("inference", "inference", ["-m", "bench.inference_bench"]),
           ("parallel agents, one model", "batch", ["-m", "bench.inference_batch_bench"]),
           ("grammar keywords", "grammar", ["-m", "bench.inference_grammar_keywords"]),
           ("hardware tools", "hardware", ["-m", "bench.hardware_tools"]),
           ("daemon footprint", "footprint", ["-m", "bench.daemon_footprint"]),
           ("OTLP exporters", "otlp", ["-m", "bench.otlp_exporters"])]
Row = tuple[str, str, str, str]


def _rate(v: float, unit: str) -> str:
    return f"{v:,.0f} {unit}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else ""


def _engine(r: dict[str, Any]) -> list[Row]:
    raw = r["raw_full"]
    rows = [("durable steps, sequential, FULL (pure idempotent steps)",
             _rate(r["ours_seq_full"], "steps/s"),
             f"raw SQLite commits {raw:,.0f}/s", _ratio(r["ours_seq_full"], raw)),
            ("durable steps, sequential, FULL, idempotent steps that block",
             _rate(r["ours_seq_full_blocking"], "steps/s"),
             f"raw commits {raw:,.0f}/s", _ratio(r["ours_seq_full_blocking"], raw)),
            ("durable steps, sequential, NORMAL", _rate(r["ours_seq_normal"], "steps/s"),
             f"raw commits {r['raw_normal']:,.0f}/s", _ratio(r["ours_seq_normal"],
                                                              r["raw_normal"])),
            ("durable steps, non-idempotent, FULL", _rate(r["ours_seq_full_nonidem"],
                                                          "steps/s"),
             f"raw commits {raw:,.0f}/s", _ratio(r["ours_seq_full_nonidem"], raw)),
            ("durable steps, 16 concurrent runs, FULL", _rate(r["ours_16_full"], "steps/s"),
             f"raw commits {raw:,.0f}/s", _ratio(r["ours_16_full"], raw)),
            ("durable steps with spans", _rate(r["ours_seq_full_telemetry"], "steps/s"),
             f"without {r['ours_seq_full']:,.0f}/s",
             _ratio(r["ours_seq_full_telemetry"], r["ours_seq_full"]))]
    for peer in ("dbos", "langgraph"):
        if r.get(peer):
            rows.append((f"{peer} (peer), same workflow", _rate(r[peer], "steps/s"),
                         f"edge-agent {r['ours_seq_full']:,.0f}/s",
                         f"edge-agent {r['ours_seq_full'] / r[peer]:.1f}x"))
    return rows


def _stores(r: dict[str, Any]) -> list[Row]:
    raw = r["raw_pg"]

    def spread(key: str) -> str:
        lo, hi = r[f"{key}_spread"]
        return f"{_rate(r[key], 'steps/s')} ({lo:,.0f}-{hi:,.0f})"
    return [("engine on PostgreSQL, one run at a time", spread("pg_seq"),
             f"raw PostgreSQL commits {raw:,.0f}/s", _ratio(r["pg_seq"], raw)),
            ("engine on PostgreSQL, 16 runs at once", spread("pg_16"),
             f"raw PostgreSQL commits {raw:,.0f}/s", _ratio(r["pg_16"], raw)),
            ("engine on SQLite FULL, same workload", spread("sqlite_seq"),
             f"on PostgreSQL {r['pg_seq']:,.0f}/s", _ratio(r["sqlite_seq"], r["pg_seq"]))]


def _sync(r: dict[str, Any]) -> list[Row]:
    return [("sync end to end, 200-byte records", _rate(r["e2e"], "records/s"),
             f"raw paho QoS 1 pipelined {r['raw_pipelined']:,.0f}/s",
             _ratio(r["e2e"], r["raw_pipelined"])),
            ("sync end to end, zstd", _rate(r["e2e_zstd"], "records/s"),
             f"raw paho, PUBACK each {r['raw_per_record']:,.0f}/s",
             _ratio(r["e2e_zstd"], r["raw_per_record"])),
            ("1,000,000-record backlog drained", f"{r['backlog_1m_s']:.1f} s", "target 20 s",
             ""),
            ("bytes on the wire per record", f"{r['bytes_plain']:.1f} / {r['bytes_zstd']:.1f}",
             "plain / zstd", "")]


def _fleet(r: dict[str, Any]) -> list[Row]:
    one, two = r["workers_1"], r["workers_2"]
    rows = [("fleet 1,000 devices x 200 records, 2 workers", _rate(two["records_per_s"],
                                                                   "records/s"),
             f"1 worker {one['records_per_s']:,.0f}/s",
             _ratio(two["records_per_s"], one["records_per_s"])),
            ("fleet timeout resends without faults", str(one["timeout_resends"]
                                                         + two["timeout_resends"]),
             "target 0", "")]
    if "projection" in r:
        p = r["projection"]
        rows.append(("fleet, 1 worker, with the runs projection",
                     _rate(p["on_records_per_s"], "records/s"),
                     f"without {p['off_records_per_s']:,.0f}/s (target cost <= 10%)",
                     _ratio(p["on_records_per_s"], p["off_records_per_s"])))
    if "fault" in r:
        f = r["fault"]
        rows.append(("fleet, worker SIGKILL + broker restart", f"{f['lost']} lost, "
                     f"{f['duplicated']} duplicated", "target 0 and 0", ""))
    return rows


def _queries(r: dict[str, Any]) -> list[Row]:
    return [(f"fleet query `{name}`, {r['devices']:,} devices x {r['runs']:,} runs",
             f"{ms:.1f} ms", "target 100 ms", "") for name, ms in r["median_ms"].items()]


def _rollout(r: dict[str, Any]) -> list[Row]:
    return [(f"rollout, deploy to {r['devices']:,} devices applied (simulated, one wave)",
             f"{r['deploy_to_all_applied_s']:.1f} s", _rate(r["devices_per_s"], "devices/s"),
             "")]


def _flood(r: dict[str, Any]) -> list[Row]:
    s = r["spread"]
    return [(f"{s['requests']:,} hand-off requests in {s['spread_s']:g} s: another device's "
             f"{s['records']:,}-record sync", f"{s['sync_during_flood_s']:.2f} s",
             f"alone {s['sync_alone_s']:.2f} s (target 2x)", f"{s['ratio']:.2f}x"),
            ("the flood: cloud threads, RSS (peak)", f"{s['peak_threads']}, "
             f"{s['peak_rss_mib']:.0f} MiB", f"idle {s['idle_threads']}, "
             f"{s['idle_rss_mib']:.0f} MiB", ""),
            ("the flood: answered busy", f"{s['answers'].get('busy', 0):,}",
             f"run {s['answers'].get('ran', 0):,}", "")]


def _inference(r: dict[str, Any]) -> list[Row]:
    paired = (f"{r['ratio_median']:.2f}x (middle half {r['ratio_p25']:.2f}-"
              f"{r['ratio_p75']:.2f}x, {r['pairs']} pairs)") if "ratio_median" in r else \
        _ratio(r["agent_tps"], r["bare_tps"])
    return [("agent step tokens/s (grammar), paired with bare on the same prompts and seeds",
             _rate(r["agent_tps"], "tokens/s"), f"bare llama-cpp-python {r['bare_tps']:,.0f}/s",
             paired),
            (f"time to first token, {r['prefix_tokens']}-token prefix",
             f"warm {r['ttft_warm_s'] * 1000:.1f} ms", f"cold {r['ttft_cold_s'] * 1000:.0f} ms",
             f"{r['ttft_cold_s'] / r['ttft_warm_s']:.1f}x faster")]


def _batch(r: dict[str, Any]) -> list[Row]:
    rows = []
    for size in r.get("sizes", [r]):
        rows += _batch_size(size, f" ({size['model']})" if "model" in size else "")
    full = sum(1 for v in r["grammar"].values() if v.startswith("100%"))
    again = sum(1 for v in r["grammar"].values() if "100% with resampling" in v)
    if r["grammar"]:
        rows.append(("grammar: keyword families valid in 100/100 batched samples",
                     f"{full} of {len(r['grammar'])}",
                     f"+ {again} with resampling (the families left to validation)", ""))
    return rows


def _batch_size(r: dict[str, Any], model: str) -> list[Row]:
    p, pairs = r["paths"], r["paired"]

    def paired(key: str) -> str:
        med, lo, hi = pairs[key]
        return f"{med:.2f}x ({lo:.2f}-{hi:.2f}, paired by round)"
    rows = []
    for n in (n for n in (1, 2, 4, 8) if f"batched {n}" in p):
        ours, serial = p[f"batched {n}"], p[f"serialized {n}"]
        rows.append((f"{n} parallel agents on one model{model}, aggregate (batched)",
                     _rate(ours["tps"], "tokens/s"), f"serialized {serial['tps']:,.0f}/s",
                     paired(f"batched / serialized, {n} agents")))
        server = p.get(f"llama-server {n}")
        if server:
            rows.append((f"{n} parallel agents{model}, batched vs llama-server --parallel {n}",
                         _rate(ours["tps"], "tokens/s"), f"llama-server {server['tps']:,.0f}/s",
                         paired(f"batched / llama-server, {n} agents")))
    if "batched 4" in p:
        rows.append((f"4 parallel agents{model}, per-agent p95 latency",
                     f"{p['batched 4']['latency_p95_s'] * 1000:.0f} ms",
                     f"an agent alone {p['batched 1']['latency_p95_s'] * 1000:.0f} ms",
                     paired("batched per-agent p95 latency, 4 agents / one alone")))
    return rows


def _grammar(r: dict[str, Any]) -> list[Row]:
    ours = [v["edge_agent"] for v in r.values()]
    stock = [v["stock"] for v in r.values()]
    full = sum(1 for v in ours if v == "100%")
    return [("grammar: keywords valid in 100/100 samples", f"{full} of {len(ours)}",
             f"stock converter: {sum(1 for v in stock if v == '100%')} of {len(stock)}", "")]


def _hardware(r: dict[str, Any]) -> list[Row]:
    pairs = [("serial tool call", "serial_tool", "serial_raw", "bare pyserial"),
             ("modbus tool call", "modbus_tool", "modbus_raw", "bare pymodbus")]
    return [(name, _rate(r[a]["per_s"], "calls/s"), f"{peer} {r[b]['per_s']:,.0f}/s",
             _ratio(r[a]["per_s"], r[b]["per_s"])) for name, a, b, peer in pairs
            if a in r and b in r]


def _footprint(r: dict[str, Any]) -> list[Row]:
    return [("daemon start to READY (no model)", f"{r['start_to_ready_s_median']:.2f} s",
             "target 1.5 s", ""),
            ("daemon idle resident memory", f"{r['idle_rss_mb_median']:.1f} MB",
             "target 80 MB", "")]


def _otlp(r: dict[str, Any]) -> list[Row]:
    return [("OTLP/HTTP export, CPU per 1,000 spans", f"{r['ours_ms']:.1f} ms",
             f"opentelemetry-exporter-otlp {r['package_ms']:.1f} ms",
             _ratio(r["ours_ms"], r["package_ms"]))]


SUMMARY: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "engine": _engine, "stores": _stores, "sync": _sync, "fleet": _fleet, "queries": _queries,
    "rollout": _rollout, "flood": _flood, "inference": _inference, "batch": _batch,
    "grammar": _grammar, "hardware": _hardware, "footprint": _footprint, "otlp": _otlp}


def main() -> int:
    print(f"edge-agent benchmarks, {dt.date.today()}, {platform.machine()}, "
          f"{platform.processor() or platform.platform()}")
    failed = 0
    rows: list[Row] = []
    for name, key, args in BENCHES:
        print(f"\n### {name}", flush=True)
        r = subprocess.run([sys.executable, *args], text=True, capture_output=True)
        lines = r.stdout.splitlines()
        print("\n".join(x for x in lines if not x.startswith("{")))
        if r.returncode != 0:
            failed += 1
            print(f"(failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''})")
            continue
        data = [x for x in lines if x.startswith("{")]
        if data:
            try:
                rows += SUMMARY[key](json.loads(data[-1]))
            except (KeyError, ValueError, TypeError, ZeroDivisionError) as exc:
                print(f"(no summary for {name}: {exc!r})")
    print("\n### summary\n")
    print("| benchmark | result | anchor (same run) | ratio |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
