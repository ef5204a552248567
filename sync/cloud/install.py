"""`edge-agent-cloud install-service`: the ingest's unit, user, directories and config."""

from __future__ import annotations

from pathlib import Path

from sync.service_files import ServiceFiles, install

CLOUD = ServiceFiles(name="edge-agent-cloud",
                     source=Path(__file__).resolve().parent / "systemd",
                     command="edge-agent-cloud", config_example="cloud.example.toml",
                     config_path="/etc/edge-agent-cloud/cloud.toml")


def install_service(root: str = "/", reload: bool = True) -> list[str]:
    """Install the cloud service below `root`; never overwrites an existing config."""
    done = install(CLOUD, root, reload)
    done.append("next: edit the config, then sudo systemctl enable --now edge-agent-cloud")
    return done
