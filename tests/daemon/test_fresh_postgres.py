"""A fresh PostgreSQL database (the engine never ran on it) is an empty one, not an error:
`config check`, `runs` and `status` read it as empty (they exited 74 with `relation "runs"
does not exist` until `cloud-run` had started once), and write nothing to it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from support.postgres import Postgres, fresh_pg_url

from .conftest import GATED as DEVICE_GATED

GATED = DEVICE_GATED.replace('runtime_dir = "run"', 'runtime_dir = "run"\ndatabase = "URL"')


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_agent", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_fresh_postgresql_database_reads_as_empty(tmp_path: Path, pg_cluster: Postgres) -> None:
    import psycopg
    url = fresh_pg_url(pg_cluster)
    config = tmp_path / "config.toml"
    config.write_text(GATED.replace("URL", url))
    for args in (["config", "check"], ["status"], ["runs"], ["approvals"]):
        r = _cli(config, *args)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
        assert "does not exist" not in r.stdout + r.stderr
    assert json.loads(_cli(config, "runs", "--json").stdout) == {"runs": []}
    status = json.loads(_cli(config, "status", "--json").stdout)
    assert status["runs"] == {} and status["approvals_pending"] == 0, status
    with psycopg.connect(url) as c:  # a read wrote nothing
        assert c.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
                         ).fetchone()[0] == 0
    r = _cli(config, "start", "gated")  # a write migrates it, and reads see the run
    assert r.returncode == 0, r.stderr
    runs = json.loads(_cli(config, "runs", "--json").stdout)["runs"]
    assert [x["workflow"] for x in runs] == ["gated"]
