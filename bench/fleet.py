"""A fleet into PostgreSQL: 1,000 simulated devices x 200 records, through a real broker,
into 1 then 2 ingest worker processes sharing a subscription; then a fault run (a worker
SIGKILLed and the broker restarted mid-stream) checked for 0 lost and 0 duplicated.

Loopback only. Devices are simulated by `bench.fleet_devices` (2 processes, 10 MQTT
connections each, 50 devices per connection); each device sends its 200 records as one
batch of protocol 2 (as a device with 200 pending records does), zstd-compressed.
Records/s = records / (first publish to the last device's final ack). PostgreSQL runs at its
durable default (fsync on, synchronous_commit on), the figure a fleet gets; `--fsync-off`
measures the store's own cost without the disk's, and the header says which it was.

Each device's records are the checkpoints of runs of 10 steps (msgpack, as a device writes
them), so the runs projection does its real work; the projection's cost is measured on the
same fleet into 1 worker with `[store] projection = false` then true, interleaved.

Run: python -m bench.fleet [--devices 1000] [--records 200] [--skip-fault] [--fsync-off]
         [--projection-rounds 3] [--projection-only]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.broker import Broker
from support.postgres import Postgres

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}


def fresh_db(pg: Postgres, name: str) -> str:
    import psycopg
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name


def start_worker(tmp: Path, port: int, url: str, n: int, threads: int = 1,
                 projection: bool = True) -> subprocess.Popen[bytes]:
    """An `edge-agent-cloud run` process with `threads` workers (`[mqtt] workers`), with or
    without the fleet's projection (`[store] projection`)."""
    cfg = tmp / f"cloud-{n}-{time.monotonic_ns()}.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{port}"\ngroup = "fleet"\ninsecure = true\n'
                   f'workers = {threads}\n[store]\nurl = "{url}"\n'
                   f'projection = {str(projection).lower()}\n')
    return subprocess.Popen([sys.executable, "-m", "sync.cloud.cli", "run", "--config",
                             str(cfg)], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / f"worker-{n}.log", "ab"))


def log_size(broker: Broker) -> int:
    return broker.log.stat().st_size if broker.log.exists() else 0


