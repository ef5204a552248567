"""Lay out a systemd service below a root: unit, sysusers and tmpfiles snippets, and an
example config the service's group can read. Shared by `edge-agent install-service` and
`edge-agent-cloud install-service`; it knows no service of its own."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Where the shipped units point; replaced by the entry point actually installed.
_SHIPPED_BIN = "/usr/local/bin/"
# ProtectHome=yes hides these trees from the service: an entry point below them needs read-only.
_HOME_TREES = ("/home/", "/root/", "/run/user/")


@dataclass(frozen=True)
class ServiceFiles:
    """What one service installs. `source` holds the shipped files (package data)."""

    name: str  # the unit, user and group name: "edge-agent"
    source: Path
    command: str  # the console script ExecStart runs: "edge-agent"
    config_example: str  # file in `source`
    config_path: str  # absolute: "/etc/edge-agent/config.toml"

    def files(self) -> list[tuple[str, str]]:
        return [(f"{self.name}.service", f"etc/systemd/system/{self.name}.service"),
                (f"{self.name}.sysusers.conf", f"usr/lib/sysusers.d/{self.name}.conf"),
                (f"{self.name}.tmpfiles.conf", f"usr/lib/tmpfiles.d/{self.name}.conf")]


def entry_point(command: str) -> Path:
    """The installed console script: beside the running interpreter (a virtualenv), else
    on PATH."""
    import sys
    beside = Path(sys.executable).parent / command
    if beside.exists():
        return beside
    found = shutil.which(command)
    return Path(found) if found else beside


def render_unit(text: str, exe: Path, command: str) -> str:
    """The shipped unit with ExecStart at `exe`; read-only home if `exe` lives in one."""
    text = text.replace(f"{_SHIPPED_BIN}{command} ", f"{exe} ")
    if str(exe).startswith(_HOME_TREES):
        text = text.replace("ProtectHome=yes", "ProtectHome=read-only")
    return text


def install(svc: ServiceFiles, root: str = "/", reload: bool = True) -> list[str]:
    """Copy the files below `root`; never overwrite an existing config. Returns what it did."""
    base = Path(root)
    done: list[str] = []
    exe = entry_point(svc.command)
    for src, dst in svc.files():
        target = base / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        text = (svc.source / src).read_text()
        if src.endswith(".service"):
            text = render_unit(text, exe, svc.command)
        target.write_text(text)
        target.chmod(0o644)
        done.append(f"installed {target}")
    if str(exe).startswith(_HOME_TREES):
        done.append(f"note: {exe} is below a home directory; the unit reads it with "
                    "ProtectHome=read-only (install into /opt or /usr for full hardening)")
    config = base / svc.config_path.lstrip("/")
    if config.exists():
        done.append(f"kept existing {config}")
    else:
        config.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(svc.source / svc.config_example, config)
        done.append(f"installed example config {config} (edit it)")
    if reload and root == "/":
        done += _run_system_tools()
    done.append(_give_to_group(config, svc.name))
    done.append(_give_to_group(config.parent, svc.name, mode=0o750))
    return done


def _give_to_group(path: Path, group: str, mode: int = 0o640) -> str:
    """root:GROUP with `mode`, so the service user can read what root wrote."""
    path.chmod(mode)
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return (f"{path} is mode {mode:o}; group {group} does not exist yet (systemd-tmpfiles "
                f"gives it to root:{group} when the package's snippets are applied)")
    if os.geteuid() == 0:
        os.chown(path, 0, gid)
        return f"{path} is root:{group} {mode:o}"
    return f"{path} is mode {mode:o}; run as root to give it to group {group}"


def _run_system_tools() -> list[str]:
    done = []
    cmds: Sequence[list[str]] = (["systemd-sysusers"], ["systemd-tmpfiles", "--create"],
                                 ["systemctl", "daemon-reload"])
    for cmd in cmds:
        if shutil.which(cmd[0]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            done.append(f"ran {' '.join(cmd)}: {'ok' if r.returncode == 0 else r.stderr.strip()}")
    return done
