"""The durable workflow engine: drives runs node by node, one transaction per transition.

The event loop owns scheduling: which runs to drive, timers, wake-ups, shutdown. Driving a
run is blocking work (SQLite, tools, models), so a worker thread takes an active run through
as many nodes as it can without waiting, committing each transition through the shared
group-committing writer. When a run must wait (a retry backoff, a human) the thread hands it
back to the loop, which holds nothing for it but a timer: a waiting run costs no thread.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, cast

from edge_agent.config.model import NodeConfig, WorkflowConfig
from edge_agent.engine import queries as q
from edge_agent.engine import transitions, versions
from edge_agent.engine.bindings import AgentRunner, ToolBinding
from edge_agent.engine.catalog import Catalog
from edge_agent.engine.control import RunBusy, emit, pack
from edge_agent.engine.journal import ToolJournal
from edge_agent.engine.nodes import NodeRunner
from edge_agent.engine.orphans import OrphanWatch
from edge_agent.engine.records import CANCELLED, COMPLETED, FAILED, QUEUED, RUNNING, Run
from edge_agent.engine.scheduler import Scheduler
from edge_agent.engine.timeouts import ApprovalTimeouts
from edge_agent.errors import StoreError
from edge_agent.store import Prepared
from edge_agent.store.backend import Database, Writer
from edge_agent.store.leases import LeaseLost, Leases, RunScoped, SoleRunner, scoped
from edge_agent.store.merge import joined
from edge_agent.telemetry.logs import current as log_ids
from edge_agent.telemetry.logs import log_context
from sync.dbapi import Connection
from sync.outbox import has_reader

log = logging.getLogger(__name__)
Tx = Callable[[Connection], Any]
Statement = tuple[str, tuple[Any, ...]]
# What a node handler returns: True = go on, False = stop (finished or waiting for a human),
# a float = sleep until that time (durable: the due time is already committed).
Next = bool | float
# What a step returns when its transition is committing and the commit's continuation will
# drive the run on: the worker is free for other runs meanwhile.
PENDING: Any = type("Pending", (), {"__repr__": lambda self: "PENDING"})()
_local = threading.local()  # .drive = (run_id, future) on a worker driving that run


def _both(first: Tx, then: Tx, conn: Connection) -> tuple[Any, Any]:
    """One commit of two writes: the caller's extra, then the prepared transition."""
    return first(conn), then(conn)


