"""Several cloud runners on one PostgreSQL database (issue 30): runs are leased to runners,
a SIGKILLed runner's runs are taken over by the others once their leases expire, and under
a random-kill loop (a random runner, never all of them at once) every run ends, each call of
the non-idempotent tool made at most once: a run completes with each of its calls made
exactly once, or it waits for a person, asked about a call whose outcome is unknown (a
runner killed between the call's intent and its result)."""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.daemon import DaemonProcess
from support.postgres import Postgres, fresh_pg_url
from support.runners import NODES, all_completed, ledger, queue_runs, setup

LEASE = {"EDGE_AGENT_LEASE_S": "2"}


def runner(home: Path, cfg: Path) -> DaemonProcess:
    return DaemonProcess(cfg, home, env=LEASE, argv=[
        sys.executable, "-m", "edge_agent", "cloud-run", "--config", str(cfg)], cwd=home)


def homes(tmp: Path, url: str, n: int, seconds: float = 0.05) -> list[tuple[Path, Path]]:
    """A directory and config per runner; the ledger (one file) is the first's."""
    out = []
    for i in range(n):
        home = tmp / f"r{i}"
        home.mkdir()
        cfg = setup(home, database=url, seconds=seconds)
        if i:
            (home / "ledger").symlink_to(tmp / "r0" / "ledger")
        out.append((home, cfg))
    (tmp / "r0" / "ledger").touch()
    return out


def asked_of_a_person(url: str) -> dict[str, Any]:
    """Runs waiting for a person (the workflow has no gate of its own: each is a call whose
    outcome is unknown): run -> the kind of its pending approval."""
    import psycopg
    with psycopg.connect(url) as c:
        rows = c.execute(
            "SELECT r.run_id, a.kind FROM runs r JOIN approvals a ON a.run_id = r.run_id"
            " WHERE r.status = 'waiting_approval' AND a.status = 'pending'").fetchall()
    return dict(rows)


def under_way_at(url: str, times: list[float]) -> int:
    """Runs that had a step started before one of `times` and a step finished after it."""
    import psycopg
    with psycopg.connect(url) as c:
        spans = c.execute("SELECT run_id, min(started_at), max(finished_at) FROM steps"
                          " GROUP BY run_id").fetchall()
    return sum(1 for _, first, last in spans if first is not None and last is not None
               and any(first < t < last for t in times))


def check_ledger(tmp: Path, url: str, counts: dict[str, int]) -> None:
    lines = ledger(tmp / "r0")
    twice = {k: v for k, v in lines.items() if v > 1}
    assert not twice, twice  # no call made twice
    asked = asked_of_a_person(url)
    assert len(asked) == counts.get("waiting_approval", 0), (asked, counts)
    made = sum(lines.values())
    # every completed run made each of its calls; a run asked about one made the ones before
    assert made >= counts.get("completed", 0) * len(NODES), (made, counts)


def test_two_runners_share_the_runs_and_take_over_a_dead_ones(tmp_path: Path,
                                                              pg_cluster: Postgres) -> None:
    url = fresh_pg_url(pg_cluster)
    (h0, c0), (h1, c1) = homes(tmp_path, url, 2)
    a, b = runner(h0, c0), runner(h1, c1)
    try:
        a.start().wait_for("READY=1", timeout=60)
        b.start().wait_for("READY=1", timeout=60)
        rids = queue_runs(c0, 30)
        time.sleep(0.5)
        a.kill()  # mid-load: its runs resume on b once their leases expire
        counts = all_completed(c1, rids, b, timeout=120, ended=("completed", "waiting_approval"))
        check_ledger(tmp_path, url, counts)
        log = b.output()
        assert "Traceback" not in log and "failed inside the engine" not in log, log
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("seed", [7])
def test_random_runners_killed_nothing_lost_or_repeated(tmp_path: Path, pg_cluster: Postgres,
                                                        seed: int) -> None:
    """Three runners, runs queued all along (each call takes 0.3 s); every 0.3-1.5 s one
    runner, at random, is SIGKILLed and started again, never all three at once; then every
    run ends (completed, or asking a person about an unknown outcome), no call was made
    twice, and the kills landed while runs were under way."""
    rng = random.Random(seed)
    url = fresh_pg_url(pg_cluster)
    places = homes(tmp_path, url, 3, seconds=0.3)
    runners = [runner(h, c) for h, c in places]
    try:
        for r in runners:
            r.start().wait_for("READY=1", timeout=60)
        rids = queue_runs(places[0][1], 12)
        kills = 0
        killed_at: list[float] = []
        deadline = time.time() + 12
        while time.time() < deadline:
            rids += queue_runs(places[0][1], 4)
            time.sleep(rng.uniform(0.3, 1.5))
            i = rng.randrange(len(runners))
            killed_at.append(time.time())
            runners[i].close()
            kills += 1
            home, cfg = places[i]
            runners[i] = runner(home, cfg)
            runners[i].start().wait_for("READY=1", timeout=60)
        assert kills >= 5

        def output() -> str:
            return "\n".join(r.output()[-1500:] for r in runners)
        counts = all_completed(places[0][1], rids, output, timeout=180,
                               ended=("completed", "waiting_approval"))
        check_ledger(tmp_path, url, counts)
        # each kill leaves every run in a call on that runner asking a person (its outcome is
        # unknown): 12 kills can leave half the runs so (3 to 28 of 56, measured); a quarter
        # completed shows the runners went on driving them
        assert counts.get("completed", 0) >= len(rids) // 4, counts
        # the kills landed while runs were under way (a run with steps before and after one)
        assert under_way_at(url, killed_at) > 0
    finally:
        for r in runners:
            r.close()
