"""Durable steps per second: edge-agent against raw SQLite commits, DBOS and LangGraph.

Run: .venv/bin/python -m bench.engine_steps [--quick] [--rounds N]
Every figure is the median of five rounds (each round measures everything once, in turn;
the raw commit rate of a small VM disk moves by a third between rounds, hence five).
Peers are installed into their own virtualenvs under .bench-venvs/ on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge_agent.config.model import RetryPolicy
from edge_agent.engine import Engine, ToolBinding, queue_run
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.store import GroupCommitter, Store

ROOT = Path(__file__).resolve().parents[1]
PEERS = {"dbos": ["dbos"], "langgraph": ["langgraph", "langgraph-checkpoint-sqlite"]}


class Noop:
    def __init__(self, idempotent: bool, pure: bool = True) -> None:
        self.name = "noop"
        self.idempotent = idempotent
        # pure computation, as the peers' steps are: called with no hand-over, and the run
        # goes on to it once the previous step has committed (its fsync still runs before
        # anything with an effect outside); False: a step as a device tool would be
        self.blocks = not pure

    def call(self, args: Any, *, idempotency_key: str) -> dict[str, Any]:
        return {"ok": True}


def raw_commits(path: Path, n: int, sync: str) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={sync}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    start = time.perf_counter()
    for i in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (v) VALUES (?)", (str(i),))
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - start)
    conn.close()
    return rate


async def ours(path: Path, runs: int, k: int, sync: str, concurrency: int,
               idempotent: bool = True, telemetry: bool = False,
               pure: bool = True) -> tuple[float, float, float]:
    wf = Workflow("bench")
    for i in range(k):
        wf.tool(f"s{i}", "noop", next=f"s{i + 1}" if i + 1 < k else "done")
    wf.end("done")
    workflows = {"bench": wf.build(tools={"noop": tool_config("noop")})}
    store = Store(path, synchronous=sync)
    writer = GroupCommitter(store)
    engine = Engine(store=store, writer=writer, workflows=workflows,
                    tools={"noop": ToolBinding(Noop(idempotent, pure), retry=RetryPolicy())})
    stop = threading.Event()
    exporter = None
    if telemetry:  # what the daemon does: derive spans every 0.5 s, off the hot path
        from edge_agent.telemetry.record import record_spans

        def loop() -> None:
            while not stop.wait(0.5):
                record_spans(writer, service="bench", device_id="bench")
        exporter = threading.Thread(target=loop, daemon=True)
        exporter.start()
    await engine.start()
    left = [runs]
    commits0, syncs0 = writer.commits, writer.syncs
    start = time.perf_counter()

    async def worker() -> None:
        # each run is queued inside the timed loop, as the peers create theirs when invoked,
        # and off the event loop, as the daemon queues its triggered runs
        while left[0] > 0:
            left[0] -= 1
            rid = await asyncio.to_thread(queue_run, writer.write, workflow="bench", input={},
                                          workflows=workflows)
            await engine.settle(rid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    stop.set()
    if exporter is not None:
        exporter.join()
    # k tool steps, counted as the peers count theirs (the run's start and end are not steps)
    steps = runs * k
    commits, syncs = writer.commits - commits0, writer.syncs - syncs0
    await engine.shutdown()
    writer.shutdown()
    store.close()
    # fsyncs: the writer's own (it commits, then syncs the WAL; none with NORMAL)
    return steps / elapsed, commits / steps, syncs / steps


def peer(name: str, path: Path | str, runs: int, k: int, *extra: str) -> float | None:
    venv = ROOT / ".bench-venvs" / name
    py = venv / "bin" / "python"
    if not py.exists():
        print(f"installing {name} into {venv.relative_to(ROOT)} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", *PEERS[name]])
        if r.returncode != 0:
            return None
    r = subprocess.run([str(py), str(ROOT / "bench" / "peers" / f"{name}_steps.py"), str(path),
                        str(runs), str(k), *extra], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        print(f"{name} failed: {r.stderr[-800:]}", file=sys.stderr)
        return None
    data = json.loads(r.stdout.strip().splitlines()[-1])
    return float(data["steps"] / data["seconds"])


def one_round(d: Path, runs: int, k: int, *, peers: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results["raw_full"] = raw_commits(d / "raw_full.db", 3000, "FULL")
    results["raw_normal"] = raw_commits(d / "raw_normal.db", 3000, "NORMAL")
    for sync in ("FULL", "NORMAL"):
        rate, cps, fps = asyncio.run(ours(d / f"seq_{sync}.db", runs, k, sync, 1))
        results[f"ours_seq_{sync.lower()}"], results[f"commits_per_step_{sync.lower()}"] = \
            rate, cps
        if sync == "FULL":
            results["fsyncs_per_step_full"] = fps
    (results["ours_seq_full_blocking"], _,
     results["fsyncs_per_step_blocking"]) = asyncio.run(
        ours(d / "seq_blocking.db", runs, k, "FULL", 1, pure=False))
    (results["ours_seq_full_nonidem"], results["commits_per_step_nonidem"],
     results["fsyncs_per_step_nonidem"]) = asyncio.run(
        ours(d / "seq_nonidem.db", runs, k, "FULL", 1, idempotent=False))
    results["ours_seq_full_telemetry"], _, _ = asyncio.run(
        ours(d / "seq_tel.db", runs, k, "FULL", 1, telemetry=True))
    (results["ours_16_full"], results["commits_per_step_16"],
     results["fsyncs_per_step_16"]) = asyncio.run(ours(d / "conc.db", runs * 4, k, "FULL", 16))
    if peers:
        results["dbos"] = peer("dbos", d / "dbos.db", runs, k)
        results["langgraph"] = peer("langgraph", d / "lg.db", runs, k)
    print("round: " + json.dumps({key: round(v, 2) for key, v in results.items()
                                  if v is not None}), file=sys.stderr)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--rounds", type=int, default=5,
                    help="every figure is the median of this many rounds, taken in turn so "
                    "that a slow spell of the disk touches all of them alike")
    args = ap.parse_args()
    runs, k = (20, 20) if args.quick else (60, 25)
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", ROOT)) as tmp:
        for i in range(1 if args.quick else args.rounds):
            d = Path(tmp) / f"round{i}"
            d.mkdir()
            rounds.append(one_round(d, runs, k, peers=not args.no_peers))
    results: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if r.get(key) is not None]
        if values:
            results[key] = statistics.median(values)
    results["rounds"] = len(rounds)
    raw = results["raw_full"]
    rows = [
        ("raw SQLite single-row commits, FULL", raw, None),
        ("raw SQLite single-row commits, NORMAL", results["raw_normal"], None),
        ("edge-agent sequential, FULL (pure idempotent steps)", results["ours_seq_full"], raw),
        ("edge-agent sequential, FULL, idempotent steps that block",
         results["ours_seq_full_blocking"], raw),
        ("edge-agent sequential, NORMAL", results["ours_seq_normal"], results["raw_normal"]),
        ("edge-agent sequential, FULL, non-idempotent", results["ours_seq_full_nonidem"], raw),
        ("edge-agent 16 concurrent runs, FULL", results["ours_16_full"], raw),
        ("edge-agent sequential, FULL, with spans", results["ours_seq_full_telemetry"],
         results["ours_seq_full"]),
    ]
    print(f"{'benchmark':52} {'steps/s':>10} {'ratio':>8}  (against raw commits; spans: "
          "against without)")
    for name, value, anchor in rows:
        ratio = f"{value / anchor:.2f}x" if anchor else ""
        print(f"{name:52} {value:10.0f} {ratio:>8}")
    for peer_name in ("dbos", "langgraph"):
        v = results.get(peer_name)
        if v:
            print(f"{peer_name + ' sequential, SQLite':52} {v:10.0f} {v / raw:7.2f}x   "
                  f"edge-agent is {results['ours_seq_full'] / v:.1f}x")
    print("raw commits/s, round by round: " + ", ".join(f"{r['raw_full']:,.0f}" for r in rounds))
    for key, label in (("ours_seq_full", "pure"), ("ours_seq_full_blocking", "blocking"),
                       ("ours_16_full", "16 concurrent")):
        print(f"{label} / raw, round by round: " + ", ".join(
            f"{r[key] / r['raw_full']:.2f}x" for r in rounds))
    print(f"commits per step: idempotent {results['commits_per_step_full']:.2f}, "
          f"non-idempotent {results['commits_per_step_nonidem']:.2f}, "
          f"16 concurrent {results['commits_per_step_16']:.2f}")
    print(f"fsyncs per step (the writer's; FULL): pure {results['fsyncs_per_step_full']:.2f}, "
          f"blocking {results['fsyncs_per_step_blocking']:.2f}, "
          f"non-idempotent {results['fsyncs_per_step_nonidem']:.2f}, "
          f"16 concurrent {results['fsyncs_per_step_16']:.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
