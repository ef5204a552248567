"""`install-service --root DIR` acts below DIR only: a symbolic link planted inside it is
refused, never followed (no file outside is written or chmodded); `uninstall-service --purge`
on a linked directory and `--root` naming a file give a clear error and exit code, no
traceback, for the device's and the cloud's commands."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.cli import main
from sync.cloud.cli import main as cloud_main

MAINS: dict[str, Callable[[list[str]], int]] = {"device": main, "cloud": cloud_main}
NAMES = {"device": "edge-agent", "cloud": "edge-agent-cloud"}


def _install(which: str, root: Path, *extra: str) -> int:
    return MAINS[which](["install-service", "--root", str(root), "--no-reload", *extra])


@pytest.mark.parametrize("which", ["device", "cloud"])
def test_a_linked_unit_file_is_not_followed(which: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside.txt"
    outside.write_text("precious\n")
    unit = root / f"etc/systemd/system/{NAMES[which]}.service"
    unit.parent.mkdir(parents=True)
    unit.symlink_to(outside)
    assert _install(which, root) == 73
    err = capsys.readouterr().err
    assert "symbolic link" in err and str(unit) in err, err
    assert outside.read_text() == "precious\n"


@pytest.mark.parametrize("which", ["device", "cloud"])
def test_a_linked_config_directory_is_not_chmodded(which: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    outside.mkdir(mode=0o755)
    outside.chmod(0o755)
    (root / "etc").mkdir(parents=True)
    (root / "etc" / NAMES[which]).symlink_to(outside)
    assert _install(which, root) == 73
    assert "symbolic link" in capsys.readouterr().err
    assert outside.stat().st_mode & 0o777 == 0o755
    assert list(outside.iterdir()) == []  # no config written through the link


def test_a_linked_parent_directory_is_not_followed(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    root, outside = tmp_path / "root", tmp_path / "systemd-elsewhere"
    outside.mkdir()
    (root / "etc").mkdir(parents=True)
    (root / "etc/systemd").symlink_to(outside)
    assert _install("device", root) == 73
    assert "symbolic link" in capsys.readouterr().err
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("which", ["device", "cloud"])
def test_purge_on_linked_directories_is_a_clear_error(which: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root, keep = tmp_path / "root", tmp_path / "keep"
    assert _install(which, root) == 0
    keep.mkdir()
    (keep / "data.db").write_text("x")
    state = root / f"var/lib/{NAMES[which]}"
    state.parent.mkdir(parents=True, exist_ok=True)
    state.symlink_to(keep)
    capsys.readouterr()
    code = MAINS[which](["uninstall-service", "--root", str(root), "--no-reload", "--purge"])
    assert code == 73
    err = capsys.readouterr().err
    assert "symbolic link" in err and "Traceback" not in err
    assert (keep / "data.db").read_text() == "x"


@pytest.mark.parametrize("which", ["device", "cloud"])
@pytest.mark.parametrize("command", ["install-service", "uninstall-service"])
def test_root_naming_a_file_is_a_usage_error(which: str, command: str, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    module = "edge_agent" if which == "device" else "sync.cloud.cli"
    r = subprocess.run([sys.executable, "-m", module, command, "--root", str(afile),
                        "--no-reload", "--json"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 64, r.stderr
    assert "Traceback" not in r.stderr
    assert "not a directory" in json.loads(r.stderr)["error"]
