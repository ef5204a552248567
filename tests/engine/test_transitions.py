"""The engine's pure core, driven by a Hypothesis state machine: no database, no thread.

The machine plays the driver: it asks `call_plan` what a tool node does, commits what the
transitions return to an in-memory log (a list, as a database would keep it), makes the
calls, crashes (forgetting what only memory held), and checks after every move:

- visits never exceed `max_visits`;
- a fenced call's intent is committed before the call, and its result after it; after a
  crash, an intent without a result goes to a person, whose truthful answer either
  confirms the call (never made again) or retries it under a new attempt's key;
- exactly one terminal record per run, and none before the run ends;
- the context only grows by node outputs and patches.
"""

from __future__ import annotations

from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edge_agent.config.model import NodeConfig, RetryPolicy
from edge_agent.engine.graph import Workflow, tool_config
from edge_agent.engine.records import QUEUED, RUNNING, Run
from edge_agent.engine.transitions import (
    Intent,
    Transition,
    call_decided,
    call_key,
    call_plan,
    node_done,
    node_failed,
)

FENCED = {"stamp"}  # non-idempotent: an intent before each call
MAX_A = 3


def workflow() -> Any:
    tools = {n: tool_config(n) for n in ("stamp", "read")}
    return (Workflow("w")
            .tool("a", "stamp", next="b", max_visits=MAX_A,
                  retry=RetryPolicy(max_attempts=2, initial_delay_s=0.0, jitter=0.0))
            .tool("b", "read", next="check", fallback="recover")
            .branch("check", [("input.again", "a")], default="done")
            .tool("recover", "stamp", next="done")
            .end("done")
            .build(tools=tools))


WF = workflow()


def fenced(node: NodeConfig) -> bool:
    return node.tool in FENCED


def new_run(run_id: str, again: bool) -> Run:
    return Run(run_id=run_id, workflow="w", status=QUEUED, node=None, node_state={}, visits={},
               input={"again": again}, context={"input": {"again": again}}, output=None,
               error=None, origin="test", trace_id=None, span_id=None, cancel_requested=False,
               created_at=0.0, updated_at=0.0, finished_at=None)


