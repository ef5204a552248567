"""Parse and validate `[workflows.<name>]`: node kinds, references, reachability, bounds, expressions."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jsonschema

from edge_agent.config.expression_check import check_workflow_expressions
from edge_agent.config.expressions import ExpressionError, compile_expression
from edge_agent.config.model import (
    AgentConfig,
    ApprovalSpec,
    BranchRule,
    NodeConfig,
    RetryPolicy,
    ToolConfig,
    TriggerSpec,
    WorkflowConfig,
)
from sync.config_reader import ConfigIssue, Table

NODE_KINDS = ("tool", "agent", "branch", "approval", "parallel", "handoff", "end")
RESERVED_NAMES = frozenset({"input", "run", "approval", "error"})
JOINS = ("all", "any", "first_success", "quorum")
CLOUD_PREFIX = "cloud:"  # `handoff = "cloud:<name>"`: a step the cloud runs (cloud_handoff)


def parse_retry(t: Table, name: str = "retry") -> RetryPolicy | None:
    r = t.table(name)
    if r is None:
        return None
    kinds = r.list_of_str("retry_on")
    policy = RetryPolicy(
        max_attempts=r.integer("max_attempts", 3, min=1, max=1000),
        initial_delay_s=r.number("initial_delay_s", 1.0, min=0.0),
        multiplier=r.number("multiplier", 2.0, min=1.0),
        max_delay_s=r.number("max_delay_s", 60.0, min=0.0),
        jitter=r.number("jitter", 0.1, min=0.0, max=1.0),
        retry_on=frozenset(kinds) if kinds is not None else None,
    )
    r.finish()
    return policy


def _expr(t: Table, key: str, source: Any) -> None:
    try:
        compile_expression(source)
    except ExpressionError as exc:
        shown = source if len(source) <= 200 else source[:200] + "..."  # 600 kB in a log: no
        t.error(key, f"invalid expression: {exc.reason}", shown)


def _parse_node(name: str, t: Table) -> NodeConfig | None:
    present = [k for k in NODE_KINDS if t.has(k)]
    if len(present) != 1:
        t.error("", "must have exactly one of " + ", ".join(NODE_KINDS),
                sorted(t.data))
        t.rest()
        return None
    kind = present[0]
    fields: dict[str, Any] = {"name": name, "kind": kind, "next": t.string("next"),
                              "max_visits": t.integer("max_visits", min=1)}
    if kind == "tool":
        fields["tool"] = t.string("tool", required=True)
        fields["args"] = MappingProxyType(t.mapping("args", {}))
        args_from = t.mapping("args_from", {})
        for arg, src in args_from.items():
            if not isinstance(src, str):
                t.error(f"args_from.{arg}", "must be an expression string", src)
            else:
                _expr(t, f"args_from.{arg}", src)
        fields["args_from"] = MappingProxyType(dict(args_from))
    elif kind in ("agent", "handoff"):
        fields["agent"] = t.string(kind, required=True)
        if kind == "agent" and t.string("where", "device", choices=("device", "cloud")) == \
                "cloud" and fields["agent"] is not None:
            # `agent = NAME` with `where = "cloud"` is `handoff = "cloud:NAME"`: the cloud's
            # [handoffs] entry NAME runs the step
            kind = fields["kind"] = "handoff"
            fields["agent"] = CLOUD_PREFIX + fields["agent"]
        src = t.string("input")
        if src is not None:
            _expr(t, "input", src)
        fields["input"] = src
        if kind == "handoff" and (fields["agent"] or "").startswith(CLOUD_PREFIX):
            # a step handed to the cloud: it waits up to timeout_s, then takes `fallback`
            fields["timeout_s"] = t.number("timeout_s", 60.0, min=0.0, exclusive_min=True)
    elif kind == "branch":
        rules = t.raw("branch")
        parsed: list[BranchRule] = []
        if not isinstance(rules, list) or not rules:
            t.error("branch", "must be a non-empty list of { when = ..., next = ... }", rules)
        else:
            for i, rule in enumerate(rules):
                if not isinstance(rule, dict):
                    t.error(f"branch[{i}]", "must be a table", rule)
                    continue
                r = Table(rule, t.key(f"branch[{i}]"), t.issues)
                when, nxt = r.string("when"), r.string("next", required=True)
                r.finish()
                if when is not None:
                    _expr(r, "when", when)
                if nxt is not None:
                    parsed.append(BranchRule(next=nxt, when=when))
            if parsed and all(p.when is not None for p in parsed):
                t.error("branch", "needs a default rule without `when` as its last entry", rules)
        fields["branch"] = tuple(parsed)
    elif kind == "approval":
        a = t.table("approval", required=True)
        if a is not None:
            prompt = a.string("prompt", required=True)
            timeout = a.number("timeout_s", min=0.0, exclusive_min=True)
            on_timeout = a.string("on_timeout", "reject", choices=("approve", "reject", "escalate"))
            show = a.list_of_str("show", ())
            patch_keys = a.list_of_str("patch_keys", ())
            a.finish()
            fields["approval"] = ApprovalSpec(prompt=prompt or "", timeout_s=timeout,
                                              on_timeout=on_timeout or "reject", show=show or (),
                                              patch_keys=patch_keys or ())
        fields["on_reject"] = t.string("on_reject")
    elif kind == "parallel":
        fields["branches"] = t.list_of_str("parallel", ()) or ()
        if not fields["branches"]:
            t.error("parallel", "must list at least one node", t.data.get("parallel"))
        quorum = t.integer("quorum", min=1)
        join = t.string("join", "quorum" if quorum else "all", choices=JOINS)
        if join == "quorum" and quorum is None:
            t.error("quorum", "is required when join = \"quorum\"")
        if quorum is not None and quorum > len(fields["branches"]):
            t.error("quorum", f"must be <= the number of branches ({len(fields['branches'])})",
                    quorum)
        fields["join"], fields["quorum"] = join, quorum
        fields["fallback"] = t.string("fallback")  # where to go when the join cannot be met
    elif kind == "end":
        if t.raw("end") is not True:
            t.error("end", "must be true", t.data.get("end"))
        src = t.string("output")
        if src is not None:
            _expr(t, "output", src)
        fields["output"] = src
    if kind in ("tool", "agent", "handoff"):
        fields["retry"] = parse_retry(t)
        fields["on_unknown"] = t.string("on_unknown", choices=("escalate", "fail", "assume_failed"))
        fields["escalate"] = t.string("escalate", choices=("approval", "fail"))
        fields["fallback"] = t.string("fallback")
    t.finish()
    return NodeConfig(**fields)


def _trigger(tr: Table, tools: Mapping[str, ToolConfig]) -> TriggerSpec | None:
    every_s = tr.number("every_s", min=0.0, exclusive_min=True)
    gpio = tr.string("gpio")
    line = tr.string("line")
    edge = tr.string("edge", "rising", choices=("rising", "falling", "both"))
    spec = TriggerSpec(every_s=every_s, input=MappingProxyType(tr.mapping("input", {})),
                       gpio=gpio, line=line, edge=edge)
    if (every_s is None) == (gpio is None):
        tr.error("", "needs exactly one of every_s (a timer) or gpio (an edge on a line)")
    if gpio is not None:
        tool = tools.get(gpio)
        if tool is None or tool.kind != "gpio":
            tr.error("gpio", "names no [tools.*] entry of kind gpio", gpio)
        elif line is None:
            tr.error("line", "is required with gpio")
        elif line not in (tool.options.get("lines") or {}):
            tr.error("line", f"is not a line declared by tools.{gpio}", line)
    tr.finish()
    return spec


def parse_workflow(name: str, t: Table, tools: Mapping[str, ToolConfig],
                   agents: Mapping[str, AgentConfig]) -> WorkflowConfig | None:
    first_issue = len(t.issues)
    start = t.string("start", required=True)
    description = t.string("description", "", nonempty=False)
    trigger = None
    tr = t.table("trigger")
    if tr is not None:
        trigger = _trigger(tr, tools)
    nodes: dict[str, NodeConfig] = {}
    for node_name, nt in t.tables("nodes").items():
        if node_name in RESERVED_NAMES:
            nt.error("", f"node name {node_name!r} is reserved", node_name)
        node = _parse_node(node_name, nt)
        if node is not None:
            nodes[node_name] = node
    if not t.has("nodes"):
        t.error("nodes", "is required: a workflow needs at least one node")
    t.finish()
    if start is None or not nodes:
        return None
    before = len(t.issues)
    _check_graph(name, t, start, nodes, tools, agents)
    if len(t.issues) == first_issue:  # expressions that parse, in a graph that holds
        check_workflow_expressions(nodes, successors, lambda node, key, message, value: (
            t.issues.append(ConfigIssue(f"{t.path}.nodes.{node}.{key}", message, value))))
    if len(t.issues) > before:
        return None
    return WorkflowConfig(name=name, start=start, nodes=MappingProxyType(nodes),
                          description=description or "", trigger=trigger)


def successors(node: NodeConfig) -> list[str]:
    """Nodes control can go to from `node` (parallel members excluded)."""
    out = [n for n in (node.next, node.on_reject, node.fallback) if n]
    out += [r.next for r in node.branch]
    return out


def _check_graph(wf: str, t: Table, start: str, nodes: Mapping[str, NodeConfig],
                 tools: Mapping[str, ToolConfig], agents: Mapping[str, AgentConfig]) -> None:
    def err(node: str, key: str, message: str, value: Any) -> None:
        t.issues.append(ConfigIssue(f"{t.path}.nodes.{node}.{key}" if key else
                                    f"{t.path}.nodes.{node}", message, value))

    if start not in nodes:
        t.error("start", "names no node of this workflow", start)
        return
    members = {b for n in nodes.values() for b in n.branches}
    for n in nodes.values():
        for key, ref in (("next", n.next), ("on_reject", n.on_reject), ("fallback", n.fallback)):
            if ref is not None and ref not in nodes:
                err(n.name, key, "names no node of this workflow", ref)
        for i, rule in enumerate(n.branch):
            if rule.next not in nodes:
                err(n.name, f"branch[{i}].next", "names no node of this workflow", rule.next)
        for b in n.branches:
            target = nodes.get(b)
            if target is None:
                err(n.name, "parallel", "names no node of this workflow", b)
            elif target.kind not in ("tool", "agent") or target.next is not None:
                err(n.name, "parallel", "branches must be tool or agent nodes without `next`", b)
        if n.kind == "parallel" and n.next is None:
            err(n.name, "next", "is required", None)
        if n.kind in ("tool", "agent", "handoff", "approval") and n.next is None \
                and n.name not in members:
            err(n.name, "next", "is required (or make this an end node)", None)
        if n.kind == "tool" and n.tool is not None:
            tool = tools.get(n.tool)
            if tool is None:
                err(n.name, "tool", "names no [tools.*] entry", n.tool)
            else:
                _check_constant_args(n, tool, err)
        if n.kind in ("agent", "handoff") and n.agent is not None and n.agent not in agents \
                and not (n.kind == "handoff" and n.agent.startswith(CLOUD_PREFIX)):
            err(n.name, n.kind, "names no [agents.*] entry", n.agent)
    if not any(n.kind == "end" for n in nodes.values()):
        t.error("nodes", "has no end node (add one with `end = true`)", sorted(nodes))
    reachable, todo = set(), [start]
    while todo:
        cur = todo.pop()
        if cur in reachable or cur not in nodes:
            continue
        reachable.add(cur)
        todo += successors(nodes[cur]) + list(nodes[cur].branches)
    for name in nodes:
        if name not in reachable:
            err(name, "", "is unreachable from start", name)
    for cycle in _cycles(nodes):
        if not any(nodes[c].max_visits for c in cycle):
            err(sorted(cycle)[0], "max_visits",
                "is on a cycle without a bound (" + " -> ".join(sorted(cycle)) +
                "); set max_visits on one of its nodes", None)


def _check_constant_args(n: NodeConfig, tool: ToolConfig, err: Any) -> None:
    schema = dict(tool.params)
    if not n.args_from:
        instance, check = dict(n.args), schema
    else:
        props = schema.get("properties", {})
        instance = dict(n.args)
        check = {"type": "object", "properties": {k: props[k] for k in n.args if k in props}}
    try:
        jsonschema.validate(instance, check)
    except jsonschema.ValidationError as exc:
        err(n.name, "args", f"do not match the parameters of tool {tool.name!r}: {exc.message}",
            dict(n.args))
    except jsonschema.SchemaError:
        pass  # the tool's own schema is reported where the tool is declared
    unknown = set(n.args_from) | set(n.args)
    allowed = set(schema.get("properties", {}))
    if allowed and schema.get("additionalProperties") is False and unknown - allowed:
        err(n.name, "args", f"name parameters tool {tool.name!r} does not have",
            sorted(unknown - allowed))


def _cycles(nodes: Mapping[str, NodeConfig]) -> list[set[str]]:
    """Strongly connected components that contain a cycle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(successors(nodes[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in nodes:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(successors(nodes[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = set()
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.add(w)
                        if w == v:
                            break
                    if len(comp) > 1 or v in successors(nodes[v]):
                        out.append(comp)
    return out
