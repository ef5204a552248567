"""A throwaway PostgreSQL cluster: initdb into a temp dir, started on a free port."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from support.broker import free_port


def bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("initdb")
    return Path(exe).parent if exe else None


class Postgres:
    """`fsync=False` for tests (faster, nothing to keep); benchmarks keep PostgreSQL's
    durable default."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
        self.bin = bindir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries are not installed")
        self.root = Path(tempfile.mkdtemp(prefix="edge-agent-pg-"))
        self.port = free_port()
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: run the cluster as nobody
            self.user = "nobody"
            os.chmod(self.root, 0o777)
            self.prefix = ["runuser", "-u", "nobody", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> Postgres:
        data = self.root / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "--auth=trust", "-U", self.user,
                  "--no-sync")
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-w", "-l",
                  str(self.root / "log"), "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                  + ("" if self.fsync else " -c fsync=off"),
                  "start")

    def crash(self) -> None:
        """Stop the server at once (`-m immediate`: no checkpoint, every session cut, as a
        crash), keeping its data for `start_again`."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m",
                  "immediate", "stop")

    def start_again(self) -> None:
        """Start the server again on the same port (it recovers from its WAL)."""
        self._pg_ctl_start()

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.root / "data"), "-m",
                      "immediate", "stop")
        except subprocess.CalledProcessError:
            pass
        time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)


_names = itertools.count()


def fresh_pg_url(pg: Postgres) -> str:
    """A new, empty database in the cluster `pg`."""
    import psycopg
    name = f"t{next(_names)}"
    with psycopg.connect(pg.url, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + "/" + name
