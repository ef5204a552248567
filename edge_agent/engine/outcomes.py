"""What follows a node's attempt when it does not simply go on: failures (retry, fallback,
escalation; decided by `transitions.node_failed`), unknown outcomes of fenced calls, and
approvals with their decisions and timeouts. Every write goes through the driver."""

from __future__ import annotations

import functools
import logging
from typing import Any

from edge_agent.config.model import NodeConfig, RetryPolicy
from edge_agent.engine import queries as q
from edge_agent.engine import transitions
from edge_agent.engine.ports import Driver, Tx, both
from edge_agent.engine.records import FAILED, Run, dumps
from sync.dbapi import Connection

log = logging.getLogger(__name__)


def set_call_status(c: Connection, status: str, key: str, attempt: int, now: float, *,
                    result: Any = None) -> None:
    """A journal row answered without a result of the tool's own: by a person (`confirmed`
    with `result`, `assumed_failed`) or by the node's on_unknown (`unknown`)."""
    c.execute("UPDATE tool_calls SET status = ?, result = ?, finished_at = ? WHERE idem_key = ?"
              " AND attempt = ?", (status, None if result is None else dumps(result), now, key,
                                   attempt))


class Outcomes:
    def __init__(self, driver: Driver) -> None:
        self.e = driver

    def open_approval(self, run: Run, node: NodeConfig, state: dict[str, Any], *,
                            kind: str, prompt: str, context: Any, timeout_s: float | None = None,
                            extra: Tx | None = None) -> None:
        now = self.e.clock()
        timeout_at = now + timeout_s if timeout_s else None

        def tx(c: Connection) -> int:
            if extra is not None:
                extra(c)
            aid = q.create_approval(c, run_id=run.run_id, node=node.name, kind=kind,
                                    prompt=prompt, context=context, now=now,
                                    timeout_at=timeout_at)
            q.update_run(c, run.run_id, now, node_state={**state, "approval_id": aid})
            self.e.remember(c, run.run_id)  # the next step sees the approval, not an older row
            self.e.emit(c, "control", "approval.requested", {
                "run_id": run.run_id, "approval_id": aid, "node": node.name,
                "visit": run.visit(node.name), "kind": kind, "prompt": prompt,
                "timeout_at": timeout_at, "ts": now})
            return aid
        aid = self.e.write(tx, run.run_id)
        if timeout_at is not None:
            self.e.schedule_timeout(timeout_at, aid, run.run_id)
        self.e.changed(run.run_id)

    def approval_timed_out(self, approval_id: int) -> None:
        def tx(c: Connection) -> None:
            appr = q.get_approval(c, approval_id)
            if appr is None or appr["status"] != "pending":
                return
            now = self.e.clock()
            on_timeout = (appr["context"] or {}).get("on_timeout", "reject")
            status = {"approve": "approved", "reject": "rejected"}.get(on_timeout, "escalated")
            q.decide(c, approval_id, status=status, by="timeout", origin="timeout",
                     note="no decision before the timeout", patch=None, now=now)
            self.e.emit(c, "control", "approval.decided", {
                "run_id": appr["run_id"], "approval_id": approval_id, "decision": status,
                "by": "timeout", "origin": "timeout", "ts": now})
            if status == "escalated":
                new = q.create_approval(c, run_id=appr["run_id"], node=appr["node"],
                                        kind="escalation", prompt="(timed out, escalated) "
                                        + appr["prompt"], context=appr["context"], now=now,
                                        timeout_at=None)
                run = q.get_run(c, appr["run_id"])
                if run is not None:
                    q.update_run(c, run.run_id, now,
                                 node_state={**run.node_state, "approval_id": new})
                self.e.emit(c, "control", "approval.requested", {
                    "run_id": appr["run_id"], "approval_id": new, "node": appr["node"],
                    "visit": run.visit(appr["node"]) if run is not None else None,
                    "kind": "escalation", "prompt": appr["prompt"], "ts": now})
        self.e.write(tx)

    def failed(self, run: Run, node: NodeConfig, state: dict[str, Any],
                policy: RetryPolicy, attempt: int, *, error: str, kind: str,
                retryable: bool, extra: Tx | None = None,
                started_at: float | None = None, call: transitions.StepCall | None = None) -> bool:
        """A failed attempt: decided by `transitions.node_failed`, done here."""
        wf = self.e.definition(run)
        assert wf is not None
        f = transitions.node_failed(run, wf, node, state, policy, attempt, error=error,
                                    kind=kind, retryable=retryable, now=self.e.clock(),
                                    rand=self.e.rand, started_at=started_at, call=call,
                                    fenced=self.e.fenced)
        log.warning("%s attempt %d failed (%s: %s)%s", node.name, attempt, kind, error,
                    f"; retrying in {f.delay:.2f}s" if f.action == "retry" else "")
        if f.action == "fallback":
            assert f.transition is not None
            return self.e.commit(run.run_id, f.transition, extra)
        s = f.step

        def step_row(c: Connection) -> None:
            q.insert_step(c, run_id=run.run_id, node=s.node, visit=s.visit, attempt=s.attempt,
                          status=s.status, error=s.error, error_kind=s.error_kind,
                          started_at=s.started_at, finished_at=s.finished_at, call=s.call)
        if f.action == "retry":
            assert f.state is not None and f.record is not None
            record = f.record
            self.e.set_state(run, f.state, extra=both(
                extra, step_row, lambda c: self.e.emit(c, "checkpoints", "step.retry", record)))
            return True
        if f.action == "escalate":
            assert f.state is not None and f.prompt is not None
            self.open_approval(run, node, f.state, kind="escalation", prompt=f.prompt,
                               context={"error": error, "kind": kind},
                               extra=both(extra, step_row))
            return False
        self.e.finish(run.run_id, FAILED, error=f.message, extra=both(extra, step_row))
        return False

    def unknown(self, run: Run, node: NodeConfig, state: dict[str, Any],
                       policy: RetryPolicy, on_unknown: str, key: str, attempt: int, tool: str,
                       args: Any, cause: str | None = None,
                       target: str = "the device") -> bool:
        """A fenced call whose outcome is unknown: after a crash during it (`cause` None), or
        an error that says its effect may have happened (`cause`: that error; `target`:
        where its request went)."""
        mark = functools.partial(self._mark_unknown, run, node.name, key, attempt, tool,
                                 on_unknown, cause=cause)
        if on_unknown == "fail":
            self.e.finish(run.run_id, FAILED, extra=mark("unknown"),
                                error=f"{node.name}: outcome of {tool} is unknown (on_unknown = "
                                "fail)")
            return False
        if on_unknown == "assume_failed":
            return self.failed(run, node, state, policy, int(state.get("attempt", 1)),
                                      error=f"outcome of {tool} unknown; assumed failed",
                                      kind="unknown_outcome", retryable=True,
                                      extra=mark("assumed_failed"))
        self.ask_unknown(run, node, state, key=key, attempt=attempt, tool=tool, args=args,
                         cause=cause, target=target)
        return False

    def _mark_unknown(self, run: Run, step_node: str, key: str, attempt: int, tool: str,
                      on_unknown: str, status: str, cause: str | None = None,
                      visit: int | None = None) -> Tx:
        """The journal row's new status, and an `interrupted` step that shows it (a branch's
        step: at the visit of its parallel node)."""
        visit = run.visit(step_node) if visit is None else visit

        def tx(c: Connection) -> None:
            now = self.e.clock()
            set_call_status(c, status, key, attempt, now)
            q.insert_step(c, run_id=run.run_id, node=step_node, visit=visit,
                          attempt=attempt, status="interrupted",
                          error=f"{cause or f'the process stopped during {tool}'}; on_unknown"
                          f" = {on_unknown}",
                          error_kind="unknown_outcome", started_at=now, finished_at=now)
        return tx

    def ask_unknown(self, run: Run, node: NodeConfig, state: dict[str, Any], *, key: str,
                    attempt: int, tool: str, args: Any, step_node: str | None = None,
                    cause: str | None = None, target: str = "the device",
                    rerun_branch: str | None = None) -> None:
        """Open an approval asking whether an interrupted non-idempotent call took effect.
        `step_node`: the branch of parallel node `node` that made the call; `rerun_branch`:
        that branch, when it is an agent that runs again from its start if the answer is
        that the call did not take effect (see `transitions.call_decided`)."""
        why = (f"{tool} failed after its request may have reached {target} ({cause})"
               if cause else "The daemon stopped after starting it and before its result was "
               "recorded")
        prompt = (f"Did {tool}({dumps(args)}) take effect? {why}. Approve = it did (the run "
                  "continues); reject = it did not (the step is retried).")
        asked = {**state, "unknown_key": key, "unknown_attempt": attempt}
        if rerun_branch is not None:
            asked["rerun_branch"] = rerun_branch
        self.open_approval(run, node, asked, kind="unknown_outcome", prompt=prompt,
                           context={"tool": tool, "args": args, "key": key},
                           extra=self._mark_unknown(run, step_node or node.name, key, attempt,
                                                    tool, "escalate", "unknown", cause=cause,
                                                    visit=run.visit(node.name)))

    def decided(self, run: Run, node: NodeConfig, state: dict[str, Any],
                policy: RetryPolicy) -> bool:
        """A person's answer to an escalation or an unknown outcome: decided by
        `transitions.call_decided`, done here."""
        appr = self.e.read(lambda c: q.get_approval(c, state["approval_id"]))
        return self.do(run, node, transitions.call_decided(run, node, state, appr), state)

    def do(self, run: Run, node: NodeConfig, d: transitions.Decided,
           state: dict[str, Any]) -> bool:
        """Perform what a decision says."""
        mark: Tx | None = None
        if d.mark is not None:
            status, key, call_attempt, result = d.mark
            mark = lambda c: set_call_status(  # noqa: E731
                c, status, key, call_attempt, self.e.clock(), result=result)
        if d.action == "wait":
            if d.status is not None:
                self.e.set_state(run, state, status=d.status)
            return False
        if d.action == "advance":
            return self.e.advance(run, node, output=d.output, next_node=d.next_node,
                                  attempt=d.attempt, extra=mark, patch=d.patch,
                                  started_at=d.started_at, step_status=d.step_status)
        if d.action == "resume":
            assert d.state is not None
            self.e.set_state(run, d.state, extra=mark, status="running")
            return True
        assert d.status is not None
        self.e.finish(run.run_id, d.status, error=d.message)
        return False
