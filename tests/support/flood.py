"""One device floods the cloud with hand-off requests while another syncs its records.

A real `edge-agent-cloud run` process (its threads and RSS read from /proc), a real broker,
two devices as EdgeSync publishers over real outbox files: the flooder appends `requests`
`handoff.request` records over `spread_s` seconds; the other device syncs `records`
records, once alone (the baseline) and once during the flood, starting `start_after_s` into
it (by default half-way, when the cloud has the flood's backlog to work through). Used by
tests/sync/test_fair_work.py (small) and bench/cloud_flood.py (the issue's full size).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack

from support.syncrig import append, device_db, edge, wait_synced
from sync.outbox import Outbox
from sync.replica import MemoryDocStore, Replica

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent


def review(input: Any, context: Any) -> dict[str, Any]:
    """The cloud's hand-off target in the flood: half a second of work."""
    time.sleep(0.5)
    return {"verdict": "ok"}


def proc_status(pid: int) -> tuple[int, int]:
    """(threads, RSS in KiB) of a process, from /proc."""
    fields = dict(line.split(":", 1) for line in
                  Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0])


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.threads = self.rss_kib = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                t, r = proc_status(self.pid)
            except (OSError, KeyError, ValueError):
                return
            self.threads, self.rss_kib = max(self.threads, t), max(self.rss_kib, r)


def start_cloud(tmp: Path, port: int, limits: str = "") -> subprocess.Popen[bytes]:
    cfg = tmp / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{port}"\ninsecure = true\n[store]\n'
                   f'url = "sqlite:///{tmp / "cloud.db"}"\n[handoffs]\n'
                   f'review = "flood:review"\n[limits]\n{limits}\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), str(SUPPORT), str(SUPPORT.parent),
         *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.Popen([sys.executable, "-m", "sync.cloud.cli", "run", "--config",
                             str(cfg)], env=env, stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "cloud.log", "ab"))


def sync_time(tmp: Path, port: int, name: str, records: int, timeout: float = 600) -> float:
    """Seconds for a device to have `records` records acked by the cloud."""
    db = tmp / f"{name}.db"
    device_db(db)
    append(db, "checkpoints", records)
    e = edge(db, port, name)
    start = time.monotonic()
    e.start()
    try:
        wait_synced(db, timeout=timeout)
        return time.monotonic() - start
    finally:
        e.shutdown()


def requests_of(device: str, first: int, n: int) -> list[bytes]:
    replica = Replica(device, MemoryDocStore())
    out = []
    due = time.time() + 300
    for i in range(first, first + n):
        run_id, key = f"r-{i}", f"handoff/k-{i}"
        lease = replica.write("runs.lease", run_id, {"owner": "cloud", "lease": key,
                                                     "state": "held", "until": due})
        out.append(msgpack.packb({
            "run_id": run_id, "workflow": "w", "node": "review", "key": key,
            "target": "review", "input": {"i": i}, "context": {"input": {"i": i}},
            "traceparent": None, "timeout_at": due, "ts": time.time(),
            "lease": lease.encode()}))
    return out


def flood(tmp: Path, port: int, requests: int, spread_s: float, stop: threading.Event
          ) -> tuple[Any, Counter[str], Path]:
    """The flooding device: appends `requests` hand-off requests over `spread_s` seconds.
    Returns its EdgeSync (running), the answers it got so far by kind, and its database."""
    db = tmp / "flooder.db"
    device_db(db)
    answers: Counter[str] = Counter()

    def handler(conn: Any, cmd: Any) -> dict[str, Any]:
        answers["busy" if cmd.args.get("busy") else "ran"] += 1
        return {}
    e = edge(db, port, "flooder", handler=handler)
    e.start()

    def write() -> None:
        conn = sqlite3.connect(db, isolation_level=None, timeout=30)
        ob = Outbox(conn)
        steps = 50
        for step in range(steps):
            if stop.is_set():
                break
            n = requests // steps + (1 if step < requests % steps else 0)
            conn.execute("BEGIN IMMEDIATE")
            for payload in requests_of("flooder", step * requests, n):
                ob.append("control", "handoff.request", payload)
            conn.execute("COMMIT")
            e.notify()
            time.sleep(spread_s / steps)
        conn.close()
    threading.Thread(target=write, daemon=True).start()
    return e, answers, db


def cloud_status(tmp: Path) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "sync.cloud.cli", "status", "--json",
                        "--config", str(tmp / "cloud.toml")], capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    out: dict[str, Any] = json.loads(r.stdout)
    return out


def measure(tmp: Path, port: int, *, requests: int, records: int, spread_s: float = 5.0,
            start_after_s: float | None = None, limits: str = "") -> dict[str, Any]:
    """The figures: the second device's sync time alone and during the flood, the cloud's
    peak threads and RSS, the flood's answers, and the cloud's own counters."""
    cloud = start_cloud(tmp, port, limits)
    stop = threading.Event()
    flooder = None
    try:
        try:
            sync_time(tmp, port, "probe", 1, timeout=30)  # the cloud is up and answering
        except AssertionError:
            raise AssertionError("the cloud did not answer: "
                                 + (tmp / "cloud.log").read_text()[-2000:]) from None
        idle = proc_status(cloud.pid)
        sampler = Sampler(cloud.pid)
        sampler.start()
        alone = sync_time(tmp, port, "alone", records)
        flooder, answers, fdb = flood(tmp, port, requests, spread_s, stop)
        time.sleep(spread_s / 2 if start_after_s is None else start_after_s)
        during = sync_time(tmp, port, "during", records)
        wait_synced(fdb, timeout=600)  # every request stored, every answer's result too
        deadline = time.monotonic() + 120
        while sum(answers.values()) < requests and time.monotonic() < deadline:
            time.sleep(0.2)
        sampler.stop.set()
        deadline = time.monotonic() + 10  # the counters are written every second
        while True:
            status = cloud_status(tmp)
            counted = status.get("work", {}).get("handoffs", {}).get("busy", 0)
            if counted >= answers["busy"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return {"requests": requests, "records": records, "spread_s": spread_s,
                "start_after_s": spread_s / 2 if start_after_s is None else start_after_s,
                "sync_alone_s": round(alone, 3), "sync_during_flood_s": round(during, 3),
                "ratio": round(during / alone, 2), "answers": dict(answers),
                "idle_threads": idle[0], "idle_rss_mib": round(idle[1] / 1024, 1),
                "peak_threads": sampler.threads, "peak_rss_mib": round(sampler.rss_kib / 1024, 1),
                "work": status.get("work", {})}
    finally:
        stop.set()
        if flooder is not None:
            flooder.shutdown()
        cloud.terminate()
        try:
            cloud.wait(10)
        except subprocess.TimeoutExpired:
            cloud.kill()
            cloud.wait()
