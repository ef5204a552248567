"""What `config check` knows about an expression before any run evaluates it.

The CEL library compiles without types, so a typo in a name or a function the evaluator
lacks would only fail when a run reaches it. Here every expression of a workflow is checked
against what its node can see and what the evaluator can do:

- variables: `input`, the outputs of nodes that may have finished before this one (and the
  branch outputs of an earlier parallel node), `error` once a fallback may have been taken,
  the keys an earlier approval declares in `patch_keys`;
- functions: those the evaluator implements (`SUPPORTED_FUNCTIONS`);
- the argument types the evaluator cannot convert: `string()` of a map, a list, a bool or
  null;
- a branch condition must be able to give a boolean: a constant that is not one, or a call
  that gives a string or a number, is an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from edge_agent.config.expressions import ExpressionError, compile_expression
from edge_agent.config.model import NodeConfig

SUPPORTED_FUNCTIONS = frozenset({
    "size", "int", "uint", "double", "string", "bytes", "dyn", "type", "timestamp",
    "duration", "contains", "startsWith", "endsWith", "matches",
    "getFullYear", "getMonth", "getDate", "getDayOfMonth", "getDayOfWeek", "getDayOfYear",
    "getHours", "getMinutes", "getSeconds", "getMilliseconds",
})
NON_BOOLEAN_CALLS = ("size", "int", "uint", "double", "string", "bytes", "timestamp",
                     "duration", "type")
_MACRO_VAR = re.compile(r"\.\s*(?:all|exists|exists_one|map|filter)\s*\(\s*([A-Za-z_]\w*)\s*,")
_STRING_CALL = re.compile(r"(?<![\w.])string\s*\(")

Problem = tuple[str, str]  # (what is wrong, the source)


_OPERATOR = re.compile(r"@\w+|[!-]_|_[^\w\s]+_|_\[_\]|_\?_:_")


def _operator(name: str) -> bool:
    """`_+_`, `_[_]`, `@in`, `!_`, `-_`: the language's own operators (`__import__` is not)."""
    return _OPERATOR.fullmatch(name) is not None


def _argument(source: str, open_paren: int) -> str:
    depth = 0
    for i in range(open_paren, len(source)):
        if source[i] in "([{":
            depth += 1
        elif source[i] in ")]}":
            depth -= 1
            if depth == 0:
                return source[open_paren + 1:i].strip()
    return ""


def _static_type(arg: str, maps: AbstractSet[str]) -> str | None:
    """The type of an argument when the text alone says it (None: cannot tell)."""
    if arg.startswith("{"):
        return "map"
    if arg.startswith("["):
        return "list"
    if arg in ("true", "false") or re.search(r"(==|!=|<=|>=|&&|\|\|)", arg):
        return "bool"
    if arg == "null":
        return "null"
    if arg in maps:
        return "map"
    return None


def check_expression(source: str, visible: set[str], *, maps: AbstractSet[str] = frozenset(),
                     condition: bool = False) -> list[str]:
    """What is wrong with one expression for a node that sees `visible`; [] when nothing."""
    try:
        program = compile_expression(source)
    except ExpressionError as exc:
        return [f"invalid expression: {exc.reason}"]
    problems: list[str] = []
    bound = set(_MACRO_VAR.findall(source))
    for name in sorted(set(program.variables()) - visible - bound):
        problems.append(f"unknown variable {name!r} (this node can see: "
                        f"{', '.join(sorted(visible))})")
    for name in sorted(f for f in program.functions() if not _operator(f)
                       and f not in SUPPORTED_FUNCTIONS):
        problems.append(f"unknown function {name!r}")
    for m in _STRING_CALL.finditer(source):
        kind = _static_type(_argument(source, m.end() - 1), maps)
        if kind in ("map", "list", "bool", "null"):
            problems.append(f"string() of a {kind} is not supported by the evaluator")
    if not problems and not program.variables():
        try:  # a constant: what it gives (or how it fails) is known now
            value = program.execute({})
        except (ValueError, RuntimeError, TypeError, KeyError, ArithmeticError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return [f"fails whatever the run holds: {reason}"]
    if condition and not problems:
        text = source.strip()
        if not program.variables():
            if not isinstance(value, bool):
                problems.append(f"a condition must give a boolean, this gives "
                                f"{type(value).__name__} {value!r}")
        elif any(re.fullmatch(rf"{f}\s*\(.*\)", text, re.DOTALL) and
                 _argument(text, text.index("(")) == text[text.index("(") + 1:-1].strip()
                 for f in NON_BOOLEAN_CALLS):
            problems.append("a condition must give a boolean, this gives the result of "
                            f"{text.split('(')[0].strip()}()")
    return problems


def _predecessors(nodes: Mapping[str, NodeConfig], successors: Callable[[NodeConfig], list[str]]
                  ) -> dict[str, set[str]]:
    """For each node, the nodes from which it can be reached by at least one edge."""
    parents: dict[str, set[str]] = {n: set() for n in nodes}
    for n in nodes.values():
        for s in successors(n):
            if s in parents:
                parents[s].add(n.name)
    out: dict[str, set[str]] = {}
    for name in nodes:
        seen: set[str] = set()
        todo = list(parents[name])
        while todo:
            cur = todo.pop()
            if cur not in seen:
                seen.add(cur)
                todo += parents[cur]
        out[name] = seen
    return out


def _expressions(node: NodeConfig) -> Iterator[tuple[str, str, bool]]:
    """(key, source, is_condition) for every expression a node holds."""
    for arg, src in node.args_from.items():
        yield f"args_from.{arg}", src, False
    if node.input:
        yield "input", node.input, False
    for i, rule in enumerate(node.branch):
        if rule.when is not None:
            yield f"branch[{i}].when", rule.when, True
    if node.output:
        yield "output", node.output, False


def check_workflow_expressions(nodes: Mapping[str, NodeConfig],
                               successors: Callable[[NodeConfig], list[str]],
                               err: Callable[[str, str, str, Any], None]) -> None:
    """Check each expression of a workflow against what its node can see; `err(node, key,
    message, value)` reports."""
    before = _predecessors(nodes, successors)
    fallbacks = {n.fallback for n in nodes.values() if n.fallback}
    members = {b: n.name for n in nodes.values() for b in n.branches}
    for node in nodes.values():
        earlier = set(before[node.name])
        if node.name in members:  # a branch sees what its parallel node sees
            earlier |= before[members[node.name]]
        visible = {"input"} | earlier
        maps: set[str] = set()
        for name in earlier:
            other = nodes[name]
            visible |= set(other.branches)
            if other.approval is not None:
                visible |= set(other.approval.patch_keys)
            if other.kind in ("tool", "parallel"):
                maps.add(name)  # a tool gives an object; a parallel node its summary
        if fallbacks & (earlier | {node.name}):
            visible.add("error")
        for key, source, condition in _expressions(node):
            for message in check_expression(source, visible, maps=maps, condition=condition):
                err(node.name, key, message, source)
