"""The fleet projection's ingest cost, without the broker's noise: one process stores
batches of a device's checkpoint records (200 records, 20 runs of 10 steps, as
bench.fleet's devices send them) straight into SqlCloudStore.store_batch on PostgreSQL,
alternating a store with the projection off and one with it on (two databases, one
cluster), batch by batch, so both sides see the same machine load. Each device's batch is
new to both stores (a real ingest, not a resend). Reports the median time per batch on
and off with its spread (p25-p75), the projection's share, and the median of the pairs'
differences (each batch on minus the same batch off, stored one after the other). Wall
time varies with the machine's load; the CPU time each side used (this process's, and its
PostgreSQL backend's from /proc) much less: that is the steadier figure on a busy machine.

Run: python -m bench.projection_cost [--batches 400] [--records 200] [--sqlite]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.postgres import Postgres

from bench.fleet import fresh_db
from bench.fleet_devices import run_record


def quartiles(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=4)
    return {"median": round(statistics.median(ms), 3), "p25": round(q[0], 3),
            "p75": round(q[2], 3)}


def server_cpu_s(store: Any) -> float:
    """CPU seconds the store's PostgreSQL backend has used (0 for SQLite: in-process)."""
    if store.dialect != "postgresql":
        return 0.0
    fields = Path(f"/proc/{store.conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1]
    utime, stime = fields.split()[11:13]
    return (int(utime) + int(stime)) / os.sysconf("SC_CLK_TCK")


def measure(stores: dict[bool, Any], batches: int, records: int) -> dict[str, Any]:
    from sync.envelope import Batch
    ms: dict[bool, list[float]] = {False: [], True: []}
    cpu = dict.fromkeys((False, True), 0.0)  # this process's CPU seconds, per side
    server = dict.fromkeys((False, True), 0.0)
    for i in range(batches + 20):  # the first 20: warm-up (caches, prepared statements)
        device = f"dev-{i:05d}"
        recs = tuple(run_record(device, s, records) for s in range(1, records + 1))
        batch = Batch(device, "checkpoints", 0, 1, records, recs, epoch="e0", version=2)
        if i == 20:
            server = {on: -server_cpu_s(stores[on]) for on in (False, True)}
        for on in (False, True) if i % 2 else (True, False):
            t, c = time.perf_counter(), time.process_time()
            stores[on].store_batch(batch)
            if i >= 20:
                ms[on].append((time.perf_counter() - t) * 1000)
                cpu[on] += time.process_time() - c
    for on in (False, True):
        server[on] += server_cpu_s(stores[on])
    off, on = quartiles(ms[False]), quartiles(ms[True])
    pairs = quartiles([b - a for a, b in zip(ms[False], ms[True], strict=True)])
    per = {on: round((cpu[on] + server[on]) * 1000 / batches, 3) for on in (False, True)}
    return {"off_ms": off, "on_ms": on, "paired_added_ms": pairs,
            "cpu_ms": {"off": per[False], "on": per[True],
                       "client_off": round(cpu[False] * 1000 / batches, 3),
                       "client_on": round(cpu[True] * 1000 / batches, 3)},
            "added_ms": round(on["median"] - off["median"], 3),
            "share": round((on["median"] - off["median"]) / on["median"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, default=400)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--sqlite", action="store_true", help="SQLite files instead")
    a = ap.parse_args()
    from sync.cloud.store import SqlCloudStore
    with tempfile.TemporaryDirectory() as tmp:
        pg = None if a.sqlite else Postgres().start()
        try:
            urls = {on: f"sqlite:///{tmp}/{on}.db" if pg is None else fresh_db(
                pg, f"projcost_{str(on).lower()}") for on in (False, True)}
            stores = {on: SqlCloudStore(u, projection=on) for on, u in urls.items()}
            try:
                out = measure(stores, a.batches, a.records)
            finally:
                for s in stores.values():
                    s.close()
        finally:
            if pg is not None:
                pg.stop()
    out.update(backend="sqlite" if a.sqlite else "postgresql", batches=a.batches,
               records=a.records)
    print(f"store_batch of {a.records} records ({a.records // 10} runs), {a.batches} batches"
          f" each, interleaved, {out['backend']}:")
    for side in ("off", "on"):
        q = out[f"{side}_ms"]
        print(f"  projection {side:3}: median {q['median']:.3f} ms (p25 {q['p25']:.3f},"
              f" p75 {q['p75']:.3f})")
    cpu = out["cpu_ms"]
    print(f"  CPU a batch (this process + its PostgreSQL backend): off {cpu['off']:.3f} ms,"
          f" on {cpu['on']:.3f} ms: the projection adds {cpu['on'] - cpu['off']:.3f} ms")
    p = out["paired_added_ms"]
    print(f"  the projection adds {out['added_ms']:.3f} ms a batch"
          f" ({out['share']:.0%} of a batch stored with it); per pair: median"
          f" {p['median']:.3f} ms (p25 {p['p25']:.3f}, p75 {p['p75']:.3f})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
