"""Shipped migrations are frozen text: an old database upgrades to exactly today's schema."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import edge_agent.store.migrations as migrations_module
from edge_agent.store import Store
from edge_agent.store.migrations import MIGRATIONS


def _schema(path: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute("SELECT type, name, sql FROM sqlite_master"
                                   " WHERE name NOT LIKE 'sqlite_%'"))
    finally:
        conn.close()


def test_a_version_1_database_migrates_to_the_fresh_schema(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    Store(old, migrations=MIGRATIONS[:1]).close()
    conn = sqlite3.connect(old)
    conn.execute("INSERT INTO runs (run_id, workflow, status, node, input, context, created_at,"
                 " updated_at) VALUES ('r1', 'w', 'waiting_approval', 'gate', '{}',"
                 " '{\"input\": {}}', 1, 1)")
    conn.commit()
    conn.close()
    Store(old).close()  # every later migration, in place
    fresh = tmp_path / "fresh.db"
    Store(fresh).close()
    assert _schema(old) == _schema(fresh)
    conn = sqlite3.connect(old)
    try:
        assert conn.execute("SELECT version FROM schema_version").fetchone()[0] == \
            MIGRATIONS[-1][0]
        assert conn.execute("SELECT run_id, node FROM runs").fetchall() == [("r1", "gate")]
    finally:
        conn.close()


def test_migrations_carry_their_ddl_as_literal_text() -> None:
    """No migration reads a live schema constant: the module imports nothing of ours, and
    every statement is a plain string."""
    tree = ast.parse(Path(migrations_module.__file__).read_text())
    imported = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(getattr(n, "module", None) in ("__future__", "collections.abc")
               for n in imported)
    for version, statements in MIGRATIONS:
        assert isinstance(statements, tuple) and statements, version
        assert all(isinstance(s, str) for s in statements), version
    assert [v for v, _ in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    return [tuple(r)[1:] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_live_schema_constants_still_match_the_shipped_tables(tmp_path: Path) -> None:
    """The sync package keeps its own copy of the outbox's and the documents' DDL (for its
    own stores and tests). When it changes, the device needs a new migration: this says so."""
    from sync.outbox import SCHEMA as OUTBOX
    from sync.replica import SqliteDocStore
    live = sqlite3.connect(":memory:")
    for sql in (*OUTBOX, *SqliteDocStore.SCHEMA):
        live.execute(sql)
    store = Store(tmp_path / "device.db")
    try:
        for table in ("outbox", "outbox_streams", "inbox", "docs"):
            assert _columns(live, table) == _columns(store.conn, table), (
                f"{table} changed in the sync package: add a migration for it")
        streams = "SELECT stream FROM outbox_streams ORDER BY stream"
        assert [tuple(r) for r in live.execute(streams)] == \
            [tuple(r) for r in store.conn.execute(streams)]
    finally:
        store.close()
