"""Parallel nodes: branches run concurrently; the join decides; the rest are cancelled.

Each finished branch is committed (a step row and the node's `done` map) as it finishes, so
a restart re-runs only the branches that had not finished. A cancelled branch is recorded as
cancelled, never as a result; a tool call it had in flight still records its own outcome in
the journal, because the side effect may have happened. A branch's call of unknown outcome
(an intent without a result, an agent's included) is answered by the branch's on_unknown
(`transitions.branch_unknown`): by default the join waits while a person is asked.
"""

from __future__ import annotations

import contextvars
from concurrent.futures import FIRST_COMPLETED, Future, wait
from functools import partial
from typing import Any, Protocol

from edge_agent.config.expressions import ExpressionError, evaluate
from edge_agent.config.model import NodeConfig, WorkflowConfig
from edge_agent.engine import queries as q
from edge_agent.engine import transitions
from edge_agent.engine.bindings import UnknownOutcome
from edge_agent.engine.journal import DurableAgentContext
from edge_agent.engine.outcomes import set_call_status
from edge_agent.engine.ports import Driver
from edge_agent.engine.records import FAILED, Run, dumps
from edge_agent.engine.transitions import call_key, join_outcome
from sync.dbapi import Connection


class AsksPeople(Protocol):
    """Where a branch's interrupted call goes: a person says whether it took effect."""

    def ask_unknown(self, run: Run, node: NodeConfig, state: dict[str, Any], *, key: str,
                    attempt: int, tool: str, args: Any, step_node: str | None = None,
                    rerun_branch: str | None = None) -> None: ...


def run_parallel(e: Driver, people: AsksPeople, run: Run, wf: WorkflowConfig,
                 node: NodeConfig) -> bool:
    visit = run.visit(node.name)
    done: dict[str, dict[str, Any]] = dict(run.node_state.get("done", {}))
    runs: dict[str, int] = dict(run.node_state.get("attempts") or {})
    outcome = join_outcome(node, done)
    tasks: dict[Future[dict[str, Any]], str] = {}
    started: dict[str, float] = {}
    if outcome is None:
        for b in node.branches:
            if b not in done:
                started[b] = e.clock()
                task = e.branch_pool.submit(contextvars.copy_context().run, run_branch, e,
                                            run, wf.nodes[b], node.name, visit,
                                            int(runs.get(b, 1)))
                tasks[task] = b
    waiting = set(tasks)
    unknown: list[tuple[str, dict[str, Any]]] = []
    while outcome is None and waiting:
        with e.blocking():
            finished, waiting = wait(waiting, return_when=FIRST_COMPLETED)
        for task in finished:
            name = tasks[task]
            result = task.result()
            if result.get("unknown"):  # interrupted by a crash: a person says what happened
                unknown.append((name, result))
                continue
            done[name] = result
            now = e.clock()

            def record(c: Connection, name: str = name, result: dict[str, Any] = result,
                       now: float = now) -> None:
                begun = started.get(name, now)
                status = "completed" if result["ok"] else "failed"
                attempt = int(result.get("attempt", 1))
                if result.get("mark"):  # a call of unknown outcome, answered by on_unknown
                    marked, key, call_attempt = result["mark"]
                    set_call_status(c, marked, key, int(call_attempt), now)
                q.insert_step(c, run_id=run.run_id, node=name, visit=visit, attempt=attempt,
                              status=status, output=result.get("output"),
                              error=result.get("error"), error_kind=result.get("kind"),
                              started_at=begun, finished_at=now)
                # the branch's step and its record in one commit (the transactional outbox)
                e.emit(c, "checkpoints", "step.completed", {
                    "run_id": run.run_id, "workflow": run.workflow, "node": name,
                    "visit": visit, "attempt": attempt, "status": status,
                    "output": result.get("output"), "ts": now, "branch_of": node.name})
            e.set_state(run, {**run.node_state, "done": done}, extra=record)
        outcome = join_outcome(node, done)
    if outcome is None and unknown:  # the join waits on a person: one call at a time
        name, u = unknown[0]
        people.ask_unknown(run, node, {**run.node_state, "done": done}, key=u["key"],
                           attempt=int(u["call_attempt"]), tool=u["tool"], args=u["args"],
                           step_node=name, rerun_branch=name if u["rerun"] else None)
        return False
    for task in waiting:
        task.cancel()  # not started yet: never runs; running: its journal records what it did
    cancelled = [b for b in node.branches if b not in done]

    def mark_cancelled(c: Connection) -> None:
        now = e.clock()
        for b in cancelled:
            q.insert_step(c, run_id=run.run_id, node=b, visit=visit, attempt=1,
                          status="cancelled", started_at=now, finished_at=now)
    outputs = {b: r.get("output") for b, r in done.items() if r["ok"]}
    summary = {"join": node.join, "succeeded": sorted(outputs),
               "failed": sorted(b for b, r in done.items() if not r["ok"]),
               "cancelled": cancelled}
    if outcome:
        return e.advance(run, node, output=summary, next_node=node.next,
                               extra=mark_cancelled, patch=outputs)
    errors = "; ".join(f"{b}: {r.get('error')}" for b, r in sorted(done.items()) if not r["ok"])
    if node.fallback:
        return e.advance(run, node, output=summary, next_node=node.fallback,
                               extra=mark_cancelled, step_status="failed",
                               patch={"error": {"node": node.name, "error": errors}, **outputs},
                               store_output=False)
    e.finish(run.run_id, FAILED, error=f"{node.name}: join {node.join!r} not met: "
                   f"{errors}", extra=mark_cancelled)
    return False


