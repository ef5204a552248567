"""Downlink commands apply exactly once; TLS client certificates and ACLs isolate devices."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.broker import Broker
from support.secure_broker import SecureBroker
from support.syncrig import device_db, edge, ingest

from sync.envelope import Command, encode_command
from sync.mqtt import Topics, make_client
from sync.signing import Opener, Sealer, public_key_text


def test_commands_apply_once_and_confirm(tmp_path: Path, broker: Broker, cloud_url: str) -> None:
    db = tmp_path / "device.db"
    device_db(db)
    applied: list[str] = []

    def handler(conn: sqlite3.Connection, cmd: Command) -> dict[str, Any]:
        if cmd.args.get("explode"):
            raise ValueError("no such run")
        applied.append(cmd.id)
        return {"seen": cmd.args["run_id"]}
    worker, store = ingest(cloud_url, broker.port)
    worker.start()
    e = edge(db, broker.port, handler=handler)
    e.start()
    try:
        deadline = time.time() + 10
        while not (e.connected and worker.connected.is_set()):
            assert time.time() < deadline
            time.sleep(0.05)
        cid = worker.send_command("dev-a", "approve", {"run_id": "r1"}, wait_s=5)
        bad = worker.send_command("dev-a", "cancel", {"run_id": "x", "explode": True}, wait_s=5)
        # the same command delivered twice (a redelivery) and garbage on the topic
        raw = make_client("cloud-raw")
        raw.connect("127.0.0.1", broker.port)
        raw.loop_start()
        raw.publish(Topics("edge", "dev-a").cmd, encode_command(Command(cid, "approve", {
            "run_id": "r1"})), qos=1).wait_for_publish(5)
        raw.publish(Topics("edge", "dev-a").cmd, b"\xc1garbage", qos=1).wait_for_publish(5)
        raw.publish(Topics("edge", "dev-a").cmd, encode_command(Command("c9", "reboot", {})),
                    qos=1).wait_for_publish(5)
        while (store.command(cid) or {}).get("state") != "confirmed" or \
                (store.command(bad) or {}).get("state") != "failed":
            assert time.time() < deadline + 10
            time.sleep(0.05)
        time.sleep(0.3)
        assert applied == [cid]
        assert store.command(cid)["result"]["result"] == {"seen": "r1"}
        assert "no such run" in store.command(bad)["result"]["error"]
        assert e.stats.commands_duplicate == 1
        assert e.stats.rejected["cmd:bad_msgpack"] == 1 and e.stats.rejected["cmd:bad_type"] == 1
        raw.disconnect()
        raw.loop_stop()
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[SecureBroker]:
    """The shipped broker config and ACL (support/secure_broker.py)."""
    with SecureBroker(tmp_path) as b:
        yield b


def tls_client(broker: SecureBroker, ident: str, got: list[tuple[str, bytes]],
               cloud: bool = False) -> mqtt.Client:
    who = broker.identity(ident, cloud=cloud)
    c = make_client(f"{ident}-{time.time_ns()}", **who.tls())
    # Mosquitto 2.0.11 leaves the mount point on delivered topics (fixed in 2.0.12)
    c.on_message = lambda cl, u, m: got.append((m.topic.removeprefix("fleet/"),
                                                bytes(m.payload)))
    c.connect("127.0.0.1", who.port)
    c.loop_start()
    return c


def test_tls_and_acl_confine_each_device(secure_broker: SecureBroker) -> None:
    broker = secure_broker
    up = broker.cloud_prefix
    seen_by_b: list[tuple[str, bytes]] = []
    seen_by_a: list[tuple[str, bytes]] = []
    seen_by_cloud: list[tuple[str, bytes]] = []
    b = tls_client(broker, "dev-b", seen_by_b)
    a = tls_client(broker, "dev-a", seen_by_a)
    cloud = tls_client(broker, "cloud", seen_by_cloud, cloud=True)
    try:
        time.sleep(0.5)
        b.subscribe([("edge/dev-b/cmd", 1)])
        a.subscribe([("edge/dev-b/cmd", 1), ("edge/dev-b/up", 1)])  # not allowed: nothing
        cloud.subscribe([(f"{up}/+/up", 1)])
        time.sleep(0.3)
        a.publish("edge/dev-b/up", b"forged", qos=1).wait_for_publish(5)  # dropped by ACL
        a.publish("edge/dev-a/cmd", b"self-command", qos=1).wait_for_publish(5)  # not allowed
        a.publish("edge/dev-a/up", b"mine", qos=1).wait_for_publish(5)
        cloud.publish(f"{up}/dev-b/cmd", b"from-cloud", qos=1).wait_for_publish(5)
        time.sleep(0.8)
        assert seen_by_cloud == [(f"{up}/dev-a/up".removeprefix("fleet/"), b"mine")]
        assert seen_by_b == [("edge/dev-b/cmd", b"from-cloud")]
        assert seen_by_a == []
        # without a client certificate there is no connection at all
        anon = make_client("anon", tls_ca=str(broker.etc / "devices-ca.pem"))
        try:
            anon.connect("127.0.0.1", broker.device_port)
            anon.loop_start()
            time.sleep(0.5)
            connected = anon.is_connected()
        except OSError:  # the TLS handshake is refused
            connected = False
        assert not connected
        anon.loop_stop()
    finally:
        for c in (a, b, cloud):
            c.disconnect()
            c.loop_stop()


def test_sync_over_tls_with_client_certificates(secure_broker: SecureBroker,
                                                tmp_path: Path) -> None:
    """The secure path end to end: TLS client certificates on the shipped config and ACL,
    every ack and command sealed by the cloud's key and opened by the device."""
    broker = secure_broker
    db = tmp_path / "device.db"
    device_db(db)
    from support.syncrig import append, assert_exactly_once, wait_synced
    append(db, "checkpoints", 1000)
    key = Ed25519PrivateKey.generate()
    cloud_id, dev_id = broker.identity("cloud", cloud=True), broker.identity("dev-a")
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", cloud_id.port,
                           prefix=broker.cloud_prefix, sealer=Sealer(key), **cloud_id.tls())
    applied: list[str] = []
    e = edge(db, dev_id.port, opener=Opener("dev-a", [public_key_text(key)]),
             handler=lambda conn, cmd: applied.append(cmd.id) or {}, **dev_id.tls())
    worker.start()
    e.start()
    try:
        wait_synced(db, 30)
        assert_exactly_once(store, "dev-a", db)
        cid = worker.send_command("dev-a", "cancel", {"run_id": "r1"}, wait_s=5)
        deadline = time.time() + 10
        while (store.command(cid) or {}).get("state") != "confirmed":
            assert time.time() < deadline
            time.sleep(0.05)
        assert applied == [cid] and dict(e.stats.rejected) == {}
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()
