"""The engine on each of its stores: durable steps per second on PostgreSQL (the cloud
runner's) against raw PostgreSQL commits, with the SQLite store on the same workload beside.

Run: .venv/bin/python -m bench.engine_stores [--rounds N] [--runs N] [--no-dbos]
Each round measures everything once, in turn (interleaved); figures are medians over the
rounds with their spread (min-max). PostgreSQL runs a throwaway cluster at its durable
default (fsync on, synchronous_commit on); SQLite is the device's store in WAL mode with
synchronous=FULL. The workload: runs of five idempotent no-op tool steps, one run at a
time, then 16 at once, then 1, 2 and 4 runner processes sharing one database (run leases),
16 runs in flight in each; beside them raw PostgreSQL single-row commits at the same
concurrencies (one connection each), and DBOS Transact running the same five-step workflow
on a database of the same cluster (its own virtualenv, `bench/peers/dbos_pg_steps.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.postgres import Postgres, fresh_pg_url

from bench.engine_steps import PEERS, Noop, peer
from edge_agent.config.model import RetryPolicy
from edge_agent.engine import Engine, ToolBinding, queue_run
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.store.opening import open_database, writer_for
from edge_agent.store.postgres import PgStore

STEPS = 5
RUNNERS = (1, 2, 4)  # runner processes on one database, 16 runs in flight each


def raw_pg_commits(url: str, n: int, concurrency: int = 1) -> float:
    """One INSERT per transaction, committed, from `concurrency` connections at once: what a
    durable step cannot beat (PostgreSQL shares WAL flushes between concurrent commits)."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS raw (id BIGSERIAL PRIMARY KEY, v TEXT)")
    conns = [psycopg.connect(url, autocommit=True) for _ in range(concurrency)]
    share = n // concurrency

    def commit(c: Any) -> None:
        for i in range(share):
            with c.transaction():
                c.execute("INSERT INTO raw (v) VALUES (%s)", (str(i),))
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(commit, conns))
    rate = share * concurrency / (time.perf_counter() - start)
    for c in conns:
        c.close()
    return rate


def dbos_on_pg(url: str, runs: int, concurrency: int) -> float | None:
    """DBOS Transact on PostgreSQL in its own virtualenv (None when it cannot be built)."""
    if "dbos_pg" not in PEERS:
        PEERS["dbos_pg"] = PEERS["dbos"] + ["psycopg[binary]"]
    return peer("dbos_pg", url, runs, STEPS, str(concurrency))


