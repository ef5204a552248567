"""bench.fleet's fault run, small: simulated devices through a real broker into PostgreSQL
while a worker is SIGKILLed and the broker restarted; nothing lost, nothing twice."""

from __future__ import annotations

from pathlib import Path

from support.broker import Broker
from support.postgres import Postgres

from bench.fleet import run


def test_a_worker_killed_and_the_broker_restarted_lose_nothing(
        tmp_path: Path, broker: Broker, pg_cluster: Postgres) -> None:
    r = run(tmp_path, broker, pg_cluster, "faults", 2, 200, 100, fault=True,
            fault_after_s=0.1)
    assert r["devices_done"] == 200
    assert (r["lost"], r["duplicated"], r["quarantined"]) == (0, 0, 0)
    assert r["devices_complete"] == 200 and r["stored"] == 200 * 100
