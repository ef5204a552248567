"""`edge-agent-cloud install-service` and `uninstall-service`: the ingest's unit, user,
directories, config and man page."""

from __future__ import annotations

from sync.service_files import ServiceFiles, install, shipped_units, uninstall

CLOUD = ServiceFiles(name="edge-agent-cloud",
                     source=shipped_units(),
                     command="edge-agent-cloud", config_example="cloud.example.toml",
                     config_path="/etc/edge-agent-cloud/cloud.toml")


def install_service(root: str = "/", reload: bool = True,
                    man_page: str | None = None) -> list[str]:
    """Install the cloud service below `root`, with edge-agent-cloud(1) when `man_page` is
    given; never overwrites an existing config."""
    done = install(CLOUD, root, reload, man_page)
    done.append("next: edit the config, then sudo systemctl enable --now edge-agent-cloud")
    return done


def uninstall_service(root: str = "/", reload: bool = True, purge: bool = False) -> list[str]:
    """Remove what install_service put below `root`; the config and the state stay unless
    `purge`."""
    return uninstall(CLOUD, root, reload, purge)
