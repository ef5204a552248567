"""A PostgreSQL URL's password never reaches a message, `--json` or status: not in the
URL's userinfo, not in `?password=`, not when the URL is malformed (psycopg quotes the whole
URL in its error), not percent-encoded, on the device's CLI and the cloud's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from sync.dbapi import redact, scrub

SECRET = "S3cretPW"
URLS = [
    f"postgresql://eng:{SECRET}@[::1/engine",  # malformed: psycopg echoes it
    f"postgresql://eng@127.0.0.1:1/engine?password={SECRET}",
    f"postgresql://eng@127.0.0.1:1/engine?sslmode=disable&password={SECRET}&x=1",
    f"postgresql://eng:{SECRET}%40x@127.0.0.1:1/engine",  # percent-encoded '@'
    f"postgresql://eng:p@ss{SECRET}@127.0.0.1:1/engine",  # an unencoded '@' in it
    f"postgres://eng:{SECRET}@127.0.0.1:1/engine?password={SECRET}",
]


@pytest.mark.parametrize("url", URLS)
def test_redact_and_scrub_leave_no_password(url: str) -> None:
    assert SECRET not in redact(url) and "***" in redact(url)
    message = f'invalid URI "{url}" (decoded: "{unquote(url)}")'
    assert SECRET not in scrub(message, url)
    assert redact("postgresql://eng@db.example/engine") == "postgresql://eng@db.example/engine"


def _run(argv: list[str], cwd: Path) -> str:
    r = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True,
                       timeout=60, cwd=cwd, check=False,
                       env={**os.environ, "PGCONNECT_TIMEOUT": "2"})
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out
    return out


@pytest.mark.parametrize("url", URLS)
def test_the_device_cli_never_shows_it(url: str, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[device]\nid = "r1"\ndata_dir = "data"\nruntime_dir = "run"\n'
                      f'database = "{url}"\n')
    for args in (["config", "check"], ["status", "--json"], ["status"], ["runs", "--json"],
                 ["run"]):
        out = _run(["edge_agent", *args, "--config", str(config)], tmp_path)
        assert SECRET not in out, (args, out)


@pytest.mark.parametrize("url", [*URLS, f"mysql://eng:{SECRET}@db/x"])
def test_the_cloud_cli_never_shows_it(url: str, tmp_path: Path) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text(f'[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n'
                      f'[store]\nurl = "{url}"\n')
    for args in (["status", "--json"], ["status"]):
        out = _run(["sync.cloud.cli", *args, "--config", str(config)], tmp_path)
        assert SECRET not in out, (args, out)