class Core(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1.0
        self.run: Run | None = None
        self.armed: Intent | None = None  # memory only: gone after a crash
        self.log: list[tuple[str, Any]] = []  # what was committed, in order
        self.journal: dict[str, str] = {}  # key -> status, as committed
        self.terminal = 0  # terminal records of the current run
        self.finished = False
        self.runs = 0

    # driver helpers ---------------------------------------------------------------------------
    def tick(self) -> float:
        self.now += 1.0
        return self.now

    def commit(self, t: Transition, before: Run, node: str, patch_keys: set[str],
               result: tuple[str, str] | None = None) -> None:
        if result is not None:
            self.log.append(("result", result[0]))
            self.journal[result[0]] = result[1]
        for kind, _ in t.records:
            self.log.append(("record", kind))
            if kind == "run.finished":
                self.terminal += 1
        context = t.fields.get("context", before.context)
        for k, v in before.context.items():  # only node outputs and patches change it
            assert context.get(k) == v or k == node or k in patch_keys, k
        for k in set(context) - set(before.context):
            assert k in WF.nodes or k in patch_keys, k
        if t.intent is not None:
            self.log.append(("intent", t.intent.key))
            self.journal[t.intent.key] = "intent"
            self.armed = t.intent
        if t.next is not None:
            self.run = t.next
        else:
            self.finished = True
            self.run = self.run.moved(status=t.fields["status"])  # type: ignore[union-attr]

    def current(self) -> NodeConfig:
        assert self.run is not None and self.run.node is not None
        return WF.nodes[self.run.node]

    def live(self) -> bool:
        return self.run is not None and not self.finished

    # rules ------------------------------------------------------------------------------------
    @precondition(lambda self: self.run is None or self.finished)
    @rule(again=st.booleans())
    def start(self, again: bool) -> None:
        """A new run (the one before, if any, has finished)."""
        self.runs += 1
        run = new_run(f"r{self.runs}", again)
        self.run = run.moved(status=RUNNING, node=WF.start, visits={WF.start: 1})
        self.finished, self.terminal, self.armed = False, 0, None
        if fenced(WF.nodes[WF.start]):  # the start commits the first call's intent
            key = call_key(self.run.run_id, f"{WF.start}#1", 0, 0, 1)
            self.log.append(("intent", key))
            self.journal[key] = "intent"
            self.armed = Intent(key, 1, f"{WF.start}#1", "stamp", {}, self.tick())
        self.log.append(("record", "run.started"))

    def waiting(self) -> bool:
        return self.live() and "approval_id" in self.run.node_state  # type: ignore[union-attr]

    @precondition(lambda self: self.live() and self.current().kind == "tool"
                  and not self.waiting())
    @rule(ok=st.booleans(), retryable=st.booleans(), crash_in_call=st.booleans())
    def call(self, ok: bool, retryable: bool, crash_in_call: bool) -> None:
        run, node = self.run, self.current()
        assert run is not None and node.tool is not None
        attempt = int(run.node_state.get("attempt", 1))
        scope = f"{node.name}#{run.visit(node.name)}"
        key = call_key(run.run_id, scope, 0, 0, attempt)
        is_fenced = fenced(node)
        armed, self.armed = self.armed, None
        plan = call_plan(fenced=is_fenced, row={"status": self.journal[key], "result": None}
                         if is_fenced and key in self.journal else None, armed=armed, key=key,
                         attempt=attempt, scope=scope, tool=node.tool, args={},
                         now=self.tick())
        if plan.action == "unknown":  # on_unknown = "escalate": a person is asked
            self.journal[key] = "unknown"
            self.run = run.moved(node_state={**run.node_state, "unknown_key": key,
                                             "unknown_attempt": attempt, "approval_id": 1})
            return
        assert plan.action == "call"
        if plan.intent is not None:
            self.log.append(("intent", plan.intent.key))
            self.journal[plan.intent.key] = "intent"
        if is_fenced:  # the intent is committed before the call
            assert self.journal.get(key) == "intent"
            assert ("intent", key) in self.log
        self.log.append(("call", key))
        if crash_in_call and is_fenced:  # the effect happened; its result was never committed
            return
        result = (key, "ok" if ok else "error") if is_fenced else None
        if ok:
            t = node_done(run, WF, node, output={"done": node.tool}, next_node=node.next,
                          now=self.tick(), attempt=attempt, fenced=fenced)
            self.commit(t, run, node.name, set(), result)
            return
        f = node_failed(run, WF, node, run.node_state, node.retry or RetryPolicy(), attempt,
                        error="boom", kind="device", retryable=retryable, now=self.tick(),
                        rand=lambda: 0.5, fenced=fenced)
        if f.action == "fallback":
            assert f.transition is not None
            self.commit(f.transition, run, node.name, {"error"}, result)
            return
        if result is not None:
            self.log.append(("result", key))
            self.journal[key] = "error"
        if f.action == "retry":
            assert f.state is not None and f.state["attempt"] == attempt + 1
            self.run = run.moved(node_state=f.state)
            return
        assert f.action == "fail"
        self.log.append(("record", "run.finished"))
        self.terminal += 1
        self.finished = True

    @precondition(lambda self: self.waiting())
    @rule()
    def answer(self) -> None:
        """The operator looks at the device and says truthfully whether the call happened."""
        run, node = self.run, self.current()
        assert run is not None
        key = run.node_state["unknown_key"]
        took_effect = ("call", key) in self.log
        appr = {"status": "approved" if took_effect else "rejected", "kind": "unknown_outcome",
                "decided_by": "op", "origin": "local", "note": None, "patch": None,
                "created_at": self.now}
        d = call_decided(run, node, run.node_state, appr)
        assert d.mark is not None and d.mark[1] == key
        self.journal[key] = d.mark[0]
        self.log.append(("answer", key))
        if d.action == "advance":
            assert took_effect and d.mark[0] == "confirmed"
            t = node_done(run, WF, node, output=d.output, next_node=d.next_node,
                          now=self.tick(), attempt=d.attempt, fenced=fenced)
            self.commit(t, run, node.name, set())
            return
        assert d.action == "resume" and d.state is not None and not took_effect
        assert d.state["attempt"] == int(run.node_state.get("attempt", 1)) + 1
        self.run = run.moved(node_state=d.state)

    @precondition(lambda self: self.live() and self.current().kind == "branch")
    @rule()
    def branch(self) -> None:
        run, node = self.run, self.current()
        assert run is not None
        chosen = "a" if run.context["input"]["again"] else "done"
        t = node_done(run, WF, node, output={"next": chosen}, next_node=chosen,
                      now=self.tick(), store_output=False, fenced=fenced)
        self.commit(t, run, node.name, set())

    @precondition(lambda self: self.live())
    @rule()
    def crash(self) -> None:
        """Memory is lost; the committed log is all there is."""
        self.armed = None

    # invariants -------------------------------------------------------------------------------
    @invariant()
    def visits_within_bounds(self) -> None:
        if self.run is not None:
            for name, n in self.run.visits.items():
                bound = WF.nodes[name].max_visits
                assert bound is None or n <= bound, (name, n)

    @invariant()
    def one_terminal_record(self) -> None:
        assert self.terminal == (1 if self.finished else 0)

    @invariant()
    def every_fenced_call_between_its_intent_and_its_result(self) -> None:
        for i, (what, key) in enumerate(self.log):
            if what == "call" and key.split("/")[1].split("#")[0] in ("a", "recover"):
                assert ("intent", key) in self.log[:i]
                assert self.log.count(("call", key)) == 1  # never repeated
            if what == "result":
                assert ("call", key) in self.log[:i]
            if what == "answer":  # a call a person confirmed is never made again
                assert self.log[i:].count(("call", key)) == 0


Core.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestCore = Core.TestCase
