"""`make deb`: a Debian package of the device side whose wheels install without network, with
the unit pointing at the virtualenv its postinst makes, and maintainer scripts that parse."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLEAN = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")


def _bare_python() -> str:
    """The interpreter this virtualenv was made from: none of the project's dependencies,
    as the Makefile's PYTHON usually is."""
    return getattr(sys, "_base_executable", sys.executable)


def test_make_deb_as_written_with_a_bare_interpreter(tmp_path: Path) -> None:
    """`make deb` ran manpages.py with the interpreter the Makefile picked, which has no
    dependencies (`No module named 'cel'`); the man page now comes from a scratch virtualenv
    made from the package's own wheels. `dpkg-deb -c` lists what the package installs."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "tmp*", "demo-data",
        "*.gguf", ".*_cache", ".bench-venvs", ".hypothesis"))
    bare = _bare_python()
    r = subprocess.run(["make", "deb", f"PYTHON={bare}"], cwd=src, env={
        **CLEAN, "DEB_OUT": str(tmp_path / "out")}, capture_output=True, text=True,
        timeout=900, check=False)
    _skip_offline(r)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    deb = next((tmp_path / "out").glob("edge-agent_*.deb"))
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    for f in ("./lib/systemd/system/edge-agent.service", "./usr/lib/sysusers.d/edge-agent.conf",
              "./usr/lib/tmpfiles.d/edge-agent.conf", "./usr/share/man/man1/edge-agent.1.gz",
              "./usr/share/doc/edge-agent/examples/config.toml"):
        assert f in listing, f
    assert "./usr/share/edge-agent/wheels/edge_agent-" in listing
    assert "manvenv" not in listing and not (src / "build/deb/manvenv").exists()


def _skip_offline(r: subprocess.CompletedProcess[str]) -> None:
    offline = ("No matching distribution", "Could not find a version", "Failed to establish",
               "Network is unreachable", "Temporary failure in name resolution")
    if r.returncode != 0 and any(m in r.stderr for m in offline):
        pytest.skip(f"the dependencies' wheels could not be fetched: {r.stderr[-300:]}")


POSTINST_STUBS = {
    "python": 'if [ "$1" = -m ] && [ "$2" = venv ]; then mkdir -p "$3/bin";'
              ' printf "#!/bin/sh\\nexit 0\\n" > "$3/bin/pip"; chmod +x "$3/bin/pip"; fi',
    "install": "exit 0", "systemctl": "exit 0",
}


@pytest.mark.parametrize("failing, says", [("systemd-sysusers", "could not create the edge-agent"),
                                           ("systemd-tmpfiles", "could not make /var/lib")])
def test_postinst_fails_loudly_when_sysusers_or_tmpfiles_fail(
        tmp_path: Path, failing: str, says: str) -> None:
    """They were `|| true`: the package configured, with no user for the unit to run as.
    Run in a mount namespace of its own with /opt on a tmpfs (postinst remakes
    /opt/edge-agent), the tools it calls replaced by stubs on PATH."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True, check=False).returncode != 0:
        pytest.skip("needs a mount namespace (unshare -m)")
    py = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    script = tmp_path / "postinst"
    script.write_text((ROOT / "scripts/deb/postinst").read_text().replace("@PYTHON@", py))
    stubs = tmp_path / "bin"
    stubs.mkdir()
    bodies = {**POSTINST_STUBS, py: POSTINST_STUBS["python"], "systemd-sysusers": "exit 0",
              "systemd-tmpfiles": "exit 0", failing: "echo stub failure >&2; exit 1"}
    bodies.pop("python")
    for name, body in bodies.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    mount = 'mount -t tmpfs none /opt && exec sh "$0" configure'
    r = subprocess.run(["unshare", "-m", "sh", "-c", mount, str(script)], capture_output=True,
                       text=True, timeout=60, check=False,
                       env={**CLEAN, "PATH": f"{stubs}:{os.environ['PATH']}"})
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert says in r.stderr and "dpkg --configure edge-agent" in r.stderr


def test_deb_carries_what_postinst_needs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "tmp*", "demo-data",
        "*.gguf", ".*_cache", ".bench-venvs", ".hypothesis"))
    r = subprocess.run(["sh", "scripts/build-deb.sh", sys.executable], cwd=src, env={
        **CLEAN, "DEB_OUT": str(tmp_path / "out")}, capture_output=True, text=True,
        timeout=600, check=False)
    _skip_offline(r)
    assert r.returncode == 0, r.stderr
    deb = next((tmp_path / "out").glob("edge-agent_*.deb"))
    info = subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True,
                          check=True).stdout
    py = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    assert "Package: edge-agent" in info and f"Depends: {py}, {py}-venv, systemd" in info
    tree = tmp_path / "tree"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    unit = (tree / "lib/systemd/system/edge-agent.service").read_text()
    assert "ExecStart=/opt/edge-agent/bin/edge-agent run --config /etc/edge-agent/config.toml" \
        in unit
    assert gzip.decompress((tree / "usr/share/man/man1/edge-agent.1.gz").read_bytes()
                           ).startswith(b'.TH "EDGE-AGENT" "1"')
    for f in ("usr/lib/sysusers.d/edge-agent.conf", "usr/lib/tmpfiles.d/edge-agent.conf",
              "usr/share/doc/edge-agent/examples/config.toml"):
        assert (tree / f).is_file(), f
    for script in ("postinst", "prerm", "postrm"):
        path = tree / "DEBIAN" / script
        assert os.access(path, os.X_OK)
        assert "@PYTHON@" not in path.read_text()
        subprocess.run(["sh", "-n", str(path)], check=True)
    # what postinst does, into a scratch virtualenv: the carried wheels suffice, offline
    wheels = tree / "usr/share/edge-agent/wheels"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=CLEAN)
    r = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--no-index", "--find-links",
                        str(wheels), "edge-agent[gpio]"], capture_output=True, text=True,
                       timeout=600, env=CLEAN, check=False)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(venv / "bin/edge-agent"), "--version"], capture_output=True,
                       text=True, env=CLEAN, timeout=60, check=False)
    assert r.returncode == 0 and r.stdout.startswith("edge-agent "), r.stderr
