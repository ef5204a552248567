"""The writer contract both engine stores keep (`store.backend.Writer`): the group-committing
writer on a SQLite file and the batching writer on PostgreSQL. Concurrent writes all land
and each gets its own value; a write that fails fails alone, its rows rolled back; a
continuation runs once, after the commit that holds its write."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.postgres import fresh_pg_url

from edge_agent.errors import StoreError
from edge_agent.store import Prepared
from edge_agent.store.backend import Database, Writer
from edge_agent.store.opening import open_database, writer_for


@pytest.fixture(params=["sqlite", "postgresql"])
def writer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Writer]:
    target = str(tmp_path / "w.db") if request.param == "sqlite" else \
        fresh_pg_url(request.getfixturevalue("pg_cluster"))
    db = open_database(target)
    db.write(lambda c: c.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v BIGINT NOT NULL)"))
    w = writer_for(db)
    try:
        yield w
    finally:
        w.shutdown()
        db.close()


def rows(db: Database) -> dict[str, int]:
    return {r[0]: r[1] for r in db.read(lambda c: c.execute("SELECT k, v FROM t").fetchall())}


def insert(k: str, v: int) -> Prepared:
    return Prepared([("INSERT INTO t (k, v) VALUES (?, ?)", (k, v))])


def test_concurrent_writes_all_land_each_with_its_value(writer: Writer) -> None:
    got: dict[str, Any] = {}

    def one(i: int) -> None:
        for j in range(40):
            k = f"{i}-{j}"
            got[k] = writer.write(lambda c, k=k, n=i * 100 + j: (
                c.execute("INSERT INTO t (k, v) VALUES (?, ?)", (k, n)), n)[1])
    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = rows(writer.store)
    assert len(stored) == 320 and stored == got


def test_a_failing_write_fails_alone(writer: Writer) -> None:
    errors: list[BaseException] = []
    start = threading.Barrier(9)

    def bad() -> None:
        start.wait()
        try:
            writer.write(lambda c: (c.execute("INSERT INTO t (k, v) VALUES ('bad', 1)"),
                                    1 / 0))
        except ZeroDivisionError as exc:
            errors.append(exc)

    def dup(i: int) -> None:  # a prepared write that breaks a key: the batch's others land
        start.wait()
        try:
            writer.write(insert("dup", i))
        except StoreError as exc:
            errors.append(exc)

    def good(i: int) -> None:
        start.wait()
        for j in range(20):
            writer.write(insert(f"g{i}-{j}", j))
    threads = [threading.Thread(target=bad), threading.Thread(target=dup, args=(1,)),
               threading.Thread(target=dup, args=(2,))] + \
        [threading.Thread(target=good, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = rows(writer.store)
    assert "bad" not in stored
    assert sum(k.startswith("g") for k in stored) == 120
    assert stored["dup"] in (1, 2)
    assert sorted(type(e).__name__ for e in errors) == ["StoreError", "ZeroDivisionError"]


def test_a_continuation_runs_once_after_its_commit(writer: Writer) -> None:
    seen: list[tuple[bool, Any, bool]] = []
    done = threading.Event()
    lock = threading.Lock()

    def then(ok: bool, value: Any) -> None:
        visible = "c" in rows(writer.store) if ok else False
        with lock:
            seen.append((ok, value if ok else type(value).__name__, visible))
            if len(seen) == 2:
                done.set()
    writer.write_then(lambda c: (c.execute("INSERT INTO t (k, v) VALUES ('c', 7)"), 7)[1],
                      then)
    writer.write_then(lambda c: 1 / 0, then)
    assert done.wait(10)
    assert sorted(seen, key=str) == sorted([(True, 7, True), (False, "ZeroDivisionError",
                                                                False)], key=str)
