"""The whole loop with real processes: daemon, broker, `edge-agent-cloud run`, and its CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.daemon import DaemonProcess, cli, cli_json
from support.secure_broker import SecureBroker

CLOUD = str(Path(sys.executable).parent / "edge-agent-cloud")


def cloud(cfg: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([CLOUD, *args, "--config", str(cfg)], capture_output=True, text=True,
                       timeout=60)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def secure_configs(tmp_path: Path, secure: SecureBroker, device: str,
                   workflows: str = "") -> tuple[Path, Path]:
    """The secure configuration: TLS client certificates on the shipped broker config and
    ACL, a signing key made by `keys init`, the device pinning its public key, and the
    device's own key (`sync init-key`) in the cloud's keyring, required."""
    cloud_id, dev_id = secure.identity("cloud", cloud=True), secure.identity(device)
    cloud_cfg = tmp_path / "cloud.toml"
    cloud_cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{cloud_id.port}"\n'
                         f'topic_prefix = "{secure.cloud_prefix}"\n'
                         f'tls = {{ ca = "{cloud_id.ca}", cert = "{cloud_id.cert}", '
                         f'key = "{cloud_id.key}" }}\n[store]\nurl = "sqlite:///cloud.db"\n'
                         '[signing]\nkey = "keys/signing.key"\n')
    public = cloud(cloud_cfg, "keys", "init").stdout.strip()
    device_cfg = tmp_path / "config.toml"
    device_cfg.write_text(f"""
