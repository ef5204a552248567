"""A cloud CLI command that sends and waits (`approve --wait`, `doc set --wait`) is a
sender only: it never joins the ingest's shared subscription, where the broker would hand
it uplink batches that nobody processes (a device's records lost until a resend happened
to reach a real worker; seen as a command never confirmed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from support.broker import Broker
from support.syncrig import ingest

from sync.cloud.cli import main as cloud_main


def test_a_waiting_cli_takes_no_uplink_from_the_workers(tmp_path: Path, broker: Broker) -> None:
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port)
    worker.start()
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                   '[store]\nurl = "sqlite:///cloud.db"\n')
    codes: list[int] = []
    cli = threading.Thread(target=lambda: codes.append(cloud_main(
        ["cancel", "--config", str(cfg), "--device", "d1", "r1", "--wait", "--timeout", "4"])))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw-device",
                      protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        assert worker.connected.wait(10)
        cli.start()
        time.sleep(1.0)  # the CLI is connected and waiting for its confirmation
        for i in range(40):  # each is handled by a worker: stored or quarantined, counted
            pub.publish("edge/d1/up", f"not a batch {i}".encode(), qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 20
        while sum(worker.rejected.values()) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(worker.rejected.values()) == 40, worker.rejected
        cli.join(15)
        assert codes == [2]  # no device answered: the wait ran out, as it says
    finally:
        pub.loop_stop()
        pub.disconnect()
        cli.join(15)
        worker.shutdown()
        store.close()


def test_a_broker_that_cannot_be_reached_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    """`edge-agent-cloud approve|start ... --json` with the broker down: exit 1 and a JSON
    error on stderr, as the README's CLI section says, for one device and for a group."""
    import json
    import os
    import socket
    import subprocess
    import sys
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{port}"\ninsecure = true\n'
                   '[store]\nurl = "sqlite:///cloud.db"\n[groups]\nline-a = ["d1", "d2"]\n')
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": root}
    for words in (["approve", "--device", "d1", "r1", "--approval", "1"],
                  ["start", "w", "--group", "line-a"]):
        r = subprocess.run([sys.executable, "-m", "sync.cloud.cli", *words, "--config",
                            str(cfg), "--json"], capture_output=True, text=True, env=env,
                           timeout=60)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        err = json.loads(r.stderr)
        assert err["exit_code"] == 1 and "cannot reach the broker" in err["error"]


def test_keys_init_over_an_existing_key_is_a_json_error_under_json(tmp_path: Path) -> None:
    """`edge-agent-cloud keys init --config cloud.toml --json` twice: the second exits 73
    with a JSON error on stderr (errors under --json are JSON objects, as for every command)."""
    import contextlib
    import io
    import json
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1883"\ninsecure = true\n'
                   '[store]\nurl = "sqlite:///cloud.db"\n[signing]\nkey = "signing.key"\n')
    words = ["keys", "init", "--config", str(cfg), "--json"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cloud_main(words) == 0
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cloud_main(words) == 73
    assert json.loads(err.getvalue())["exit_code"] == 73
