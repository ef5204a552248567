"""The engine on each of its stores: durable steps per second on PostgreSQL (the cloud
runner's) against raw PostgreSQL commits, with the SQLite store on the same workload beside.

Run: .venv/bin/python -m bench.engine_stores [--rounds N] [--runs N]
Each round measures everything once, in turn (interleaved); figures are medians over the
rounds with their spread (min-max). PostgreSQL runs a throwaway cluster at its durable
default (fsync on, synchronous_commit on); SQLite is the device's store in WAL mode with
synchronous=FULL. The workload: runs of five idempotent no-op tool steps, one run at a
time, then 16 at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.postgres import Postgres, fresh_pg_url

from bench.engine_steps import Noop
from edge_agent.config.model import RetryPolicy
from edge_agent.engine import Engine, ToolBinding, queue_run
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.store.opening import open_database, writer_for

STEPS = 5


def raw_pg_commits(url: str, n: int) -> float:
    """One INSERT per transaction, committed: what a durable step cannot beat."""
    import psycopg
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS raw (id BIGSERIAL PRIMARY KEY, v TEXT)")
        start = time.perf_counter()
        for i in range(n):
            with c.transaction():
                c.execute("INSERT INTO raw (v) VALUES (%s)", (str(i),))
        return n / (time.perf_counter() - start)


async def engine_steps(target: str, runs: int, concurrency: int) -> float:
    wf = Workflow("bench")
    for i in range(STEPS):
        wf.tool(f"s{i}", "noop", next=f"s{i + 1}" if i + 1 < STEPS else "done")
    wf.end("done")
    workflows = {"bench": wf.build(tools={"noop": tool_config("noop")})}
    store = open_database(target)
    writer = writer_for(store)
    engine = Engine(store=store, writer=writer, workflows=workflows,
                    tools={"noop": ToolBinding(Noop(True), retry=RetryPolicy())})
    await engine.start()
    left = [runs]
    start = time.perf_counter()

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            rid = await asyncio.to_thread(queue_run, writer.write, workflow="bench", input={},
                                          workflows=workflows)
            await engine.settle(rid)
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    rate = runs * STEPS / (time.perf_counter() - start)
    await engine.shutdown()
    writer.shutdown()
    store.close()
    return rate


def one_round(pg: Postgres, tmp: Path, i: int, runs: int) -> dict[str, float]:
    out = {"raw_pg": raw_pg_commits(fresh_pg_url(pg), runs * STEPS)}
    for name, conc in (("seq", 1), ("16", 16)):
        out[f"pg_{name}"] = asyncio.run(engine_steps(fresh_pg_url(pg), runs, conc))
        out[f"sqlite_{name}"] = asyncio.run(engine_steps(str(tmp / f"r{i}-{name}.db"), runs,
                                                         conc))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    a = ap.parse_args()
    rounds: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as d:
        pg = Postgres(fsync=True).start()
        try:
            for i in range(a.rounds):
                rounds.append(one_round(pg, Path(d), i, a.runs))
        finally:
            pg.stop()
    result: dict[str, Any] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        result[key] = statistics.median(values)
        result[f"{key}_spread"] = [min(values), max(values)]
    result["rounds"] = a.rounds
    print(f"engine stores: {a.runs} runs x {STEPS} steps, {a.rounds} interleaved rounds "
          "(median, min-max)")
    for key, label in (("raw_pg", "raw PostgreSQL commits"),
                       ("pg_seq", "engine on PostgreSQL, one run at a time"),
                       ("pg_16", "engine on PostgreSQL, 16 runs at once"),
                       ("sqlite_seq", "engine on SQLite FULL, one run at a time"),
                       ("sqlite_16", "engine on SQLite FULL, 16 runs at once")):
        lo, hi = result[f"{key}_spread"]
        print(f"  {label:44s} {result[key]:8,.0f}/s  ({lo:,.0f}-{hi:,.0f})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
