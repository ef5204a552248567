"""What an operator does on an ordinary day, against the real daemon and CLI processes: a
config reload that holds anything at all, odd `--input`, a data directory that is read-only
or has a planted symlink, a damaged database, a umask that would expose the database. Each
gets a clear error and an exit code from the README's table, never a traceback."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.daemon import DaemonProcess, cli, cli_json

from edge_agent.store import Store
from edge_agent.store.files import db_file_mode

HUGE = " + ".join(["input.x"] * 60_000) + " > 0"
BAD_CONFIGS = {
    "huge expression": lambda good: good.replace(
        "[workflows.gated]", f'[workflows.huge]\nstart = "b"\n[workflows.huge.nodes.b]\n'
        f'branch = [{{ when = "{HUGE}", next = "e" }}, {{ next = "e" }}]\n'
        '[workflows.huge.nodes.e]\nend = true\n\n[workflows.gated]'),
    "deep toml": lambda good: good + "\nx = " + "[" * 5000 + "]" * 5000 + "\n",
    "binary": lambda good: "\x00\xff garbage \ud800".encode("utf-8", "surrogatepass"),
    "unknown function": lambda good: good.replace(
        'approval = { prompt = "Proceed?" }',
        'approval = { prompt = "Proceed?" }\n[workflows.gated.nodes.pick]\n'
        'branch = [{ when = "frobnicate(input)", next = "done" }, { next = "done" }]'),
}


def start(daemons: list[DaemonProcess], config: Path, tmp_path: Path) -> DaemonProcess:
    d = DaemonProcess(config, tmp_path).start()
    daemons.append(d)
    return d


def test_a_bad_config_on_sighup_whatever_it_holds_keeps_the_old_one(
        config: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    d = start(daemons, config, tmp_path)
    d.wait_for("READY=1")
    good = config.read_text()
    for name, make in [*BAD_CONFIGS.items(), ("fifo", None), ("directory", None)]:
        config.unlink()
        if name == "fifo":
            os.mkfifo(config)  # reading it would block the daemon's loop forever
        elif name == "directory":
            config.mkdir()
        else:
            bad = make(good)  # type: ignore[misc]
            if isinstance(bad, bytes):
                config.write_bytes(bad)
            else:
                config.write_text(bad)
        seen = len([m for _, m in d.messages if m.startswith("STATUS=reload rejected")])
        d.signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while len([m for _, m in d.messages if m.startswith("STATUS=reload rejected")]) \
                <= seen:
            assert d.proc is not None and d.proc.poll() is None, (name, d.output())
            assert time.monotonic() < deadline, (name, d.output())
            d.read(0.1)
        assert d.proc is not None and d.proc.poll() is None, name
        if config.is_dir():
            config.rmdir()
        else:
            config.unlink()
        config.write_text(good)
        rid = cli_json(config, "start", "gated")["run_id"]  # the old workflows still run
        deadline = time.monotonic() + 10
        while cli_json(config, "runs", "show", rid)["status"] != "waiting_approval":
            assert time.monotonic() < deadline, (name, d.output())
            time.sleep(0.05)
    assert d.stop() == 0


def test_the_daemon_refuses_to_start_on_a_huge_expression_with_exit_78(
        config: Path, tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    config.write_text(BAD_CONFIGS["huge expression"](config.read_text()))
    d = start(daemons, config, tmp_path)
    assert d.proc is not None and d.proc.wait(30) == 78, d.output()
    assert "workflows.huge.nodes.b.branch[0].when: invalid expression" in d.output()


@pytest.mark.parametrize("value, message", [
    ('"\\ud800"', "lone surrogate"),
    ("\udced\udca0\udc80", "not valid UTF-8"),  # the bytes ED A0 80 on the command line
    ("[" * 5000 + "]" * 5000, "nested deeper than 64 levels"),
])
def test_odd_input_is_a_usage_error(config: Path, value: str, message: str) -> None:
    r = subprocess.run([os.fsencode(sys.executable), b"-m", b"edge_agent", b"start", b"gated",
                        b"--input", os.fsencode(value), b"--config", os.fsencode(config)],
                       capture_output=True, timeout=60, check=False)
    err = r.stderr.decode(errors="replace")
    assert r.returncode == 64, err
    assert message in err and "Traceback" not in err


def test_a_planted_lock_symlink_is_not_followed(config: Path, tmp_path: Path,
                                                daemons: list[DaemonProcess]) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    data = tmp_path / "data"
    data.mkdir()
    (data / "edge-agent.lock").symlink_to(victim)
    d = start(daemons, config, tmp_path)
    assert d.proc is not None and d.proc.wait(30) == 73, d.output()
    assert "symbolic link" in d.output() and "Traceback" not in d.output()
    assert victim.read_text() == "precious\n"


def _userns() -> bool:
    if shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return r.returncode == 0


def test_a_read_only_data_dir_is_exit_73(config: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    argv = [sys.executable, "-m", "edge_agent", "run", "--config", str(config)]
    if os.geteuid() != 0:
        data.chmod(0o500)
    elif _userns():  # root ignores modes: a read-only mount, in a mount namespace of its own
        mount = 'mount -t tmpfs -o ro,size=64k none "$0" && exec "$@"'
        argv = ["unshare", "-rm", "sh", "-c", mount, str(data), *argv]
    else:
        pytest.skip("running as root without user namespaces: no read-only directory")
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                           check=False)
    finally:
        data.chmod(0o755)
    out = r.stdout + r.stderr
    assert r.returncode == 73, out
    assert "cannot create the lock file" in out and "Traceback" not in out


def test_a_damaged_database_is_exit_74_with_what_to_do(config: Path, tmp_path: Path,
                                                       daemons: list[DaemonProcess]) -> None:
    pad = "x" * 400
    for _ in range(30):
        cli(config, "start", "gated", "--input", f'{{"pad": "{pad}"}}')
    db = tmp_path / "data" / "edge-agent.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    leaves = [p for p, kind in conn.execute(
        "SELECT pageno, pagetype FROM dbstat WHERE name = 'runs'") if kind == "leaf"]
    conn.close()
    with open(db, "r+b") as f:  # a torn page in the middle of the runs table
        f.seek((leaves[len(leaves) // 2] - 1) * page_size)
        f.write(b"\x0d\x00\x00\x00\xff\xff" + b"\xee" * 200)
    r = cli(config, "runs", check=False)
    assert r.returncode == 74 and "restore a backup" in r.stderr and "Traceback" not in r.stderr
    d = start(daemons, config, tmp_path)
    assert d.proc is not None and d.proc.wait(30) == 74, d.output()
    assert "restore a backup" in d.output() and "Traceback" not in d.output()


def test_database_files_are_private_whatever_the_umask(config: Path, tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "edge_agent", "start", "gated", "--config",
                        str(config)], capture_output=True, text=True, timeout=60, umask=0, check=False)
    assert r.returncode == 0, r.stderr
    data = tmp_path / "data"
    names = sorted(p.name for p in data.iterdir() if p.name.startswith("edge-agent.db"))
    assert "edge-agent.db" in names
    conn = sqlite3.connect(data / "edge-agent.db")  # open it again: WAL and SHM appear
    conn.execute("SELECT count(*) FROM runs").fetchone()
    for name in ("edge-agent.db", "edge-agent.db-wal", "edge-agent.db-shm"):
        mode = (data / name).stat().st_mode & 0o777
        assert mode == 0o600, (name, oct(mode))
    conn.close()


def test_the_service_group_may_read_the_database(tmp_path: Path) -> None:
    import grp
    group = grp.getgrgid(os.getgid()).gr_name
    other = next((g for g in grp.getgrall() if g.gr_gid != os.getgid()), None)
    data = tmp_path / "data"
    data.mkdir()
    assert db_file_mode(data, "no-such-group-here") == 0o600
    assert db_file_mode(data, group) == 0o640  # the data dir's group is the service group
    if other is not None:
        assert db_file_mode(data, other.gr_name) == 0o600
    old = os.umask(0o077)  # a umask that would take the group's bit away
    try:
        store = Store(data / "edge-agent.db", service_group=group)
        store.write(lambda c: c.execute("SELECT 1"))
        for name in ("edge-agent.db", "edge-agent.db-wal", "edge-agent.db-shm"):
            assert (data / name).stat().st_mode & 0o777 == 0o640, name
        store.close()
    finally:
        os.umask(old)
