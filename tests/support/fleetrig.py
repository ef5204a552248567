"""The cloud's CLI and service as a user runs them, and devices with a `hello` workflow:
for the tests that steer devices from `edge-agent-cloud`."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.daemon import DaemonProcess

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")
DEVICE = """
[device]
id = "{id}"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{port}"
insecure = true
ack_timeout_s = 2
[workflows.hello]
start = "done"
[workflows.hello.nodes.done]
end = true
output = "input"
"""


def cloud(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One `edge-agent-cloud` command on the config `cfg`."""
    return subprocess.run([CLOUD, *args, "--config", str(cfg)], capture_output=True, check=False,
                          text=True, timeout=60)


def device(tmp: Path, name: str, port: int) -> tuple[Path, DaemonProcess]:
    """A device daemon (not started) with the `hello` workflow, in its own folder."""
    home = tmp / name
    home.mkdir()
    cfg = home / "config.toml"
    cfg.write_text(DEVICE.format(id=name, port=port))
    return cfg, DaemonProcess(cfg, home)


@contextmanager
def cloud_service(cfg: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`edge-agent-cloud run` on `cfg` (in its folder), stopped with SIGTERM at the end."""
    proc = subprocess.Popen([CLOUD, "run", "--config", str(cfg)], cwd=cfg.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
