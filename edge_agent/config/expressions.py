"""Safe expressions over a run's context, evaluated with CEL (common-expression-language).

No `eval`, no `exec`: a CEL program can read the context and compute, nothing else.
Size and nesting are bounded before the parser sees a source (the parser recurses, and a
deep or huge expression would take the process down with it, not raise).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import cel

from edge_agent.errors import EdgeAgentError


class ExpressionError(EdgeAgentError):
    """An expression does not compile, or failed on this context."""

    def __init__(self, source: str, reason: str) -> None:
        self.source, self.reason = source, reason
        super().__init__(f"expression {source!r}: {reason}")


MAX_EXPRESSION_CHARS = 4096
MAX_EXPRESSION_DEPTH = 32  # nested (), [] and {}
MAX_EXPRESSION_OPERATORS = 256


def check_limits(source: str) -> None:
    """Raise ExpressionError if `source` is too long, too deep or has too many operators;
    a single pass over the text that never parses it."""
    if len(source) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(source[:60] + "...", f"longer than {MAX_EXPRESSION_CHARS} "
                              f"characters ({len(source)})")
    depth = deepest = operators = 0
    quote: str | None = None
    i = 0
    while i < len(source):
        c = source[i]
        if quote is not None:
            if c == "\\":
                i += 1
            elif source.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c in "\"'":
            quote = c * 3 if source.startswith(c * 3, i) else c
            i += len(quote) - 1
        elif c in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in ")]}":
            depth -= 1
        elif c in "+-*/%<>=!&|?":
            operators += 1
        i += 1
    if deepest > MAX_EXPRESSION_DEPTH:
        raise ExpressionError(source[:60], f"nested deeper than {MAX_EXPRESSION_DEPTH} levels")
    if operators > MAX_EXPRESSION_OPERATORS:
        raise ExpressionError(source[:60], f"more than {MAX_EXPRESSION_OPERATORS} operators")


@lru_cache(maxsize=1024)
def compile_expression(source: str) -> Any:
    """Check the limits, then compile once; raises ExpressionError with the reason."""
    check_limits(source)
    try:
        return cel.compile(source)
    except (ValueError, RuntimeError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExpressionError(source, reason) from exc


def evaluate(source: str, context: Mapping[str, Any]) -> Any:
    """Evaluate `source` with the context's top-level keys as variables."""
    program = compile_expression(source)
    try:
        return program.execute(dict(context))
    except (ValueError, RuntimeError, TypeError, KeyError, ArithmeticError) as exc:
        raise ExpressionError(source, str(exc).splitlines()[0] if str(exc) else
                              type(exc).__name__) from exc


def evaluate_condition(source: str, context: Mapping[str, Any]) -> bool:
    """A branch condition must give a boolean; anything else is an error, not "falsy"."""
    value = evaluate(source, context)
    if not isinstance(value, bool):
        raise ExpressionError(source, f"must give a boolean, gave {type(value).__name__} {value!r}")
    return value
