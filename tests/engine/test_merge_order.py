"""Merging a batch of prepared writes keeps each write's own order of statements: a run's
start (its row at the start node) goes before its first step's checkpoint even when another
run's transition came first, a statement a write repeats (two step rows) is no conflict,
and writes that need opposite orders are refused (each then runs alone)."""

from __future__ import annotations

import sqlite3

import pytest

from edge_agent.store.merge import Prepared, write_merged

START = "UPDATE runs SET node = ?, status = 'running' WHERE run_id = ?"
MOVE = "UPDATE runs SET node = ? WHERE run_id = ?"
STEP = "INSERT INTO steps (run_id, node) VALUES (?, ?)"


@pytest.fixture
def conn() -> sqlite3.Connection:
    c = sqlite3.connect(":memory:", isolation_level=None)
    c.execute("CREATE TABLE runs (run_id TEXT PRIMARY KEY, node TEXT, status TEXT)")
    c.execute("CREATE TABLE steps (id INTEGER PRIMARY KEY, run_id TEXT, node TEXT)")
    c.executemany("INSERT INTO runs VALUES (?, NULL, 'queued')", [("a",), ("b",)])
    return c


def test_a_start_merged_after_another_runs_step_still_goes_first(
        conn: sqlite3.Connection) -> None:
    going = Prepared([(STEP, ("a", "s1")), (MOVE, ("s2", "a"))])
    starting = Prepared([(START, ("s1", "b")), (STEP, ("b", "s1")), (STEP, ("b", "end")),
                         (MOVE, ("s2", "b"))])
    write_merged(conn, [going, starting])
    assert dict(conn.execute("SELECT run_id, node || ' ' || status FROM runs")) == {
        "a": "s2 queued", "b": "s2 running"}
    assert [tuple(r) for r in conn.execute("SELECT run_id, node FROM steps ORDER BY id")] == [
        ("a", "s1"), ("b", "s1"), ("b", "end")]


def test_writes_that_need_opposite_orders_are_not_merged(conn: sqlite3.Connection) -> None:
    first = Prepared([(START, ("s1", "a")), (MOVE, ("s2", "a"))])
    second = Prepared([(MOVE, ("s1", "b")), (START, ("s2", "b"))])
    with pytest.raises(Exception):  # noqa: B017 - the caller runs each write alone
        write_merged(conn, [first, second])
