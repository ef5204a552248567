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
