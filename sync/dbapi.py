"""The slice of DB-API 2 our SQL is written against, as Protocols.

`sqlite3.Connection` fits them as it is; the engine's PostgreSQL store hands out an
adapter that does (`edge_agent.store.postgres`). SQL written to these is plain SQL that
both backends take: `?` placeholders, `RETURNING` for generated keys, no rowid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """A connection inside (or outside) a transaction. Rows index by position and by name
    and turn into dicts with `dict(row)`, as `sqlite3.Row` does."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> Cursor: ...

    @property
    def in_transaction(self) -> bool: ...


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    head, sep, tail = url.partition("@")
    if not sep or ":" not in head.split("//", 1)[-1]:
        return url
    scheme, _, user = head.partition("//")
    return f"{scheme}//{user.split(':', 1)[0]}:***@{tail}"


__all__ = ["Connection", "Cursor", "redact"]
