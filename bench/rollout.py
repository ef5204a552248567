"""A rollout to 1,000 simulated devices: time from `edge-agent-cloud deploy` to every device
applied in the cloud store, through a real broker and a real `edge-agent-cloud run` (its
wave driver sends the signed-off commands; the ingest records each `deploy.result`).

Simulated devices (10 MQTT connections of 100 devices each, in this process) answer each
`deploy` command on their `cmd` topic with a protocol 2 batch on their `up` topic carrying
one `deploy.result` record, as a device does after its config check and apply; what a real
device spends checking and reloading is not in the figure. One wave (`--waves 100%`);
the SQLite store (the ingest's embedded default). Loopback only.

Run: python -m bench.rollout [--devices 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.broker import Broker

from sync.envelope import WireRecord, decode_command, encode_batch
from sync.mqtt import make_client

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
FRAGMENT = '[workflows.w]\nstart = "done"\n[workflows.w.nodes.done]\nend = true\n'
PER_CONNECTION = 100


class Devices:
    """Many simulated devices on one connection: each answers a deploy with its result."""

    def __init__(self, port: int, names: list[str]) -> None:
        self.names = names
        self.epochs = {n: secrets.token_hex(8) for n in names}
        self.seqs = dict.fromkeys(names, 0)
        self.ready = threading.Event()
        self.answered = 0
        self.client = make_client(f"sim-{names[0]}")
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = lambda c, *a: c.subscribe([(f"edge/{n}/cmd", 1)
                                                             for n in names])
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        device = msg.topic.split("/")[1]
        cmd = decode_command(bytes(msg.payload))
        a = cmd.args
        self.seqs[device] += 1
        result = msgpack.packb({"deployment": a["deployment"], "device": device,
                                "action": "apply", "status": "applied", "digest": a["sha256"],
                                "previous": "local", "at": time.time()})
        batch = encode_batch(device, "control", self.seqs[device] - 1, [WireRecord(
            self.seqs[device], "deploy.result", result, time.time())],
            epoch=self.epochs[device])
        client.publish(f"edge/{device}/up", batch, qos=1)
        self.answered += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=1000)
    args = ap.parse_args()
    from sync.cloud import deployments
    from sync.cloud.store import SqlCloudStore
    names = [f"sim-{i:04d}" for i in range(args.devices)]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Broker(tmp).start()
        cfg = tmp / "cloud.toml"
        cfg.write_text(f'[mqtt]\nbroker = "127.0.0.1:{broker.port}"\ninsecure = true\n'
                       f'[store]\nurl = "sqlite:///{tmp / "cloud.db"}"\n'
                       f'[groups]\nfleet = {json.dumps(names)}\n')
        (tmp / "fragment.toml").write_text(FRAGMENT)
        ingest = subprocess.Popen([sys.executable, "-m", "sync.cloud.cli", "run", "--config",
                                   str(cfg)], env=ENV, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        sims = [Devices(broker.port, names[i:i + PER_CONNECTION])
                for i in range(0, len(names), PER_CONNECTION)]
        store = None
        try:
            for s in sims:
                assert s.ready.wait(30), "simulated devices did not subscribe"
            store = SqlCloudStore(f"sqlite:///{tmp / 'cloud.db'}")
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "sync.cloud.cli", "deploy",
                                str(tmp / "fragment.toml"), "--group", "fleet", "--waves",
                                "100%", "--bake", "60s", "--json", "--config", str(cfg)],
                               env=ENV, capture_output=True, text=True, check=True)
            dep_id = json.loads(r.stdout)["id"]
            deadline = time.time() + 300
            while True:
                shown = deployments.deployment(store, dep_id)
                assert shown is not None
                applied = sum(1 for x in shown["devices"] if x["state"] == "applied")
                if applied == len(names):
                    break
                assert time.time() < deadline, f"{applied} of {len(names)} applied"
                time.sleep(0.25)  # each look is a write-locked read of the SQLite store
            took = time.perf_counter() - t0
        finally:
            for s in sims:
                s.close()
            if store is not None:
                store.close()
            ingest.terminate()
            ingest.wait(10)
            broker.kill()
    print(f"rollout to {len(names)} devices: deploy to all applied in {took:.2f} s "
          f"({len(names) / took:,.0f} devices/s)")
    print(json.dumps({"devices": len(names), "deploy_to_all_applied_s": took,
                      "devices_per_s": len(names) / took}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