async def engine_steps(target: str, runs: int, concurrency: int, *, shared: bool = False,
                       start_at: float | None = None) -> float:
    """Steps/s of `runs` runs, `concurrency` at a time; `shared`: as one of several runners
    on the database (run leases), starting at `start_at` (time.time()) with the others."""
    wf = Workflow("bench")
    for i in range(STEPS):
        wf.tool(f"s{i}", "noop", next=f"s{i + 1}" if i + 1 < STEPS else "done")
    wf.end("done")
    workflows = {"bench": wf.build(tools={"noop": tool_config("noop")})}
    store = open_database(target)
    writer = writer_for(store)
    leases = None
    if shared:
        from edge_agent.store.pg_leases import RunLeases, runner_id
        assert isinstance(store, PgStore)
        leases = RunLeases(store, runner_id("bench")).start()
    engine = Engine(store=store, writer=writer, workflows=workflows,
                    tools={"noop": ToolBinding(Noop(True), retry=RetryPolicy())}, leases=leases)
    await engine.start()
    left = [runs]
    if start_at is not None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
    start = time.perf_counter()

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            rid = await asyncio.to_thread(queue_run, writer.write, workflow="bench", input={},
                                          workflows=workflows)
            await engine.settle(rid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = runs * STEPS / (time.perf_counter() - start)
    if start_at is None:  # alone on its database: every run it queued must have completed
        completed(store, runs)
    await engine.shutdown()
    if leases is not None:
        leases.close()
    writer.shutdown()
    store.close()
    return rate


def completed(store: Any, runs: int) -> None:
    """Stop the benchmark when the runs did not all complete: a figure of steps that were
    not taken is no figure."""
    done = store.read(lambda c: c.execute(
        "SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()[0])
    if done != runs:
        raise SystemExit(f"engine_stores: {done} of {runs} runs completed")


def runners_steps(url: str, runners: int, runs: int) -> float:
    """Steps/s of `runners` runner processes on one database, 16 runs in flight in each:
    all the steps over the time from their common start to the last one's end."""
    start_at = time.time() + 3.0 + runners  # every process started and connected by then
    procs = [subprocess.Popen([sys.executable, "-m", "bench.engine_stores", "--runner", url,
                               "--runs", str(runs), "--start-at", str(start_at)],
                              stdout=subprocess.PIPE, text=True) for _ in range(runners)]
    ends = []
    for p in procs:
        out, _ = p.communicate(timeout=900)
        ends.append(json.loads(out.strip().splitlines()[-1])["end"])
    store = PgStore(url)
    try:
        completed(store, runners * runs)
    finally:
        store.close()
    return float(runners * runs * STEPS / (max(ends) - start_at))


def one_runner(url: str, runs: int, start_at: float) -> None:
    """One runner process of `runners_steps`: prints when it ended."""
    asyncio.run(engine_steps(url, runs, 16, shared=True, start_at=start_at))
    print(json.dumps({"end": time.time()}))


def round_trips_per_step(url: str, runs: int, concurrency: int) -> float:
    """Round trips to PostgreSQL per step, counted on a run of its own, off the clock: each
    `execute` outside a pipeline is one, and a pipelined transaction's BEGIN and statements
    are one together (its COMMIT, sent after, counts as it goes)."""
    import threading

    from edge_agent.store.postgres import PgConnection
    count = [0]
    piped = threading.local()
    real, real_many = PgConnection.execute, PgConnection.executemany
    real_piped = PgStore.pipelined

    def execute(self: PgConnection, *a: Any) -> Any:
        count[0] += 0 if getattr(piped, "on", False) else 1
        return real(self, *a)

    def executemany(self: PgConnection, *a: Any) -> Any:
        count[0] += 0 if getattr(piped, "on", False) else 1
        return real_many(self, *a)

    def pipelined(self: PgStore, fn: Any, lock: bool = True) -> Any:
        def inside(conn: Any) -> Any:
            piped.on = True
            try:
                return fn(conn)
            finally:
                piped.on = False
        count[0] += 1
        return real_piped(self, inside, lock)
    PgConnection.execute, PgConnection.executemany = execute, executemany  # type: ignore[method-assign]
    PgStore.pipelined = pipelined  # type: ignore[method-assign]
    try:
        asyncio.run(engine_steps(url, runs, concurrency, shared=True))
    finally:
        PgConnection.execute, PgConnection.executemany = real, real_many  # type: ignore[method-assign]
        PgStore.pipelined = real_piped  # type: ignore[method-assign]
    return count[0] / (runs * STEPS)


def one_round(pg: Postgres, tmp: Path, i: int, runs: int, dbos: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, conc in (("seq", 1), ("16", 16)):
        out[f"raw_pg_{name}"] = raw_pg_commits(fresh_pg_url(pg), runs * STEPS, conc)
        # the runner's configuration: run leases, as `edge-agent cloud-run` has on PostgreSQL
        out[f"pg_{name}"] = asyncio.run(engine_steps(fresh_pg_url(pg), runs, conc,
                                                     shared=True))
        out[f"sqlite_{name}"] = asyncio.run(engine_steps(str(tmp / f"r{i}-{name}.db"), runs,
                                                         conc))
        if dbos:
            out[f"dbos_pg_{name}"] = dbos_on_pg(fresh_pg_url(pg), runs, conc)
    for n in RUNNERS:
        out[f"runners_{n}"] = runners_steps(fresh_pg_url(pg), n, runs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--no-dbos", action="store_true", help="leave the DBOS peer out")
    ap.add_argument("--runner", help=argparse.SUPPRESS)  # one process of runners_steps
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.runner:
        one_runner(a.runner, a.runs, a.start_at)
        return
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        pg = Postgres(fsync=True).start()
        try:
            for i in range(a.rounds):
                rounds.append(one_round(pg, Path(d), i, a.runs, not a.no_dbos))
        finally:
            pg.stop()
    result: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if r[key] is not None]
        if not values:
            continue  # a peer that could not be built: said on stderr
        result[key] = statistics.median(values)
        result[f"{key}_spread"] = [min(values), max(values)]
    result["rounds"] = a.rounds
    result["cores"] = os.cpu_count()
    with tempfile.TemporaryDirectory():
        pg = Postgres(fsync=True).start()
        try:
            for name, conc in (("seq", 1), ("16", 16)):
                result[f"pg_round_trips_per_step_{name}"] = round_trips_per_step(
                    fresh_pg_url(pg), min(a.runs, 50), conc)
        finally:
            pg.stop()
    print(f"engine stores: {a.runs} runs x {STEPS} steps, {a.rounds} interleaved rounds "
          f"(median, min-max), {os.cpu_count()} cores, PostgreSQL fsync on")
    for key, label in (("raw_pg_seq", "raw PostgreSQL commits, 1 connection"),
                       ("raw_pg_16", "raw PostgreSQL commits, 16 connections"),
                       ("pg_seq", "engine on PostgreSQL, one run at a time"),
                       ("pg_16", "engine on PostgreSQL, 16 runs at once"),
                       ("dbos_pg_seq", "DBOS on PostgreSQL, one workflow at a time"),
                       ("dbos_pg_16", "DBOS on PostgreSQL, 16 workflows at once"),
                       ("runners_1", "1 runner process, 16 runs in flight"),
                       ("runners_2", "2 runner processes, 16 runs in flight each"),
                       ("runners_4", "4 runner processes, 16 runs in flight each"),
                       ("sqlite_seq", "engine on SQLite FULL, one run at a time"),
                       ("sqlite_16", "engine on SQLite FULL, 16 runs at once")):
        if key not in result:
            continue
        lo, hi = result[f"{key}_spread"]
        print(f"  {label:44s} {result[key]:8,.0f}/s  ({lo:,.0f}-{hi:,.0f})")
    print("  statements (round trips) per step on PostgreSQL: "
          f"{result['pg_round_trips_per_step_seq']:.2f} one run at a time, "
          f"{result['pg_round_trips_per_step_16']:.2f} with 16 at once")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
