"""How the cloud runner writes to PostgreSQL (issue 30): concurrent runs' transitions share a
transaction with one statement per table (the lease fences included), a fence that fails
in such a batch fails only its own run, a claim commits, and nothing is written to an
outbox that nothing reads (the one row per stream that every step updated serialized
runners sharing the database)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from support.postgres import Postgres, fresh_pg_url
from support.proxy import Proxy

from edge_agent.config.model import RetryPolicy
from edge_agent.engine import Engine, ToolBinding, queue_run
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.store.leases import LeaseLost, RunScoped
from edge_agent.store.merge import Prepared, joined
from edge_agent.store.opening import open_database, writer_for
from edge_agent.store.pg_leases import RunLeases
from edge_agent.store.postgres import PgConnection, PgStore, PgWriter

WORKFLOWS = {"w": object()}  # queue_run needs only the name here


@pytest.fixture
def store(pg_cluster: Postgres) -> Iterator[PgStore]:
    s = PgStore(fresh_pg_url(pg_cluster))
    try:
        yield s
    finally:
        s.close()


def a_run(store: PgStore) -> str:
    return str(store.write(lambda c: queue_run(lambda fn: fn(c), workflow="w", input={},
                                               workflows=WORKFLOWS)))


def transition(leases: RunLeases, rid: str, node: str) -> RunScoped:
    """A transition as the engine writes one: the fence first, then the run's row."""
    fence = leases.fence(rid)
    assert fence is not None
    return RunScoped(Prepared([fence, ("UPDATE runs SET node = ?, updated_at = ? WHERE"
                                       " run_id = ?", (node, 1.0, rid))]), rid)


def in_one_batch(writer: PgWriter, writes: list[Any]) -> list[tuple[bool, Any]]:
    """Queue `writes` while another writer holds the lead (its transaction waits on an
    event), so that they are committed together, in the batch after it."""
    entered, release = threading.Event(), threading.Event()

    def blocker(c: Any) -> None:
        entered.set()
        release.wait(10)
    lead = threading.Thread(target=writer.write, args=(blocker,))
    lead.start()
    assert entered.wait(10)
    outcomes: list[tuple[bool, Any]] = []
    done = threading.Semaphore(0)

    def then(ok: bool, value: Any) -> None:
        outcomes.append((ok, value))
        done.release()
    for w in writes:
        writer.write_then(w, then)
    release.set()
    lead.join(10)
    for _ in writes:
        assert done.acquire(timeout=10)
    return outcomes


def counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements sent, each marked `piped:` when it went out in pipeline mode (with
    the statements around it, in one round trip)."""
    from psycopg.pq import PipelineStatus
    sent: list[str] = []
    real, real_many = PgConnection.execute, PgConnection.executemany

    def mark(self: PgConnection, sql: str) -> str:
        piped = self.raw.pgconn.pipeline_status != PipelineStatus.OFF
        return f"piped:{sql}" if piped else sql

    def execute(self: PgConnection, sql: str, *a: Any) -> Any:
        sent.append(mark(self, sql))
        return real(self, sql, *a)

    def executemany(self: PgConnection, sql: str, *a: Any) -> Any:
        sent.append(mark(self, sql))
        return real_many(self, sql, *a)
    monkeypatch.setattr(PgConnection, "execute", execute)
    monkeypatch.setattr(PgConnection, "executemany", executemany)
    return sent


def test_a_batch_of_transitions_is_one_statement_per_table(
        store: PgStore, monkeypatch: pytest.MonkeyPatch) -> None:
    leases = RunLeases(store, "runner-a")
    rids = [a_run(store) for _ in range(5)]
    assert all(leases.claim(r) for r in rids)
    writer = PgWriter(store)
    try:
        sent = counting(monkeypatch)
        outcomes = in_one_batch(writer, [transition(leases, r, "next") for r in rids])
    finally:
        writer.shutdown()
    assert [ok for ok, _ in outcomes] == [True] * 5
    fences = [s for s in sent if "run_lease_check" in s]
    updates = [s for s in sent if "UPDATE runs" in s]
    assert len(fences) == 1 and "FROM (VALUES" in fences[0]  # five fences, one statement
    assert len(updates) == 1 and "FROM (VALUES" in updates[0]
    # BEGIN and the statements in one round trip (pipeline mode), then COMMIT alone
    assert fences[0].startswith("piped:") and updates[0].startswith("piped:")
    assert sent[-1] == "COMMIT"
    nodes = store.read(lambda c: c.execute(
        "SELECT DISTINCT node FROM runs WHERE run_id = ANY(?)", (rids,)).fetchall())
    assert [n[0] for n in nodes] == ["next"]


def test_a_runs_start_merged_with_its_first_step_keeps_its_order(store: PgStore) -> None:
    """A run's start (its row at the start node) rides on its first step's commit; merged
    with another run's transition that came first, the start's UPDATE still goes before the
    step's, or the run would be written back to its start node."""
    leases = RunLeases(store, "runner-a")
    going, starting = a_run(store), a_run(store)
    assert leases.claim(going) and leases.claim(starting)
    start = Prepared([("UPDATE runs SET status = ?, node = ?, updated_at = ? WHERE run_id = ?",
                       ("running", "first", 1.0, starting))])
    writer = PgWriter(store)
    try:
        outcomes = in_one_batch(writer, [transition(leases, going, "second"),
                                         joined(start, transition(leases, starting, "second"))])
    finally:
        writer.shutdown()
    assert [ok for ok, _ in outcomes] == [True, True]
    rows = dict(store.read(lambda c: c.execute(
        "SELECT run_id, node || ' ' || status FROM runs WHERE run_id IN (?, ?)",
        (going, starting)).fetchall()))
    assert rows == {going: "second queued", starting: "second running"}


def test_a_lost_lease_in_a_batch_fails_only_its_own_run(store: PgStore) -> None:
    mine, theirs = RunLeases(store, "runner-a"), RunLeases(store, "runner-b")
    kept, lost = a_run(store), a_run(store)
    assert mine.claim(kept) and theirs.claim(lost)
    writer = PgWriter(store)
    try:
        outcomes = in_one_batch(writer, [transition(mine, kept, "moved"),
                                         transition(mine, lost, "stolen")])
    finally:
        writer.shutdown()
    assert outcomes[0] == (True, None)
    ok, error = outcomes[1]
    assert not ok and isinstance(error, LeaseLost)
    nodes = dict(store.read(lambda c: c.execute(
        "SELECT run_id, node FROM runs WHERE run_id IN (?, ?)", (kept, lost)).fetchall()))
    assert nodes[kept] == "moved" and nodes[lost] != "stolen"  # nothing of its written


def test_a_lone_transition_on_a_lost_lease_writes_nothing_and_the_writer_goes_on(
        store: PgStore) -> None:
    mine, theirs = RunLeases(store, "runner-a"), RunLeases(store, "runner-b")
    rid, other = a_run(store), a_run(store)
    assert theirs.claim(rid) and mine.claim(other)
    writer = PgWriter(store)
    try:
        with pytest.raises(LeaseLost):
            writer.write(transition(mine, rid, "stolen"))
        writer.write(transition(mine, other, "moved"))  # the same connection, usable
    finally:
        writer.shutdown()
    nodes = dict(store.read(lambda c: c.execute(
        "SELECT run_id, node FROM runs WHERE run_id IN (?, ?)", (rid, other)).fetchall()))
    assert nodes == {rid: None, other: "moved"}


class Noop:
    name = "noop"
    idempotent = True
    blocks = False

    def call(self, args: Any, *, idempotency_key: str) -> dict[str, Any]:
        return {"ok": True}


