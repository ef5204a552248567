"""`edge-agent install-service`: the device's unit, user, directories and config."""

from __future__ import annotations

from pathlib import Path

from sync.service_files import ServiceFiles, install

DEVICE = ServiceFiles(name="edge-agent", source=Path(__file__).resolve().parent / "systemd",
                      command="edge-agent", config_example="edge-agent.example.toml",
                      config_path="/etc/edge-agent/config.toml")


def install_service(root: str = "/", reload: bool = True) -> list[str]:
    """Install the device service below `root`; never overwrites an existing config."""
    done = install(DEVICE, root, reload)
    done.append("next: edge-agent config check && sudo systemctl enable --now edge-agent")
    return done