def wait_connected(broker: Broker, since: int, workers: int) -> None:
    """Until the broker has logged the connection of each new worker (after `since` bytes of
    its log), then a moment for their subscriptions."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with open(broker.log, "rb") as f:
            f.seek(since)
            if f.read().count(b" as ingest-") >= workers:
                break
        time.sleep(0.1)
    time.sleep(0.5)


def simulate(port: int, devices: int, records: int, ack_timeout: float,
             faults: Any = None) -> dict[str, Any]:
    procs = []
    half = devices // 2
    for first, n in ((0, half), (half, devices - half)):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.fleet_devices", "--port", str(port), "--first",
             str(first), "--devices", str(n), "--connections", "10", "--records",
             str(records), "--ack-timeout", str(ack_timeout), "--compress"],
            env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        if faults is not None:
            faults()
        results = [json.loads(p.stdout.readline()) for p in procs if p.stdout]
    finally:
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    done = sum(r["devices_done"] for r in results)
    finished = max(r["finished"] or 0 for r in results)
    elapsed = finished - min(r["started"] for r in results)
    return {"devices_done": done, "elapsed_s": elapsed,
            "records_per_s": devices * records / elapsed if done == devices else 0.0,
            "timeout_resends": sum(r["resends"] for r in results),
            "ignored_acks": sum(r["ignored_acks"] for r in results)}


def audit(url: str, devices: int, records: int) -> dict[str, int]:
    import psycopg
    with psycopg.connect(url) as c:
        stored, distinct = c.execute(
            "SELECT count(*), count(DISTINCT (device, epoch, stream, seq)) FROM records"
            " WHERE stream = 'checkpoints'").fetchone()
        complete = c.execute(
            "SELECT count(*) FROM (SELECT device FROM records GROUP BY device HAVING"
            " count(*) = %s AND min(seq) = 1 AND max(seq) = %s) d", (records, records)
        ).fetchone()[0]
        conflicts = c.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    return {"stored": stored, "lost": devices * records - distinct,
            "duplicated": stored - distinct, "devices_complete": complete,
            "quarantined": conflicts}


def run(tmp: Path, broker: Broker, pg: Postgres, name: str, workers: int, devices: int,
        records: int, fault: bool = False, threads: int = 1,
        fault_after_s: float = 0.4, projection: bool = True) -> dict[str, Any]:
    url = fresh_db(pg, name)
    since = log_size(broker)
    procs = [start_worker(tmp, broker.port, url, i, threads, projection)
             for i in range(workers)]
    try:
        wait_connected(broker, since, workers * threads)

        def faults() -> None:
            time.sleep(fault_after_s)
            procs[0].send_signal(signal.SIGKILL)  # mid-stream, whatever it held
            procs[0].wait()
            time.sleep(0.3)
            broker.restart()  # no persistence: in-flight messages and sessions are lost
            procs[0] = start_worker(tmp, broker.port, url, 99)  # its supervisor restarts it
        out = simulate(broker.port, devices, records, 5.0 if fault else 10.0,
                       faults if fault else None)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    return {**out, **audit(url, devices, records)}


def projection_cost(tmp: Path, broker: Broker, pg: Postgres, devices: int, records: int,
                    rounds: int) -> dict[str, Any]:
    """The same fleet into one worker without, then with, the projection, `rounds` times
    in turn (so drift on a shared machine falls on both); medians of records/s."""
    import statistics
    rates: dict[bool, list[float]] = {False: [], True: []}
    for i in range(rounds):
        for on in (False, True):
            r = run(tmp, broker, pg, f"fleetp{i}{int(on)}", 1, devices, records,
                    projection=on)
            assert r["lost"] == 0 and r["duplicated"] == 0, r
            rates[on].append(r["records_per_s"])
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    paired = statistics.median(100 * (1 - a / b) for a, b in zip(rates[True], rates[False],
                                                                 strict=True))
    return {"rounds": rounds, "on_records_per_s": on, "off_records_per_s": off,
            "on": rates[True], "off": rates[False], "cost_pct": 100 * (1 - on / off),
            "paired_cost_pct": paired}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--skip-fault", action="store_true")
    ap.add_argument("--projection-rounds", type=int, default=3,
                    help="interleaved pairs of 1-worker runs without and with the projection")
    ap.add_argument("--projection-only", action="store_true",
                    help="only the projection's cost (the pairs above)")
    ap.add_argument("--fsync-off", action="store_true",
                    help="PostgreSQL with fsync off (not durable: the store's own cost only)")
    a = ap.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Broker(tmp).start()
        pg = Postgres(fsync=not a.fsync_off).start()
        try:
            if not a.projection_only:
                results["workers_1"] = run(tmp, broker, pg, "fleet1", 1, a.devices, a.records)
                results["workers_2"] = run(tmp, broker, pg, "fleet2", 2, a.devices, a.records)
                results["workers_2_in_1"] = run(tmp, broker, pg, "fleet21", 1, a.devices,
                                                a.records, threads=2)
            results["projection"] = projection_cost(tmp, broker, pg, a.devices, a.records,
                                                    a.projection_rounds)
            if not a.skip_fault and not a.projection_only:
                results["fault"] = run(tmp, broker, pg, "fleetf", 2, a.devices, a.records,
                                       fault=True)
        finally:
            pg.stop()
            broker.kill()
    fsync = "off (not durable)" if a.fsync_off else "on (durable default)"
    results["fsync"] = not a.fsync_off
    results["cores"] = os.cpu_count()
    print(f"fleet: {a.devices} simulated devices x {a.records} records into PostgreSQL, "
          f"fsync {fsync}, {os.cpu_count()} cores")
    print(f"{'run':28} {'records/s':>10} {'elapsed':>8} {'resends':>8} {'lost':>5} {'dup':>4}")
    for key, label in (("workers_1", "1 worker"), ("workers_2", "2 workers (processes)"),
                       ("workers_2_in_1", "workers = 2 in one process"),
                       ("fault", "2 workers, kill + restart")):
        r = results.get(key)
        if r:
            print(f"{label:28} {r['records_per_s']:10.0f} {r['elapsed_s']:7.1f}s "
                  f"{r['timeout_resends']:8d} {r['lost']:5d} {r['duplicated']:4d}")
    p = results["projection"]
    print(f"projection on/off, 1 worker, {p['rounds']} interleaved pairs: "
          f"{p['on_records_per_s']:,.0f} / {p['off_records_per_s']:,.0f} records/s "
          f"(median; cost {p['cost_pct']:.1f}%, median of the pairs' costs "
          f"{p['paired_cost_pct']:.1f}%)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
