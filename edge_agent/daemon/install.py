"""`edge-agent install-service` and `uninstall-service`: the device's unit, user,
directories, config and man page."""

from __future__ import annotations

from pathlib import Path

from sync.service_files import ServiceFiles, install, uninstall

DEVICE = ServiceFiles(name="edge-agent", source=Path(__file__).resolve().parent / "systemd",
                      command="edge-agent", config_example="edge-agent.example.toml",
                      config_path="/etc/edge-agent/config.toml")


def install_service(root: str = "/", reload: bool = True,
                    man_page: str | None = None) -> list[str]:
    """Install the device service below `root`, with edge-agent(1) when `man_page` is given;
    never overwrites an existing config."""
    done = install(DEVICE, root, reload, man_page)
    done.append("next: edge-agent config check && sudo systemctl enable --now edge-agent")
    return done


def uninstall_service(root: str = "/", reload: bool = True, purge: bool = False) -> list[str]:
    """Remove what install_service put below `root`; the config and the database stay
    unless `purge`."""
    return uninstall(DEVICE, root, reload, purge)
