"""The engine's transition rules, as pure functions.

A run's state and an event in; the new state, the rows and the outbox records to write
out. Nothing here touches the database, a clock or a thread: the driver (`engine.Engine`
with `nodes.NodeRunner`) gathers the facts (the time, the journal row of a call, whether a
tool is fenced), calls these functions, and performs the writes they return. Every rule of
a run's course is in this file:

- `node_done`: a node finished (or failed over to its fallback): its step row, the visit
  count and `max_visits` of the next node, the context (the node's output and a patch),
  the end node's finale in the same commit, the terminal record, and the intent of a next
  fenced call, committed with this transition.
- `node_failed`: a node's attempt failed: retry after a backoff, fall back, escalate to a
  person, or fail the run.
- `call_plan`: what a tool node does with its call: replay a recorded result, treat an
  intent without a result as an unknown outcome, or call (with or without an intent still
  to commit).
- `call_error`: how a tool call's exception is classified.
- `gate_decided`, `call_decided`: what a person's answer leads to (an approval node's
  decision; the answer to an escalation or to an unknown outcome).
- `join_outcome`, `branch_scope`, `branch_unknown`: a parallel node's join, where a
  branch's calls are journaled, and what a branch's call of unknown outcome leads to.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from edge_agent.config.expressions import ExpressionError, evaluate
from edge_agent.config.model import NodeConfig, RetryPolicy, WorkflowConfig
from edge_agent.engine.records import CANCELLED, COMPLETED, FAILED, RUNNING, WAITING, Run

# (tool, idempotency key, arguments) of a call journaled in its step row
StepCall = tuple[str, str, Any]


def call_key(run_id: str, scope: str, turn: int, index: int, attempt: int) -> str:
    """A call's idempotency key: the same on every replay of the same position."""
    return f"{run_id}/{scope}/{turn}/{index}/a{attempt}"


class StepRow(NamedTuple):
    node: str
    visit: int
    attempt: int
    status: str
    output: Any
    started_at: float
    finished_at: float
    call: StepCall | None = None
    error: str | None = None
    error_kind: str | None = None


class Intent(NamedTuple):
    """A fenced (non-idempotent) call about to be made: committed before the call."""

    key: str
    attempt: int
    scope: str  # node#visit
    tool: str
    args: dict[str, Any]
    at: float


class Transition(NamedTuple):
    steps: tuple[StepRow, ...]
    finish: bool  # the run ends (fields: its terminal update) or goes on (fields: checkpoint)
    fields: dict[str, Any]
    records: tuple[tuple[str, dict[str, Any]], ...]  # (kind, payload) on "checkpoints"
    next: Run | None  # the run as written, when it goes on to a next node
    intent: Intent | None  # the next node's intent, committed with this transition
    at: float

    @property
    def status(self) -> str:
        return RUNNING if self.next is not None else str(self.fields["status"])


def tool_args(node: NodeConfig, context: Mapping[str, Any]) -> dict[str, Any]:
    """A tool node's arguments: its constants and its expressions over the context."""
    args = dict(node.args)
    for name, source in node.args_from.items():
        args[name] = evaluate(source, context)
    return args


def finale(wf: WorkflowConfig, next_node: str | None, context: Mapping[str, Any]) -> Any:
    """The output of an `end` node that can complete the run in this commit, else None.
    An output expression that fails leaves the end node to run (and fail) on its own."""
    end = wf.nodes.get(next_node) if next_node is not None else None
    if end is None or end.kind != "end":
        return None
    if not end.output:
        return {k: v for k, v in context.items() if k != "input"}
    try:
        return evaluate(end.output, context)
    except ExpressionError:
        return None


def intent_for(run_id: str, node: NodeConfig, visit: int, context: Mapping[str, Any],
               now: float) -> Intent | None:
    """The intent of a tool node's first attempt, or None when its arguments cannot be
    worked out (the node then fails on its own, with its error, when it runs)."""
    try:
        args = tool_args(node, context)
    except ExpressionError:
        return None
    scope = f"{node.name}#{visit}"
    assert node.tool is not None
    return Intent(call_key(run_id, scope, 0, 0, 1), 1, scope, node.tool, args, now)


