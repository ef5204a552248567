"""The unit files: hardening exposure at most 2.0, and `install-service` lays them out."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge_agent.cli import main

ROOT = Path(__file__).resolve().parents[2]
UNITS = {"edge-agent.service": ROOT / "systemd/edge-agent.service",
         "edge-agent-cloud.service": ROOT / "systemd/edge-agent-cloud.service",
         "edge-agent-runner.service": ROOT / "systemd/edge-agent-runner.service"}
# the man page each unit documents: the command it runs
PAGES = {"edge-agent.service": "edge-agent", "edge-agent-cloud.service": "edge-agent-cloud",
         "edge-agent-runner.service": "edge-agent"}
SYSTEMD = ROOT / "systemd"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze is not installed")


@needs_analyze
@pytest.mark.parametrize("unit", sorted(UNITS))
def test_security_exposure_is_low(unit: str) -> None:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(UNITS[unit])],
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
    """As install-service lays them out, man pages included: verify's man check stays on."""
    from sync.cloud.cli import main as cloud_main
    assert main(["install-service", "--root", str(tmp_path), "--no-reload"]) == 0
    assert cloud_main(["install-service", "--root", str(tmp_path), "--no-reload"]) == 0
    assert main(["install-service", "--cloud-runner", "--root", str(tmp_path),
                 "--no-reload"]) == 0
    units = [str(tmp_path / "etc/systemd/system" / u) for u in UNITS]
    r = subprocess.run(["systemd-analyze", "verify", *units], check=False, capture_output=True, text=True,
                       timeout=60, env={**os.environ,
                                        "MANPATH": str(tmp_path / "usr/share/man")})
    problems = [line for line in (r.stdout + r.stderr).splitlines() if "edge-agent" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr


def test_each_unit_documents_its_own_page() -> None:
    for unit, path in UNITS.items():
        assert f"Documentation=man:{PAGES[unit]}(1)" in path.read_text()


def test_man_pages_follow_the_parsers(tmp_path: Path) -> None:
    """Every command and option of both CLIs is on its page, and man renders it."""
    from edge_agent.cli.main import manual
    from sync.cloud.cli import manual as cloud_manual
    device, cloud = manual(), cloud_manual()
    for cmd in ("run", "status", "install-service", "uninstall-service", "--purge",
                "--version", "approve", "--patch"):
        assert cmd.replace("-", "\\-") in device, cmd  # roff escapes every hyphen
    for cmd in ("run", "uninstall-service", "approve", "--version", "--patch"):
        assert cmd.replace("-", "\\-") in cloud, cmd
    if shutil.which("man"):
        page = tmp_path / "edge-agent.1"
        page.write_text(device)
        r = subprocess.run(["man", "-l", str(page)], check=False, capture_output=True, text=True,
                           timeout=60, env={**os.environ, "MANWIDTH": "100"})
        assert r.returncode == 0 and "uninstall-service" in r.stdout, r.stderr


def test_uninstall_keeps_config_and_data_unless_purged(tmp_path: Path) -> None:
    assert main(["install-service", "--root", str(tmp_path), "--no-reload"]) == 0
    (tmp_path / "var/lib/edge-agent").mkdir(parents=True)
    (tmp_path / "var/lib/edge-agent/edge-agent.db").write_text("")
    assert main(["uninstall-service", "--root", str(tmp_path), "--no-reload"]) == 0
    for f in ("etc/systemd/system/edge-agent.service", "usr/lib/sysusers.d/edge-agent.conf",
              "usr/lib/tmpfiles.d/edge-agent.conf", "usr/share/man/man1/edge-agent.1"):
        assert not (tmp_path / f).exists(), f
    assert (tmp_path / "etc/edge-agent/config.toml").exists()
    assert (tmp_path / "var/lib/edge-agent/edge-agent.db").exists()
    assert main(["uninstall-service", "--root", str(tmp_path), "--no-reload", "--purge"]) == 0
    assert not (tmp_path / "etc/edge-agent").exists()
    assert not (tmp_path / "var/lib/edge-agent").exists()


def test_device_install_lays_out_a_service_that_can_start(tmp_path: Path) -> None:
    """The service user must read its config, ExecStart must name the installed entry point,
    and the device install adds no cloud unit or user."""
    assert main(["install-service", "--root", str(tmp_path), "--no-reload"]) == 0
    config = tmp_path / "etc/edge-agent/config.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    tmpfiles = (tmp_path / "usr/lib/tmpfiles.d/edge-agent.conf").read_text()
    assert "z /etc/edge-agent/config.toml 0640 root edge-agent -" in tmpfiles
    assert "d /etc/edge-agent 0750 root edge-agent -" in tmpfiles
    unit = (tmp_path / "etc/systemd/system/edge-agent.service").read_text()
    exe = re.search(r"^ExecStart=(\S+) run --config /etc/edge-agent/config.toml$", unit, re.M)
    assert exe and Path(exe.group(1)).is_file(), unit
    if exe.group(1).startswith(("/home/", "/root/")):
        assert "ProtectHome=read-only" in unit  # else systemd hides the entry point
    assert not (tmp_path / "etc/systemd/system/edge-agent-cloud.service").exists()
    sysusers = (tmp_path / "usr/lib/sysusers.d/edge-agent.conf").read_text()
    assert "edge-agent-cloud" not in sysusers


def test_cloud_install_is_its_own_command(tmp_path: Path) -> None:
    from sync.cloud.cli import main as cloud_main
    assert cloud_main(["install-service", "--root", str(tmp_path), "--no-reload"]) == 0
    assert (tmp_path / "etc/systemd/system/edge-agent-cloud.service").exists()
    assert "u edge-agent-cloud" in (tmp_path / "usr/lib/sysusers.d/edge-agent-cloud.conf"
                                    ).read_text()
    config = tmp_path / "etc/edge-agent-cloud/cloud.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    assert not (tmp_path / "etc/systemd/system/edge-agent.service").exists()


def test_config_is_given_to_the_service_group(tmp_path: Path) -> None:
    """As root, the config becomes root:GROUP 0640 (here with a group that exists)."""
    import grp
    import os

    from sync.install_root import InstallRoot
    from sync.service_files import _give_to_group
    if os.geteuid() != 0:
        pytest.skip("chown to another group needs root")
    f = tmp_path / "config.toml"
    f.write_text("")
    f.chmod(0o600)
    group = grp.getgrgid(os.getgid()).gr_name
    _give_to_group(InstallRoot("/", create=False), str(f), group)
    st = f.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, os.getgid(), 0o640)


