"""A JSON Schema `pattern` as GBNF for the inside of a JSON string.

The regular expression is parsed with Python's own parser (the dialect `jsonschema` matches
with) and rewritten so that every character is emitted the way JSON must spell it: a quote,
backslash or control character that the pattern allows comes out as its escape, never raw.
An unanchored pattern may be surrounded by any text, as `re.search` allows. Supported:
literals, `.`, classes and `\\d \\w \\s` (ASCII, as in ECMA-262), groups, alternation, `?
* + {m,n}` (greedy or lazy), `^` at the start and `$` at the end. Rejected (PatternError):
back-references, look-around, `\\b`, inline flags, anchors in the middle.
"""

from __future__ import annotations

from typing import Any

from edge_agent.inference.gbnf_text import JSON_CHAR, Ranges, complement, string_char_class

try:  # Python 3.11+
    import re._constants as sre_c
    import re._parser as sre_p
except ImportError:  # pragma: no cover - older Pythons
    import sre_constants as sre_c
    import sre_parse as sre_p

CATEGORIES: dict[Any, Ranges] = {
    sre_c.CATEGORY_DIGIT: [(0x30, 0x39)],
    sre_c.CATEGORY_WORD: [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    sre_c.CATEGORY_SPACE: [(0x09, 0x0D), (0x20, 0x20)],
}
NEGATED = {sre_c.CATEGORY_NOT_DIGIT: sre_c.CATEGORY_DIGIT,
           sre_c.CATEGORY_NOT_WORD: sre_c.CATEGORY_WORD,
           sre_c.CATEGORY_NOT_SPACE: sre_c.CATEGORY_SPACE}
STARTS = (sre_c.AT_BEGINNING, sre_c.AT_BEGINNING_STRING)
ENDS = (sre_c.AT_END, sre_c.AT_END_STRING)


class PatternError(ValueError):
    """The pattern uses a feature a grammar cannot express."""

    def __init__(self, pattern: str, reason: str) -> None:
        self.pattern = pattern
        self.reason = reason
        super().__init__(f"pattern {pattern!r}: {reason}")


def pattern_body(pattern: str) -> str:
    """GBNF for the characters between the quotes of a string that `re.search` matches."""
    try:
        parsed = sre_p.parse(pattern)
    except Exception as exc:  # re.error; the module moved between versions
        raise PatternError(pattern, f"not a regular expression ({exc})") from exc
    if parsed.state.flags & ~(sre_c.SRE_FLAG_UNICODE):
        raise PatternError(pattern, "inline flags are not supported")
    items = list(parsed)
    if len(items) == 1 and items[0][0] is sre_c.BRANCH:
        return "(" + " | ".join(_anchored(pattern, list(alt))
                                for alt in items[0][1][1]) + ")"
    return _anchored(pattern, items)


def _anchored(pattern: str, items: list[Any]) -> str:
    anywhere = f"({JSON_CHAR})*"
    start = bool(items) and items[0][0] is sre_c.AT and items[0][1] in STARTS
    if start:
        items = items[1:]
    end = bool(items) and items[-1][0] is sre_c.AT and items[-1][1] in ENDS
    if end:
        items = items[:-1]
    body = _seq(pattern, items)
    return " ".join(p for p in ("" if start else anywhere, body, "" if end else anywhere) if p)


def _seq(pattern: str, items: list[Any]) -> str:
    parts = [_node(pattern, op, arg) for op, arg in items]
    return "(" + " ".join(parts) + ")" if len(parts) > 1 else (parts[0] if parts else '""')


def _node(pattern: str, op: Any, arg: Any) -> str:
    if op is sre_c.LITERAL:
        return _chars(pattern, [(arg, arg)])
    if op is sre_c.NOT_LITERAL:
        return _chars(pattern, complement([(arg, arg)]))
    if op is sre_c.ANY:
        return _chars(pattern, complement([(0x0A, 0x0A)]))
    if op is sre_c.IN:
        return _chars(pattern, _class(pattern, arg))
    if op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT, getattr(sre_c, "POSSESSIVE_REPEAT", None)):
        lo, hi, sub = arg
        inner = _seq(pattern, list(sub))
        if hi is sre_c.MAXREPEAT:
            return f"{inner}*" if lo == 0 else (f"{inner}+" if lo == 1 else f"{inner}{{{lo},}}")
        if (lo, hi) == (0, 1):
            return f"{inner}?"
        return f"{inner}{{{lo}}}" if lo == hi else f"{inner}{{{lo},{hi}}}"
    if op is sre_c.SUBPATTERN:
        _group, add_flags, del_flags, sub = arg
        if add_flags or del_flags:
            raise PatternError(pattern, "inline flags are not supported")
        return _seq(pattern, list(sub))
    if op is sre_c.BRANCH:
        return "(" + " | ".join(_seq(pattern, list(alt)) for alt in arg[1]) + ")"
    if op is sre_c.AT:
        raise PatternError(pattern, "anchors are supported only at the start and the end")
    raise PatternError(pattern, f"{str(op).lower()} is not supported")


def _class(pattern: str, items: list[Any]) -> Ranges:
    ranges: Ranges = []
    negate = False
    for op, arg in items:
        if op is sre_c.NEGATE:
            negate = True
        elif op is sre_c.LITERAL:
            ranges.append((arg, arg))
        elif op is sre_c.RANGE:
            ranges.append(arg)
        elif op is sre_c.CATEGORY and arg in CATEGORIES:
            ranges += CATEGORIES[arg]
        elif op is sre_c.CATEGORY and arg in NEGATED:
            ranges += complement(CATEGORIES[NEGATED[arg]])
        else:
            raise PatternError(pattern, f"{arg} in a character class is not supported")
    return complement(ranges) if negate else ranges


def _chars(pattern: str, ranges: Ranges) -> str:
    expr = string_char_class(ranges)
    if expr is None:
        raise PatternError(pattern, "a character class matches nothing")
    return expr
