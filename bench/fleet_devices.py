"""Simulated devices for `bench.fleet`: protocol 2 peers, many devices per connection.

Multiplexing: each process serves a slice of the fleet over a few MQTT connections; each
connection publishes the batches of its devices on their own `edge/<device>/up` topics and
subscribes to each of their `ack` topics (so the broker and the cloud see 1,000 distinct
devices, while the machine holds a few dozen sockets). A simulated device follows the
device rules of sync/PROTOCOL.md: a window of batches, acks only by digest, a batch sent
again unchanged when no ack answered it within the timeout or after a reconnect.

Protocol on stdin/stdout with the coordinator: prints `ready` once subscribed, waits for a
line on stdin, then runs and prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field

import msgpack
import paho.mqtt.client as mqtt

from sync.acks import decode_ack
from sync.envelope import EnvelopeError, WireRecord, batch_digest, encode_batch
from sync.mqtt import make_client
from sync.outbox import STREAMS

STEPS_PER_RUN = 10


def run_record(device: str, seq: int, records: int) -> WireRecord:
    """The checkpoint records of runs of STEPS_PER_RUN steps, as a device writes them
    (msgpack maps): run.started, step.completed ..., run.finished; about 100 bytes each."""
    run, step = divmod(seq - 1, STEPS_PER_RUN)
    now = time.time()
    rec: dict[str, object] = {"run_id": f"{device}-r{run}", "workflow": "bench",
                              "node": f"n{step}", "ts": now}
    if step == 0:
        kind = "run.started"
    elif step == STEPS_PER_RUN - 1 or seq == records:
        kind = "run.finished"
        rec.update(visit=1, attempt=1, status="completed", run_status="completed")
    else:
        kind = "step.completed"
        rec.update(visit=1, attempt=1, status="completed", next=f"n{step + 1}", output=step)
    return WireRecord(seq, kind, msgpack.packb(rec), now)


@dataclass
class SimFlight:
    payload: bytes
    last: int
    sent_at: float
    answered: bool = False


@dataclass
class SimDevice:
    name: str
    epoch: str
    records: int
    flights: dict[str, SimFlight] = field(default_factory=dict)  # by digest
    acked: int = 0
    done_at: float | None = None


class Connection:
    def __init__(self, port: int, devices: list[SimDevice], batch: int, timeout: float,
                 compress: bool) -> None:
        self.devices = {d.name: d for d in devices}
        self.batch, self.timeout, self.compress = batch, timeout, compress
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.resends = self.ignored = 0
        self.client = make_client(f"sim-{os.getpid()}-{devices[0].name}")
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: mqtt.Client, *a: object) -> None:
        client.subscribe([(f"edge/{name}/ack", 1) for name in self.devices])
        with self.lock:  # a reconnect: what no ack answered may be lost
            for d in self.devices.values():
                for f in d.flights.values():
                    if not f.answered:
                        f.sent_at = float("-inf")
        self.ready.set()

    def start(self) -> None:
        for d in self.devices.values():
            for first in range(1, d.records + 1, self.batch):
                recs = [run_record(d.name, i, d.records)
                        for i in range(first, min(d.records, first + self.batch - 1) + 1)]
                payload = encode_batch(d.name, "checkpoints", d.acked, recs, epoch=d.epoch,
                                       compress=self.compress)  # floor: nothing dropped
                with self.lock:
                    d.flights[batch_digest(recs)] = SimFlight(payload, recs[-1].seq,
                                                              time.monotonic())
                self.client.publish(f"edge/{d.name}/up", payload, qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        name = msg.topic.split("/")[1]
        d = self.devices.get(name)
        try:
            ack = decode_ack(bytes(msg.payload), STREAMS)
        except EnvelopeError:
            self.ignored += 1
            return
        with self.lock:
            f = d.flights.get(ack.digest) if d is not None and ack.epoch == d.epoch else None
            if d is None or f is None:
                self.ignored += 1
                return
            f.answered = True
            high = max(x.last for x in d.flights.values())
            d.acked = max(d.acked, min(ack.watermark, high))
            for k in [k for k, x in d.flights.items() if x.last <= d.acked]:
                del d.flights[k]
            if d.acked >= d.records and d.done_at is None:
                d.done_at = time.time()

    def tick(self) -> None:
        now = time.monotonic()
        due = []
        with self.lock:
            for d in self.devices.values():
                for f in d.flights.values():
                    if not f.answered and now - f.sent_at > self.timeout:
                        f.sent_at = now
                        due.append((d.name, f.payload))
        for name, payload in due:
            self.resends += 1
            self.client.publish(f"edge/{name}/up", payload, qos=1)

    def done(self) -> bool:
        return all(d.done_at is not None for d in self.devices.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--ack-timeout", type=float, default=10.0)
    ap.add_argument("--deadline", type=float, default=300.0)
    ap.add_argument("--compress", action="store_true")
    a = ap.parse_args()
    fleet = [SimDevice(f"sim-{i:05d}", os.urandom(8).hex(), a.records)
             for i in range(a.first, a.first + a.devices)]
    per = -(-len(fleet) // a.connections)
    conns = [Connection(a.port, fleet[i:i + per], a.batch, a.ack_timeout, a.compress)
             for i in range(0, len(fleet), per)]
    for c in conns:
        c.ready.wait(30)
    print("ready", flush=True)
    sys.stdin.readline()
    started = time.time()
    threads = [threading.Thread(target=c.start) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = time.monotonic() + a.deadline
    while not all(c.done() for c in conns) and time.monotonic() < end:
        time.sleep(0.05)
        for c in conns:
            c.tick()
    done = [d.done_at for d in fleet if d.done_at is not None]
    print(json.dumps({"started": started, "finished": max(done) if done else None,
                      "devices_done": len(done), "devices": len(fleet),
                      "resends": sum(c.resends for c in conns),
                      "ignored_acks": sum(c.ignored for c in conns)}), flush=True)
    for c in conns:
        c.client.disconnect()
        c.client.loop_stop()


if __name__ == "__main__":
    main()
