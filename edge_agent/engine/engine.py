"""The durable workflow engine: drives runs node by node, one transaction per transition.

One asyncio task per active run; blocking work (tools, agents) runs in a thread pool; every
write goes through the group-committing writer. A run waiting for a human costs nothing: its
task ends and a decision (from any process) wakes it again.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import random
import secrets
import sqlite3
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edge_agent.config.model import NodeConfig, WorkflowConfig
from edge_agent.engine import queries as q
from edge_agent.engine.bindings import AgentRunner, ToolBinding
from edge_agent.engine.control import emit
from edge_agent.engine.journal import ToolJournal
from edge_agent.engine.records import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, Run
from edge_agent.store import GroupCommitter, Store

log = logging.getLogger(__name__)
Tx = Callable[[sqlite3.Connection], Any]


class Engine:
    """Runs workflows durably. Use as `async with Engine(...) as engine:`."""

    def __init__(self, *, store: Store, writer: GroupCommitter,
                 workflows: Mapping[str, WorkflowConfig], tools: Mapping[str, ToolBinding],
                 agent_runner: AgentRunner | None = None, notify: Callable[[], None] | None = None,
                 outbox_limits: Mapping[str, int] | None = None, max_workers: int = 32,
                 clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random) -> None:
        self.store = store
        self.writer = writer
        self.workflows = workflows
        self.tools = tools
        self.agent_runner = agent_runner
        self.notify = notify or (lambda: None)
        self.outbox_limits = outbox_limits
        self.clock = clock
        self.rand = rand
        self.journal = ToolJournal(store, writer, tools, clock)
        self.pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="step")
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._wakeups: dict[str, asyncio.Event] = {}
        self._timeouts: list[tuple[float, int, str]] = []
        self._timer_changed = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self._accepting = False
        self._listeners: list[Callable[[str], None]] = []
        from edge_agent.engine.nodes import NodeRunner
        self.nodes = NodeRunner(self)

    # lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Recover: every unfinished run resumes from its last checkpoint."""
        self._accepting = True
        for at, approval_id in await self.read(q.due_approval_timeouts):
            run_id = (await self.read(lambda c: q.get_approval(c, approval_id)) or {}).get("run_id")
            if run_id:
                heapq.heappush(self._timeouts, (at, approval_id, run_id))
        self._timer_task = asyncio.create_task(self._timer_loop(), name="approval-timeouts")
        for run_id in await self.read(q.unfinished_run_ids):
            self.wake(run_id)

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking work, let in-flight steps reach their checkpoint, then stop."""
        if not self._accepting and not self._tasks:
            return
        self._accepting = False
        for ev in self._wakeups.values():
            ev.set()
        if self._timer_task:
            self._timer_task.cancel()
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            done, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self.pool.shutdown(wait=False, cancel_futures=True)

    @property
    def active(self) -> int:
        return sum(1 for t in self._tasks.values() if not t.done())

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Called with a run id after each committed transition (for tests and status)."""
        self._listeners.append(listener)

    # I/O helpers ------------------------------------------------------------------------------
    async def write(self, fn: Tx) -> Any:
        result = await asyncio.wrap_future(self.writer.submit(fn))
        self.notify()
        return result

    async def read(self, fn: Tx) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, lambda: self.store.read(fn))

    async def in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def emit(self, conn: sqlite3.Connection, stream: str, kind: str,
             payload: Mapping[str, Any]) -> None:
        emit(conn, stream, kind, payload, self.outbox_limits)

    # waking and driving -----------------------------------------------------------------------
    def wake(self, run_id: str | None = None) -> None:
        """Make the engine look at a run (or, with None, at everything changed from outside)."""
        if not self._accepting:
            return
        if run_id is None:
            asyncio.get_running_loop().create_task(self._wake_changed())
            return
        ev = self._wakeups.get(run_id)
        if ev is not None:
            ev.set()
        task = self._tasks.get(run_id)
        if task is not None and not task.done():
            self._again.add(run_id)
            return
        self._tasks[run_id] = asyncio.get_running_loop().create_task(self._drive(run_id),
                                                                     name=f"run-{run_id}")

    async def _wake_changed(self) -> None:
        for run_id in await self.read(q.runs_to_wake):
            self.wake(run_id)
        for at, approval_id in await self.read(q.due_approval_timeouts):
            if not any(a == approval_id for _, a, _ in self._timeouts):
                appr = await self.read(lambda c: q.get_approval(c, approval_id))
                if appr:
                    self.schedule_timeout(at, approval_id, appr["run_id"])

    async def _drive(self, run_id: str) -> None:
        try:
            while self._accepting:
                self._again.discard(run_id)
                if not await self.step(run_id):
                    if run_id in self._again and self._accepting:
                        continue
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug must fail one run, not the daemon
            log.exception("run %s failed inside the engine", run_id)
            await self.finish(run_id, FAILED, error=f"engine error: {exc}")
        finally:
            if self._tasks.get(run_id) is asyncio.current_task():
                del self._tasks[run_id]
            self._wakeups.pop(run_id, None)

    async def step(self, run_id: str) -> bool:
        """Advance a run by one node. False when it waits or is finished."""
        run: Run | None = await self.read(lambda c: q.get_run(c, run_id))
        if run is None or run.finished:
            return False
        wf = self.workflows.get(run.workflow)
        if wf is None:
            await self.finish(run_id, FAILED, error=f"workflow {run.workflow!r} is not loaded")
            return False
        if run.cancel_requested:
            await self.finish(run_id, CANCELLED, error="cancelled on request")
            return False
        if run.status == QUEUED or run.node is None:
            await self.write(lambda c: self._begin(c, run, wf))
            return True
        node = wf.nodes.get(run.node)
        if node is None:
            await self.finish(run_id, FAILED, error=f"node {run.node!r} is not in workflow "
                              f"{wf.name!r} any more")
            return False
        result: bool = await self.nodes.run(run, wf, node)
        return result

    def _begin(self, conn: sqlite3.Connection, run: Run, wf: WorkflowConfig) -> None:
        now = self.clock()
        q.update_run(conn, run.run_id, now, status=RUNNING, node=wf.start,
                     visits={wf.start: 1}, node_state={}, span_id=secrets.token_hex(8))
        self.emit(conn, "checkpoints", "run.started", {"run_id": run.run_id, "workflow": wf.name,
                                                       "node": wf.start, "ts": now})

    # transitions ------------------------------------------------------------------------------
    async def advance(self, run: Run, node: NodeConfig, *, output: Any, next_node: str | None,
                      attempt: int = 1, started_at: float | None = None,
                      extra: Tx | None = None, patch: Mapping[str, Any] | None = None,
                      step_status: str = "completed", store_output: bool = True) -> bool:
        """Commit a finished node and move on: one transaction, one outbox record."""
        wf = self.workflows[run.workflow]

        def tx(conn: sqlite3.Connection) -> bool:
            now = self.clock()
            if extra is not None:
                extra(conn)
            visit = run.visit(node.name)
            q.insert_step(conn, run_id=run.run_id, node=node.name, visit=visit, attempt=attempt,
                          status=step_status, output=output, started_at=started_at or now,
                          finished_at=now)
            context = dict(run.context)
            if store_output and output is not None:
                context[node.name] = output
            if patch:
                context.update(patch)
            record = {"run_id": run.run_id, "workflow": run.workflow, "node": node.name,
                      "visit": visit, "attempt": attempt, "status": step_status,
                      "output": output, "ts": now}
            if next_node is None:
                q.update_run(conn, run.run_id, now, status=COMPLETED, node=None, context=context,
                             output=output, node_state={}, finished_at=now)
                record["run_status"] = COMPLETED
                self.emit(conn, "checkpoints", "run.finished", record)
                return False
            visits = dict(run.visits)
            visits[next_node] = visits.get(next_node, 0) + 1
            bound = wf.nodes[next_node].max_visits
            if bound is not None and visits[next_node] > bound:
                err = f"node {next_node!r} would run more than max_visits={bound} times"
                q.update_run(conn, run.run_id, now, status=FAILED, context=context, error=err,
                             node_state={}, finished_at=now)
                record.update(run_status=FAILED, error=err)
                self.emit(conn, "checkpoints", "run.finished", record)
                return False
            q.update_run(conn, run.run_id, now, status=RUNNING, node=next_node, node_state={},
                         context=context, visits=visits)
            record["next"] = next_node
            self.emit(conn, "checkpoints", "step.completed", record)
            return True
        cont: bool = await self.write(tx)
        self._changed(run.run_id)
        return cont

    async def set_state(self, run: Run, state: Mapping[str, Any], extra: Tx | None = None,
                        status: str | None = None) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            if extra is not None:
                extra(conn)
            fields: dict[str, Any] = {"node_state": dict(state)}
            if status:
                fields["status"] = status
            q.update_run(conn, run.run_id, self.clock(), **fields)
        await self.write(tx)
        self._changed(run.run_id)

    async def finish(self, run_id: str, status: str, *, error: str | None = None,
                     output: Any = None, extra: Tx | None = None) -> None:
        def tx(conn: sqlite3.Connection) -> None:
            if extra is not None:
                extra(conn)
            run = q.get_run(conn, run_id)
            if run is None or run.finished:
                return
            now = self.clock()
            q.update_run(conn, run_id, now, status=status, error=error, output=output,
                         node_state={}, finished_at=now)
            if status == CANCELLED:
                conn.execute("UPDATE approvals SET status = 'cancelled', decided_at = ? WHERE"
                             " run_id = ? AND status = 'pending'", (now, run_id))
            self.emit(conn, "checkpoints", "run.finished", {
                "run_id": run_id, "workflow": run.workflow, "node": run.node,
                "run_status": status, "error": error, "ts": now})
        await self.write(tx)
        self._changed(run_id)

    def _changed(self, run_id: str) -> None:
        for listener in self._listeners:
            listener(run_id)

    # waiting ----------------------------------------------------------------------------------
    async def sleep_until(self, run_id: str, due: float) -> bool:
        """Durable wait: the due time is committed, so a restart waits only the remainder.
        False if woken early (cancel, shutdown)."""
        remaining = due - self.clock()
        if remaining <= 0:
            return True
        ev = self._wakeups.setdefault(run_id, asyncio.Event())
        ev.clear()
        try:
            await asyncio.wait_for(ev.wait(), remaining)
        except TimeoutError:
            return True
        return False

    def schedule_timeout(self, at: float, approval_id: int, run_id: str) -> None:
        heapq.heappush(self._timeouts, (at, approval_id, run_id))
        self._timer_changed.set()

    async def _timer_loop(self) -> None:
        while True:
            self._timer_changed.clear()
            delay = self._timeouts[0][0] - self.clock() if self._timeouts else 3600.0
            if delay > 0:
                try:
                    await asyncio.wait_for(self._timer_changed.wait(), min(delay, 3600.0))
                except TimeoutError:
                    pass
                continue
            at, approval_id, run_id = heapq.heappop(self._timeouts)
            try:
                await self.nodes.approval_timed_out(approval_id)
            except Exception:  # noqa: BLE001 - keep the timer loop alive
                log.exception("approval %s timeout handling failed", approval_id)
            self.wake(run_id)

    def backoff(self, policy: Any, attempt: int) -> float:
        delay: float = policy.delay(attempt, self.rand())
        return delay
