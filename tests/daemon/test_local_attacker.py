"""A local user who can write the data directory must not steer the daemon's writes: a
database, `-wal` or `-shm` planted as a symbolic link (to another application's database, or
dangling) is refused with exit 73 and the reason, and so is a data directory that others than
its owner can write. The victim file stays as it was; nothing is created through a link."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, cli


def _refused(daemons: list[DaemonProcess], config: Path, tmp_path: Path, reason: str) -> None:
    d = DaemonProcess(config, tmp_path).start()
    daemons.append(d)
    assert d.proc is not None and d.proc.wait(30) == 73, d.output()
    assert reason in d.output() and "Traceback" not in d.output(), d.output()
    r = cli(config, "start", "gated", check=False)  # the CLI's own open says the same
    assert r.returncode == 73 and reason in r.stderr and "Traceback" not in r.stderr, r.stderr


def _victim_db(tmp_path: Path) -> Path:
    victim = tmp_path / "other-app.db"
    conn = sqlite3.connect(victim)
    conn.execute("CREATE TABLE secrets (v TEXT)")
    conn.execute("INSERT INTO secrets VALUES ('precious')")
    conn.commit()
    conn.close()
    victim.chmod(0o600)
    return victim


def _tables(db: Path) -> list[str]:
    conn = sqlite3.connect(db)
    try:
        return sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master"))
    finally:
        conn.close()


def test_a_database_planted_as_a_link_to_another_database_is_refused(
        config: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    victim = _victim_db(tmp_path)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "edge-agent.db").symlink_to(victim)
    _refused(daemons, config, tmp_path, "symbolic link")
    assert _tables(victim) == ["secrets"]


def test_a_dangling_database_link_creates_nothing(
        config: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    target = tmp_path / "elsewhere" / "created.db"
    target.parent.mkdir()
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / "edge-agent.db").symlink_to(target)
    _refused(daemons, config, tmp_path, "symbolic link")
    assert not target.exists()


@pytest.mark.parametrize("suffix", ["-wal", "-shm"])
def test_a_planted_wal_or_shm_link_is_refused(
        config: Path, tmp_path: Path, daemons: list[DaemonProcess], suffix: str) -> None:
    assert cli(config, "start", "gated").returncode == 0  # a real database first
    data = tmp_path / "data"
    for extra in ("-wal", "-shm"):
        Path(f"{data / 'edge-agent.db'}{extra}").unlink(missing_ok=True)
    target = tmp_path / f"victim{suffix}"
    target.write_text("precious\n")
    Path(f"{data / 'edge-agent.db'}{suffix}").symlink_to(target)
    _refused(daemons, config, tmp_path, "symbolic link")
    assert target.read_text() == "precious\n"


def test_a_hard_linked_database_is_refused(
        config: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    victim = _victim_db(tmp_path)
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    os.link(victim, data / "edge-agent.db")
    _refused(daemons, config, tmp_path, "hard links")
    assert _tables(victim) == ["secrets"]


@pytest.mark.parametrize("mode, who", [(0o777, "everyone"), (0o1777, "everyone"),
                                       (0o770, "its group")])
def test_a_data_directory_others_can_write_is_refused(
        config: Path, tmp_path: Path, daemons: list[DaemonProcess], mode: int, who: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(mode)
    _refused(daemons, config, tmp_path, f"writable by {who}")
    assert not (data / "edge-agent.db").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give the directory away")
def test_root_refuses_a_data_directory_another_user_owns(
        config: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chown(data, 65534, 65534)  # nobody: who could plant links there
    _refused(daemons, config, tmp_path, "belongs to uid 65534")
    assert not (data / "edge-agent.db").exists()