def node_done(run: Run, wf: WorkflowConfig, node: NodeConfig, *, output: Any,
              next_node: str | None, now: float, attempt: int = 1,
              started_at: float | None = None, patch: Mapping[str, Any] | None = None,
              step_status: str = "completed", store_output: bool = True,
              call: StepCall | None = None, error: tuple[str, str] | None = None,
              fenced: Callable[[NodeConfig], bool] | None = None) -> Transition:
    """A finished node moves the run on: one step row, the checkpoint, one record. When the
    next node is an `end` the run completes in the same transition (two step rows, two
    records); past `max_visits` it fails. When the next node is a tool `fenced` says needs
    an intent, the intent is part of this transition, so its call needs no commit of its
    own before it runs."""
    context = dict(run.context)
    if store_output and output is not None:
        context[node.name] = output
    if patch:
        context.update(patch)
    end_output = finale(wf, next_node, context)
    visit = run.visit(node.name)
    rid = run.run_id
    steps = [StepRow(node.name, visit, attempt, step_status, output, started_at or now, now,
                     call, error[0] if error else None, error[1] if error else None)]
    record = {"run_id": rid, "workflow": run.workflow, "node": node.name, "visit": visit,
              "attempt": attempt, "status": step_status, "output": output, "ts": now}
    if next_node is None:
        return Transition(tuple(steps), True, {
            "status": COMPLETED, "node": None, "context": context, "output": output,
            "node_state": {}, "finished_at": now}, (("run.finished", {
                **record, "run_status": COMPLETED}),), None, None, now)
    visits = dict(run.visits)
    visits[next_node] = visits.get(next_node, 0) + 1
    bound = wf.nodes[next_node].max_visits
    if bound is not None and visits[next_node] > bound:
        err = f"node {next_node!r} would run more than max_visits={bound} times"
        return Transition(tuple(steps), True, {
            "status": FAILED, "context": context, "error": err, "node_state": {},
            "finished_at": now}, (("run.finished", {**record, "run_status": FAILED,
                                                    "error": err}),), None, None, now)
    records = [("step.completed", {**record, "next": next_node})]
    if end_output is not None:
        end_visit = visits[next_node]
        steps.append(StepRow(next_node, end_visit, 1, "completed", end_output, now, now))
        records.append(("run.finished", {
            "run_id": rid, "workflow": run.workflow, "node": next_node, "visit": end_visit,
            "attempt": 1, "status": "completed", "output": end_output, "ts": now,
            "run_status": COMPLETED}))
        return Transition(tuple(steps), True, {
            "status": COMPLETED, "node": None, "context": context, "output": end_output,
            "node_state": {}, "finished_at": now, "visits": visits}, tuple(records), None,
            None, now)
    target = wf.nodes[next_node]
    intent = intent_for(rid, target, visits[next_node], context, now) \
        if fenced is not None and target.kind == "tool" and fenced(target) else None
    fields = {"node": next_node, "context": context, "visits": visits,
              "status": None if run.status == RUNNING else RUNNING}  # checkpoint_update's
    moved = run.moved(status=RUNNING, node=next_node, node_state={}, context=context,
                      visits=visits, updated_at=now)
    return Transition(tuple(steps), False, fields, tuple(records), moved, intent, now)


# failures --------------------------------------------------------------------------------------
class Failure(NamedTuple):
    """What a failed attempt leads to. `action`: "retry" (node state `state`, a step row
    and a `step.retry` record), "fallback" (`transition` to the fallback node), "escalate"
    (an approval with `prompt`, `state` and the step row), or "fail" (the run fails with
    `message`, and the step row)."""

    action: str
    step: StepRow
    state: dict[str, Any] | None = None
    record: dict[str, Any] | None = None
    prompt: str | None = None
    message: str | None = None
    transition: Transition | None = None
    delay: float = 0.0


def node_failed(run: Run, wf: WorkflowConfig, node: NodeConfig, state: Mapping[str, Any],
                policy: RetryPolicy, attempt: int, *, error: str, kind: str, retryable: bool,
                now: float, rand: Callable[[], float], started_at: float | None = None,
                call: StepCall | None = None,
                fenced: Callable[[NodeConfig], bool] | None = None) -> Failure:
    """A node's attempt failed: retry (with a durable backoff) while the policy allows,
    then the node's fallback, an escalation to a person, or the run fails."""
    visit = run.visit(node.name)
    base = int(state.get("budget_base", 0))
    step = StepRow(node.name, visit, attempt, "failed", None, started_at or now, now, call,
                   error, kind)
    if policy.should_retry(attempt - base, kind, retryable):
        delay: float = policy.delay(attempt - base, rand())
        new_state = {k: v for k, v in state.items() if k != "approval_id"}
        new_state.update(attempt=attempt + 1, retry_at=now + delay, last_error=error)
        return Failure("retry", step, state=new_state, delay=delay, record={
            "run_id": run.run_id, "node": node.name, "attempt": attempt, "error": error,
            "kind": kind, "delay_s": delay, "ts": now})
    if node.fallback:
        info = {"node": node.name, "error": error, "kind": kind, "attempts": attempt}
        return Failure("fallback", step, transition=node_done(
            run, wf, node, output=info, next_node=node.fallback, now=now, attempt=attempt,
            step_status="failed", patch={"error": info}, store_output=False, call=call,
            error=(error, kind), fenced=fenced))
    if node.escalate == "approval" or kind == "escalate":
        prompt = (f"{node.name} failed after {attempt - base} attempt(s): {kind}: {error}. "
                  "Approve to retry; approve with patch {\"skip_output\": {...}} to skip "
                  "with that output; reject to fail the run.")
        return Failure("escalate", step, state={**state, "attempt": attempt}, prompt=prompt)
    return Failure("fail", step, message=f"{node.name}: {kind}: {error} (attempt {attempt})")


