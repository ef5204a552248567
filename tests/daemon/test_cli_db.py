"""`edge-agent db`: the device's database for support, read through sqlite-utils on a
read-only connection, on a real database file while a real daemon writes to it."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from pathlib import Path

from support.daemon import DaemonProcess, cli, cli_json, until

from edge_agent.engine import queue_run
from edge_agent.store import Store

RUNS, NODES = 6, ["a", "b", "c", "d"]
CONFIG = """
[device]
id = "cell-db"
data_dir = "data"
runtime_dir = "run"
[tools.step]
kind = "command"
argv = ["./step.sh", "{{n}}"]
params = {{ type = "object", properties = {{ n = {{ type = "string" }} }}, required = ["n"] }}
idempotent = true
[workflows.w]
start = "a"
{nodes}[workflows.w.nodes.done]
end = true
"""


def setup(tmp_path: Path) -> Path:
    script = tmp_path / "step.sh"
    script.write_text("#!/bin/sh\nsleep 0.05\necho '{\"n\": \"'$1'\"}'\n")
    script.chmod(0o755)
    chain = [*NODES, "done"]
    nodes = "".join(f'[workflows.w.nodes.{n}]\ntool = "step"\nargs = {{ n = "{n}" }}\n'
                    f'next = "{chain[i + 1]}"\n' for i, n in enumerate(NODES))
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(nodes=nodes))
    return config


def digest(db: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(db.parent.glob(db.name + "*")):
        if not p.name.endswith("-shm"):  # the WAL index: shared memory, not content
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def test_tables_and_exports_while_the_daemon_writes(tmp_path: Path) -> None:
    config = setup(tmp_path)
    db = tmp_path / "data" / "edge-agent.db"
    d = DaemonProcess(config, tmp_path).start()
    try:
        d.wait_for("READY=1")
        store = Store(db)  # a second writer, as the CLI's `start` is
        try:
            wf = {"w": None}
            rids = [queue_run(store.write, workflow="w", input={}, workflows=wf)
                    for _ in range(RUNS)]
        finally:
            store.close()
        counts = []
        for _ in range(2):  # while the daemon commits steps
            tables = {t["name"]: t["rows"] for t in cli_json(config, "db", "tables")["tables"]}
            counts.append(tables["steps"])
            assert tables["runs"] == RUNS
            rows = list(csv.DictReader(io.StringIO(
                cli(config, "db", "export", "steps", "--format", "csv").stdout)))
            assert len(rows) >= tables["steps"]  # read after the count: never fewer
            assert all(r["run_id"] in rids and r["node"] for r in rows)
        conn = sqlite3.connect(db)
        try:
            until(lambda: conn.execute("SELECT count(*) FROM runs WHERE status = 'completed'"
                                       ).fetchone()[0] == RUNS, why=d.output)
            assert counts == sorted(counts)  # seen growing, never a lock error
            for t in cli_json(config, "db", "tables")["tables"]:
                assert conn.execute(f'SELECT count(*) FROM "{t["name"]}"').fetchone()[0] \
                    == t["rows"], t
        finally:
            conn.close()
        one = cli_json(config, "db", "export", "--run", rids[0])
        assert one["run"] == rids[0] and [r["run_id"] for r in one["rows"]["runs"]] == [rids[0]]
        assert [s["node"] for s in one["rows"]["steps"]] == [*NODES, "done"]
        assert all(r["run_id"] == rids[0] for t in one["rows"].values() for r in t)
        steps = json.loads(cli(config, "db", "export", "steps", "--run", rids[1]).stdout)
        assert [s["node"] for s in steps] == [*NODES, "done"]
    finally:
        d.close()
    # read-only: with the daemon gone, the commands leave every byte of the file as it was
    before = digest(db)
    cli(config, "db", "tables")
    outbox = cli_json(config, "db", "export", "outbox")["rows"]
    assert outbox[0]["payload"]["$base64"] is True  # blobs as sqlite-utils writes them
    assert digest(db) == before


def test_errors_are_clear_and_json_under_json(tmp_path: Path) -> None:
    config = setup(tmp_path)

    def fails(code: int, *args: str) -> str:
        r = cli(config, "db", *args, "--json", check=False)
        assert r.returncode == code and r.stdout == "", (args, r)
        err = json.loads(r.stderr)
        assert err["exit_code"] == code
        return str(err["error"])
    assert "no database at" in fails(1, "tables")
    store = Store(tmp_path / "data" / "edge-agent.db")
    try:
        rid = queue_run(store.write, workflow="w", input={}, workflows={"w": None})
    finally:
        store.close()
    assert "no table 'nope'" in fails(64, "export", "nope")
    assert "has no run_id column" in fails(64, "export", "outbox", "--run", rid)
    assert "no run 'r-x'" in fails(1, "export", "steps", "--run", "r-x")
    assert "needs a TABLE" in fails(64, "export")
    assert "one TABLE" in fails(64, "export", "--run", rid, "--format", "csv")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database" * 100)
    assert "cannot read it as a database" in fails(74, "tables", "--db", str(garbage))
    pg = tmp_path / "pg.toml"
    pg.write_text(config.read_text().replace(
        'runtime_dir = "run"', 'runtime_dir = "run"\ndatabase = "postgresql://u@127.0.0.1:1/x"'))
    r = cli(pg, "db", "tables", check=False)
    assert r.returncode == 1 and "PostgreSQL" in r.stderr and "Traceback" not in r.stderr


def test_the_connection_cannot_write(tmp_path: Path) -> None:
    """`mode=ro`: whatever sqlite-utils is asked, the file cannot change through it."""
    import pytest

    from edge_agent.cli.db import _open
    db = tmp_path / "edge-agent.db"
    Store(db).close()
    with _open(db) as handle, pytest.raises(sqlite3.OperationalError, match="readonly"):
        handle["runs"].insert({"run_id": "x"})


def test_words_that_are_not_utf8_are_usage_errors(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 as a run id reach argv as a lone surrogate, which SQLite
    cannot take: exit 64 naming the argument, not a traceback."""
    config = setup(tmp_path)
    Store(tmp_path / "data" / "edge-agent.db").close()
    for args in (["db", "export", "runs", "--run", "\udcff"], ["runs", "show", "\udcff"]):
        r = cli(config, *args, "--json", check=False)
        assert r.returncode == 64 and "Traceback" not in r.stderr, (args, r)
        assert "not valid UTF-8 text" in json.loads(r.stderr)["error"]
