"""Numbered migrations of the fleet store, per dialect. Shipped migrations are frozen text:
never edit one; add the next. `schema_version` holds the last one applied (a store from
before it existed is version 1: its tables are migration 1's)."""

from __future__ import annotations

from typing import Any

_V1 = (
    """CREATE TABLE IF NOT EXISTS records (device TEXT NOT NULL, stream TEXT NOT NULL,
        seq BIGINT NOT NULL, kind TEXT NOT NULL, payload {blob} NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, received_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (device, stream, seq))""",
    """CREATE TABLE IF NOT EXISTS devices (device TEXT PRIMARY KEY,
        first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION NOT NULL,
        online BOOLEAN NOT NULL DEFAULT FALSE, status TEXT)""",
    """CREATE TABLE IF NOT EXISTS streams (device TEXT NOT NULL, stream TEXT NOT NULL,
        received_seq BIGINT NOT NULL DEFAULT 0, acked_seq BIGINT NOT NULL DEFAULT 0,
        last_created_at DOUBLE PRECISION, PRIMARY KEY (device, stream))""",
    """CREATE TABLE IF NOT EXISTS quarantine (id {serial}, device TEXT, topic TEXT NOT NULL,
        reason TEXT NOT NULL, detail TEXT, payload {blob}, received_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, device TEXT NOT NULL,
        type TEXT NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, confirmed_at DOUBLE PRECISION, result TEXT)""",
)

