"""Numbered schema migrations of the device database.

Each migration carries the literal DDL it shipped with and never imports a live schema
constant: editing a module's schema must not change what an old database is migrated
through. Never edit a migration that has shipped; add the next one.
"""

from __future__ import annotations

from collections.abc import Sequence

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


# The sync outbox and inbox as migration 1 shipped them (sync.outbox.SCHEMA may move on; this
# text does not).
OUTBOX_V1 = (
    """CREATE TABLE outbox (
        stream TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        payload BLOB NOT NULL,
        size INTEGER NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (stream, seq)
    ) WITHOUT ROWID""",
    """CREATE TABLE outbox_streams (
        stream TEXT PRIMARY KEY,
        last_seq INTEGER NOT NULL DEFAULT 0,
        acked_seq INTEGER NOT NULL DEFAULT 0,
        pending_count INTEGER NOT NULL DEFAULT 0,
        pending_bytes INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0
    )""",
    "INSERT INTO outbox_streams (stream) VALUES ('control'), ('checkpoints'), ('traces'),"
    " ('metrics')",
    """CREATE TABLE inbox (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        received_at REAL NOT NULL,
        result BLOB
    )""",
)

# The replicated documents' table as migration 2 shipped it (sync.replica.SqliteDocStore).
DOCS_V2 = (
    """CREATE TABLE docs (
            collection TEXT NOT NULL,
            key TEXT NOT NULL,
            versions TEXT NOT NULL,
            value TEXT NOT NULL,
            siblings TEXT NOT NULL DEFAULT '{}',
            digest TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (collection, key)
        )""",
)


MIGRATIONS: list[tuple[int, Sequence[str]]] = [
    (1, ENGINE_V1 + OUTBOX_V1),
    (2, DOCS_V2),
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
    # A run is pinned to the workflow definition it started with: the definitions are kept
    # here while a run needs them, and each run names its version (NULL: queued before this
    # migration; the engine pins those to the definition it loads at its next start).
    (6, ("""CREATE TABLE workflow_versions (
            workflow TEXT NOT NULL,
            version TEXT NOT NULL,
            definition TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (workflow, version)
        )""",
         "ALTER TABLE runs ADD COLUMN version TEXT")),
    # A child run the cloud runs for a step a device handed over names the device's handoff
    # span (from the request's traceparent): its spans hang under it, in one trace.
    (7, ("ALTER TABLE runs ADD COLUMN parent_span TEXT",)),
]
