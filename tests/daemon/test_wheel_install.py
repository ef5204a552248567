"""From the built wheel to a laid-out service: the wheel goes into a clean virtualenv with
its core dependencies only (no extras), `install-service --root` lays out both services
there, and a workflow with sync runs on that install with no traceback.

The virtualenv's dependencies come from $EDGE_AGENT_WHEELHOUSE (`pip install --no-index`)
when it is set, else from the package index; the tests skip when neither can serve them."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.broker import Broker
from support.daemon import DaemonProcess, until

ROOT = Path(__file__).resolve().parents[2]
# The clean install must not see this checkout (an egg-info on PYTHONPATH reads as installed).
CLEAN = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
needs_systemd = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("systemd-analyze", "systemd-sysusers", "systemd-tmpfiles")),
    reason="systemd's tools are not installed")


def _pip_install(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    house = os.environ.get("EDGE_AGENT_WHEELHOUSE")
    source = ["--no-index", "--find-links", house] if house else []
    return subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q",
                           "--disable-pip-version-check", *source, *args],
                          check=False, capture_output=True, text=True, timeout=600, env=CLEAN)


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A clean virtualenv holding the wheel and its core dependencies, nothing else."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a copy, so no stale build/ of the checkout finds its way in
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "tmp*", "demo-data", "*.gguf",
        ".*_cache", ".bench-venvs", ".hypothesis"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(tmp), str(src)], check=False, capture_output=True, text=True, timeout=300,
                       env=CLEAN)
    assert r.returncode == 0, r.stderr
    wheel = next(tmp.glob("edge_agent-*.whl"))
    env = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=120)
    r = _pip_install(env, str(wheel))
    if r.returncode != 0:
        pytest.skip(f"the core dependencies could not be installed: {r.stderr[-500:]}")
    yield env


def test_core_install_holds_only_core_dependencies(venv: Path) -> None:
    """The wheel declares what the daemon imports, and extras add only what they name."""
    code = ("import importlib.metadata as m, json; "
            "print(json.dumps(m.requires('edge-agent')))")
    r = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True,
                       timeout=60, check=True, env=CLEAN)
    core: set[str] = set()
    extras: dict[str, set[str]] = {}
    for req in json.loads(r.stdout):
        name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower()  # type: ignore[union-attr]
        extra = re.search(r"extra == \"(\w+)\"", req)
        if extra:
            extras.setdefault(extra.group(1), set()).add(name)
        else:
            core.add(name)
    assert core == {"msgpack", "orjson", "zstandard", "paho-mqtt", "jsonschema",
                    "common-expression-language", "pyserial", "pymodbus",
                    "opentelemetry-proto", "cryptography", "sqlite-utils"}
    assert extras["llm"] == {"llama-cpp-python", "gguf"}
    # the ingest on PostgreSQL, and the web console: an ASGI framework, its server, templates
    assert extras["cloud"] == {"psycopg", "starlette", "uvicorn", "jinja2", "python-multipart",
                               "itsdangerous"}
    assert extras["gpio"] == {"gpiod"}
    assert "telemetry" not in extras  # built in: an empty extra declares nothing
    r = subprocess.run([str(venv / "bin/python"), "-m", "pip", "list", "--format=json"],
                       capture_output=True, text=True, timeout=60, check=True, env=CLEAN)
    names = {p["name"].lower() for p in json.loads(r.stdout)}
    for absent in ("llama-cpp-python", "opentelemetry-sdk", "psycopg", "gpiod",
                   "opentelemetry-exporter-otlp-proto-http", "pytest"):
        assert absent not in names, absent


@needs_systemd
def test_wheel_lays_out_services_that_verify(venv: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    for cmd in ("edge-agent", "edge-agent-cloud"):
        r = subprocess.run([str(venv / "bin" / cmd), "install-service", "--root", str(root),
                            "--no-reload"], check=False, capture_output=True, text=True, timeout=60,
                           cwd=tmp_path, env=CLEAN)
        assert r.returncode == 0, r.stderr
    # What a package's postinst does: users from the sysusers snippets, then tmpfiles.
    subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True)
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create"], check=True,
                   capture_output=True)
    groups = {line.split(":")[0]: int(line.split(":")[2])
              for line in (root / "etc/group").read_text().splitlines()}
    units = root / "etc/systemd/system"
    for name, config in (("edge-agent", "etc/edge-agent/config.toml"),
                         ("edge-agent-cloud", "etc/edge-agent-cloud/cloud.toml")):
        unit = (units / f"{name}.service").read_text()
        exe = re.search(r"^ExecStart=(\S+) run --config (\S+)$", unit, re.MULTILINE)
        assert exe and exe.group(1) == str(venv / "bin" / name), unit
        assert exe.group(2) == f"/{config}"
        assert f"Documentation=man:{name}(1)" in unit
        page = root / f"usr/share/man/man1/{name}.1"
        assert page.read_text().startswith(f'.TH "{name.upper()}" "1"')
        for f in (units / f"{name}.service", page, root / f"usr/lib/sysusers.d/{name}.conf",
                  root / f"usr/lib/tmpfiles.d/{name}.conf"):
            st = f.stat()
            assert (st.st_mode & 0o777) == 0o644, f
            assert st.st_uid == os.geteuid(), f
        st = (root / config).stat()
        assert st.st_mode & 0o777 == 0o640
        cst = (root / config).parent.stat()
        assert cst.st_mode & 0o777 == 0o750
        if os.geteuid() == 0:  # tmpfiles gives them to the service's group
            assert (st.st_uid, st.st_gid) == (0, groups[name])
            assert (cst.st_uid, cst.st_gid) == (0, groups[name])
    # With the man pages installed, verify passes with its man check on.
    r = subprocess.run(["systemd-analyze", "verify", str(units / "edge-agent.service"),
                        str(units / "edge-agent-cloud.service")],
                       check=False, capture_output=True, text=True, timeout=60,
                       env={**CLEAN, "MANPATH": str(root / "usr/share/man")})
    problems = [line for line in (r.stdout + r.stderr).splitlines()
                if "edge-agent" in line and ("Failed" in line or "man" in line)]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
    # uninstall takes the files away and keeps the config until --purge.
    r = subprocess.run([str(venv / "bin/edge-agent"), "uninstall-service", "--root", str(root),
                        "--no-reload"], check=False, capture_output=True, text=True, timeout=60, env=CLEAN)
    assert r.returncode == 0, r.stderr
    assert not (units / "edge-agent.service").exists()
    assert not (root / "usr/share/man/man1/edge-agent.1").exists()
    assert (root / "etc/edge-agent/config.toml").exists()
    assert (root / "var/lib/edge-agent").exists()
    assert (units / "edge-agent-cloud.service").exists()  # the other service is not touched
    r = subprocess.run([str(venv / "bin/edge-agent"), "uninstall-service", "--root", str(root),
                        "--no-reload", "--purge"], check=False, capture_output=True, text=True, timeout=60,
                       env=CLEAN)
    assert r.returncode == 0, r.stderr
    assert not (root / "etc/edge-agent").exists() and not (root / "var/lib/edge-agent").exists()


CONFIG = """
[device]
id = "core-1"
data_dir = "data"
runtime_dir = "run"
[telemetry]
log_format = "json"
[sync]
broker = "127.0.0.1:{port}"
insecure = true
ack_timeout_s = 2
[tools.step]
kind = "command"
argv = ["/bin/echo", "{{n}}"]
params = {{ type = "object", properties = {{ n = {{ type = "string" }} }}, required = ["n"] }}
idempotent = true
timeout_s = 10
[workflows.w]
start = "a"
[workflows.w.nodes.a]
tool = "step"
args = {{ n = "a" }}
next = "done"
[workflows.w.nodes.done]
end = true
"""


def test_core_install_runs_a_workflow_with_sync(venv: Path, tmp_path: Path) -> None:
    """Core dependencies only: the run completes, its records and spans reach the cloud
    ingest (the same wheel's, on SQLite), and SIGTERM ends both with 0 and no traceback."""
    broker = Broker(tmp_path).start()
    (tmp_path / "cloud.toml").write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                                         '[store]\nurl = "sqlite:///cloud.db"\n')
    ingest_log = tmp_path / "ingest.log"
    ingest = subprocess.Popen([str(venv / "bin/edge-agent-cloud"), "run", "--config",
                               str(tmp_path / "cloud.toml")], cwd=tmp_path, env=CLEAN,
                              stdout=ingest_log.open("w"), stderr=subprocess.STDOUT)
    cfg = tmp_path / "config.toml"
    cfg.write_text(CONFIG.format(port=broker.port))
    exe = str(venv / "bin/edge-agent")
    env = CLEAN

    def cli(*args: str) -> dict[str, object]:
        r = subprocess.run([exe, *args, "--config", str(cfg), "--json"], check=False, capture_output=True,
                           text=True, timeout=60, env=env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr
        out: dict[str, object] = json.loads(r.stdout)
        return out

    daemon = DaemonProcess(cfg, tmp_path, env=env, argv=[exe, "run", "--config", str(cfg)],
                           cwd=tmp_path)
    daemon.env = {k: v for k, v in daemon.env.items() if k != "PYTHONPATH"}
    try:
        daemon.start()
        daemon.wait_for("READY=1")
        rid = str(cli("start", "w")["run_id"])
        until(lambda: cli("runs", "show", rid)["status"] == "completed", timeout=30,
              why=daemon.output)

        def synced() -> bool:
            streams = cli("status")["sync"]["streams"]  # type: ignore[index]
            return bool(streams) and all(s["pending"] == 0 and s["acked_seq"] > 0
                                         for s in streams.values()
                                         if s["acked_seq"] or s["pending"])
        until(synced, timeout=30, why=daemon.output)
        streams = cli("status")["sync"]["streams"]  # type: ignore[index]
        assert streams["traces"]["acked_seq"] > 0, streams  # spans were recorded and sent
        daemon.signal(signal.SIGTERM)
        assert daemon.proc is not None
        assert daemon.proc.wait(30) == 0, daemon.output()
        ingest.send_signal(signal.SIGTERM)
        assert ingest.wait(30) == 0, ingest_log.read_text()
    finally:
        daemon.close()
        if ingest.poll() is None:
            ingest.kill()
            ingest.wait()
        broker.kill()
    assert "Traceback" not in daemon.log.read_text(), daemon.output()
    assert "Traceback" not in ingest_log.read_text(), ingest_log.read_text()


MODEL_CONFIG = """
[device]
id = "core-2"
data_dir = "data"
runtime_dir = "run"
[model.small]
path = "small.gguf"
[agents.helper]
model = "small"
[workflows.w]
start = "ask"
[workflows.w.nodes.ask]
agent = "helper"
next = "done"
[workflows.w.nodes.done]
end = true
"""
WARNING = ("model.small: local model 'small' is unavailable, llama-cpp-python is not "
           "installed: install edge-agent[llm]")


def test_core_install_names_the_extra_a_command_needs(venv: Path, tmp_path: Path) -> None:
    """Core only: make-test-model says to install edge-agent[llm] (numpy and gguf come
    with it), the cloud's status on PostgreSQL says edge-agent[cloud], the demo module
    imports without the dev extra's trustme; never a traceback."""
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=CLEAN,
                              cwd=tmp_path, check=False)
    r = run(str(venv / "bin/edge-agent"), "model", "make-test-model", "m.gguf")
    assert r.returncode == 69 and "install edge-agent[llm]" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "m.gguf").exists()
    (tmp_path / "cloud.toml").write_text('[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n'
                                         '[store]\nurl = "postgresql://fleet@127.0.0.1:1/f"\n')
    for extra in ([], ["--json"]):
        r = run(str(venv / "bin/edge-agent-cloud"), "status", "--config", "cloud.toml", *extra)
        assert r.returncode == 78 and "install edge-agent[cloud]" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = run(str(venv / "bin/python"), "-c", "import edge_agent.demo")
    assert r.returncode == 0, r.stderr


