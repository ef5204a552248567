"""Structured logging: JSON lines for journald, or text for people; ids from contextvars.

One filter adds device, workflow, run, agent, step, attempt and trace ids to every record.
Under systemd (JOURNAL_STREAM names the stream we write to) each line starts with its syslog
priority, `<4>` for a warning, so `journalctl -p warning` filters.
Libraries only call `logging.getLogger(__name__)`; the daemon and the CLI configure handlers.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

FIELDS = ("device_id", "workflow", "run_id", "agent", "step", "attempt", "tool", "model", "turn",
          "trace_id", "span_id")
# syslog priorities (sd-daemon.h): what journald reads from a `<N>` line prefix
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6))
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "edge_agent_log_context", default=MappingProxyType({}))


class log_context:  # used as a function: `with log_context(run_id=...):`
    """Add ids to every log line emitted inside the block (and tasks started in it). A plain
    class rather than a generator context manager: the engine enters one per step."""

    __slots__ = ("fields", "token")

    def __init__(self, **fields: Any) -> None:
        self.fields = fields

    def __enter__(self) -> None:
        fields = self.fields
        if None in fields.values():
            fields = {k: v for k, v in fields.items() if v is not None}
        self.token = _context.set({**_context.get(), **fields})

    def __exit__(self, *exc: object) -> None:
        _context.reset(self.token)


def current() -> Mapping[str, Any]:
    """The ids the log lines of this context carry now."""
    return _context.get()


def bind(**fields: Any) -> None:
    """Set ids for the rest of the current task or thread context."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ids = " ".join(f"{k}={getattr(record, k)}" for k in FIELDS
                       if getattr(record, k, None) is not None and k not in ("span_id",))
        base = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} " \
               f"{record.levelname:<7} {record.name}: {record.getMessage()}"
        if ids:
            base += f"  [{ids}]"
        if record.exc_info:
            base += "\n" + self.formatException(record.exc_info)
        return base


def priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 critical ... 6 info, 7 debug."""
    for level, prio in PRIORITIES:
        if levelno >= level:
            return prio
    return 7


class JournalPrefix(logging.Formatter):
    """Wraps a formatter: `<N>` before every line, so journald files each at its priority
    (a traceback's lines too: journald splits a record at newlines)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def writes_to_journal(stream: Any) -> bool:
    """True when systemd connected `stream` to the journal: JOURNAL_STREAM is the
    device:inode of that very file (a child's redirected stdout does not match)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def setup_logging(fmt: str = "json", level: str = "INFO",
                  levels: Mapping[str, str] | None = None, stream: Any = None) -> None:
    """Configure the root logger once, for the daemon or the CLI."""
    out = stream or sys.stdout
    handler = logging.StreamHandler(out)
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(JournalPrefix(formatter) if writes_to_journal(out) else formatter)
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name, lvl in (levels or {}).items():
        logging.getLogger(name).setLevel(lvl.upper())