# tool calls ------------------------------------------------------------------------------------
class CallPlan(NamedTuple):
    """`action`: "replay" (the recorded `result`), "unknown" (an intent without a result:
    the node's on_unknown policy decides), or "call" (with `intent` to commit first, or None
    when there is none to write: an idempotent tool, or an intent already committed)."""

    action: str
    result: Any = None
    intent: Intent | None = None


def call_plan(*, fenced: bool, row: Mapping[str, Any] | None, armed: Intent | None,
              key: str, attempt: int, scope: str, tool: str, args: dict[str, Any],
              now: float) -> CallPlan:
    """A tool node's call. `row` is its journal row (looked up for fenced calls only);
    `armed` the intent this process committed with the transition into the node and has
    not called yet. An intent that no living call owns (found after a restart) is an
    unknown outcome: the call may have happened."""
    if armed is not None and armed.key == key and armed.attempt == attempt:
        return CallPlan("call")
    if row is not None:
        if row["status"] in ("intent", "unknown"):
            return CallPlan("unknown")
        if row["status"] in ("ok", "confirmed"):
            return CallPlan("replay", row["result"])
    if not fenced:
        return CallPlan("call")
    return CallPlan("call", intent=Intent(key, attempt, scope, tool, args, now))


class CallError(NamedTuple):
    """A tool call's exception, classified: its message and kind, whether retrying may
    help, and whether the effect may have happened (an unknown outcome for a fenced tool)."""

    error: str
    kind: str | None
    retryable: bool
    unknown: bool


def call_error(exc: BaseException, *, fenced: bool) -> CallError:
    """The one place a tool call's exception is classified. An error that says the effect
    may have happened (`effect_may_have_happened = True`: a request sent, then a timeout or
    a lost link) from a fenced tool is an unknown outcome, handled by the node's
    `on_unknown` like an intent without a result after a crash; for an idempotent tool it
    is a plain failure (retrying is its recovery)."""
    unknown = fenced and bool(getattr(exc, "effect_may_have_happened", False))
    return CallError(str(exc), getattr(exc, "kind", type(exc).__name__),
                     bool(getattr(exc, "retryable", False)), unknown)


# decisions -------------------------------------------------------------------------------------
class Decided(NamedTuple):
    """What a person's answer (an approval row) leads to. `action`: "wait" (none yet;
    `status` to set when the run does not show it), "advance" (`node_done` with these
    fields), "resume" (the node runs again with node state `state`), or "finish" (the run
    ends with `status` and `message`). `mark`: a fenced call's journal row answered by the
    decision: (its new status, its key, its attempt, its result)."""

    action: str
    output: Any = None
    next_node: str | None = None
    attempt: int = 1
    patch: Mapping[str, Any] | None = None
    started_at: float | None = None
    step_status: str = "completed"
    state: dict[str, Any] | None = None
    status: str | None = None
    message: str | None = None
    mark: tuple[str, str, int, Any] | None = None


def gate_decided(node: NodeConfig, appr: Mapping[str, Any] | None,
                 context: Mapping[str, Any] | None = None) -> Decided:
    """An approval node's decision: approved goes on (the answer's patch merged into the
    context; a declared `patch_keys` key the answer left out, and the context does not hold
    yet, is null, so an expression after the gate reads null rather than failing the run on
    an undefined variable), rejected goes to `on_reject` or cancels the run."""
    if appr is None or appr["status"] == "pending":
        return Decided("wait")
    decision = {"decision": appr["status"], "by": appr["decided_by"],
                "origin": appr["origin"], "note": appr["note"]}
    if appr["status"] == "approved":
        given = appr["patch"] if isinstance(appr["patch"], dict) else {}
        keys = node.approval.patch_keys if node.approval is not None else ()
        patch = {**{k: None for k in keys if k not in (context or {})}, **given} or None
        return Decided("advance", output=decision, next_node=node.next, patch=patch,
                       started_at=appr["created_at"])
    if node.on_reject:
        return Decided("advance", output=decision, next_node=node.on_reject,
                       started_at=appr["created_at"])
    return Decided("finish", status=CANCELLED, message=(
        f"rejected at {node.name} by {appr['decided_by']} ({appr['origin']})"
        + (f": {appr['note']}" if appr["note"] else "")))


