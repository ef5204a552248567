"""Numbered schema migrations of the device database. Never edit one that has shipped."""

from __future__ import annotations

from collections.abc import Sequence


def _outbox_schema() -> Sequence[str]:
    from sync.outbox import SCHEMA
    return SCHEMA


ENGINE_V1 = (
    """CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        workflow TEXT NOT NULL,
        status TEXT NOT NULL,
        node TEXT,
        node_state TEXT NOT NULL DEFAULT '{}',
        visits TEXT NOT NULL DEFAULT '{}',
        input TEXT NOT NULL,
        context TEXT NOT NULL,
        output TEXT,
        error TEXT,
        origin TEXT NOT NULL DEFAULT 'local',
        trace_id TEXT,
        span_id TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        priority INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    )""",
    "CREATE INDEX runs_status ON runs (status, created_at)",
    """CREATE TABLE steps (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        node TEXT NOT NULL,
        visit INTEGER NOT NULL DEFAULT 1,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        output TEXT,
        error TEXT,
        error_kind TEXT,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        span_id TEXT
    )""",
    "CREATE INDEX steps_run ON steps (run_id, id)",
    """CREATE TABLE memo (
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (run_id, scope, key)
    )""",
    """CREATE TABLE tool_calls (
        id INTEGER PRIMARY KEY,
        idem_key TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        node TEXT NOT NULL,
        tool TEXT NOT NULL,
        args TEXT NOT NULL,
        status TEXT NOT NULL,
        result TEXT,
        error TEXT,
        error_kind TEXT,
        started_at REAL NOT NULL,
        finished_at REAL,
        UNIQUE (idem_key, attempt)
    )""",
    "CREATE INDEX tool_calls_run ON tool_calls (run_id, id)",
    """CREATE TABLE approvals (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        prompt TEXT NOT NULL,
        context TEXT NOT NULL DEFAULT '{}',
        status TEXT NOT NULL,
        decided_by TEXT,
        origin TEXT,
        note TEXT,
        patch TEXT,
        created_at REAL NOT NULL,
        decided_at REAL,
        timeout_at REAL
    )""",
    "CREATE INDEX approvals_pending ON approvals (status, run_id)",
    """CREATE TABLE timers (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL REFERENCES runs (run_id),
        node TEXT NOT NULL,
        kind TEXT NOT NULL,
        due_at REAL NOT NULL,
        fired INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX timers_due ON timers (fired, due_at)",
)


class _Lazy(Sequence[str]):
    """Statements resolved on first use, so importing this module stays cheap."""

    def __init__(self, *parts: object) -> None:
        self._parts = parts
        self._resolved: list[str] | None = None

    def _all(self) -> list[str]:
        if self._resolved is None:
            out: list[str] = []
            for p in self._parts:
                out += list(p() if callable(p) else p)  # type: ignore[call-overload]
            self._resolved = out
        return self._resolved

    def __getitem__(self, i):  # type: ignore[no-untyped-def,override]
        return self._all()[i]

    def __len__(self) -> int:
        return len(self._all())


def _docs_schema() -> Sequence[str]:
    from sync.replica import SqliteDocStore
    return SqliteDocStore.SCHEMA


MIGRATIONS: list[tuple[int, Sequence[str]]] = [
    (1, _Lazy(ENGINE_V1, _outbox_schema)),
    (2, _Lazy(_docs_schema)),
    (3, ("CREATE TABLE telemetry_marks (name TEXT PRIMARY KEY, value REAL NOT NULL)",)),
    # An idempotent tool node's call is journaled in its step row (the row the transition
    # writes anyway): one table written per step instead of two. `calls` shows every call,
    # from either place, to readers.
    (4, ("ALTER TABLE steps ADD COLUMN tool TEXT",
         "ALTER TABLE steps ADD COLUMN call_key TEXT",
         "ALTER TABLE steps ADD COLUMN args TEXT",
         """CREATE VIEW calls AS
            SELECT id, 'journal' AS source, idem_key, attempt, run_id, node, tool, args,
                   status, result, error, error_kind, started_at, finished_at
              FROM tool_calls
            UNION ALL
            SELECT id, 'step', call_key, attempt, run_id, node || '#' || visit, tool, args,
                   CASE status WHEN 'completed' THEN 'ok' ELSE 'error' END,
                   CASE status WHEN 'completed' THEN output END, error, error_kind,
                   started_at, finished_at
              FROM steps WHERE tool IS NOT NULL""")),
    # Sync protocol 2: the database's random epoch, made once (a reflashed device gets a new
    # one, so the cloud never mistakes its new sequences for old ones).
    (5, ("CREATE TABLE IF NOT EXISTS sync_epoch (epoch TEXT NOT NULL, created_at REAL NOT NULL)",
         "INSERT INTO sync_epoch (epoch, created_at) SELECT lower(hex(randomblob(8))),"
         " (julianday('now') - 2440587.5) * 86400.0"
         " WHERE NOT EXISTS (SELECT 1 FROM sync_epoch)")),
]
