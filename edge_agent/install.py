"""`edge-agent install-service`: put the unit, users, directories and config in place."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"


def _files() -> list[tuple[str, str, int]]:
    return [("edge-agent.service", "etc/systemd/system/edge-agent.service", 0o644),
            ("edge-agent-cloud.service", "etc/systemd/system/edge-agent-cloud.service", 0o644),
            ("edge-agent.sysusers.conf", "usr/lib/sysusers.d/edge-agent.conf", 0o644),
            ("edge-agent.tmpfiles.conf", "usr/lib/tmpfiles.d/edge-agent.conf", 0o644)]


def install_service(root: str = "/", reload: bool = True) -> list[str]:
    """Copy the files below `root`; never overwrite an existing config. Returns what it did."""
    base = Path(root)
    done: list[str] = []
    for src, dst, mode in _files():
        target = base / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        text = (SYSTEMD / src).read_text()
        exe = Path(sys.executable).parent / "edge-agent"
        text = text.replace("/usr/local/bin/edge-agent ", f"{exe} ")
        text = text.replace("/usr/local/bin/edge-agent-cloud ", f"{exe}-cloud ")
        target.write_text(text)
        target.chmod(mode)
        done.append(f"installed {target}")
    config = base / "etc/edge-agent/config.toml"
    if config.exists():
        done.append(f"kept existing {config}")
    else:
        config.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SYSTEMD / "edge-agent.example.toml", config)
        config.chmod(0o640)
        done.append(f"installed example config {config} (edit it: device id, tools, model)")
    if reload and root == "/" and shutil.which("systemctl"):
        for cmd in (["systemd-sysusers"], ["systemd-tmpfiles", "--create"],
                    ["systemctl", "daemon-reload"]):
            if shutil.which(cmd[0]):
                r = subprocess.run(cmd, capture_output=True, text=True)
                done.append(f"ran {' '.join(cmd)}: {'ok' if r.returncode == 0 else r.stderr}")
    done.append("next: edge-agent config check && sudo systemctl enable --now edge-agent")
    return done