def call_decided(run: Run, node: NodeConfig, state: Mapping[str, Any],
                 appr: Mapping[str, Any] | None) -> Decided:
    """The answer to an unknown outcome (approved: the call took effect; rejected: it did
    not, and the step runs again without spending an attempt) or to an escalation after
    the attempts ran out (approved: retry, or skip with `skip_output`; rejected: fail)."""
    if appr is None or appr["status"] == "pending":
        return Decided("wait", status=None if run.status == WAITING else WAITING)
    approved = appr["status"] == "approved"
    attempt = int(state.get("attempt", 1))
    rest = {k: v for k, v in state.items() if k not in (
        "approval_id", "unknown_key", "unknown_attempt", "rerun_branch", "retry_at")}
    if appr["kind"] == "unknown_outcome":
        result = {"outcome": "confirmed", "by": appr["decided_by"]} if approved else None
        mark = ("confirmed" if approved else "assumed_failed", state["unknown_key"],
                int(state["unknown_attempt"]), result)
        if node.kind == "tool" and approved:
            return Decided("advance", output=result, next_node=node.next, attempt=attempt,
                           mark=mark)
        if node.kind in ("tool", "agent") and not approved:
            # "it did not take effect": the step is retried (an agent in a fresh scope),
            # without spending an attempt on it
            rest.update(attempt=attempt + 1, budget_base=int(state.get("budget_base", 0)) + 1)
        rerun = state.get("rerun_branch")
        if node.kind == "parallel" and not approved and rerun:
            # an agent branch runs again from its start, in a fresh scope (as an agent node)
            runs = dict(state.get("attempts") or {})
            runs[rerun] = int(runs.get(rerun, 1)) + 1
            rest["attempts"] = runs
        # approved agent: replays, finding the call confirmed; parallel: re-runs the
        # unfinished branches: an agent finds the call confirmed (or starts again, as
        # above), a tool branch finds it confirmed or makes it again under its next key
        return Decided("resume", state=rest, mark=mark)
    if not approved:
        return Decided("finish", status=FAILED, message=(
            f"{node.name}: escalation rejected by {appr['decided_by']}"
            + (f": {appr['note']}" if appr["note"] else "")))
    patch = appr["patch"] if isinstance(appr["patch"], dict) else {}
    if "skip_output" in patch:
        return Decided("advance", output=patch["skip_output"], next_node=node.next,
                       attempt=attempt, step_status="skipped")
    rest.update(attempt=attempt + 1, budget_base=attempt)
    return Decided("resume", state=rest)


# parallel branches -------------------------------------------------------------------------------
def join_outcome(node: NodeConfig, done: Mapping[str, Mapping[str, Any]]) -> bool | None:
    """A parallel node's join over its finished branches: True (joined), False (cannot
    succeed any more), None (undecided yet: it waits on the branches not in `done`, and on
    a person when one of them has a call of unknown outcome)."""
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


def branch_scope(node: str, branch: str, visit: int, attempt: int = 1) -> str:
    """Where a branch's calls are journaled: `parallel/branch#visit`. An agent branch that
    runs again (a person said its interrupted call did not take effect) starts afresh in
    `parallel/branch#visit.attempt.0`, the scope shape of an agent node's attempt."""
    scope = f"{node}/{branch}#{visit}"
    return scope if attempt <= 1 else f"{scope}.{attempt}.0"


def branch_unknown(on_unknown: str, *, tool: str, key: str, call_attempt: int, args: Any,
                   attempt: int, rerun: bool) -> dict[str, Any]:
    """A branch's call whose outcome is unknown (an intent without a result: the process
    stopped during it, or an error said the request may have reached the device), by the
    branch's `on_unknown`, as for a node of its own: "escalate" leaves the branch unknown
    (the parallel node asks a person while its join waits on it; `rerun`: the branch is an
    agent, which runs again from its start if the person says the call did not take
    effect); "fail" and "assume_failed" fail the branch (the join decides) and mark its
    journal row `unknown` or `assumed_failed`. The branch's result, with `attempt` the
    branch's run for its step row. (A tool branch retries an assumed failure within its
    own policy; an agent branch has no retries of its own.)"""
    if on_unknown == "escalate":
        return {"ok": False, "unknown": True, "key": key, "call_attempt": call_attempt,
                "tool": tool, "args": args, "attempt": attempt, "rerun": rerun}
    status, why = (("unknown", " (on_unknown = fail)") if on_unknown == "fail" else
                   ("assumed_failed", "; assumed failed"))
    return {"ok": False, "error": f"outcome of {tool} unknown{why}", "kind": "unknown_outcome",
            "attempt": attempt, "mark": [status, key, call_attempt]}