class Engine:
    """Runs workflows durably. Use as `async with Engine(...) as engine:`."""

    def __init__(self, *, store: Database, writer: Writer,
                 workflows: Mapping[str, WorkflowConfig], tools: Mapping[str, ToolBinding],
                 agent_runner: AgentRunner | None = None, notify: Callable[[], None] | None = None,
                 outbox_limits: Mapping[str, int] | None = None, max_workers: int = 32,
                 device_id: str | None = None, clock: Callable[[], float] = time.time,
                 rand: Callable[[], float] = random.random, leases: Leases | None = None
                 ) -> None:
        self.store = store
        self.writer = writer
        # which runs this engine may drive (all, unless runners share the database)
        self.leases: Leases = leases or SoleRunner()
        self.catalog = Catalog(store, workflows, tools)
        self.agent_runner = agent_runner
        self.notify = notify or (lambda: None)
        self.outbox_limits = outbox_limits
        # a database whose outbox nobody reads (PostgreSQL) gets no records
        self.records = has_reader(store)
        self.device_id = device_id
        self.clock = clock
        self.rand = rand
        self.journal = ToolJournal(store, writer, tools, clock)
        self.journal.scoped = self.scoped
        self.timeouts = ApprovalTimeouts(
            clock, lambda a: self._in_pool(lambda: self.nodes.out.approval_timed_out(a)),
            self.wake)
        # Runs are driven by two busy workers (one in Python while the other is in SQLite;
        # more would only take turns at the GIL), and more only while calls block.
        self.sched = Scheduler(workers=min(2, os.cpu_count() or 2), max_workers=max_workers,
                               between=writer.let_through)
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="engine")
        self.branch_pool = ThreadPoolExecutor(max_workers=max_workers,
                                              thread_name_prefix="branch")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._driving: dict[str, Future[Any]] = {}
        self._held: set[str] = set()  # runs no step may start on (see while_held)
        self._again: set[str] = set()
        self._sleepers: dict[str, asyncio.TimerHandle] = {}
        self._fresh: dict[str, Run] = {}
        self._begins: dict[str, Tx] = {}  # starts that ride on the run's next commit
        # intents committed with the transition into a fenced call, not called yet
        self._armed: dict[str, transitions.Intent] = {}
        self._accepting = False
        self.stopping = threading.Event()
        self._listeners: list[Callable[[str], None]] = []
        self.orphans = OrphanWatch(self.leases, self._in_pool, self.wake)
        self.nodes = NodeRunner(self)

    # lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def start(self) -> None:
        """Recover: every unfinished run resumes from its last checkpoint."""
        self._loop = asyncio.get_running_loop()
        self._accepting = True
        self.stopping.clear()
        # runs queued before versions existed are pinned to the definitions loaded now; the
        # definitions no unfinished run needs any more go
        await self._in_pool(lambda: self.writer.write(lambda c: (
            versions.pin_unpinned(c, self.workflows), versions.prune(c))))
        self.timeouts.start(self._loop, await self._in_pool(self._pending_timeouts))
        for run_id in await self._in_pool(lambda: self.store.read(q.unfinished_run_ids)):
            self.wake(run_id)
        self.orphans.start(self._loop)

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking work, let in-flight steps reach their checkpoint, then stop."""
        if not self._accepting:
            return
        self._accepting = False
        self.stopping.set()
        self.orphans.shutdown()
        for handle in self._sleepers.values():
            handle.cancel()
        self._sleepers.clear()
        self.timeouts.stop()
        futures = [asyncio.wrap_future(f) for f in self._driving.values() if not f.done()]
        if futures:
            _, pending = await asyncio.wait(futures, timeout=timeout)
            if pending:
                log.warning("%d runs did not reach a checkpoint within %.0fs; they resume from "
                            "their last one at the next start", len(pending), timeout)
        self.sched.shutdown()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.branch_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def active(self) -> int:
        return sum(1 for f in self._driving.values() if not f.done())

    def on_change(self, listener: Callable[[str], None]) -> None:
        """Called (from a worker thread) with a run id after each committed transition."""
        self._listeners.append(listener)

    async def _in_pool(self, fn: Callable[[], Any]) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self.pool, contextvars.copy_context().run, fn)

    def _pending_timeouts(self) -> list[tuple[float, int, str]]:
        return self.store.read(q.due_approval_timeouts)

    # waking and driving (loop side) -----------------------------------------------------------
    def wake(self, run_id: str | None = None) -> None:
        """Make the engine look at a run (or, with None, at everything changed from outside).
        Call from the event loop thread."""
        if not self._accepting or self._loop is None:
            return
        if run_id is None:
            self._loop.create_task(self._wake_changed())
            return
        if run_id in self._held:
            return  # woken when it is let go
        sleeper = self._sleepers.pop(run_id, None)
        if sleeper is not None:
            sleeper.cancel()
        current = self._driving.get(run_id)
        if current is not None and not current.done():
            self._again.add(run_id)
            return
        fut: Future[Any] = Future()
        self._driving[run_id] = fut
        loop = self._loop
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(self._driven, run_id, f))
        ctx = contextvars.copy_context()
        self.sched.submit(lambda: ctx.run(self._drive, run_id, fut))

    async def while_held(self, run_id: str, fn: Tx) -> Any:
        """Commit `fn` holding the run: refused (RunBusy) while a step of it is in flight
        (a queued run's first step runs before its start is committed, so only the engine
        knows), and no step of it starts until `fn` has committed. Call from the loop."""
        current = self._driving.get(run_id)
        if current is not None and not current.done():
            raise RunBusy(run_id)
        self._held.add(run_id)
        try:
            return await self._in_pool(lambda: self.writer.write(fn))
        finally:
            self._held.discard(run_id)
            self.wake(run_id)

    def _driven(self, run_id: str, fut: Future[Any]) -> None:
        if self._driving.get(run_id) is fut:
            del self._driving[run_id]
        try:
            outcome = fut.result()
        except BaseException as exc:  # noqa: BLE001 - logged in _drive already
            outcome = None
            log.debug("driving %s ended with %r", run_id, exc)
        if not self._accepting or self._loop is None:
            return
        if run_id in self._again:
            self._again.discard(run_id)
            self.wake(run_id)
        elif isinstance(outcome, float):
            delay = max(0.0, outcome - self.clock())
            self._sleepers[run_id] = self._loop.call_later(delay, self._wake_sleeper, run_id)

    def _wake_sleeper(self, run_id: str) -> None:
        self._sleepers.pop(run_id, None)
        self.wake(run_id)

    async def settle(self, run_id: str) -> None:
        """Wake a run and wait until it finishes, waits for a human, or sleeps."""
        self.wake(run_id)
        while (f := self._driving.get(run_id)) is not None and not f.done():
            await asyncio.wrap_future(f)
            await asyncio.sleep(0)  # let _driven run

    async def _wake_changed(self) -> None:
        for run_id in await self._in_pool(lambda: self.store.read(q.runs_to_wake)):
            self.wake(run_id)
        known = self.timeouts.known()
        for at, approval_id, run_id in await self._in_pool(self._pending_timeouts):
            if approval_id not in known:
                self.schedule_timeout(at, approval_id, run_id)

    # driving (worker thread side) -------------------------------------------------------------
    def _drive(self, run_id: str, fut: Future[Any],
               resume: Callable[[], Next] | None = None) -> None:
        """Take a run through as many nodes as it can go without waiting; `resume` first
        finishes a step whose commit has just landed. The drive's future settles when the
        run finishes, sleeps or waits for a human, not while a commit is in flight."""
        outcome: Any = None
        try:
            try:
                if resume is None and not self.leases.claim(run_id):
                    return  # another runner drives it
                outcome = self._steps(run_id, fut, resume)
            except Exception as exc:  # a bug fails one run, not the daemon
                outcome = None
                with log_context(run_id=run_id, device_id=self.device_id):
                    if isinstance(exc, LeaseLost):
                        log.info("run %s is another runner's now; leaving it", run_id)
                        return
                    if isinstance(exc, StoreError) and getattr(exc, "retryable", False):
                        # the store stopped waiting out a transient error (it is closing):
                        # the run stays where its last commit left it, and resumes there
                        log.warning("run %s paused: %s", run_id, exc)
                        return
                    log.exception("run %s failed inside the engine", run_id)
                    self.finish(run_id, FAILED, error=f"engine error: {exc}")
        finally:
            if outcome is not PENDING:  # else the run is no longer this thread's business
                # the remembered row serves the steps of this drive only: whatever wakes the
                # run next (a decision, a cancel, a timer) may have changed it in the database
                self._fresh.pop(run_id, None)
                fut.set_result(None if outcome is True else outcome)

    def _steps(self, run_id: str, fut: Future[Any], resume: Callable[[], Next] | None) -> Any:
        if resume is not None:
            outcome = resume()
            if outcome is not True:
                return outcome
        _local.drive = (run_id, fut)
        try:
            while not self.stopping.is_set():
                outcome = self.step(run_id)
                if outcome is not True:
                    return outcome
            armed = self._armed.pop(run_id, None)
            if armed is not None:
                # stopping before a call whose intent rode on the last commit: the call is
                # not made, and its intent goes (else the restart would find it unanswered)
                self.write(lambda c: c.execute(*q.intent_withdraw(armed.key, armed.attempt)),
                           run_id)
            return None
        finally:
            _local.drive = None

    def step(self, run_id: str) -> Next:
        """Advance a run by one node."""
        fresh = self._fresh.pop(run_id, None)
        run = fresh if fresh is not None and run_id not in self._again else \
            self.store.read(lambda c: q.get_run(c, run_id))
        if run is None or run.finished:
            return False
        wf = self.catalog.definition(run)
        # one log context for everything the step does (the drive adds none: one per step)
        with log_context(run_id=run_id, device_id=self.device_id, workflow=run.workflow,
                         step=run.node or (wf.start if wf else None), trace_id=run.trace_id,
                         attempt=int((run.node_state or {}).get("attempt", 1))):
            return self._step(run_id, run, wf)

    def _step(self, run_id: str, run: Run, wf: WorkflowConfig | None) -> Next:
        if wf is None:
            pinned = f" (version {versions.short(run.version)})" if run.version else ""
            self.finish(run_id, FAILED, error=f"workflow {run.workflow!r}{pinned} is not loaded")
            return False
        if run.cancel_requested:
            self.finish(run_id, CANCELLED, error=run.error or "cancelled on request")
            return False
        if run.status == QUEUED or run.node is None:
            span = secrets.token_hex(8)
            log.info("run started: workflow %s from %s", wf.name, run.origin)
            if not self.catalog.folds_begin(wf):
                # a fenced first call's intent goes with the start: one commit, not two
                start = wf.nodes[wf.start]
                intent = transitions.intent_for(run_id, start, 1, run.context, self.clock()) \
                    if start.kind == "tool" and self.fenced(start) else None
                self.write(lambda c: self._begin(c, run, wf, span, remember=True,
                                                 intent=intent), run_id)
                if intent is not None:
                    self._armed[run_id] = intent
                return True
            # the start goes with the first node's commit: a start node with no side effect
            # to fence needs no commit of its own (a crash before it leaves the run queued)
            at = self.clock()
            self._begins[run_id] = cast(Tx, self._started(run, wf, span, at))
            run = run.moved(status=RUNNING, node=wf.start, node_state={},
                            visits={wf.start: 1}, span_id=span)
        node = wf.nodes.get(run.node)  # type: ignore[arg-type]
        if node is None:
            self.finish(run_id, FAILED, error=f"node {run.node!r} is not in workflow "
                        f"{wf.name!r} any more")
            return False
        try:
            return self.nodes.run(run, wf, node)
        finally:
            begin = self._begins.pop(run_id, None)
            if begin is not None:  # a path that wrote nothing for the run: start it alone
                self.write(begin, run_id)

    def _begin(self, conn: Connection, run: Run, wf: WorkflowConfig, span: str,
               remember: bool = False, at: float | None = None,
               intent: transitions.Intent | None = None) -> None:
        if intent is not None:
            conn.execute(*q.intent_insert(key=intent.key, attempt=intent.attempt,
                                          run_id=run.run_id, node=intent.scope,
                                          tool=intent.tool, args=intent.args, now=intent.at))
        cast(Tx, self._started(run, wf, span, self.clock() if at is None else at))(conn)
        if remember:
            self.remember(conn, run.run_id)

    def _started(self, run: Run, wf: WorkflowConfig, span: str, now: float) -> Prepared:
        """A run's start as a prepared write (its row at the start node, `run.started`): on
        the first step's commit it merges with the step (`merge.joined`)."""
        limit = self.outbox_limits.get("checkpoints") if self.outbox_limits else None
        return Prepared([q.run_update(run.run_id, now, status=RUNNING, node=wf.start,
                                      visits={wf.start: 1}, node_state={}, span_id=span)],
                        [("checkpoints", "run.started", pack({
                            "run_id": run.run_id, "workflow": wf.name, "node": wf.start,
                            "ts": now}), limit)] if self.records else ())

    # I/O helpers (worker threads) -------------------------------------------------------------
    def write(self, fn: Tx, run_id: str | None = None) -> Any:
        """Commit a transition; a run's start that is still pending goes in the same one."""
        begin = self._begins.pop(run_id, None) if run_id is not None else None
        if begin is not None:
            inner = fn

            def fn(conn: Connection) -> Any:
                begin(conn)
                return inner(conn)
        if run_id is not None:
            fn = self.scoped(run_id, fn)
        with self.sched.blocking():
            result = self.writer.write(fn)
        self.notify()
        return result

    def scoped(self, run_id: str, fn: Tx) -> Tx:
        """A write of the run's: its lease's fence first, when runners share the database."""
        return scoped(self.leases, run_id, fn)

    def blocking(self, blocks: bool = True) -> Any:
        """`with engine.blocking():` around anything a driving worker waits for."""
        return self.sched.blocking(blocks)

    def read(self, fn: Tx) -> Any:
        return self.store.read(fn)

    def emit(self, conn: Connection, stream: str, kind: str,
             payload: Mapping[str, Any]) -> None:
        emit(conn, stream, kind, payload, self.outbox_limits)

    def remember(self, conn: Connection, run_id: str) -> None:
        """Keep the row just written, so the next step needs no read."""
        run = q.get_run(conn, run_id)
        if run is not None:
            self._fresh[run_id] = run

    # transitions ------------------------------------------------------------------------------
    def advance(self, run: Run, node: NodeConfig, *, output: Any, next_node: str | None,
                attempt: int = 1, started_at: float | None = None, extra: Tx | None = None,
                patch: Mapping[str, Any] | None = None, step_status: str = "completed",
                store_output: bool = True, call: transitions.StepCall | None = None,
                error: tuple[str, str] | None = None, result: Statement | None = None,
                wf: WorkflowConfig | None = None) -> bool:
        """Commit a finished node and move on (see `transitions.node_done`): decide, then do.
        `result` is a fenced call's outcome, completing its intent row in the same commit;
        `wf` the run's definition, when the caller has it at hand."""
        self.writer.let_through()
        wf = wf or self.catalog.definition(run)
        assert wf is not None  # the step that called this found it
        t = transitions.node_done(run, wf, node, output=output, next_node=next_node,
                                  now=self.clock(), attempt=attempt, started_at=started_at,
                                  patch=patch, step_status=step_status,
                                  store_output=store_output, call=call, error=error,
                                  fenced=self.catalog.fenced)
        return self.commit(run.run_id, t, extra, result)

    def commit(self, rid: str, t: transitions.Transition, extra: Tx | None = None,
               result: Statement | None = None) -> bool:
        """Perform a transition: one transaction with its step rows, the run's checkpoint (or
        terminal update), the next call's intent and the outbox records."""
        # Everything but the statements is worked out here, on the worker driving the run:
        # under group commit one thread writes the batch for many runs, so the less Python
        # in it, the more of it overlaps with SQLite (which runs without the GIL).
        now = t.at
        if t.finish and t.fields["status"] == FAILED:
            log.warning("run failed: %s", t.fields["error"])
        fence = self.leases.fence(rid)
        ops: list[Statement] = [] if fence is None else [fence]
        if result is not None:
            ops.append(result)
        ops += [q.step_row(rid, s) for s in t.steps]
        ops.append(q.run_update(rid, now, **t.fields) if t.finish else
                   q.checkpoint_update(rid, now, **t.fields))
        release = self.leases.release(rid) if t.finish else None
        if release is not None:
            ops.append(release)
        intent = t.intent
        if intent is not None:
            ops.append(q.intent_insert(key=intent.key, attempt=intent.attempt, run_id=rid,
                                       node=intent.scope, tool=intent.tool, args=intent.args,
                                       now=intent.at))
        limit = self.outbox_limits.get("checkpoints") if self.outbox_limits else None
        prepared = Prepared(ops, [("checkpoints", kind, pack(payload), limit)
                                  for kind, payload in t.records] if self.records else ())
        # a Prepared alone is mergeable with other runs' transitions
        # (mypy does not see a NamedTuple's __call__, hence the cast; Prepared is a Tx)
        fn: Tx = cast(Tx, prepared)
        if extra is not None:
            fn = partial(_both, extra, fn)
        if fence is not None:
            fn = RunScoped(fn, rid)
        fresh, records = t.next, t.records
        # the run's trace id for its `run completed` line, which may be logged after the
        # commit, outside this step's log context
        trace = log_ids().get("trace_id") if t.finish else None
        drive = getattr(_local, "drive", None)
        if drive is not None and drive[0] == rid:
            # driven by the scheduler: hand the commit over and free this worker; the run goes
            # on (or the error surfaces) once the commit that holds the step has landed
            begin = self._begins.pop(rid, None)
            if begin is not None:  # the run's start rides on this commit
                fn = joined(begin, fn)
            fut = drive[1]

            def landed(ok: bool, value: Any) -> None:
                def resume() -> Next:
                    if not ok:
                        raise value
                    self.notify()
                    return self._advanced(rid, fresh, records, intent, trace)
                self.sched.submit(lambda: self._drive(rid, fut, resume))
            # a next node with no effect outside the database goes on once the COMMIT has
            # returned; anything else (a next call's intent above all) waits for the fsync
            # that puts it (and all before it) on disk
            durable = fresh is None or not self.catalog.pure(fresh)
            self.writer.write_then(fn, landed, durable=durable)
            return PENDING  # type: ignore[no-any-return]
        self.write(fn, rid)
        return self._advanced(rid, fresh, records, intent, trace)

    def _advanced(self, rid: str, fresh: Run | None,
                  records: tuple[tuple[str, dict[str, Any]], ...],
                  intent: transitions.Intent | None = None, trace: str | None = None) -> bool:
        """After a transition's commit: remember the row (and the intent of the next call,
        now on disk), tell the listeners."""
        if fresh is not None:
            self._fresh[rid] = fresh
            if intent is not None:
                self._armed[rid] = intent
            log.debug("step %s committed -> %s", records[-1][1]["node"], fresh.node)
        elif records[-1][1].get("run_status") == COMPLETED:
            # after a continuation this runs outside the step's log context: give it its own
            last = records[-1][1]
            with log_context(run_id=rid, device_id=self.device_id,
                             workflow=last.get("workflow"), step=last["node"],
                             attempt=last.get("attempt"), trace_id=trace):
                log.info("run completed at %s", last["node"])
        self.changed(rid)
        return fresh is not None

    def set_state(self, run: Run, state: Mapping[str, Any], extra: Tx | None = None,
                  status: str | None = None) -> None:
        def tx(conn: Connection) -> None:
            if extra is not None:
                extra(conn)
            fields: dict[str, Any] = {"node_state": dict(state)}
            if status:
                fields["status"] = status
            q.update_run(conn, run.run_id, self.clock(), **fields)
            self.remember(conn, run.run_id)
        self.write(tx, run.run_id)
        self.changed(run.run_id)

    def finish(self, run_id: str, status: str, *, error: str | None = None, output: Any = None,
               extra: Tx | None = None) -> None:
        armed = self._armed.pop(run_id, None)

        def tx(conn: Connection) -> None:
            if extra is not None:
                extra(conn)
            if armed is not None:  # its call was never made: no intent is left unanswered
                conn.execute(*q.intent_withdraw(armed.key, armed.attempt))
            run = q.get_run(conn, run_id)
            if run is None or run.finished:
                return
            now = self.clock()
            q.update_run(conn, run_id, now, status=status, error=error, output=output,
                         node_state={}, finished_at=now)
            if status == CANCELLED:
                conn.execute("UPDATE approvals SET status = 'cancelled', decided_at = ? WHERE"
                             " run_id = ? AND status = 'pending'", (now, run_id))
            release = self.leases.release(run_id)
            if release is not None:
                conn.execute(*release)
            self.emit(conn, "checkpoints", "run.finished", {
                "run_id": run_id, "workflow": run.workflow, "node": run.node,
                "run_status": status, "error": error, "ts": now})
        self._fresh.pop(run_id, None)
        self.write(tx, run_id)
        if status == FAILED:
            log.warning("run failed: %s", error)
        else:
            log.info("run %s%s", status, f": {error}" if error else "")
        self.changed(run_id)

    def changed(self, run_id: str) -> None:
        for listener in self._listeners:
            listener(run_id)

    # what the node handlers ask (see ports.Driver) -------------------------------------------
    @property
    def workflows(self) -> Mapping[str, WorkflowConfig]:
        return self.catalog.workflows

    @workflows.setter
    def workflows(self, workflows: Mapping[str, WorkflowConfig]) -> None:
        self.catalog.workflows = workflows  # a reload: new runs take these

    @property
    def tools(self) -> Mapping[str, ToolBinding]:
        return self.catalog.tools

    @tools.setter
    def tools(self, tools: Mapping[str, ToolBinding]) -> None:
        self.catalog.tools = tools

    def definition(self, run: Run) -> WorkflowConfig | None:
        return self.catalog.definition(run)

    def fenced(self, node: NodeConfig) -> bool:
        return self.catalog.fenced(node)

    def take_armed(self, run_id: str) -> transitions.Intent | None:
        """The intent this process committed for the run's next call and has not called."""
        return self._armed.pop(run_id, None)

    def schedule_timeout(self, at: float, approval_id: int, run_id: str) -> None:
        """Thread-safe: called by worker threads when they open an approval with a timeout."""
        self.timeouts.schedule(at, approval_id, run_id)

    def backoff(self, policy: Any, attempt: int) -> float:
        delay: float = policy.delay(attempt, self.rand())
        return delay
