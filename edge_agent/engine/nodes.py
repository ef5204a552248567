"""What each node kind does. Every outcome is committed through the driver (the engine);
what follows a failure, an unknown outcome or a person's decision is in `outcomes`."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from typing import Any

from edge_agent.config.expressions import ExpressionError, evaluate, evaluate_condition
from edge_agent.config.model import NodeConfig, RetryPolicy, WorkflowConfig
from edge_agent.engine import cloud_handoff, transitions
from edge_agent.engine import queries as q
from edge_agent.engine.bindings import RemoteTool, StepFailed, UnknownOutcome
from edge_agent.engine.journal import DurableAgentContext
from edge_agent.engine.outcomes import Outcomes
from edge_agent.engine.parallel import run_parallel
from edge_agent.engine.ports import Driver, Tx, both
from edge_agent.engine.records import FAILED, Run, dumps
from edge_agent.engine.transitions import call_key
from edge_agent.telemetry.logs import log_context
from sync.dbapi import Connection

log = logging.getLogger(__name__)

MAX_HANDOFFS = 8
_CALL = transitions.CallPlan("call")  # an idempotent call's plan: always to call it
NO_RETRY = RetryPolicy()


class NodeRunner:
    def __init__(self, driver: Driver) -> None:
        self.e = driver
        self.out = Outcomes(driver)
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
            return self.out.decided(run, node, state, policy)
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
                                args, node.on_unknown or binding.on_unknown)
        # An idempotent call writes its journal row only with the transition, so there is
        # nothing to replay: re-running it is the recovery. Only fenced calls need a look,
        # unless this process committed the intent with the transition into this node.
        fenced = not binding.idempotent
        row = None if not fenced or armed is not None else \
            self.e.read(lambda c: q.journal_get(c, key, attempt))
        plan = transitions.call_plan(fenced=fenced, row=row, armed=armed, key=key,
                                     attempt=attempt, scope=scope, tool=node.tool, args=args,
                                     now=self.e.clock()) if fenced else _CALL
        if plan.action == "unknown":
            return self.out.unknown(run, node, state, policy,
                                    node.on_unknown or binding.on_unknown, key, attempt,
                                    node.tool, args)
        if plan.action == "replay":
            return self.e.advance(run, node, output=plan.result, next_node=node.next,
                                  attempt=attempt)
        with self.e.blocking(binding.blocks or fenced):
            res = self.e.journal.execute(run_id=run.run_id, node=scope, key=key,
                                         attempt=attempt, name=node.tool, args=args,
                                         write_result=False, intent_committed=armed is not None)
        if res.unknown:  # the effect may have happened: as after a crash in the call
            return self.out.unknown(run, node, state, policy,
                                    node.on_unknown or binding.on_unknown, key, attempt,
                                    node.tool, args, cause=res.error)
        # the outcome goes with the transition: an idempotent call is journaled in the step
        # row itself, a fenced one completes its intent row
        call: transitions.StepCall | None = None if fenced else (node.tool, key, args)
        result = self.e.journal.result(run_id=run.run_id, node=scope, key=key,
                                       attempt=attempt, name=node.tool, args=args,
                                       res=res) if fenced else None
        if res.ok:
            return self.e.advance(run, node, output=res.result, next_node=node.next, wf=wf,
                                  attempt=attempt, started_at=res.started_at, call=call,
                                  result=result)
        record: Tx | None = None if result is None else (lambda c: c.execute(*result))
        return self.out.failed(run, node, state, policy, attempt, error=res.error or "failed",
                            kind=res.kind or "failed", retryable=res.retryable,
                            extra=record, started_at=res.started_at, call=call)

    def _remote(self, run: Run, node: NodeConfig, tool: RemoteTool, state: dict[str, Any],
                policy: RetryPolicy, attempt: int, scope: str, key: str,
                args: dict[str, Any], on_unknown: str) -> bool | float:
        """Ask the cloud; wait durably for its `tool_result`; time out to the fallback.
        Without a fallback, a non-idempotent call that timed out is an unknown outcome (the
        cloud may have run it, its answer lost), answered by `on_unknown`; asking again
        could run it twice. The cloud does not start a request past its `timeout_at`. A
        request the cloud refused unrun (`busy`) takes the fallback at once, or fails
        retryably (the node's retry policy asks again)."""
        now = self.e.clock()
        if state.get("remote_key") != key:
            due = now + tool.timeout_s

            def request(c: Connection) -> None:
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
        busy = row is not None and row["status"] == "error" and row["error_kind"] == "busy"
        if row is not None and row["status"] == "error" and not (busy and tool.fallback):
            rest = {k: v for k, v in state.items() if k not in ("remote_key", "remote_due")}
            # busy: the cloud refused it unrun, so asking again (by the node's retry policy)
            # cannot run it twice
            return self.out.failed(run, node, rest, policy, attempt,
                                error=row["error"] or "remote tool failed",
                                kind=row["error_kind"] or "failed", retryable=busy)
        due = float(state.get("remote_due", now))
        if now < due and not busy:
            return due
        rest = {k: v for k, v in state.items() if k not in ("remote_key", "remote_due")}

        def expire(c: Connection) -> None:
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
                                      extra=both(expire, record))
            return self.out.failed(run, node, rest, policy, attempt, error=fb.error or "failed",
                                kind=fb.kind or "failed", retryable=fb.retryable,
                                extra=both(expire, record))
        if not tool.idempotent:
            return self.out.unknown(run, node, rest, policy, on_unknown, key, attempt,
                                    tool.name, args, target="the cloud",
                                    cause=f"no answer within {tool.timeout_s:g}s")
        return self.out.failed(run, node, rest, policy, attempt,
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
            return self.out.decided(run, node, state, policy)
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
            with self.e.blocking(), log_context(agent=agent):  # other runs go on meanwhile
                outcome = self.e.agent_runner(agent, message, ctx)
        except UnknownOutcome as u:
            binding = self.e.tools.get(u.tool)
            on_unknown = node.on_unknown or (binding.on_unknown if binding else "escalate")
            return self.out.unknown(run, node, state, policy, on_unknown, u.key, u.attempt,
                                       u.tool, u.args)
        except Exception as exc:  # noqa: BLE001 - the node's policy decides
            return self.out.failed(run, node, state, policy, attempt, error=str(exc),
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

            def handoff(c: Connection) -> None:
                q.insert_step(c, run_id=run.run_id, node=node.name, visit=run.visit(node.name),
                              attempt=attempt, status="handoff", started_at=begun,
                              finished_at=now,  # the segment's time: its spans nest in it
                              output={"from": agent, "to": target, "context": outcome.output})
                self.e.emit(c, "checkpoints", "agent.handoff", {
                    "run_id": run.run_id, "node": node.name, "from": agent, "to": target,
                    "ts": now})
            self.e.set_state(run, new_state, extra=handoff)
            log.info("handoff from agent %s to %s", agent, target, extra={"agent": agent})
            return True
        return self.e.advance(run, node, output=outcome.output, next_node=node.next,
                              attempt=attempt, started_at=begun)

    def _handoff(self, run: Run, wf: WorkflowConfig, node: NodeConfig) -> bool | float:
        if node.agent and node.agent.startswith(cloud_handoff.PREFIX):
            return cloud_handoff.run_cloud_handoff(self.e, run, wf, node)
        return self._agent(run, wf, node)

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
            self.out.open_approval(run, node, state, kind="gate", prompt=spec.prompt,
                                     context={"context": shown, "on_timeout": spec.on_timeout},
                                     timeout_s=spec.timeout_s)
            return False
        appr = self.e.read(lambda c: q.get_approval(c, state["approval_id"]))
        return self.out.do(run, node, transitions.gate_decided(node, appr, run.context), state)

    # parallel ---------------------------------------------------------------------------------
    def _parallel(self, run: Run, wf: WorkflowConfig, node: NodeConfig) -> bool:
        state = dict(run.node_state)
        if "approval_id" in state:  # a branch's interrupted call, answered by a person
            return self.out.decided(run, node, state, node.retry or RetryPolicy())
        return run_parallel(self.e, self.out, run, wf, node)


__all__ = ["NodeRunner", "StepFailed"]
