"""A second engine on the same data directory exits 75 (EX_TEMPFAIL), as the README's exit
table says, whichever command starts it: `edge-agent run` or `edge-agent cloud-run`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from support.daemon import DaemonProcess


@pytest.mark.parametrize("first, second", [("cloud-run", "cloud-run"), ("run", "cloud-run"),
                                           ("cloud-run", "run")])
def test_a_second_engine_on_the_same_data_directory_exits_75(
        config: Path, tmp_path: Path, daemons: list[DaemonProcess], first: str,
        second: str) -> None:
    d = DaemonProcess(config, tmp_path, argv=[sys.executable, "-m", "edge_agent", first,
                                              "--config", str(config)]).start()
    daemons.append(d)
    d.wait_for("READY=1")
    r = subprocess.run([sys.executable, "-m", "edge_agent", second, "--config", str(config)],
                       capture_output=True, text=True, timeout=60, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 75, out
    assert "another edge-agent" in out and "Traceback" not in out
    assert d.proc is not None and d.proc.poll() is None  # the first one runs on
    assert d.stop() == 0