def run_branch(e: Driver, run: Run, bnode: NodeConfig, parallel: str, visit: int,
               attempt: int) -> dict[str, Any]:
    """One parallel branch, with its own retries; its tool calls are journaled. `attempt`:
    the branch's run (an agent branch runs again in a fresh scope when a person said its
    interrupted call did not take effect; a tool branch counts its calls' attempts in the
    journal)."""
    if bnode.kind == "agent":
        if e.agent_runner is None:
            return {"ok": False, "error": "no model is loaded to run agents"}
        scope = transitions.branch_scope(parallel, bnode.name, visit, attempt)
        ctx = DurableAgentContext(e.journal, run_id=run.run_id, scope=scope)
        try:
            message = (evaluate(bnode.input, run.context) if bnode.input
                       else run.context["input"])
            out = e.agent_runner(str(bnode.agent), message if isinstance(message, str)
                                      else dumps(message), ctx)
        except UnknownOutcome as u:  # a call it made may have acted: as in an agent node
            binding = e.tools.get(u.tool)
            return transitions.branch_unknown(
                bnode.on_unknown or (binding.on_unknown if binding else "escalate"),
                tool=u.tool, key=u.key, call_attempt=u.attempt, args=u.args, attempt=attempt,
                rerun=True)
        except Exception as exc:  # noqa: BLE001 - recorded as the branch's failure
            return {"ok": False, "error": str(exc), "attempt": attempt}
        return {"ok": True, "output": out.output, "attempt": attempt}
    scope = transitions.branch_scope(parallel, bnode.name, visit)
    assert bnode.tool is not None
    binding = e.tools.get(bnode.tool)
    if binding is None:
        return {"ok": False, "error": f"tool {bnode.tool!r} is not loaded"}
    policy = bnode.retry or binding.retry
    try:
        args = transitions.tool_args(bnode, run.context)
    except ExpressionError as exc:
        return {"ok": False, "error": str(exc)}
    attempt = free = 0
    while True:
        attempt += 1
        key = call_key(run.run_id, scope, 0, 0, attempt)
        row = e.read(partial(q.journal_get, key=key, attempt=attempt))
        if row is not None and row["status"] in ("ok", "confirmed"):
            return {"ok": True, "output": row["result"], "attempt": attempt}
        if row is not None and row["status"] in ("intent", "unknown"):
            on_unknown = bnode.on_unknown or binding.on_unknown
            if on_unknown != "assume_failed":  # a person is asked, or the branch fails
                return transitions.branch_unknown(on_unknown, tool=bnode.tool, key=key,
                                                  call_attempt=attempt, args=args,
                                                  attempt=attempt, rerun=False)
            err, kind, retryable = "outcome unknown; assumed failed", "unknown_outcome", True
        elif row is not None and row["status"] == "assumed_failed":
            free += 1  # a person said it did not happen: redo it, spending no attempt
            continue
        elif row is not None:
            err, kind = row["error"], row["error_kind"]
            retryable = bool((row["result"] or {}).get("retryable"))
        else:
            res = e.journal.execute(run_id=run.run_id, node=scope, key=key,
                                         attempt=attempt, name=bnode.tool, args=args,
                                         write_result=True)
            if res.unknown:  # its intent stands: read it again, as after a crash
                attempt -= 1
                continue
            if res.ok:
                return {"ok": True, "output": res.result, "attempt": attempt}
            err, kind, retryable = res.error or "failed", res.kind or "failed", res.retryable
            if not policy.should_retry(attempt - free, kind, retryable):
                return {"ok": False, "error": err, "kind": kind, "attempt": attempt}
            if e.stopping.wait(e.backoff(policy, attempt - free)):
                return {"ok": False, "error": "stopped", "kind": "cancelled"}
            continue
        if not policy.should_retry(attempt - free, kind or "failed", retryable):
            return {"ok": False, "error": err, "kind": kind, "attempt": attempt}
