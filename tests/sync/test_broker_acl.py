"""The shipped broker config and ACL, run as written: a device with a valid certificate can
neither read another device's traffic by any filter (shared or not), nor drain the cloud's
shared subscription, nor publish in another device's name; the cloud gets every uplink."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from support.secure_broker import Identity, SecureBroker

from sync.mqtt import make_client

B_FILTERS = ("#", "+/#", "+/+/up", "edge/+/up", "edge/dev-a/#", "edge/dev-a/up",
             "edge/dev-a/cmd", "$share/ingest/edge/+/up", "$share/ingest/fleet/edge/+/up",
             "$share/x/#", "$share/ingest/#", "$SYS/#", "fleet/#", "fleet/edge/+/up")


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureBroker]:
    with SecureBroker(tmp_path) as b:
        yield b


def client(who: Identity, got: list[tuple[str, bytes]]) -> mqtt.Client:
    c = make_client(f"{who.name}-{time.time_ns()}", **who.tls())
    c.on_message = lambda cl, u, m: got.append((m.topic, bytes(m.payload)))
    c.connect("127.0.0.1", who.port)
    c.loop_start()
    deadline = time.monotonic() + 5
    while not c.is_connected():
        assert time.monotonic() < deadline, f"{who.name} could not connect"
        time.sleep(0.02)
    return c


def test_another_device_cannot_read_steal_or_forge(secure: SecureBroker) -> None:
    a_id, b_id = secure.identity("dev-a"), secure.identity("dev-b")
    cloud_id = secure.identity("cloud", cloud=True)
    prefix = secure.cloud_prefix
    by_cloud: list[tuple[str, bytes]] = []
    by_a: list[tuple[str, bytes]] = []
    by_b: list[tuple[str, bytes]] = []
    cloud = client(cloud_id, by_cloud)
    a = client(a_id, by_a)
    bs = [client(b_id, by_b) for _ in range(4)]  # several connections: several share members
    clients = [cloud, a, *bs]
    try:
        cloud.subscribe([(f"$share/ingest/{prefix}/+/up", 1), (f"{prefix}/+/status", 1)])
        a.subscribe([("edge/dev-a/cmd", 1), ("edge/dev-a/ack", 1)])
        for b in bs:
            b.subscribe([(f, 1) for f in B_FILTERS])
        time.sleep(0.5)
        for i in range(100):
            a.publish("edge/dev-a/up", f"a-{i}".encode(), qos=1).wait_for_publish(5)
        a.publish("edge/dev-a/status", b'{"state": "online"}', qos=1,
                  retain=True).wait_for_publish(5)
        # B tries A's topics, as the device sees them and as the broker does
        for topic in ("edge/dev-a/up", "edge/dev-a/status", "fleet/edge/dev-a/up",
                      "fleet/edge/dev-a/status"):
            bs[0].publish(topic, b'{"state": "offline"}', qos=1, retain=True)
        for topic in ("edge/dev-a/cmd", "edge/dev-a/ack"):  # nor can it steer A
            bs[0].publish(topic, b"forged", qos=1).wait_for_publish(5)
        cloud.publish(f"{prefix}/dev-a/cmd", b"cmd-for-a", qos=1).wait_for_publish(5)
        cloud.publish(f"{prefix}/dev-a/ack", b"ack-for-a", qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while len(by_cloud) < 101 or len(by_a) < 2:
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.5)
        ups = [p for t, p in by_cloud if t.endswith("/up")]
        assert ups == [f"a-{i}".encode() for i in range(100)], \
            f"the cloud got {len(ups)} of A's 100 uplinks"
        assert all(t == f"{prefix}/dev-a/status" and p == b'{"state": "online"}'
                   for t, p in by_cloud if t.endswith("/status"))
        assert by_b == [], f"dev-b received {len(by_b)} message(s), e.g. {by_b[:3]}"
        # Mosquitto 2.0.11 delivers with the mount point still on the topic (fixed in 2.0.12)
        assert sorted((t.removeprefix("fleet/"), p) for t, p in by_a) == [
            ("edge/dev-a/ack", b"ack-for-a"), ("edge/dev-a/cmd", b"cmd-for-a")]
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()


def test_a_device_certificate_does_not_open_the_clouds_listener(secure: SecureBroker) -> None:
    if secure.cloud_port == secure.device_port:
        pytest.fail("the shipped config gives the cloud no listener of its own")
    b_id = secure.identity("dev-b")
    b = make_client("dev-b-on-cloud", **b_id.tls())
    with pytest.raises(OSError):
        b.connect("127.0.0.1", secure.cloud_port)
        b.loop_start()
        time.sleep(0.5)
        if not b.is_connected():
            raise OSError("refused")
    b.loop_stop()
