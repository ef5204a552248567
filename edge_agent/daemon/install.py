"""`edge-agent install-service` and `uninstall-service`: the device's unit, user,
directories, config and man page; with `--cloud-runner`, the cloud runner's instead."""

from __future__ import annotations

from sync.service_files import ServiceFiles, install, shipped_units, uninstall

DEVICE = ServiceFiles(name="edge-agent", source=shipped_units(),
                      command="edge-agent", config_example="edge-agent.example.toml",
                      config_path="/etc/edge-agent/config.toml")
# `edge-agent cloud-run` as a service on the cloud's machine: its own user, state and config
RUNNER = ServiceFiles(name="edge-agent-runner", source=DEVICE.source, command="edge-agent",
                      config_example="edge-agent-runner.example.toml",
                      config_path="/etc/edge-agent-runner/runner.toml", owns_man_page=False)


def install_service(root: str = "/", reload: bool = True, man_page: str | None = None,
                    cloud_runner: bool = False) -> list[str]:
    """Install the device service (or the cloud runner's) below `root`, with edge-agent(1)
    when `man_page` is given; never overwrites an existing config."""
    svc = RUNNER if cloud_runner else DEVICE
    done = install(svc, root, reload, man_page)
    done.append(f"next: edge-agent config check {svc.config_path} && sudo systemctl enable"
                f" --now {svc.name}")
    return done


def uninstall_service(root: str = "/", reload: bool = True, purge: bool = False,
                      cloud_runner: bool = False) -> list[str]:
    """Remove what install_service put below `root`; the config and the database stay
    unless `purge`."""
    return uninstall(RUNNER if cloud_runner else DEVICE, root, reload, purge)