[device]
id = "{device}"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{dev_id.port}"
cloud_keys = ["{public}"]
device_key = "device.key"
ack_timeout_s = 2
[sync.tls]
ca = "{dev_id.ca}"
cert = "{dev_id.cert}"
key = "{dev_id.key}"
{workflows}""")
    device_public = cli(device_cfg, "sync", "init-key").stdout.strip()  # seals its batches
    (tmp_path / "device-keys.toml").write_text(f'"{device}" = ["{device_public}"]\n')
    with cloud_cfg.open("a") as f:
        f.write('device_keys = "device-keys.toml"\nrequire_device_keys = true\n')
    return cloud_cfg, device_cfg


GATED = """
[workflows.gated]
start = "gate"
[workflows.gated.nodes.gate]
approval = { prompt = "Ship it?" }
next = "done"
[workflows.gated.nodes.done]
end = true
"""


def test_device_to_cloud_and_back(tmp_path: Path) -> None:
    secure = SecureBroker(tmp_path).start()
    cloud_cfg, device_cfg = secure_configs(tmp_path, secure, "press-7", GATED)
    ingest = subprocess.Popen([CLOUD, "run", "--config", str(cloud_cfg)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    daemon = DaemonProcess(device_cfg, tmp_path)
    try:
        daemon.start()
        daemon.wait_for("READY=1")
        # the cloud starts a run, then approves its gate, waiting for the device's word
        out = cloud(cloud_cfg, "start", "--device", "press-7", "gated", "--input",
                    '{"lot": 3}', "--wait", "--json").stdout.splitlines()
        started = json.loads(out[-1])
        assert started["state"] == "confirmed"
        run_id = started["result"]["result"]["run_id"]
        deadline = time.time() + 20
        while run_id not in cloud(cloud_cfg, "approvals").stdout:  # the cloud saw the gate
            assert time.time() < deadline
            time.sleep(0.2)
        r = cloud(cloud_cfg, "approve", "--device", "press-7", run_id, "--note", "ok from HQ",
                  "--wait")
        assert "confirmed" in r.stdout
        while cli_json(device_cfg, "runs", "show", run_id)["status"] != "completed":
            assert time.time() < deadline
            time.sleep(0.1)
        shown = cli_json(device_cfg, "runs", "show", run_id)
        assert shown["context"]["gate"]["origin"] == "cloud"
        assert shown["input"] == {"lot": 3}
        # a second approve has nothing to answer: the cloud sees no gate open and sends
        # nothing; named explicitly, the device answers why
        again = cloud(cloud_cfg, "approve", "--device", "press-7", run_id, "--wait",
                      check=False)
        assert again.returncode == 1 and "sees no pending approval" in again.stderr
        again = cloud(cloud_cfg, "approve", "--device", "press-7", run_id, "--wait",
                      "--approval", "1", check=False)
        assert again.returncode == 1 and "no pending approval" in again.stdout
        # in sync: nothing pending on the device, the cloud holds every record
        while True:
            st = cli_json(device_cfg, "status")
            if st["sync"]["connected"] and all(
                    s["pending"] == 0 for s in st["sync"]["streams"].values()):
                break
            assert time.time() < deadline + 10
            time.sleep(0.2)
        fleet = json.loads(cloud(cloud_cfg, "status", "--json").stdout)
        dev = fleet["devices"][0]
        assert dev["device_id"] == "press-7" and dev["online"] is True
        assert isinstance(dev["last_seen"], str) and dev["last_seen"].endswith("Z")
        for name, s in dev["streams"].items():
            assert s["received_seq"] == s["acked_seq"] == \
                st["sync"]["streams"][name]["acked_seq"]
        assert dev["streams"]["checkpoints"]["received_seq"] >= 4
        assert st["sync"]["downlink"] == {"signed": True, "rejected": {}}  # all opened
        # the device goes away: its last will marks it offline
        daemon.kill()
        while json.loads(cloud(cloud_cfg, "status", "--json").stdout)["devices"][0]["online"]:
            assert time.time() < deadline + 60
            time.sleep(0.5)
    finally:
        daemon.close()
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(10)
        except subprocess.TimeoutExpired:
            ingest.kill()
        secure.kill()


def test_cloud_config_errors_exit_78(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('[mqtt]\nbroker = "nohost"\nfoo = 1\n[store]\nurl = "mysql://x"\n')
    r = cloud(cfg, "status", check=False)
    assert r.returncode == 78
    assert "mqtt.broker: must be host:port (got 'nohost')" in r.stderr
    assert "mqtt.foo: unknown key" in r.stderr and "store.url" in r.stderr
    assert os.path.exists(tmp_path / "cloud.toml")


def test_cloud_collections_rules_are_checked(tmp_path: Path) -> None:
    from sync.cloud.config import load_cloud_config
    cfg = tmp_path / "cloud.toml"
    base = '[mqtt]\nbroker = "127.0.0.1:1883"\ninsecure = true\n[store]\nurl = "sqlite:///c.db"\n'
    cfg.write_text(base + '[collections.notes]\ndefault = "manual"\n'
                          '[collections.notes.fields]\ncount = "counter"\n')
    loaded = load_cloud_config(cfg)
    assert loaded.collections["notes"].rule("text") == "manual"
    assert loaded.collections["notes"].rule("count") == "counter"
    cfg.write_text(base + '[collections.notes]\ndefault = "newest"\n')
    r = cloud(cfg, "status", check=False)
    assert r.returncode == 78 and "collections.notes" in r.stderr and "newest" in r.stderr


def test_a_relative_sqlite_url_is_the_configs_folder_and_a_missing_one_exits_78(
        tmp_path: Path) -> None:
    """Observation 8's config part: `sqlite:///cloud.db` is next to cloud.toml whatever the
    working directory; a directory that does not exist is a config error, not a traceback."""
    conf = tmp_path / "etc"
    conf.mkdir()
    cfg = conf / "cloud.toml"
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1883"\ninsecure = true\n[store]\nurl = "sqlite:///cloud.db"\n')
    r = subprocess.run([CLOUD, "status", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (conf / "cloud.db").exists() and not (tmp_path / "cloud.db").exists()
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1883"\ninsecure = true\n[store]\nurl = "sqlite:///no/c.db"\n')
    r = subprocess.run([CLOUD, "status", "--config", str(cfg)], capture_output=True,
                       text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 78
    assert "store.url: the directory" in r.stderr and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


HANDOFF = """
[tools.local_review]
kind = "command"
argv = ["./local_review.sh"]
params = { type = "object", properties = {} }
[workflows.inspect]
start = "review"
[workflows.inspect.nodes.review]
handoff = "cloud:reviewer"
input = "input"
timeout_s = 30
fallback = "local"
next = "done"
[workflows.inspect.nodes.local]
tool = "local_review"
next = "done"
[workflows.inspect.nodes.done]
end = true
"""


def test_a_handoff_result_comes_down_signed(tmp_path: Path) -> None:
    """A step handed to the cloud on the secure configuration: the result is sealed by
    the cloud's signing key and opened by the device (see test_cloud_handoff.py)."""
    secure = SecureBroker(tmp_path).start()
    cloud_cfg, device_cfg = secure_configs(tmp_path, secure, "press-7", HANDOFF)
    with cloud_cfg.open("a") as f:
        f.write('[handoffs]\nreviewer = "cloud_tools:review"\n')
    script = tmp_path / "local_review.sh"
    script.write_text('#!/bin/sh\necho \'{"by": "local"}\'\n')
    script.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])}
    ingest = subprocess.Popen([CLOUD, "run", "--config", str(cloud_cfg)], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    daemon = DaemonProcess(device_cfg, tmp_path)
    try:
        daemon.start()
        daemon.wait_for("READY=1")
        rid = cli_json(device_cfg, "start", "inspect", "--input",
                       '{"id": "s1", "doc": "signed"}')["run_id"]
        deadline = time.time() + 40
        while (run := cli_json(device_cfg, "runs", "show", rid))["status"] not in (
                "completed", "failed"):
            assert time.time() < deadline, run
            time.sleep(0.2)
        assert run["status"] == "completed", run
        assert run["output"]["review"]["by"] == "cloud-reviewer"
        downlink = cli_json(device_cfg, "status")["sync"]["downlink"]
        assert downlink == {"signed": True, "rejected": {}}  # opened, none refused
    finally:
        daemon.close()
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(10)
        except subprocess.TimeoutExpired:
            ingest.kill()
        secure.kill()
