"""Lay out a systemd service below a root: unit, sysusers and tmpfiles snippets, a man page,
and an example config the service's group can read; and take it away again. Shared by
`edge-agent install-service`/`uninstall-service` and their `edge-agent-cloud` twins; it
knows no service of its own."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sync.install_root import InstallRoot

# Where the shipped units point; replaced by the entry point actually installed.
_SHIPPED_BIN = "/usr/local/bin/"
# ProtectHome=yes hides these trees from the service: an entry point below them needs read-only.
_HOME_TREES = ("/home/", "/root/", "/run/user/")
# PrivateTmp=yes gives the service empty ones of its own: an entry point below them is gone.
_TMP_TREES = ("/tmp/", "/var/tmp/")


def shipped_units() -> Path:
    """The project's `systemd/` folder, the one home of every unit, snippet and example.

    In a checkout (or an editable install) it sits beside the packages; a wheel installs it
    as data below its prefix (`share/edge-agent/systemd`), found through the installed
    distribution's own file list."""
    here = Path(__file__).resolve().parents[1] / "systemd"
    if (here / "edge-agent.service").is_file():
        return here
    from importlib import metadata
    try:
        dist = metadata.distribution("edge-agent")
    except metadata.PackageNotFoundError:
        return here
    for f in dist.files or ():
        if f.name == "edge-agent.service" and f.parent.name == "systemd":
            return Path(str(dist.locate_file(f))).resolve().parent
    return here


@dataclass(frozen=True)
class ServiceFiles:
    """What one service installs. `source` holds the shipped files (package data)."""

    name: str  # the unit, user and group name: "edge-agent"
    source: Path
    command: str  # the console script ExecStart runs: "edge-agent"
    config_example: str  # file in `source`
    config_path: str  # absolute: "/etc/edge-agent/config.toml"
    owns_man_page: bool = True  # False: another service of the same command installs it

    def files(self) -> list[tuple[str, str]]:
        return [(f"{self.name}.service", f"etc/systemd/system/{self.name}.service"),
                (f"{self.name}.sysusers.conf", f"usr/lib/sysusers.d/{self.name}.conf"),
                (f"{self.name}.tmpfiles.conf", f"usr/lib/tmpfiles.d/{self.name}.conf")]

    @property
    def man_page(self) -> str:
        return f"usr/share/man/man1/{self.command}.1"

    @property
    def state_dir(self) -> str:
        return f"var/lib/{self.name}"  # the unit's StateDirectory=


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


def private_tmp_warnings(exe: Path, svc: ServiceFiles) -> list[str]:
    """A warning when ExecStart lies below /tmp or /var/tmp, which the unit's PrivateTmp=yes
    replaces with empty directories: the service could not start."""
    unit = (svc.source / f"{svc.name}.service").read_text()
    if "PrivateTmp=yes" not in unit:
        return []
    for path in dict.fromkeys((str(exe), str(exe.resolve()))):
        tree = next((t for t in _TMP_TREES if path.startswith(t)), None)
        if tree is not None:
            return [f"warning: ExecStart {path} is below {tree.rstrip('/')}, which the unit's "
                    "PrivateTmp=yes hides from the service: it would not start. Install "
                    f"{svc.command} outside /tmp and /var/tmp (a virtualenv in /opt, or pip "
                    "into /usr/local) and run install-service from there"]
    return []


