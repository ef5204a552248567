"""Which PostgreSQL errors are transient, and how `status` names them.

Transient: the connection was lost or refused (the server restarted, an administrator shut
it down, it is still starting), the disk or memory is full ("could not extend file"), or the
transaction lost a serialization conflict or a deadlock. Each is waited out and the
transaction tried again; anything else is the write's own error.
"""

from __future__ import annotations

from typing import Any

from edge_agent.errors import StoreError

_CONNECTION = ("08", "57P01", "57P02", "57P03")  # connection exception, shutdowns, starting
_NAMED = {"40001": "serialization failure", "40P01": "deadlock detected",
          "53100": "disk full", "53200": "out of memory", "53300": "too many connections",
          "58030": "I/O error"}


class StoreTransient(StoreError):
    """A store error that another try may get past; the store waits it out."""

    retryable = True

    def __init__(self, where: str, reason: str) -> None:
        self.where, self.reason = where, reason
        super().__init__(f"{where}: {reason}")


class CommitUnknown(Exception):
    """The connection went while COMMIT was under way: whether it took is asked of the
    server (by the transaction's id) once it answers again."""

    def __init__(self, xid: str, error: StoreError) -> None:
        self.xid, self.error = xid, error
        super().__init__(str(error))


def connection_lost(exc: Any) -> bool:
    """The connection is gone (or was refused): nothing is known of what it was doing."""
    import psycopg
    state = getattr(exc, "sqlstate", None)
    if state is None:
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return str(state).startswith(_CONNECTION)


def transient(exc: Any) -> str | None:
    """What a transient error is, in a few words (`connection lost: ...`), else None."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if connection_lost(exc):
        return f"connection lost: {text}"
    state = str(getattr(exc, "sqlstate", None) or "")
    if state in _NAMED or state.startswith("53"):
        return f"{_NAMED.get(state, 'insufficient resources')}: {text}"
    return None


__all__ = ["CommitUnknown", "StoreTransient", "connection_lost", "transient"]
