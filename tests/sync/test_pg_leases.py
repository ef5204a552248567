"""Run leases on a real PostgreSQL database (issue 30): a run is one runner's until its lease
expires, every write of its steps is fenced by the lease, a claim never waits on a row
another runner is writing (SKIP LOCKED), and a database built by migration 1 upgrades."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.postgres import Postgres, fresh_pg_url

from edge_agent.engine import queue_run
from edge_agent.store.leases import LeaseLost, scoped
from edge_agent.store.pg_leases import RunLeases
from edge_agent.store.pg_migrations import PG_MIGRATIONS
from edge_agent.store.postgres import PgStore

WORKFLOWS = {"w": object()}  # queue_run needs only the name here


@pytest.fixture
def url(pg_cluster: Postgres) -> str:
    return fresh_pg_url(pg_cluster)


@pytest.fixture
def stores(url: str) -> Iterator[tuple[PgStore, PgStore]]:
    a, b = PgStore(url), PgStore(url)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def a_run(store: PgStore) -> str:
    return str(store.write(lambda c: queue_run(lambda fn: fn(c), workflow="w", input={},
                                               workflows=WORKFLOWS)))


def touch(store: PgStore, leases: RunLeases, rid: str) -> None:
    """A write of the run's, fenced by `leases`."""
    store.write(scoped(leases, rid, lambda c: c.execute(
        "UPDATE runs SET updated_at = updated_at + 1 WHERE run_id = ?", (rid,))))


def test_a_run_is_one_runners_until_its_lease_expires(stores: tuple[PgStore, PgStore]
                                                      ) -> None:
    sa, sb = stores
    a, b = RunLeases(sa, "a", lease_s=1.0), RunLeases(sb, "b", lease_s=1.0)
    rid = a_run(sa)
    assert rid in b.orphans()  # queued, and nobody's yet
    assert a.claim(rid) and a.claim(rid)  # its own again
    assert not b.claim(rid)
    assert rid not in b.orphans()
    touch(sa, a, rid)  # the holder writes (and renews)
    with pytest.raises(LeaseLost, match="leased to another runner"):
        touch(sb, b, rid)  # the other's write is refused, nothing written
    time.sleep(1.2)  # a stops renewing: as if SIGKILLed
    sa.write(lambda c: c.execute("UPDATE runs SET status = 'running' WHERE run_id = ?",
                                 (rid,)))
    assert rid in b.orphans()
    assert b.claim(rid)  # taken over
    with pytest.raises(LeaseLost):
        touch(sa, a, rid)  # the old holder's late write is fenced off
    touch(sb, b, rid)
    release = b.release(rid)
    assert release is not None
    sb.write(lambda c: c.execute(*release))
    assert a.claim(rid)  # released: free for anyone


def test_a_claim_skips_a_row_being_written_rather_than_wait(
        stores: tuple[PgStore, PgStore]) -> None:
    sa, sb = stores
    a, b = RunLeases(sa, "a", lease_s=0.5), RunLeases(sb, "b", lease_s=0.5)
    rid = a_run(sa)
    assert a.claim(rid)
    time.sleep(0.6)  # expired, but a is writing the run right now (its row is locked)
    with sa.atomic(lock=False) as conn:
        fence = a.fence(rid)
        assert fence is not None
        conn.execute(*fence)
        started = time.monotonic()
        assert not b.claim(rid)  # SKIP LOCKED: no wait, not taken
        assert time.monotonic() - started < 0.5
    time.sleep(0.6)
    assert b.claim(rid)


def test_the_renewal_keeps_a_held_run(stores: tuple[PgStore, PgStore]) -> None:
    sa, sb = stores
    a, b = RunLeases(sa, "a", lease_s=0.6), RunLeases(sb, "b", lease_s=0.6)
    rid = a_run(sa)
    assert a.claim(rid)
    a.start()
    try:
        time.sleep(1.5)  # over two leases: the renewal thread kept it
        assert not b.claim(rid)
    finally:
        a.close()  # hands its leases back
    assert b.claim(rid)


def test_a_database_of_migration_1_upgrades(url: str) -> None:
    old = PgStore(url, migrations=PG_MIGRATIONS[:1])
    try:
        rid = a_run(old)
        assert old.read(lambda c: c.execute("SELECT to_regclass('run_leases')").fetchone()[0]
                        ) is None
    finally:
        old.close()
    new = PgStore(url)
    try:
        assert new.read(lambda c: c.execute("SELECT version FROM schema_version"
                                            ).fetchone()[0]) == PG_MIGRATIONS[-1][0]
        assert RunLeases(new, "a").claim(rid)  # the run kept, and leased now
    finally:
        new.close()
