"""GBNF building blocks: literals, JSON-string character classes, integer and number ranges.

Everything here returns GBNF expressions (strings) that match JSON text exactly: a character
class meant for the inside of a JSON string never admits `"`, `\\` or a raw control
character, and offers the JSON escape instead where the set contains one of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

MAX_CODE = 0x10FFFF
MAX_DIGITS = 16  # integers longer than this are not generated (float64 keeps 15-16 digits)
FORBIDDEN_RAW = ((0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C))
SHORT_ESCAPES = {0x08: "b", 0x0C: "f", 0x0A: "n", 0x0D: "r", 0x09: "t", 0x22: '"', 0x5C: "\\"}

Ranges = list[tuple[int, int]]


def literal(text: str) -> str:
    """A GBNF string literal matching `text` exactly."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def json_literal(value: object) -> str:
    """The GBNF literal of a JSON value in its compact form."""
    return literal(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _class_char(code: int) -> str:
    ch = chr(code)
    if ch.isascii() and ch.isalnum():
        return ch
    if code < 0x100:
        return f"\\x{code:02X}"
    if code < 0x10000:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def normalise(ranges: Ranges) -> Ranges:
    out: Ranges = []
    for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def complement(ranges: Ranges) -> Ranges:
    out: Ranges = []
    start = 0
    for lo, hi in normalise(ranges):
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE:
        out.append((start, MAX_CODE))
    return out


def subtract(ranges: Ranges, minus: Ranges) -> Ranges:
    return normalise([r for a in ranges for r in _cut(a, normalise(list(minus)))])


def _cut(r: tuple[int, int], minus: Ranges) -> Ranges:
    pieces = [r]
    for mlo, mhi in minus:
        nxt: Ranges = []
        for lo, hi in pieces:
            if mhi < lo or mlo > hi:
                nxt.append((lo, hi))
                continue
            if lo < mlo:
                nxt.append((lo, mlo - 1))
            if hi > mhi:
                nxt.append((mhi + 1, hi))
        pieces = nxt
    return pieces


def _contains(ranges: Ranges, code: int) -> bool:
    return any(lo <= code <= hi for lo, hi in ranges)


def string_char_class(ranges: Ranges) -> str | None:
    """One character inside a JSON string whose decoded value lies in `ranges`:
    raw characters where JSON allows them, escapes for quote, backslash and controls."""
    ranges = normalise(ranges)
    alts = []
    raw = subtract(ranges, list(FORBIDDEN_RAW))
    if raw:
        alts.append("[" + "".join(_class_char(lo) if lo == hi else
                                  f"{_class_char(lo)}-{_class_char(hi)}" for lo, hi in raw) + "]")
    for code in (0x22, 0x5C, *range(0x20)):
        if _contains(ranges, code):
            esc = SHORT_ESCAPES.get(code)
            alts.append(literal("\\" + esc) if esc else literal(f"\\u{code:04x}"))
    if not alts:
        return None
    return alts[0] if len(alts) == 1 else "(" + " | ".join(alts) + ")"


# One JSON string character of any value; `\u` escapes never name a lone surrogate, so every
# string decodes to text that can be encoded as UTF-8 again.
JSON_CHAR = ('[^"\\\\\\x00-\\x1F] | "\\\\" ["\\\\/bfnrt] | "\\\\u" '
             '([0-9a-cA-Ce-fE-F] [0-9a-fA-F]{3} | [dD] [0-7] [0-9a-fA-F]{2})')


# ---------------------------------------------------------------- integers

def _same_length(lo: str, hi: str) -> list[str]:
    """Alternatives matching the decimal strings from lo to hi, both of the same length."""
    if lo == hi:
        return [" ".join(f'"{c}"' for c in lo)]
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    rest = len(lo) - 1
    if lo[0] == hi[0]:
        return [f'"{lo[0]}" ' + _group(_same_length(lo[1:], hi[1:]))]
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return [f"[{lo[0]}-{hi[0]}] [0-9]{{{rest}}}"]
    out = []
    start, end = int(lo[0]), int(hi[0])
    if lo[1:] == "0" * rest:
        end_full = end - 1
    else:
        out.append(f'"{lo[0]}" ' + _group(_same_length(lo[1:], "9" * rest)))
        start += 1
        end_full = end - 1
    if hi[1:] == "9" * rest:
        end_full = end
    if start <= end_full:
        out.append(f"[{start}-{end_full}] [0-9]{{{rest}}}")
    if hi[1:] != "9" * rest:
        out.append(f'"{hi[0]}" ' + _group(_same_length("0" * rest, hi[1:])))
    return out


def _group(alts: list[str]) -> str:
    return alts[0] if len(alts) == 1 and " " not in alts[0] else "(" + " | ".join(alts) + ")"


def _natural(lo: int, hi: int | None) -> list[str]:
    """Digit strings without leading zeros for lo..hi (hi None: up to MAX_DIGITS digits)."""
    top = 10 ** MAX_DIGITS - 1
    hi = top if hi is None or hi > top else hi
    if lo > hi:
        return []
    out: list[str] = []
    for digits in range(len(str(lo)), len(str(hi)) + 1):
        a = lo if digits == len(str(lo)) else 10 ** (digits - 1)
        b = hi if digits == len(str(hi)) else 10 ** digits - 1
        if digits > 1 and a == 10 ** (digits - 1) and hi == top:
            out.append(f"[1-9] [0-9]{{{digits - 1},{MAX_DIGITS - 1}}}")
            break
        out += _same_length(str(a), str(b))
    return out


def integer_range(lo: int | None, hi: int | None) -> str | None:
    """A GBNF expression for the JSON integers in [lo, hi]; None when there is none."""
    alts: list[str] = []
    if hi is None or hi >= 0:
        alts += _natural(max(lo, 0) if lo is not None else 0, hi)
    if lo is None or lo < 0:
        neg = _natural(max(-hi, 1) if hi is not None else 1, -lo if lo is not None else None)
        alts += ['"-" ' + _group(neg)] if neg else []
    return "(" + " | ".join(alts) + ")" if alts else None


def _number(schema: dict[str, object], key: str) -> float | None:
    value = schema.get(key)
    return value if isinstance(value, (int, float)) else None


_LOWER: tuple[tuple[str, Callable[[float], int]], ...] = (
    ("minimum", math.ceil), ("exclusiveMinimum", lambda v: math.floor(v) + 1))
_UPPER: tuple[tuple[str, Callable[[float], int]], ...] = (
    ("maximum", math.floor), ("exclusiveMaximum", lambda v: math.ceil(v) - 1))


def int_bounds(schema: dict[str, object]) -> tuple[int | None, int | None]:
    """Inclusive integer bounds from minimum/maximum/exclusiveMinimum/exclusiveMaximum."""
    lo: int | None = None
    hi: int | None = None
    for key, fn in _LOWER:
        if (found := _number(schema, key)) is not None:
            v = fn(found)
            lo = v if lo is None else max(lo, v)
    for key, fn in _UPPER:
        if (found := _number(schema, key)) is not None:
            v = fn(found)
            hi = v if hi is None else min(hi, v)
    return lo, hi


def number_range(schema: dict[str, object]) -> str | None:
    """JSON numbers inside the schema's bounds: integers in range, and decimals I.F whose
    integer part keeps every fraction inside (so a sample is never out of range)."""
    lo, hi = int_bounds(schema)
    frac = '"." [0-9]{1,6}'
    alts = []
    ints = integer_range(lo, hi)
    if ints:
        alts.append(ints)
    upper = _float_bound(schema, "maximum", "exclusiveMaximum", min)
    lower = _float_bound(schema, "minimum", "exclusiveMinimum", max)
    # non-negative decimals I.F in [I, I+1): need I >= lo (ints' bound) and I + 1 <= upper
    pos_hi = math.floor(upper) - 1 if upper is not None else None
    pos = integer_range(max(lo, 0) if lo is not None else 0, pos_hi)
    if pos:
        alts.append(f"{pos} {frac}")
    # negative decimals -(I.F) in (-(I+1), -I]: need I + 1 <= -lower and -I <= hi
    neg_hi = math.floor(-lower) - 1 if lower is not None else None
    neg_lo = max(-hi, 0) if hi is not None else 0
    neg = integer_range(neg_lo, neg_hi)
    if neg:
        alts.append(f'"-" {neg} {frac}')
    return "(" + " | ".join(alts) + ")" if alts else None


def _float_bound(schema: dict[str, object], inclusive: str, exclusive: str,
                 pick: Callable[[list[float]], float]) -> float | None:
    vals = [v for v in (_number(schema, inclusive), _number(schema, exclusive)) if v is not None]
    return pick(vals) if vals else None