def test_core_install_warns_of_a_local_model_it_cannot_run(venv: Path, tmp_path: Path) -> None:
    """A configured local model without llama-cpp-python: `config check` and the daemon's
    start warn, naming the model and the extra; status shows the model unavailable."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(MODEL_CONFIG)
    (tmp_path / "small.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64)
    exe = str(venv / "bin/edge-agent")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([exe, *args, "--config", str(cfg)], capture_output=True,
                              text=True, timeout=60, env=CLEAN, cwd=tmp_path, check=False)
    r = cli("config", "check")
    assert r.returncode == 0 and f"warning: {WARNING}" in r.stdout, r.stdout + r.stderr
    assert json.loads(cli("config", "check", "--json").stdout)["warnings"] == [WARNING]
    def shows_unavailable() -> None:
        status = json.loads(cli("status", "--json").stdout)
        assert status["models"] == ["small"]
        assert "install edge-agent[llm]" in status["models_unavailable"]["small"], status
        assert "small (UNAVAILABLE: llama-cpp-python" in cli("status").stdout
    shows_unavailable()  # read from the database, the daemon down
    daemon = DaemonProcess(cfg, tmp_path, argv=[exe, "run", "--config", str(cfg)],
                           cwd=tmp_path)
    daemon.env = {k: v for k, v in daemon.env.items() if k != "PYTHONPATH"}
    try:
        daemon.start()
        daemon.wait_for("READY=1")
        assert WARNING in daemon.output()
        shows_unavailable()  # the daemon's word
        daemon.signal(signal.SIGTERM)
        assert daemon.proc is not None and daemon.proc.wait(30) == 0, daemon.output()
    finally:
        daemon.close()
