"""Downlink commands apply exactly once; TLS client certificates and ACLs isolate devices."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trustme
from support.broker import Broker, free_port
from support.syncrig import device_db, edge, ingest

from sync.envelope import Command, encode_command
from sync.mqtt import Topics, make_client


def test_commands_apply_once_and_confirm(tmp_path: Path, broker: Broker) -> None:
    db = tmp_path / "device.db"
    device_db(db)
    applied: list[str] = []

    def handler(conn: sqlite3.Connection, cmd: Command) -> dict[str, Any]:
        if cmd.args.get("explode"):
            raise ValueError("no such run")
        applied.append(cmd.id)
        return {"seen": cmd.args["run_id"]}
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port)
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
def secure_broker(tmp_path: Path) -> Any:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths: dict[str, str] = {}
    for name, pem in (("ca", ca.cert_pem), ("server", server.cert_chain_pems[0]),
                      ("server_key", server.private_key_pem)):
        p = tmp_path / f"{name}.pem"
        pem.write_to_path(str(p))
        paths[name] = str(p)
    for ident in ("dev-a", "dev-b", "cloud"):
        cert = ca.issue_cert(ident, common_name=ident)
        cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{ident}.pem"))
        cert.private_key_pem.write_to_path(str(tmp_path / f"{ident}.key"))
    acl = tmp_path / "acl"
    acl.write_text(
        "user cloud\ntopic read edge/+/up\ntopic read edge/+/status\n"
        "topic write edge/+/ack\ntopic write edge/+/cmd\n\n"
        "pattern write edge/%u/up\npattern readwrite edge/%u/status\n"
        "pattern read edge/%u/ack\npattern read edge/%u/cmd\n")
    b = Broker(tmp_path, extra=(
        f"cafile {paths['ca']}\ncertfile {paths['server']}\nkeyfile {paths['server_key']}\n"
        f"require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
        f"acl_file {acl}\n"), port=free_port())
    b.start()
    yield b, tmp_path
    b.kill()


def tls_client(tmp: Path, ident: str, port: int, got: list[tuple[str, bytes]]) -> mqtt.Client:
    c = make_client(f"{ident}-{time.time_ns()}", tls_ca=str(tmp / "ca.pem"),
                    tls_cert=str(tmp / f"{ident}.pem"), tls_key=str(tmp / f"{ident}.key"))
    c.on_message = lambda cl, u, m: got.append((m.topic, bytes(m.payload)))
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def test_tls_and_acl_confine_each_device(secure_broker: Any) -> None:
    broker, tmp = secure_broker
    seen_by_b: list[tuple[str, bytes]] = []
    seen_by_a: list[tuple[str, bytes]] = []
    seen_by_cloud: list[tuple[str, bytes]] = []
    b = tls_client(tmp, "dev-b", broker.port, seen_by_b)
    a = tls_client(tmp, "dev-a", broker.port, seen_by_a)
    cloud = tls_client(tmp, "cloud", broker.port, seen_by_cloud)
    try:
        time.sleep(0.5)
        b.subscribe([("edge/dev-b/cmd", 1)])
        a.subscribe([("edge/dev-b/cmd", 1), ("edge/dev-b/up", 1)])  # not allowed: nothing
        cloud.subscribe([("edge/+/up", 1)])
        time.sleep(0.3)
        a.publish("edge/dev-b/up", b"forged", qos=1).wait_for_publish(5)  # dropped by ACL
        a.publish("edge/dev-a/cmd", b"self-command", qos=1).wait_for_publish(5)  # not allowed
        a.publish("edge/dev-a/up", b"mine", qos=1).wait_for_publish(5)
        cloud.publish("edge/dev-b/cmd", b"from-cloud", qos=1).wait_for_publish(5)
        time.sleep(0.8)
        assert seen_by_cloud == [("edge/dev-a/up", b"mine")]
        assert seen_by_b == [("edge/dev-b/cmd", b"from-cloud")]
        assert seen_by_a == []
        # without a client certificate there is no connection at all
        anon = make_client("anon", tls_ca=str(tmp / "ca.pem"))
        with pytest.raises(Exception):
            anon.connect("127.0.0.1", broker.port)
            anon.loop_start()
            time.sleep(0.5)
            assert anon.is_connected()
        anon.loop_stop()
    finally:
        for c in (a, b, cloud):
            c.disconnect()
            c.loop_stop()


def test_sync_over_tls_with_client_certificates(secure_broker: Any) -> None:
    broker, tmp = secure_broker
    db = tmp / "device.db"
    device_db(db)
    from support.syncrig import append, assert_exactly_once, wait_synced
    append(db, "checkpoints", 1000)
    worker, store = ingest(f"sqlite:///{tmp / 'cloud.db'}", broker.port,
                           tls_ca=str(tmp / "ca.pem"), tls_cert=str(tmp / "cloud.pem"),
                           tls_key=str(tmp / "cloud.key"))
    e = edge(db, broker.port, tls_ca=str(tmp / "ca.pem"), tls_cert=str(tmp / "dev-a.pem"),
             tls_key=str(tmp / "dev-a.key"))
    worker.start()
    e.start()
    try:
        wait_synced(db, 30)
        assert_exactly_once(store, "dev-a", db)
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()