def install(svc: ServiceFiles, root: str = "/", reload: bool = True,
            man_page: str | None = None) -> list[str]:
    """Copy the files below `root`, and `man_page` (roff: the CLI writes it from its parser)
    as COMMAND(1); never overwrite an existing config. Returns what it did. Nothing is
    written through a link inside `root` (InstallRootError names it)."""
    base = InstallRoot(root, create=True)
    done: list[str] = []
    exe = entry_point(svc.command)
    for src, dst in svc.files():
        text = (svc.source / src).read_text()
        if src.endswith(".service"):
            text = render_unit(text, exe, svc.command)
        base.write(dst, text.encode())
        done.append(f"installed {base.path(dst)}")
    if man_page is not None and svc.owns_man_page:
        base.write(svc.man_page, man_page.encode())
        done.append(f"installed {base.path(svc.man_page)}")
    if str(exe).startswith(_HOME_TREES):
        done.append(f"note: {exe} is below a home directory; the unit reads it with "
                    "ProtectHome=read-only (install into /opt or /usr for full hardening)")
    done += private_tmp_warnings(exe, svc)
    config = svc.config_path.lstrip("/")
    if base.exists(config):
        done.append(f"kept existing {base.path(config)}")
    else:
        base.write(config, (svc.source / svc.config_example).read_bytes(), 0o640)
        done.append(f"installed example config {base.path(config)} (edit it)")
    if reload and root == "/":
        done += _run_system_tools()
    done.append(_give_to_group(base, config, svc.name))
    done.append(_give_to_group(base, str(PurePosixPath(config).parent), svc.name, mode=0o750))
    return done


def uninstall(svc: ServiceFiles, root: str = "/", reload: bool = True,
              purge: bool = False) -> list[str]:
    """Stop and disable the unit (on the running system), remove what `install` wrote.
    The config and the state directory stay unless `purge`; the user and group always stay
    (files they own may outlive the package, and a reused id would inherit them)."""
    base = InstallRoot(root, create=False)
    done: list[str] = []
    live = reload and root == "/"
    if live and shutil.which("systemctl"):
        r = subprocess.run(["systemctl", "disable", "--now", f"{svc.name}.service"],
                           check=False, capture_output=True, text=True)
        done.append(f"ran systemctl disable --now {svc.name}: "
                    f"{'ok' if r.returncode == 0 else r.stderr.strip()}")
    for _, dst in svc.files() + ([("", svc.man_page)] if svc.owns_man_page else []):
        if base.remove(dst):
            done.append(f"removed {base.path(dst)}")
    config_dir = str(PurePosixPath(svc.config_path.lstrip("/")).parent)
    for kept in (config_dir, svc.state_dir):
        if not base.exists(kept):
            continue
        if purge:
            base.purge(kept)
            done.append(f"purged {base.path(kept)}")
        else:
            done.append(f"kept {base.path(kept)} (--purge removes it)")
    done.append(f"kept user and group {svc.name}")
    if live and shutil.which("systemctl"):
        r = subprocess.run(["systemctl", "daemon-reload"], check=False, capture_output=True, text=True)
        done.append(f"ran systemctl daemon-reload: "
                    f"{'ok' if r.returncode == 0 else r.stderr.strip()}")
    return done


def _gid(group: str, base: Path) -> int | None:
    """The group's id: below another root, from that root's own /etc/group (an image's);
    else from this system. None where it does not exist yet."""
    if base != Path("/"):
        if (base / "etc/group").exists():
            for line in (base / "etc/group").read_text().splitlines():
                fields = line.split(":")
                if len(fields) > 2 and fields[0] == group:
                    return int(fields[2])
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        return None


def _give_to_group(base: InstallRoot, rel: str, group: str, mode: int = 0o640) -> str:
    """root:GROUP with `mode`, so the service user can read what root wrote."""
    path = base.path(rel)
    gid = _gid(group, base.base)
    base.set_owner_mode(rel, mode, gid if gid is not None and os.geteuid() == 0 else None)
    if gid is None:
        return (f"{path} is mode {mode:o}; group {group} does not exist yet (systemd-tmpfiles "
                f"gives it to root:{group} when the package's snippets are applied)")
    if os.geteuid() == 0:
        return f"{path} is root:{group} {mode:o}"
    return f"{path} is mode {mode:o}; run as root to give it to group {group}"


def _run_system_tools() -> list[str]:
    done = []
    cmds: Sequence[list[str]] = (["systemd-sysusers"], ["systemd-tmpfiles", "--create"],
                                 ["systemctl", "daemon-reload"])
    for cmd in cmds:
        if shutil.which(cmd[0]):
            r = subprocess.run(cmd, check=False, capture_output=True, text=True)
            done.append(f"ran {' '.join(cmd)}: {'ok' if r.returncode == 0 else r.stderr.strip()}")
    return done
