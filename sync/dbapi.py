"""The slice of DB-API 2 our SQL is written against, as Protocols.

`sqlite3.Connection` fits them as it is; the engine's PostgreSQL store hands out an
adapter that does (`edge_agent.store.postgres`). SQL written to these is plain SQL that
both backends take: `?` placeholders, `RETURNING` for generated keys, no rowid.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any, Protocol
from urllib.parse import unquote


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


_QUERY_PASSWORD = re.compile(r"[?&]password=([^&#]*)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"\bpassword\s*=\s*('(?:[^'\\]|\\.)*'|[^\s&#]+)", re.IGNORECASE)


def passwords_in(url: str) -> set[str]:
    """Every password `url` carries, as written and percent-decoded: after `user:` (up to
    the last `@` of the authority, even when the rest is malformed), in `?password=`, and
    in a libpq `password=` keyword. Over-reaching is safe; missing one is not."""
    found: set[str] = set()
    rest = url.split("//", 1)[1] if "//" in url else url
    authority = rest.split("?", 1)[0] if "@" in rest.split("?", 1)[0] else rest
    if "@" in authority:
        userinfo = authority[:authority.rfind("@")]
        if ":" in userinfo:
            secret = userinfo.split(":", 1)[1]
            pieces = secret.split("@")  # libpq splits at the first '@': the rest is "a host"
            found.update("@".join(pieces[i:]) for i in range(len(pieces)))
    found.update(m.group(1) for m in _QUERY_PASSWORD.finditer(url))
    found.update(m.group(1).strip("'") for m in _KEYWORD_PASSWORD.finditer(url))
    found |= {unquote(p) for p in found}
    return {p for p in found if p}


def scrub(text: str, url: str) -> str:
    """`text` (an error message that may quote the URL) with `url`'s passwords as ***."""
    for secret in sorted(passwords_in(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def redact(url: str) -> str:
    """The URL without its password, for messages, --json and status."""
    return scrub(url, url)


__all__ = ["Connection", "Cursor", "passwords_in", "redact", "scrub"]