def test_wheel_carries_the_unit_files(tmp_path: Path) -> None:
    """Installed from a wheel, install-service finds its files (they are package data)."""
    import sys
    import zipfile
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                        "-q", "-w", str(tmp_path), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("edge_agent-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "edge_agent-0.1.0.data/data/share/edge-agent/systemd/"
    for f in ("edge-agent.service", "edge-agent.example.toml", "edge-agent.sysusers.conf",
              "edge-agent.tmpfiles.conf", "edge-agent-cloud.service", "cloud.example.toml",
              "edge-agent-runner.service", "edge-agent-runner.example.toml"):
        assert data + f in names, f
    assert "sync/cloud/mosquitto.example.conf" in names
    # one home: no unit travels a second time inside a package
    assert not [n for n in names if n.endswith(".service") and not n.startswith(data)]
    prefix = tmp_path / "prefix"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q",
                        "--no-warn-script-location", "--ignore-installed", "--prefix", str(prefix),
                        str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    site = next(prefix.glob("lib/python*/site-packages"))
    code = ("import sys; from edge_agent.daemon.install import install_service, DEVICE; "
            "assert install_service.__code__.co_filename.startswith(sys.argv[1]); "
            "assert str(DEVICE.source).startswith(sys.argv[3]), DEVICE.source; "
            "print('\\n'.join(install_service(root=sys.argv[2], reload=False)))")
    r = subprocess.run([sys.executable, "-c", code, str(site), str(tmp_path / "root"),
                        str(prefix.resolve() / "share/edge-agent/systemd")],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={**__import__("os").environ, "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "root/etc/edge-agent/config.toml").exists()


def test_the_cloud_runner_installs_as_its_own_service(tmp_path: Path) -> None:
    """`install-service --cloud-runner`: edge-agent-runner runs `cloud-run` on its own
    config, user and state, beside (not instead of) the device's service and man page."""
    assert main(["install-service", "--root", str(tmp_path), "--no-reload"]) == 0
    assert main(["install-service", "--cloud-runner", "--root", str(tmp_path),
                 "--no-reload"]) == 0
    unit = (tmp_path / "etc/systemd/system/edge-agent-runner.service").read_text()
    exe = re.search(r"^ExecStart=(\S+) cloud-run --config /etc/edge-agent-runner/runner.toml "
                    r"\$EDGE_AGENT_RUNNER_ARGS$", unit, re.M)
    assert exe and Path(exe.group(1)).is_file(), unit
    for line in ("User=edge-agent-runner", "StateDirectory=edge-agent-runner",
                 "Environment=EDGE_AGENT_DATA_DIR=/var/lib/edge-agent-runner",
                 "EnvironmentFile=-/etc/edge-agent-runner/runner.env", "Type=notify",
                 "RestartPreventExitStatus=78"):
        assert line in unit, line
    assert "char-ttyUSB" not in unit and "gpiochip" not in unit  # no device I/O in the cloud
    config = tmp_path / "etc/edge-agent-runner/runner.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    assert main(["config", "check", str(config)]) == 0
    sysusers = (tmp_path / "usr/lib/sysusers.d/edge-agent-runner.conf").read_text()
    assert "u edge-agent-runner" in sysusers and "m edge-agent-runner edge-agent-cloud" in \
        sysusers  # reads cloud.toml through the ingest's group, for --cloud-config
    assert main(["uninstall-service", "--cloud-runner", "--root", str(tmp_path),
                 "--no-reload", "--purge"]) == 0
    assert not (tmp_path / "etc/systemd/system/edge-agent-runner.service").exists()
    assert not (tmp_path / "etc/edge-agent-runner").exists()
    assert (tmp_path / "etc/systemd/system/edge-agent.service").exists()
    assert (tmp_path / "usr/share/man/man1/edge-agent.1").exists()  # the device's page stays
