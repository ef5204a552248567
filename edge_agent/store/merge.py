"""Writes as data, and how a batch of them becomes one statement per table.

A `Prepared` write is statements with their parameters and outbox records; the group
committer merges a batch of them: `INSERT ... VALUES (...), (...)` and `UPDATE ... FROM
(VALUES ...)`, one call into SQLite each, where a statement per row would hand the GIL
around for every row, and one outbox append per stream.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from itertools import chain
from typing import Any, NamedTuple

from edge_agent.store.leases import RunScoped
from sync.outbox import append, append_many


class Prepared(NamedTuple):
    """A write as data: statements with their parameters, then outbox records
    (stream, kind, payload, byte bound or None for the stream's default). Running it twice
    from the start is harmless once the first run was rolled back, which is what lets the
    leader merge prepared writes without a savepoint each."""

    statements: Sequence[tuple[str, tuple[Any, ...]]]
    records: Sequence[tuple[str, str, bytes, int | None]] = ()

    def __call__(self, conn: sqlite3.Connection) -> None:
        for sql, params in self.statements:
            conn.execute(sql, params)
        for stream, kind, payload, limit in self.records:
            append(conn, stream, kind, payload, limit=limit)


_INSERT = re.compile(r"(INSERT INTO \w+ \([\w, ]+\) VALUES )(\((?:\?, )*\?\))")
_UPDATE = re.compile(r"UPDATE (\w+) SET (.+) WHERE (\w+) = \?")
_CALL = re.compile(r"SELECT (\w+)\(((?:\?, )*\?)\)")
_ASSIGN = re.compile(r"(\w+) = (\?|'[^',]*'|\w+)")
# each multi-row statement stays well under SQLite's bound on variables (32,766)
_MAX_VARS = 30000
class _Form(NamedTuple):
    head: str
    row: str        # the placeholders of one row, repeated once per row
    tail: str
    key: int | None  # for an UPDATE, the position of the row's key among its parameters


_forms: dict[str, _Form | None] = {}


def _form(sql: str) -> _Form | None:
    """How a one-row statement repeats for many rows: `INSERT ... VALUES (?, ...)` takes
    more value tuples; `UPDATE t SET c = ?, ... WHERE k = ?` becomes the equivalent
    `UPDATE t SET c = v.column1, ... FROM (VALUES ...) AS v WHERE t.k = v.columnN`; a
    function's call `SELECT f(?, ...)` (PostgreSQL's lease fence) becomes `SELECT
    f(v.column1, ...) FROM (VALUES ...) AS v`, once per row. None for any other statement
    (it runs row by row)."""
    if sql in _forms:
        return _forms[sql]
    form: _Form | None = None
    if m := _INSERT.fullmatch(sql):
        form = _Form(m.group(1), m.group(2), "", None)
    elif (m := _UPDATE.fullmatch(sql)) and sqlite3.sqlite_version_info >= (3, 33):
        table, sets, key = m.groups()
        assigns = [_ASSIGN.fullmatch(part) for part in sets.split(", ")]
        if all(assigns):
            n, out = 0, []
            for a in assigns:
                col, value = a.groups()  # type: ignore[union-attr]
                if value == "?":
                    n += 1
                    value = f"v.column{n}"
                out.append(f"{col} = {value}")
            form = _Form(f"UPDATE {table} SET {', '.join(out)} FROM (VALUES ",
                         "(" + ", ".join("?" * (n + 1)) + ")",
                         f") AS v WHERE {table}.{key} = v.column{n + 1}", n)
    elif m := _CALL.fullmatch(sql):
        n = m.group(2).count("?")
        args = ", ".join(f"v.column{i}" for i in range(1, n + 1))
        form = _Form(f"SELECT {m.group(1)}({args}) FROM (VALUES ",
                     "(" + ", ".join("?" * n) + ")", ") AS v", None)
    if len(_forms) < 512:  # the engine's statements are a small fixed set
        _forms[sql] = form
    return form


def _multi_row(sql: str, rows: list[tuple[Any, ...]]) -> tuple[str, list[Any]] | None:
    """One statement for all rows (one call into SQLite, where executemany makes one per
    row and hands the GIL around for each), or None to run them one by one: a single row,
    a statement of another shape, or an UPDATE naming one key twice (its result would
    depend on the order)."""
    if len(rows) < 2:
        return None
    form = _form(sql)
    if form is None or len(rows) * len(rows[0]) > _MAX_VARS:
        return None
    if form.key is not None and len({r[form.key] for r in rows}) != len(rows):
        return None
    return (form.head + ", ".join([form.row] * len(rows)) + form.tail,
            list(chain.from_iterable(rows)))


class _Unmergeable(Exception):
    """The merged form of a batch's prepared writes cannot be used; run them one by one."""


