"""How the pages write times, durations and sizes (Jinja2 filters)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

MAX_LIMIT = 1000


def iso(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "" if ts is None else str(ts)
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def ago(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "" if ts is None else str(ts)
    return span(max(0.0, time.time() - ts)) + " ago"


def span(seconds: Any) -> str:
    """1.2 ms, 340 ms, 4.1 s, 3 m 20 s, 2 h 5 m."""
    if not isinstance(seconds, (int, float)):
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} m {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} m"


def minutes(seconds: Any) -> str:
    """An age to the minute: a live page that shows it changes once a minute, not on
    every poll (its rows, and the buttons in them, stay put under the pointer)."""
    if not isinstance(seconds, (int, float)):
        return ""
    m = int(seconds // 60)
    return "< 1 m" if m < 1 else span(m * 60.0)


def limit(text: str | None) -> int:
    try:
        return max(1, min(MAX_LIMIT, int(text or 100)))
    except ValueError:
        return 100


def child(c: Any) -> str:
    """A trace step's child (tool call, model turn, approval, hand-off, conflict) in the
    words `edge-agent trace` prints."""
    from sync.trace_render import _child
    try:
        return _child(c)
    except (KeyError, TypeError):
        return str(c)


def install(env: Any) -> None:
    env.filters.update(iso=iso, ago=ago, span=span, child=child, minutes=minutes)
