"""Parallel nodes: branches run concurrently; the join decides; the rest are cancelled.

Each finished branch is committed (a step row and the node's `done` map) as it finishes, so
a restart re-runs only the branches that had not finished. A cancelled branch is recorded as
cancelled, never as a result; a tool call it had in flight still records its own outcome in
the journal, because the side effect may have happened.
"""

from __future__ import annotations

import contextvars
import sqlite3
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Any

from edge_agent.config.model import NodeConfig, WorkflowConfig
from edge_agent.engine import queries as q
from edge_agent.engine.records import FAILED, Run

if TYPE_CHECKING:
    from edge_agent.engine.nodes import NodeRunner


def join_outcome(node: NodeConfig, done: dict[str, dict[str, Any]]) -> bool | None:
    """True (joined), False (cannot succeed any more), None (undecided yet)."""
    total = len(node.branches)
    ok = sum(1 for r in done.values() if r["ok"])
    failed = len(done) - ok
    if node.join == "all":
        return False if failed else (True if ok == total else None)
    # "any" is any success, as "first_success": a failed branch alone never joins
    need = 1 if node.join in ("any", "first_success") else int(node.quorum or total)
    if ok >= need:
        return True
    return False if total - failed < need else None


def run_parallel(runner: NodeRunner, run: Run, wf: WorkflowConfig, node: NodeConfig) -> bool:
    e = runner.e
    visit = run.visit(node.name)
    done: dict[str, dict[str, Any]] = dict(run.node_state.get("done", {}))
    outcome = join_outcome(node, done)
    tasks: dict[Future[dict[str, Any]], str] = {}
    started: dict[str, float] = {}
    if outcome is None:
        for b in node.branches:
            if b not in done:
                scope = f"{node.name}/{b}#{visit}"
                started[b] = e.clock()
                task = e.branch_pool.submit(contextvars.copy_context().run, runner.run_branch,
                                            run, wf.nodes[b], scope)
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

            def record(c: sqlite3.Connection, name: str = name, result: dict[str, Any] = result,
                       now: float = now) -> None:
                begun = started.get(name, now)
                q.insert_step(c, run_id=run.run_id, node=name, visit=visit,
                              attempt=int(result.get("attempt", 1)),
                              status="completed" if result["ok"] else "failed",
                              output=result.get("output"), error=result.get("error"),
                              error_kind=result.get("kind"), started_at=begun, finished_at=now)
            e.set_state(run, {**run.node_state, "done": done}, extra=record)
        outcome = join_outcome(node, done)
    if outcome is None and unknown:
        name, u = unknown[0]
        runner.ask_unknown(run, node, {**run.node_state, "done": done}, key=u["key"],
                           attempt=u["attempt"], tool=u["tool"], args=u["args"], step_node=name)
        return False
    for task in waiting:
        task.cancel()  # not started yet: never runs; running: its journal records what it did
    cancelled = [b for b in node.branches if b not in done]

    def mark_cancelled(c: sqlite3.Connection) -> None:
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