def joined(first: Any, then: Any) -> Any:
    """`first`, then `then`, as one write (a run's start and its first step): two prepared
    writes become one prepared write, mergeable with other runs' transitions; `then`'s run
    scope (its lease's fence) is kept."""
    inner = then.fn if isinstance(then, RunScoped) else then
    both: Any
    if isinstance(first, Prepared) and isinstance(inner, Prepared):
        both = Prepared([*first.statements, *inner.statements],
                        [*first.records, *inner.records])
    else:
        def both(conn: Any) -> Any:
            first(conn)
            return inner(conn)
    return RunScoped(both, then.run_id) if isinstance(then, RunScoped) else both


def _in_order(writes: Sequence[Prepared]) -> list[str]:
    """The SQL texts of the writes in an order that keeps each write's own order (two
    statements of one write on the same row must not swap): the order they first appear in,
    moved where a write needs one before another. Raises _Unmergeable when no order keeps
    every write's (one write has A before B, another B before A)."""
    after: dict[str, set[str]] = {}
    for write in writes:
        texts = [sql for sql, _ in write.statements]
        for i, sql in enumerate(texts):
            after.setdefault(sql, set()).update(t for t in texts[:i] if t != sql)
    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(after):
        ready = [sql for sql in after if sql not in placed and after[sql] <= placed]
        if not ready:
            raise _Unmergeable
        order.append(ready[0])
        placed.add(ready[0])
    return order


def write_merged(conn: Any, writes: Sequence[Prepared]) -> None:
    """Run prepared writes as one multi-row statement per SQL text and one outbox append
    per stream; raises when that cannot be done (a write's own error, two bounds for one
    stream, a stream over its bound), leaving the transaction for the caller to roll
    back."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    records: dict[tuple[str, int | None], list[tuple[str, bytes]]] = {}
    for write in writes:
        for sql, params in write.statements:
            rows.setdefault(sql, []).append(params)
        for stream, kind, payload, limit in write.records:
            records.setdefault((stream, limit), []).append((kind, payload))
    if len({stream for stream, _ in records}) != len(records):
        raise _Unmergeable  # one stream under two bounds
    for sql in _in_order(writes):
        params_list = rows[sql]
        multi = _multi_row(sql, params_list)
        if multi is None:
            conn.executemany(sql, params_list)
        else:
            conn.execute(*multi)
    for (stream, limit), recs in records.items():
        if not append_many(conn, stream, recs, limit=limit):
            raise _Unmergeable  # over the bound: each write meets the policy


def merged(conn: sqlite3.Connection, writes: Sequence[Prepared]) -> bool:
    """Run the batch's prepared writes as one multi-row statement per SQL text and one
    outbox append per stream. They go first in a fresh transaction, so when that fails
    the transaction is simply begun again (no savepoint: each costs a call into SQLite,
    and so a trip through the GIL, on the path every writer waits on) and False is
    returned, for each write to run alone in its own savepoint, as any write."""
    try:
        write_merged(conn, writes)
    except Exception:  # noqa: BLE001 - any failure: each write runs alone instead
        if conn.in_transaction:  # else SQLite rolled it back itself (a full disk)
            conn.execute("ROLLBACK")
        conn.execute("BEGIN IMMEDIATE")  # an error here fails the whole batch, typed
        return False
    return True
