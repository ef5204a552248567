"""The outbox: order, watermarks, bounds, and Hypothesis over random interleavings with reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync.outbox import SCHEMA, STREAMS, Outbox, OutboxFull, UnknownStream


def open_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    if not conn.execute("SELECT name FROM sqlite_master WHERE name = 'outbox'").fetchone():
        for sql in SCHEMA:
            conn.execute(sql)
    return conn


def test_append_is_part_of_the_callers_transaction(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "o.db")
    ob = Outbox(conn)
    conn.execute("BEGIN IMMEDIATE")
    assert ob.append("checkpoints", "a", b"1") == 1
    conn.execute("ROLLBACK")  # the state change failed: its record vanishes with it
    conn.execute("BEGIN IMMEDIATE")
    assert ob.append("checkpoints", "b", b"2") == 1  # no gap
    assert ob.append("checkpoints", "c", b"3") == 2
    assert ob.append("control", "d", b"4") == 1  # one sequence per stream
    conn.execute("COMMIT")
    assert [r.kind for r in ob.pending("checkpoints")] == ["b", "c"]
    with pytest.raises(UnknownStream):
        ob.append("logs", "x", b"")


def test_ack_moves_forward_only_and_truncate_keeps_pending(tmp_path: Path) -> None:
    conn = open_db(tmp_path / "o.db")
    ob = Outbox(conn)
    for i in range(10):
        ob.conn.execute("BEGIN")
        ob.append("traces", "t", bytes([i]) * 10)
        ob.conn.execute("COMMIT")
    assert ob.ack("traces", 4) == 4
    assert ob.ack("traces", 2) == 4  # never back
    conn2 = open_db(tmp_path / "o2.db")
    ob2 = Outbox(conn2)
    for _ in range(5):
        conn2.execute("BEGIN")
        ob2.append("metrics", "m", b"x" * 10)
        conn2.execute("COMMIT")
    assert ob2.ack("metrics", 99) == 5  # never past the last record
    ob2.ack("metrics", 5)
    st_ = ob2.stats()["metrics"]
    assert (st_.pending, st_.pending_bytes, st_.acked_seq, st_.last_seq) == (0, 0, 5, 5)
    assert ob2.truncate() == 5
    assert ob.truncate() == 4
    assert ob.stats()["traces"].pending == 6  # truncation never touches unacked records
    assert [r.seq for r in ob.pending("traces")] == [5, 6, 7, 8, 9, 10]


def test_pending_batches_by_count_and_bytes(tmp_path: Path) -> None:
    ob = Outbox(open_db(tmp_path / "o.db"))
    ob.conn.execute("BEGIN")
    for _ in range(20):
        ob.append("checkpoints", "k", b"x" * 100)
    ob.conn.execute("COMMIT")
    assert [r.seq for r in ob.pending("checkpoints", limit=5)] == [1, 2, 3, 4, 5]
    assert len(ob.pending("checkpoints", max_bytes=350)) == 3
    assert len(ob.pending("checkpoints", max_bytes=10)) == 1  # an oversized record still goes
    assert [r.seq for r in ob.pending("checkpoints", after=18)] == [19, 20]


def test_bounds_drop_oldest_for_telemetry_and_refuse_for_checkpoints(tmp_path: Path) -> None:
    ob = Outbox(open_db(tmp_path / "o.db"), limits={"traces": 1000, "checkpoints": 1000})
    ob.conn.execute("BEGIN")
    for _ in range(25):
        ob.append("traces", "span", b"s" * 100)
    ob.conn.execute("COMMIT")
    s = ob.stats()["traces"]
    assert s.pending_bytes <= 1000 and s.dropped == 15 and s.last_seq == 25
    assert next(r.seq for r in ob.pending("traces")) == 16  # the oldest went
    ob.conn.execute("BEGIN")
    for _ in range(10):
        ob.append("checkpoints", "c", b"c" * 100)
    with pytest.raises(OutboxFull) as info:
        ob.append("checkpoints", "c", b"c" * 100)
    ob.conn.execute("COMMIT")
    assert info.value.retryable and info.value.stream == "checkpoints"
    assert ob.stats()["checkpoints"].dropped == 0
    ob.ack("checkpoints", 5)
    ob.conn.execute("BEGIN")
    ob.append("checkpoints", "c", b"c" * 100)  # room again once the cloud acknowledged
    ob.conn.execute("COMMIT")


ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.sampled_from(STREAMS), st.integers(1, 300)),
    st.tuples(st.just("read"), st.sampled_from(STREAMS), st.integers(1, 20)),
    st.tuples(st.just("ack"), st.sampled_from(STREAMS), st.integers(0, 30)),
    st.tuples(st.just("truncate"), st.sampled_from(STREAMS), st.integers(0, 3)),
    st.tuples(st.just("reopen"), st.sampled_from(STREAMS), st.integers(0, 0)),
), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops)
def test_no_acked_record_returns_and_no_unacked_is_lost(tmp_path_factory: pytest.TempPathFactory,
                                                        ops: list[tuple[str, str, int]]) -> None:
    path = tmp_path_factory.mktemp("prop") / "o.db"
    conn = open_db(path)
    ob = Outbox(conn)
    model: dict[str, list[int]] = {s: [] for s in STREAMS}  # unacked seqs, in order
    acked: dict[str, int] = dict.fromkeys(STREAMS, 0)
    last: dict[str, int] = dict.fromkeys(STREAMS, 0)
    for op, stream, n in ops:
        if op == "append":
            conn.execute("BEGIN IMMEDIATE")
            seq = ob.append(stream, "k", b"p" * n)
            conn.execute("COMMIT")
            assert seq == last[stream] + 1
            last[stream] = seq
            model[stream].append(seq)
        elif op == "read":
            got = [r.seq for r in ob.pending(stream, limit=n)]
            assert got == model[stream][:n]  # in order, nothing acked, nothing missing
        elif op == "ack":
            upto = min(acked[stream] + n, last[stream])
            ob.ack(stream, upto)
            acked[stream] = max(acked[stream], upto)
            model[stream] = [s for s in model[stream] if s > acked[stream]]
        elif op == "truncate":
            ob.truncate(keep_acked=n)
        else:
            conn.close()
            conn = open_db(path)
            ob = Outbox(conn)
        stats = ob.stats()[stream]
        assert stats.pending == len(model[stream])
        assert stats.acked_seq == acked[stream] and stats.last_seq == last[stream]
    for s in STREAMS:
        assert [r.seq for r in ob.pending(s, limit=10_000)] == model[s]
    conn.close()