# Protocol 2: records and stream positions keyed by the device database's epoch (protocol 1
# devices have epoch ''), epochs as the cloud met them, chunks of records being reassembled.
_V2_COMMON = (
    """CREATE TABLE epochs (device TEXT NOT NULL, epoch TEXT NOT NULL,
        first_seen DOUBLE PRECISION NOT NULL, protocol INTEGER NOT NULL,
        PRIMARY KEY (device, epoch))""",
    """INSERT INTO epochs (device, epoch, first_seen, protocol)
        SELECT d.device, '', d.first_seen, 1 FROM devices d
        WHERE EXISTS (SELECT 1 FROM streams s WHERE s.device = d.device)""",
    """CREATE TABLE chunks (device TEXT NOT NULL, epoch TEXT NOT NULL, stream TEXT NOT NULL,
        seq BIGINT NOT NULL, idx INTEGER NOT NULL, count INTEGER NOT NULL,
        size BIGINT NOT NULL, sha256 TEXT NOT NULL, kind TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL, piece {blob} NOT NULL,
        PRIMARY KEY (device, epoch, stream, seq, idx))""",
    "CREATE TABLE schema_version (version INTEGER NOT NULL)",
    "INSERT INTO schema_version (version) VALUES (2)",
)
_V2 = {
    "sqlite": (
        "ALTER TABLE records RENAME TO records_v1",
        """CREATE TABLE records (device TEXT NOT NULL, epoch TEXT NOT NULL,
            stream TEXT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL,
            payload BLOB NOT NULL, created_at DOUBLE PRECISION NOT NULL,
            received_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (device, epoch, stream, seq))""",
        """INSERT INTO records SELECT device, '', stream, seq, kind, payload, created_at,
            received_at FROM records_v1""",
        "DROP TABLE records_v1",
        "ALTER TABLE streams RENAME TO streams_v1",
        """CREATE TABLE streams (device TEXT NOT NULL, epoch TEXT NOT NULL,
            stream TEXT NOT NULL, received_seq BIGINT NOT NULL DEFAULT 0,
            acked_seq BIGINT NOT NULL DEFAULT 0, last_created_at DOUBLE PRECISION,
            conflicts BIGINT NOT NULL DEFAULT 0, stubs BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (device, epoch, stream))""",
        """INSERT INTO streams (device, epoch, stream, received_seq, acked_seq,
            last_created_at) SELECT device, '', stream, received_seq, acked_seq,
            last_created_at FROM streams_v1""",
        "DROP TABLE streams_v1",
    ) + _V2_COMMON,
    "postgresql": (
        "ALTER TABLE records ADD COLUMN epoch TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE records DROP CONSTRAINT records_pkey",
        "ALTER TABLE records ADD PRIMARY KEY (device, epoch, stream, seq)",
        "ALTER TABLE streams ADD COLUMN epoch TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE streams ADD COLUMN conflicts BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE streams ADD COLUMN stubs BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE streams DROP CONSTRAINT streams_pkey",
        "ALTER TABLE streams ADD PRIMARY KEY (device, epoch, stream)",
    ) + _V2_COMMON,
}
# The fleet's projection (sync/cloud/projection.py): one row per device run (with the span
# of stream seqs that hold its records, for its trace) and what the projection skipped.
_V3 = (
    """CREATE TABLE fleet_runs (device TEXT NOT NULL, run_id TEXT NOT NULL,
        epoch TEXT NOT NULL, workflow TEXT, version TEXT, origin TEXT, status TEXT,
        node TEXT, error TEXT, queued_at DOUBLE PRECISION, started_at DOUBLE PRECISION,
        updated_at DOUBLE PRECISION NOT NULL, finished_at DOUBLE PRECISION,
        steps INTEGER NOT NULL DEFAULT 0, retries INTEGER NOT NULL DEFAULT 0,
        conflicts INTEGER NOT NULL DEFAULT 0, seqs TEXT NOT NULL DEFAULT '{{}}',
        head TEXT NOT NULL DEFAULT '{{}}', gates TEXT NOT NULL DEFAULT '{{}}',
        approval_id BIGINT, approval_node TEXT, approval_visit INTEGER,
        approval_kind TEXT, approval_prompt TEXT, approval_at DOUBLE PRECISION,
        approval_expires_at DOUBLE PRECISION, PRIMARY KEY (device, run_id, epoch))""",
    "CREATE INDEX fleet_runs_updated ON fleet_runs (updated_at)",
    "CREATE INDEX fleet_runs_status ON fleet_runs (status, updated_at)",
    """CREATE INDEX fleet_runs_pending ON fleet_runs (approval_at)
        WHERE approval_id IS NOT NULL""",
    "CREATE INDEX fleet_runs_conflicts ON fleet_runs (updated_at) WHERE conflicts > 0",
    """CREATE TABLE fleet_skips (device TEXT NOT NULL, reason TEXT NOT NULL,
        count BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (device, reason))""",
    "UPDATE schema_version SET version = 3",
)
# Rollouts (sync/cloud/deployments.py): a deployment, its waves and each device's state.
_V4 = (
    """CREATE TABLE deployments (id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL,
        version TEXT NOT NULL, sha256 TEXT NOT NULL, fragment TEXT NOT NULL,
        waves TEXT NOT NULL, bake_s DOUBLE PRECISION NOT NULL, abort_if TEXT NOT NULL,
        min_runs INTEGER NOT NULL, expires_at DOUBLE PRECISION NOT NULL,
        state TEXT NOT NULL, wave INTEGER NOT NULL, wave_started_at DOUBLE PRECISION,
        reason TEXT, updated_at DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE deployment_devices (deployment TEXT NOT NULL, device TEXT NOT NULL,
        wave INTEGER NOT NULL, state TEXT NOT NULL, sent_at DOUBLE PRECISION,
        reason TEXT, previous TEXT, health TEXT, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (deployment, device))""",
    "CREATE INDEX deployment_devices_state ON deployment_devices (state, deployment)",
    "UPDATE schema_version SET version = 4",
)
# Command life: when a command expires, when it was (last) published; commands written
# before this migration expire 24 h after they were made (the default then). The counters of
# each ingest process's bounded executors, for `status`.
_V5 = (
    "ALTER TABLE commands ADD COLUMN expires_at DOUBLE PRECISION",
    "ALTER TABLE commands ADD COLUMN sent_at DOUBLE PRECISION",
    "UPDATE commands SET expires_at = created_at + 86400 WHERE expires_at IS NULL",
    "UPDATE commands SET sent_at = created_at WHERE sent_at IS NULL",
    "CREATE INDEX commands_by_state ON commands (state, expires_at)",
    "CREATE INDEX commands_by_device ON commands (device, state)",
    """CREATE TABLE work_stats (process TEXT PRIMARY KEY, stats TEXT NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL)""",
    "UPDATE schema_version SET version = 5",
)
# Each device's listed runs by status, kept by the projection with its rows (what the
# fleet's devices view shows without counting every run), filled from the rows it has.
_V6 = (
    """CREATE TABLE fleet_device_runs (device TEXT NOT NULL, status TEXT NOT NULL,
        count BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (device, status))""",
    """INSERT INTO fleet_device_runs (device, status, count)
        SELECT device, COALESCE(status, 'None'), count(*) FROM fleet_runs
        WHERE queued_at IS NOT NULL OR started_at IS NOT NULL
        GROUP BY device, COALESCE(status, 'None')""",
    "UPDATE schema_version SET version = 6",
)
MIGRATIONS: dict[str, list[tuple[int, tuple[str, ...]]]] = {
    d: [(1, _V1), (2, _V2[d]), (3, _V3), (4, _V4), (5, _V5), (6, _V6)]
    for d in ("sqlite", "postgresql")}
LATEST = 6


def current_version(tables: set[str], version_row: Any) -> int:
    """0 for an empty store, 1 for one from before `schema_version`, else its row."""
    if "schema_version" in tables:
        return int(version_row[0])
    return 1 if "records" in tables else 0


def pending(dialect: str, version: int) -> list[tuple[int, tuple[str, ...]]]:
    return [(v, sqls) for v, sqls in MIGRATIONS[dialect] if v > version]
