"""The unit files: hardening exposure at most 2.0, and `install-service` lays them out."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_agent.cli import main

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


@needs_analyze
@pytest.mark.parametrize("unit", ["edge-agent.service", "edge-agent-cloud.service"])
def test_security_exposure_is_low(unit: str) -> None:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(SYSTEMD / unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.0


def test_unit_keeps_the_contract() -> None:
    text = (SYSTEMD / "edge-agent.service").read_text()
    for line in ("Type=notify", "Restart=on-failure", "RestartPreventExitStatus=78",
                 "DevicePolicy=closed", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "StateDirectory=edge-agent", "RuntimeDirectory=edge-agent",
                 "ConfigurationDirectory=edge-agent", "DeviceAllow=char-ttyUSB rw",
                 "DeviceAllow=char-gpiochip rw", "DeviceAllow=/dev/nvidia0 rw"):
        assert line in text, line
    assert re.search(r"^WatchdogSec=\d+", text, re.M)


def test_install_service_into_a_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["install-service", "--root", str(tmp_path), "--no-reload"]) == 0
    unit = tmp_path / "etc/systemd/system/edge-agent.service"
    assert unit.exists() and "Type=notify" in unit.read_text()
    assert (tmp_path / "usr/lib/sysusers.d/edge-agent.conf").exists()
    config = tmp_path / "etc/edge-agent/config.toml"
    assert config.exists()
    config.write_text(config.read_text() + "\n# mine\n")
    main(["install-service", "--root", str(tmp_path), "--no-reload"])
    assert config.read_text().endswith("# mine\n")  # never overwritten
    assert "systemctl enable --now edge-agent" in capsys.readouterr().out


@needs_analyze
def test_units_verify_cleanly(tmp_path: Path) -> None:
    for unit in ("edge-agent.service", "edge-agent-cloud.service"):
        text = (SYSTEMD / unit).read_text().replace("/usr/local/bin/", "/bin/")
        (tmp_path / unit).write_text(text.replace("ExecStart=/bin/edge-agent-cloud",
                                                  "ExecStart=/bin/true").replace(
            "ExecStart=/bin/edge-agent", "ExecStart=/bin/true"))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / unit)],
                           capture_output=True, text=True, timeout=60)
        problems = [l for l in (r.stdout + r.stderr).splitlines()
                    if unit in l and "Failed to" in l]
        assert not problems, r.stdout + r.stderr
