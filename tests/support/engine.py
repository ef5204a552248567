"""Engine fixtures: a real SQLite file per test, tools that write a device-side ledger."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.model import RetryPolicy
from edge_agent.engine import Engine, ToolBinding
from edge_agent.engine import queries as q
from edge_agent.store import GroupCommitter, Store
from edge_agent.store.opening import open_database, writer_for
from sync.outbox import has_reader

# the params schema of the ledger tools the engine tests call "stamp"
STAMP = {"type": "object", "properties": {"part": {"type": "string"}}, "required": ["part"]}


class LedgerError(Exception):
    def __init__(self, message: str, *, kind: str = "failed", retryable: bool = False) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


class LedgerTool:
    """Appends each execution to a file, as a device would remember what it did."""

    def __init__(self, name: str, ledger: Path, *, idempotent: bool = False,
                 fail: Callable[[int], LedgerError | None] | None = None,
                 delay_s: float = 0.0, result: Callable[[Mapping[str, Any]], dict] | None = None
                 ) -> None:
        self.name = name
        self.ledger = ledger
        self.idempotent = idempotent
        self.fail = fail
        self.delay_s = delay_s
        self.result = result
        self.calls = 0
        self._lock = threading.Lock()

    def call(self, args: Mapping[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        with self._lock:
            self.calls += 1
            n = self.calls
        if self.delay_s:
            time.sleep(self.delay_s)
        err = self.fail(n) if self.fail else None
        if err is not None:
            raise err
        with open(self.ledger, "a") as f:
            f.write(json.dumps({"tool": self.name, "key": idempotency_key, "args": dict(args)})
                    + "\n")
            f.flush()
            os.fsync(f.fileno())
        return self.result(args) if self.result else {"done": self.name, **dict(args)}


def ledger_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "edge-agent.db"


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger.jsonl"


class SharedTarget(str):
    """A postgresql:// URL that `Harness` serves with `runners` engines sharing it."""

    runners = 2


class AllRunners:
    """The engines of runners sharing one database, as one: `wake` goes to each (the run's
    lease decides which drives it); anything else is the first's."""

    def __init__(self, engines: list[Engine]) -> None:
        self.engines = engines

    def wake(self, run_id: str | None = None) -> None:
        for engine in self.engines:
            engine.wake(run_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engines[0], name)


class Harness:
    """Starts an engine over a store, and waits for runs to settle."""

    def __init__(self, db_path: Path | str, workflows: Mapping[str, Any],
                 tools: Mapping[str, ToolBinding], agent_runner: Any = None,
                 spans: bool = False) -> None:
        self.db_path = db_path
        self.workflows = workflows
        self.tools = tools
        self.agent_runner = agent_runner
        self.spans = spans
        self.store: Any = None  # a Store, or a PgStore when db_path is a postgresql:// URL
        self.writer: Any = None
        self.engine: Engine | None = None

    async def start(self) -> Engine:
        """One engine; or, for a target with `runners` > 1 (a `SharedTarget`), that many
        runners sharing the PostgreSQL database through leases, `engine` waking them all."""
        self.store = open_database(self.db_path)
        self.writer = writer_for(self.store)
        runners = int(getattr(self.db_path, "runners", 1))
        if runners == 1:
            self.engine = Engine(store=self.store, writer=self.writer,
                                 workflows=self.workflows, tools=self.tools,
                                 agent_runner=self.agent_runner)
            await self.engine.start()
            return self.engine
        from edge_agent.store.pg_leases import RunLeases
        self._runners = []
        for i in range(runners):
            store = self.store if i == 0 else open_database(self.db_path)
            writer = self.writer if i == 0 else writer_for(store)
            leases = RunLeases(store, f"runner-{i}", lease_s=2.0).start()
            engine = Engine(store=store, writer=writer, workflows=self.workflows,
                            tools=self.tools, agent_runner=self.agent_runner, leases=leases)
            await engine.start()
            self._runners.append((engine, leases, writer, store))
        self.engine = AllRunners([e for e, _, _, _ in self._runners])  # type: ignore[assignment]
        return self._runners[0][0]

    async def stop(self) -> None:
        runners = getattr(self, "_runners", [])
        if runners:
            for engine, leases, writer, store in runners:
                await engine.shutdown(timeout=5)
                leases.close()
                if writer is not self.writer:
                    writer.shutdown()
                    store.close()
            self._runners = []
        elif self.engine:
            await self.engine.shutdown(timeout=5)
        if self.writer:
            self.writer.shutdown()
        if self.store:
            self.store.close()
        self.engine = self.writer = self.store = None

    def queue(self, workflow: str, input: Any) -> str:
        from edge_agent.engine import queue_run
        assert self.writer is not None
        run_id = queue_run(self.writer.write, workflow=workflow, input=input,
                           workflows=self.workflows)
        assert self.engine is not None
        self.engine.wake(run_id)
        return run_id

    async def wait(self, run_id: str, *statuses: str, timeout: float = 10.0) -> Any:
        assert self.store is not None
        deadline = time.monotonic() + timeout
        while True:
            run = self.store.read(lambda c: q.get_run(c, run_id))
            if run is not None and run.status in statuses:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} is {run.status if run else None}, "
                                     f"wanted {statuses}")
            await asyncio.sleep(0.01)

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        assert self.store is not None
        return self.store.read(lambda c: q.steps(c, run_id))


def interrupted_call(db_path: Path | str, wf: Any, args: Mapping[str, Any]) -> str:
    """A run of workflow `w` whose first node `a` had started its non-idempotent call (the
    intent committed) and never recorded an outcome: what the database holds after a
    SIGKILL in the middle of the call. Returns the run id."""
    from edge_agent.engine import queue_run
    from edge_agent.engine.journal import call_key
    store = open_database(db_path)
    try:
        rid = queue_run(store.write, workflow="w", input={}, workflows={"w": wf}, run_id="r1")
        now = time.time()
        store.write(lambda c: (q.update_run(c, rid, now, status="running", node="a",
                                            visits={"a": 1}, node_state={"attempt": 1}),
                               q.journal_intent(c, key=call_key(rid, "a#1", 0, 0, 1), attempt=1,
                                                run_id=rid, node="a#1", tool="stamp",
                                                args=dict(args), now=now)))
    finally:
        store.close()
    return rid


def fast_retry(n: int = 3, **kw: Any) -> RetryPolicy:
    return RetryPolicy(max_attempts=n, initial_delay_s=kw.pop("initial_delay_s", 0.01),
                       multiplier=1.0, max_delay_s=1.0, jitter=0.0, **kw)


_exported: dict[int, list[bytes]] = {}  # id(store) -> what went to the collector


def record_spans(writer: GroupCommitter) -> None:
    """What the daemon does every half second: derive spans, append them to the outbox (and
    hand them to the collector, here a list)."""
    from edge_agent.telemetry.record import record_spans as record
    payloads = record(writer, service="test", device_id="test-device")
    _exported.setdefault(id(writer.store), []).extend(payloads)


def spans_in(store: Store) -> list[dict[str, Any]]:
    """The spans in the outbox's traces stream; for a store that keeps no outbox records
    (PostgreSQL), the spans handed to the collector."""
    from edge_agent.telemetry.spans import decode
    out: list[dict[str, Any]] = []
    if not has_reader(store):
        assert store.conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        for payload in _exported.get(id(store), []):
            out += decode(payload)
        return out
    for (payload,) in store.conn.execute(
            "SELECT payload FROM outbox WHERE stream = 'traces' ORDER BY seq"):
        out += decode(bytes(payload))
    return out
