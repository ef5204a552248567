"""What each node kind does. Every outcome is committed by the engine's transition helpers."""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from edge_agent.config.model import NodeConfig, RetryPolicy, WorkflowConfig
from edge_agent.engine import queries as q
from edge_agent.engine import transitions
from edge_agent.engine.bindings import RemoteTool, StepFailed, UnknownOutcome
from edge_agent.engine.journal import DurableAgentContext, call_key
from edge_agent.engine.records import CANCELLED, FAILED, WAITING, Run, dumps
from edge_agent.config.expressions import ExpressionError, evaluate, evaluate_condition

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from edge_agent.engine.engine import Engine

Tx = Callable[[sqlite3.Connection], Any]
MAX_HANDOFFS = 8
NO_RETRY = RetryPolicy()


def _both(*fns: Tx | None) -> Tx:
    def run(conn: sqlite3.Connection) -> None:
        for fn in fns:
            if fn is not None:
                fn(conn)
    return run


class NodeRunner:
    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self._handlers: dict[str, Callable[[Run, WorkflowConfig, NodeConfig], bool | float]] = {}

    def run(self, run: Run, wf: WorkflowConfig, node: NodeConfig) -> bool | float:
        handler = self._handlers.get(node.kind)
        if handler is None:
            handler = self._handlers[node.kind] = getattr(self, f"_{node.kind}")
        return handler(run, wf, node)

    # tool -------------------------------------------------------------------------------------
    def _tool(self, run: Run, wf: WorkflowConfig, node: NodeConfig) -> bool | float:
        assert node.tool is not None
        binding = self.e.tools.get(node.tool)
        if binding is None:
            self.e.finish(run.run_id, FAILED, error=f"tool {node.tool!r} is not loaded")
            return False
        policy = node.retry or binding.retry
        state = dict(run.node_state)
        attempt = int(state.get("attempt", 1))
        scope = f"{node.name}#{run.visit(node.name)}"
        key = call_key(run.run_id, scope, 0, 0, attempt)
        if "approval_id" in state:
            return self._decided(run, node, state, policy)
        if state.get("retry_at") and state["retry_at"] > self.e.clock():
            return float(state["retry_at"])  # durable backoff: the loop wakes the run then
        # the intent this process committed with the transition into this node, if any
        armed = self.e.take_armed(run.run_id)
        if armed is not None and (armed.key != key or armed.attempt != attempt):
            armed = None
        try:
            args = armed.args if armed is not None else transitions.tool_args(node, run.context)
        except ExpressionError as exc:
            self.e.finish(run.run_id, FAILED, error=f"{node.name}: {exc}")
            return False
        if isinstance(binding.tool, RemoteTool):
            return self._remote(run, node, binding.tool, state, policy, attempt, scope, key,
                                args)
        # An idempotent call writes its journal row only with the transition, so there is
        # nothing to replay: re-running it is the recovery. Only fenced calls need a look,
        # unless this process committed the intent with the transition into this node.
        fenced = not binding.idempotent
        row = None if not fenced or armed is not None else \
            self.e.read(lambda c: q.journal_get(c, key, attempt))
        plan = transitions.call_plan(fenced=fenced, row=row, armed=armed, key=key,
                                     attempt=attempt, scope=scope, tool=node.tool, args=args,
                                     now=self.e.clock())
        if plan.action == "unknown":
            return self._unknown(run, node, state, policy, node.on_unknown or binding.on_unknown,
                                 key, attempt, node.tool, args)
        if plan.action == "replay":
            return self.e.advance(run, node, output=plan.result, next_node=node.next,
                                  attempt=attempt)
        with self.e.blocking(binding.blocks or fenced):
            res = self.e.journal.execute(run_id=run.run_id, node=scope, key=key,
                                         attempt=attempt, name=node.tool, args=args,
                                         write_result=False, intent_committed=armed is not None)
        if res.unknown:  # the effect may have happened: as after a crash in the call
            return self._unknown(run, node, state, policy, node.on_unknown or binding.on_unknown,
                                 key, attempt, node.tool, args)
        # the outcome goes with the transition: an idempotent call is journaled in the step
        # row itself, a fenced one completes its intent row
        call: q.StepCall | None = None if fenced else (node.tool, key, args)
        result = self.e.journal.result(run_id=run.run_id, node=scope, key=key,
                                       attempt=attempt, name=node.tool, args=args,
                                       res=res) if fenced else None
        if res.ok:
            return self.e.advance(run, node, output=res.result, next_node=node.next,
                                  attempt=attempt, started_at=res.started_at, call=call,
                                  result=result)
        record: Tx | None = None if result is None else (lambda c: c.execute(*result))
        return self._failed(run, node, state, policy, attempt, error=res.error or "failed",
                            kind=res.kind or "failed", retryable=res.retryable,
                            extra=record, started_at=res.started_at, call=call)

    def _remote(self, run: Run, node: NodeConfig, tool: RemoteTool, state: dict[str, Any],
                policy: RetryPolicy, attempt: int, scope: str, key: str,
                args: dict[str, Any]) -> bool | float:
        """Ask the cloud; wait durably for its `tool_result`; time out to the fallback."""
        now = self.e.clock()
        if state.get("remote_key") != key:
            due = now + tool.timeout_s

            def request(c: sqlite3.Connection) -> None:
                c.execute("INSERT INTO tool_calls (idem_key, attempt, run_id, node, tool, args,"
                          " status, started_at) VALUES (?, ?, ?, ?, ?, ?, 'requested', ?)"
                          " ON CONFLICT (idem_key, attempt) DO NOTHING",
                          (key, attempt, run.run_id, scope, tool.name, dumps(args), now))
                self.e.emit(c, "control", "tool.request", {
                    "run_id": run.run_id, "node": node.name, "key": key, "tool": tool.name,
                    "args": args, "timeout_at": due, "ts": now})
            self.e.set_state(run, {**state, "attempt": attempt, "remote_key": key,
                                   "remote_due": due}, extra=request)
            return due
        row = self.e.read(lambda c: q.journal_get(c, key, attempt))
        if row is not None and row["status"] == "ok":
            return self.e.advance(run, node, output=row["result"], next_node=node.next,
                                  attempt=attempt, started_at=row["started_at"])
        if row is not None and row["status"] == "error":
            rest = {k: v for k, v in state.items() if k not in ("remote_key", "remote_due")}
            return self._failed(run, node, rest, policy, attempt,
                                error=row["error"] or "remote tool failed",
                                kind=row["error_kind"] or "failed", retryable=False)
        due = float(state.get("remote_due", now))
        if now < due:
            return due
        rest = {k: v for k, v in state.items() if k not in ("remote_key", "remote_due")}

        def expire(c: sqlite3.Connection) -> None:
            c.execute("UPDATE tool_calls SET status = 'timed_out', finished_at = ? WHERE"
                      " idem_key = ? AND attempt = ? AND status = 'requested'",
                      (now, key, attempt))
        if tool.fallback and tool.fallback in self.e.tools:
            fb = self.e.journal.execute(run_id=run.run_id, node=scope, key=key + "/fallback",
                                        attempt=attempt, name=tool.fallback, args=args,
                                        write_result=False)
            record = functools.partial(self.e.journal.record, run_id=run.run_id, node=scope,
                                       key=key + "/fallback", attempt=attempt,
                                       name=tool.fallback, args=args, res=fb)
            if fb.ok:
                return self.e.advance(run, node, output={**(fb.result or {}),
                                                         "fallback": tool.fallback},
                                      next_node=node.next, attempt=attempt,
                                      extra=_both(expire, record))
            return self._failed(run, node, rest, policy, attempt, error=fb.error or "failed",
                                kind=fb.kind or "failed", retryable=fb.retryable,
                                extra=_both(expire, record))
        return self._failed(run, node, rest, policy, attempt,
                            error=f"no result from the cloud within {tool.timeout_s:g}s",
                            kind="timeout", retryable=True, extra=expire)

    # agent and handoff ------------------------------------------------------------------------
    def _agent(self, run: Run, wf: WorkflowConfig, node: NodeConfig) -> bool | float:
        if self.e.agent_runner is None:
            self.e.finish(run.run_id, FAILED, error=f"{node.name}: no model is loaded to "
                                "run agents")
            return False
        policy = node.retry or NO_RETRY
        state = dict(run.node_state)
        if "approval_id" in state:
            return self._decided(run, node, state, policy)
        if state.get("retry_at") and state["retry_at"] > self.e.clock():
            return float(state["retry_at"])
        attempt = int(state.get("attempt", 1))
        segment = int(state.get("segment", 0))
        agent = str(state.get("agent", node.agent))
        try:
            message = state.get("message")
            if message is None:
                value = evaluate(node.input, run.context) if node.input else run.context["input"]
                message = value if isinstance(value, str) else json.dumps(value, default=str)
        except ExpressionError as exc:
            self.e.finish(run.run_id, FAILED, error=f"{node.name}: {exc}")
            return False
        scope = f"{node.name}#{run.visit(node.name)}.{attempt}.{segment}"
        ctx = DurableAgentContext(self.e.journal, run_id=run.run_id, scope=scope)
        begun = self.e.clock()
        try:
            with self.e.blocking():  # a model turn takes seconds: other runs go on meanwhile
                outcome = self.e.agent_runner(agent, message, ctx)
        except UnknownOutcome as u:
            binding = self.e.tools.get(u.tool)
            on_unknown = node.on_unknown or (binding.on_unknown if binding else "escalate")
            return self._unknown(run, node, state, policy, on_unknown, u.key, u.attempt,
                                       u.tool, u.args)
        except Exception as exc:  # noqa: BLE001 - the node's policy decides
            return self._failed(run, node, state, policy, attempt, error=str(exc),
                                      kind=getattr(exc, "kind", type(exc).__name__),
                                      retryable=bool(getattr(exc, "retryable", False)))
        target = getattr(outcome, "handoff_to", None)
        if target:
            if segment + 1 >= MAX_HANDOFFS:
                self.e.finish(run.run_id, FAILED, error=f"{node.name}: more than "
                                    f"{MAX_HANDOFFS} handoffs")
                return False
            text = outcome.output if isinstance(outcome.output, str) else dumps(outcome.output)
            new_state = {"attempt": attempt, "segment": segment + 1, "agent": target,
                         "message": text}
            now = self.e.clock()

            def handoff(c: sqlite3.Connection) -> None:
                q.insert_step(c, run_id=run.run_id, node=node.name, visit=run.visit(node.name),
                              attempt=attempt, status="handoff", started_at=now, finished_at=now,
                              output={"from": agent, "to": target, "context": outcome.output})
                self.e.emit(c, "checkpoints", "agent.handoff", {
                    "run_id": run.run_id, "node": node.name, "from": agent, "to": target,
                    "ts": now})
            self.e.set_state(run, new_state, extra=handoff)
            return True
        return self.e.advance(run, node, output=outcome.output, next_node=node.next,
                              attempt=attempt, started_at=begun)

    _handoff = _agent

    # branch, end ------------------------------------------------------------------------------
    def _branch(self, run: Run, wf: WorkflowConfig, node: NodeConfig) -> bool:
        try:
            chosen = next(r.next for r in node.branch
                          if r.when is None or evaluate_condition(r.when, run.context))
        except ExpressionError as exc:
            self.e.finish(run.run_id, FAILED, error=f"{node.name}: {exc}")
            return False
        return self.e.advance(run, node, output={"next": chosen}, next_node=chosen,
                                    store_output=False)

    def _end(self, run: Run, wf: WorkflowConfig, node: NodeConfig) -> bool:
        try:
            output = (evaluate(node.output, run.context) if node.output else
                      {k: v for k, v in run.context.items() if k != "input"})
        except ExpressionError as exc:
            self.e.finish(run.run_id, FAILED, error=f"{node.name}: {exc}")
            return False
        return self.e.advance(run, node, output=output, next_node=None, store_output=False)

    # approval ---------------------------------------------------------------------------------
    def _approval(self, run: Run, wf: WorkflowConfig, node: NodeConfig) -> bool:
        spec = node.approval
        assert spec is not None
        state = dict(run.node_state)
        if "approval_id" not in state:
            shown = ({k: run.context.get(k) for k in spec.show} if spec.show else run.context)
            self.open_approval(run, node, state, kind="gate", prompt=spec.prompt,
                                     context={"context": shown, "on_timeout": spec.on_timeout},
                                     timeout_s=spec.timeout_s)
            return False
        appr = self.e.read(lambda c: q.get_approval(c, state["approval_id"]))
        if appr is None or appr["status"] == "pending":
            return False
        decision = {"decision": appr["status"], "by": appr["decided_by"],
                    "origin": appr["origin"], "note": appr["note"]}
        if appr["status"] == "approved":
            patch = appr["patch"] if isinstance(appr["patch"], dict) else None
            return self.e.advance(run, node, output=decision, next_node=node.next,
                                  patch=patch, started_at=appr["created_at"])
        if node.on_reject:
            return self.e.advance(run, node, output=decision, next_node=node.on_reject,
                                  started_at=appr["created_at"])
        self.e.finish(run.run_id, CANCELLED, error=f"rejected at {node.name} by "
                            f"{appr['decided_by']} ({appr['origin']})"
                            + (f": {appr['note']}" if appr["note"] else ""))
        return False

    def open_approval(self, run: Run, node: NodeConfig, state: dict[str, Any], *,
                            kind: str, prompt: str, context: Any, timeout_s: float | None = None,
                            extra: Tx | None = None) -> None:
        now = self.e.clock()
        timeout_at = now + timeout_s if timeout_s else None

        def tx(c: sqlite3.Connection) -> int:
            if extra is not None:
                extra(c)
            aid = q.create_approval(c, run_id=run.run_id, node=node.name, kind=kind,
                                    prompt=prompt, context=context, now=now,
                                    timeout_at=timeout_at)
            q.update_run(c, run.run_id, now, node_state={**state, "approval_id": aid})
            self.e._remember(c, run.run_id)  # the next step sees the approval, not an older row
            self.e.emit(c, "control", "approval.requested", {
                "run_id": run.run_id, "approval_id": aid, "node": node.name, "kind": kind,
                "prompt": prompt, "timeout_at": timeout_at, "ts": now})
            return aid
        aid = self.e.write(tx, run.run_id)
        if timeout_at is not None:
            self.e.schedule_timeout(timeout_at, aid, run.run_id)
        self.e._changed(run.run_id)

    def approval_timed_out(self, approval_id: int) -> None:
        def tx(c: sqlite3.Connection) -> None:
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
                    "kind": "escalation", "prompt": appr["prompt"], "ts": now})
        self.e.write(tx)

    # failure, unknown outcomes, decisions -----------------------------------------------------
    def _failed(self, run: Run, node: NodeConfig, state: dict[str, Any],
                policy: RetryPolicy, attempt: int, *, error: str, kind: str,
                retryable: bool, extra: Tx | None = None,
                started_at: float | None = None, call: q.StepCall | None = None) -> bool:
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

        def step_row(c: sqlite3.Connection) -> None:
            q.insert_step(c, run_id=run.run_id, node=s.node, visit=s.visit, attempt=s.attempt,
                          status=s.status, error=s.error, error_kind=s.error_kind,
                          started_at=s.started_at, finished_at=s.finished_at, call=s.call)
        if f.action == "retry":
            assert f.state is not None and f.record is not None
            record = f.record
            self.e.set_state(run, f.state, extra=_both(
                extra, step_row, lambda c: self.e.emit(c, "checkpoints", "step.retry", record)))
            return True
        if f.action == "escalate":
            assert f.state is not None and f.prompt is not None
            self.open_approval(run, node, f.state, kind="escalation", prompt=f.prompt,
                               context={"error": error, "kind": kind},
                               extra=_both(extra, step_row))
            return False
        self.e.finish(run.run_id, FAILED, error=f.message, extra=_both(extra, step_row))
        return False

    def _unknown(self, run: Run, node: NodeConfig, state: dict[str, Any],
                       policy: RetryPolicy, on_unknown: str, key: str, attempt: int, tool: str,
                       args: Any) -> bool:
        mark = functools.partial(self._mark_unknown, run, node.name, key, attempt, tool,
                                 on_unknown)
        if on_unknown == "fail":
            self.e.finish(run.run_id, FAILED, extra=mark("unknown"),
                                error=f"{node.name}: outcome of {tool} is unknown (on_unknown = "
                                "fail)")
            return False
        if on_unknown == "assume_failed":
            return self._failed(run, node, state, policy, int(state.get("attempt", 1)),
                                      error=f"outcome of {tool} unknown; assumed failed",
                                      kind="unknown_outcome", retryable=True,
                                      extra=mark("assumed_failed"))
        self.ask_unknown(run, node, state, key=key, attempt=attempt, tool=tool, args=args)
        return False

    def _mark_unknown(self, run: Run, step_node: str, key: str, attempt: int, tool: str,
                      on_unknown: str, status: str) -> Tx:
        """The journal row's new status, and an `interrupted` step that shows it."""
        def tx(c: sqlite3.Connection) -> None:
            now = self.e.clock()
            c.execute("UPDATE tool_calls SET status = ?, finished_at = ? WHERE idem_key = ?"
                      " AND attempt = ?", (status, now, key, attempt))
            q.insert_step(c, run_id=run.run_id, node=step_node, visit=run.visit(step_node),
                          attempt=attempt, status="interrupted",
                          error=f"the process stopped during {tool}; on_unknown = {on_unknown}",
                          error_kind="unknown_outcome", started_at=now, finished_at=now)
        return tx

    def ask_unknown(self, run: Run, node: NodeConfig, state: dict[str, Any], *, key: str,
                    attempt: int, tool: str, args: Any, step_node: str | None = None) -> None:
        """Open an approval asking whether an interrupted non-idempotent call took effect."""
        prompt = (f"Did {tool}({dumps(args)}) take effect? The daemon stopped after starting it "
                  "and before its result was recorded. Approve = it did (the run continues); "
                  "reject = it did not (the step is retried).")
        self.open_approval(run, node, {**state, "unknown_key": key, "unknown_attempt": attempt},
                           kind="unknown_outcome", prompt=prompt,
                           context={"tool": tool, "args": args, "key": key},
                           extra=self._mark_unknown(run, step_node or node.name, key, attempt,
                                                    tool, "escalate", "unknown"))

    def _decided(self, run: Run, node: NodeConfig, state: dict[str, Any],
                       policy: RetryPolicy) -> bool:
        appr = self.e.read(lambda c: q.get_approval(c, state["approval_id"]))
        if appr is None or appr["status"] == "pending":
            if run.status != WAITING:
                self.e.set_state(run, state, status=WAITING)
            return False
        approved = appr["status"] == "approved"
        attempt = int(state.get("attempt", 1))
        rest = {k: v for k, v in state.items()
                if k not in ("approval_id", "unknown_key", "unknown_attempt", "retry_at")}
        if appr["kind"] == "unknown_outcome":
            key, call_attempt = state["unknown_key"], int(state["unknown_attempt"])
            status = "confirmed" if approved else "assumed_failed"
            result = {"outcome": "confirmed", "by": appr["decided_by"]} if approved else None
            mark: Tx = lambda c: c.execute(  # noqa: E731
                "UPDATE tool_calls SET status = ?, result = ?, finished_at = ? WHERE idem_key = ?"
                " AND attempt = ?", (status, None if result is None else dumps(result),
                                     self.e.clock(), key, call_attempt))
            if node.kind == "tool" and approved:
                return self.e.advance(run, node, output=result, next_node=node.next,
                                      attempt=attempt, extra=mark)
            if node.kind in ("tool", "agent") and not approved:
                # "it did not take effect": the step is retried (an agent in a fresh scope),
                # without spending an attempt on it
                rest.update(attempt=attempt + 1, budget_base=int(state.get("budget_base", 0)) + 1)
            # approved agent: replays, finding the call confirmed; parallel: re-runs the
            # unfinished branches, which find the call confirmed or retry it
            self.e.set_state(run, rest, extra=mark, status="running")
            return True
        # escalation after attempts ran out
        if not approved:
            self.e.finish(run.run_id, FAILED, error=f"{node.name}: escalation rejected by "
                                f"{appr['decided_by']}" + (f": {appr['note']}" if appr["note"]
                                                           else ""))
            return False
        patch = appr["patch"] if isinstance(appr["patch"], dict) else {}
        if "skip_output" in patch:
            return self.e.advance(run, node, output=patch["skip_output"],
                                        next_node=node.next, attempt=attempt,
                                        step_status="skipped")
        rest.update(attempt=attempt + 1, budget_base=attempt)
        self.e.set_state(run, rest, status="running")
        return True

    # parallel ---------------------------------------------------------------------------------
    def _parallel(self, run: Run, wf: WorkflowConfig, node: NodeConfig) -> bool:
        from edge_agent.engine.parallel import run_parallel
        state = dict(run.node_state)
        if "approval_id" in state:  # a branch's interrupted call, answered by a person
            return self._decided(run, node, state, node.retry or RetryPolicy())
        return run_parallel(self, run, wf, node)

    def run_branch(self, run: Run, bnode: NodeConfig, scope: str) -> dict[str, Any]:
        """One parallel branch, with its own retries; its tool calls are journaled."""
        if bnode.kind == "agent":
            if self.e.agent_runner is None:
                return {"ok": False, "error": "no model is loaded to run agents"}
            ctx = DurableAgentContext(self.e.journal, run_id=run.run_id, scope=scope)
            try:
                message = (evaluate(bnode.input, run.context) if bnode.input
                           else run.context["input"])
                out = self.e.agent_runner(str(bnode.agent), message if isinstance(message, str)
                                          else dumps(message), ctx)
            except Exception as exc:  # noqa: BLE001 - recorded as the branch's failure
                return {"ok": False, "error": str(exc)}
            return {"ok": True, "output": out.output}
        assert bnode.tool is not None
        binding = self.e.tools.get(bnode.tool)
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
            row = self.e.read(lambda c, key=key, a=attempt: q.journal_get(c, key, a))
            if row is not None and row["status"] in ("ok", "confirmed"):
                return {"ok": True, "output": row["result"], "attempt": attempt}
            if row is not None and row["status"] in ("intent", "unknown"):
                on_unknown = bnode.on_unknown or binding.on_unknown
                if on_unknown == "escalate":  # the parallel node asks a person, then re-runs
                    return {"ok": False, "unknown": True, "key": key, "attempt": attempt,
                            "tool": bnode.tool, "args": args}
                if on_unknown == "fail":
                    return {"ok": False, "error": f"outcome of {bnode.tool} unknown",
                            "kind": "unknown_outcome", "attempt": attempt}
                err, kind, retryable = "outcome unknown; assumed failed", "unknown_outcome", True
            elif row is not None and row["status"] == "assumed_failed":
                free += 1  # a person said it did not happen: redo it, spending no attempt
                continue
            elif row is not None:
                err, kind = row["error"], row["error_kind"]
                retryable = bool((row["result"] or {}).get("retryable"))
            else:
                res = self.e.journal.execute(run_id=run.run_id, node=scope, key=key,
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
                if self.e.stopping.wait(self.e.backoff(policy, attempt - free)):
                    return {"ok": False, "error": "stopped", "kind": "cancelled"}
                continue
            if not policy.should_retry(attempt - free, kind or "failed", retryable):
                return {"ok": False, "error": err, "kind": kind, "attempt": attempt}


__all__ = ["NodeRunner", "StepFailed"]
