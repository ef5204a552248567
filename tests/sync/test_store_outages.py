"""A runner outlives its database's bad moments: PostgreSQL crashed and restarted under load,
PostgreSQL's disk full ("could not extend file") then freed, and the SQLite file's disk full
then freed. Each time the runs pause, `edge-agent status` says the store is retrying and
why, and once the database answers every run completes with no restart of the runner, each
call of its non-idempotent tool made exactly once (a ledger the tool writes is the judge)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.daemon import DaemonProcess, cli_json, until
from support.postgres import Postgres, bindir
from support.runners import (
    RUNS,
    all_completed,
    assert_each_call_once,
    queue_runs,
    setup,
    start_runner,
)


def store_state(cfg: Path) -> dict[str, Any]:
    data = cli_json(cfg, "status")
    assert data["daemon"]["answering"], data
    return dict(data["store"])


def wait_retrying(cfg: Path, r: DaemonProcess, words: str, timeout: float = 60) -> str:
    """Until `status` says the store is retrying an error that names `words`."""
    seen: list[Any] = []

    def retrying() -> bool:
        st = store_state(cfg)
        seen.append(st)
        return st["state"] == "retrying" and words in (st["last_error"] or "")
    until(retrying, timeout=timeout, every=0.3, why=lambda: (seen[-3:], r.output()))
    return str(seen[-1]["last_error"])


@contextlib.contextmanager
def tmpfs(path: Path, size: str, owner: str | None = None) -> Iterator[Path]:
    """A small tmpfs at `path` (root only; the test is skipped where it cannot mount), mode
    0700 (a daemon refuses a data directory others may write) and given to `owner`."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        if owner:
            subprocess.run(["chown", owner, str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> Path:
    """Write a file until the filesystem has no room left."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for chunk in (1 << 20, 4096):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return filler


def rides_out_a_full_disk(tmp: Path, cfg: Path, r: DaemonProcess, space: Path) -> str:
    """Runs queued, `space` filled under them: they pause (none fails) while `status` says
    the store is retrying a full disk, and once the space is freed all complete, each call
    made once. Returns the error `status` showed."""
    rids = queue_runs(cfg, RUNS)
    filler = fill(space)
    try:
        error = wait_retrying(cfg, r, "disk full")
        assert "failed" not in cli_json(cfg, "status")["runs"]
    finally:
        os.unlink(filler)
    all_completed(cfg, rids, r)
    until(lambda: store_state(cfg)["state"] == "ok", timeout=30, why=r.output)
    assert_each_call_once(tmp, RUNS)
    assert "failed inside the engine" not in r.output(), r.output()
    return error


@pytest.fixture
def own_cluster() -> Iterator[Postgres]:
    """A cluster of this test's own: it is crashed and its disk filled."""
    if bindir() is None:
        pytest.skip("PostgreSQL is not installed (make test installs it)")
    pg = Postgres().start()
    try:
        yield pg
    finally:
        pg.stop()


def test_the_postgresql_runner_rides_out_a_crash_of_its_database(
        tmp_path: Path, own_cluster: Postgres) -> None:
    """Issue 26, obs. 5: PostgreSQL restarted with `-m immediate` under load left runs
    `running` until the runner was restarted. Now they pause, `status` says
    `retrying (connection lost: ...)`, and all complete once the server is back."""
    cfg = setup(tmp_path, database=own_cluster.url)
    r = start_runner(tmp_path, cfg, "cloud-run")
    try:
        rids = queue_runs(cfg, RUNS)
        until(lambda: (tmp_path / "ledger").exists() and
              len((tmp_path / "ledger").read_text().split()) >= RUNS // 2, timeout=60,
              why=r.output)
        own_cluster.crash()
        try:
            error = wait_retrying(cfg, r, "connection lost")
            assert "Traceback" not in r.output()
            time.sleep(1.0)
        finally:
            own_cluster.start_again()
        all_completed(cfg, rids, r)
        until(lambda: store_state(cfg)["state"] == "ok", timeout=30, why=r.output)
        assert r.proc is not None and r.proc.poll() is None  # never restarted
        assert_each_call_once(tmp_path, RUNS)
        assert error.startswith("connection lost"), error
        assert "failed inside the engine" not in r.output(), r.output()
    finally:
        r.close()


def test_the_postgresql_runner_waits_for_disk_space(tmp_path: Path,
                                                    own_cluster: Postgres) -> None:
    """Issue 26, obs. 5: a full disk failed runs ("could not extend file") and stranded
    others `queued`. The runner's database lives in a tablespace on a 24 MB tmpfs, filled
    while runs are under way: the runs pause with `status` saying `retrying (disk full:
    ...)`, and all complete once the space is freed."""
    import psycopg
    space = own_cluster.root / "space"  # where the cluster's user may reach
    with tmpfs(space, "24m", owner=own_cluster.user):
        with psycopg.connect(own_cluster.url, autocommit=True) as c:
            c.execute(f"CREATE TABLESPACE small LOCATION '{space}'")
            c.execute("CREATE DATABASE runner TABLESPACE small")
        url = own_cluster.url.rsplit("/", 1)[0] + "/runner"
        cfg = setup(tmp_path, database=url)
        r = start_runner(tmp_path, cfg, "cloud-run")
        try:
            error = rides_out_a_full_disk(tmp_path, cfg, r, space)
            assert "could not extend file" in error, error
        finally:
            r.close()
            with psycopg.connect(own_cluster.url, autocommit=True) as c:
                c.execute("DROP DATABASE IF EXISTS runner WITH (FORCE)")
                c.execute("DROP TABLESPACE IF EXISTS small")


def test_the_sqlite_daemon_waits_for_disk_space(tmp_path: Path) -> None:
    """The same on the device's SQLite file: its data directory an 8 MB tmpfs, filled while
    runs are under way (SQLITE_FULL): the runs pause, `status` says `retrying (disk full:
    ...)`, and all complete once the space is freed."""
    data = tmp_path / "data"
    with tmpfs(data, "8m"):
        cfg = setup(tmp_path)
        r = start_runner(tmp_path, cfg, "run")
        try:
            rides_out_a_full_disk(tmp_path, cfg, r, data)
        finally:
            r.close()