def test_the_runner_keeps_no_outbox_records_and_its_runs_complete(pg_cluster: Postgres,
                                                                 tmp_path: Any) -> None:
    """The same workflow on a device's SQLite file keeps its records for its sync; on the
    runner's PostgreSQL nothing is written to the outbox and no stream's row moves."""
    wf = (Workflow("w").tool("a", "noop", next="b").tool("b", "noop", next="done")
          .end("done").build(tools={"noop": tool_config("noop")}))

    async def runs(target: str) -> tuple[int, int, int]:
        store = open_database(target)
        writer = writer_for(store)
        leases = RunLeases(store, "runner-a").start() if isinstance(store, PgStore) else None
        engine = Engine(store=store, writer=writer, workflows={"w": wf},
                        tools={"noop": ToolBinding(Noop(), retry=RetryPolicy())},
                        leases=leases)
        await engine.start()
        try:
            rids = [await asyncio.to_thread(queue_run, writer.write, workflow="w", input={},
                                            workflows={"w": wf}) for _ in range(8)]
            await asyncio.gather(*(engine.settle(r) for r in rids))
            return store.read(lambda c: (
                c.execute("SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()[0],
                c.execute("SELECT count(*) FROM outbox").fetchone()[0],
                c.execute("SELECT max(last_seq) FROM outbox_streams").fetchone()[0]))
        finally:
            await engine.shutdown()
            if leases is not None:
                leases.close()
            writer.shutdown()
            store.close()

    completed, records, last = asyncio.run(runs(str(tmp_path / "device.db")))
    assert completed == 8 and records >= 8 * 4 and last >= 8 * 4
    assert asyncio.run(runs(fresh_pg_url(pg_cluster))) == (8, 0, 0)


class CommitCutter(Proxy):
    """A TCP proxy in front of PostgreSQL that, once armed, cuts the client's connection at
    its next COMMIT: `answer_lost` forwards the COMMIT and cuts when the server answers
    (committed, the client never hears so); otherwise it cuts without forwarding it (the
    server rolls the transaction back when it finds the client gone)."""

    def __init__(self, port: int) -> None:
        self.armed: str | None = None
        self.cuts = 0
        self._swallow: dict[Any, threading.Event] = {}  # client socket -> answer dropped
        super().__init__(port)

    def _pipe(self, a: Any, b: Any, up: bool) -> None:
        swallow = self._swallow.setdefault(a if up else b, threading.Event())
        try:
            while data := a.recv(65536):
                if up and self.armed and b"COMMIT\x00" in data:
                    mode, self.armed = self.armed, None
                    self.cuts += 1
                    if mode != "answer_lost":
                        break  # cut before the server sees it
                    swallow.set()  # its answer is dropped, and both ends cut
                elif swallow.is_set():
                    break  # the server's answer to the COMMIT
                b.sendall(data)
        except OSError:
            pass
        if up and swallow.is_set():
            return  # the other direction cuts, once the server has answered
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()


@pytest.mark.parametrize("cut", ["answer_lost", "never_sent"])
def test_a_commit_cut_off_is_written_once(pg_cluster: Postgres, cut: str) -> None:
    """The connection is lost at a transition's COMMIT (its BEGIN and statements went out in
    one pipeline before it): when the server had committed, the writer learns so from the
    transaction's id and the step is not written again; when it had not, the transition
    is written once the database answers. Either way: one step row, no error."""
    url = fresh_pg_url(pg_cluster)
    proxy = CommitCutter(int(url.rsplit(":", 1)[1].split("/")[0]))
    through = url.replace(f":{proxy.target}/", f":{proxy.port}/")
    store = PgStore(through, retry=True)
    writer = PgWriter(store)
    try:
        leases = RunLeases(store, "runner-a")
        rid = a_run(store)
        assert leases.claim(rid)
        fence = leases.fence(rid)
        assert fence is not None
        step = RunScoped(Prepared([fence, (
            "INSERT INTO steps (run_id, node, attempt, status, started_at, finished_at)"
            " VALUES (?, ?, ?, ?, ?, ?)", (rid, "a", 1, "completed", 1.0, 2.0))]), rid)
        proxy.armed = cut
        writer.write(step)
        assert proxy.cuts == 1
        assert store.read(lambda c: c.execute(
            "SELECT count(*) FROM steps WHERE run_id = ?", (rid,)).fetchone()[0]) == 1
    finally:
        writer.shutdown()
        store.close()
        proxy.close()
