"""Issue 19, points 2 and 3, with real Mosquitto: an anonymous client cannot start, approve
or cancel runs (unsigned, forged, re-addressed and replayed commands are refused and
counted); another device cannot mark a device offline through the ACL; a command that
expired while the device was offline does nothing and is answered "expired"."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.broker import Broker
from support.daemon import DaemonProcess, cli_json, until
from support.secure_broker import SecureBroker
from support.syncrig import device_db, edge, ingest

from sync.envelope import Command, encode_command
from sync.mqtt import make_client
from sync.signing import Sealer, public_key_text

KEY = Ed25519PrivateKey.generate()
DEVICE_CONFIG = """
[device]
id = "press-7"
data_dir = "data"
runtime_dir = "run"
[sync]
broker = "127.0.0.1:{port}"
insecure = true  # the anonymous broker of the demo: no client identity, but signed downlink
cloud_keys = ["{key}"]
ack_timeout_s = 2
[workflows.gated]
start = "gate"
[workflows.gated.nodes.gate]
approval = {{ prompt = "Ship it?" }}
next = "done"
[workflows.gated.nodes.done]
end = true
"""


def command(cid: str, ctype: str, args: dict[str, Any], *, key: Ed25519PrivateKey | None = None,
            device: str = "press-7", ttl_s: float = 3600) -> bytes:
    body = encode_command(Command(cid, ctype, args, time.time()))
    if key is None:
        return body
    return Sealer(key).seal(device, ctype, body, msg_id=cid, ttl_s=ttl_s)


def test_an_anonymous_client_cannot_steer_a_device(tmp_path: Path, broker: Broker) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(DEVICE_CONFIG.format(port=broker.port, key=public_key_text(KEY)))
    daemon = DaemonProcess(cfg, tmp_path).start()
    seen: list[bytes] = []
    anon = make_client("anonymous")
    anon.on_message = lambda c, u, m: seen.append(bytes(m.payload))
    anon.connect("127.0.0.1", broker.port)
    anon.loop_start()
    topic = "edge/press-7/cmd"
    try:
        daemon.wait_for("READY=1")
        anon.subscribe(topic, 1)  # an anonymous broker hides nothing: it reads the downlink
        waiting = cli_json(cfg, "start", "gated")["run_id"]
        until(lambda: cli_json(cfg, "runs", "show", waiting)["status"] == "waiting_approval")
        other = Ed25519PrivateKey.generate()
        forged = [
            command("a1", "start", {"workflow": "gated", "input": {"evil": 1}}),  # unsigned
            command("a2", "approve", {"run_id": waiting, "by": "attacker"}),
            command("a3", "cancel", {"run_id": waiting, "by": "attacker"}),
            command("a4", "approve", {"run_id": waiting}, key=other),  # not the pinned key
            command("a5", "approve", {"run_id": waiting}, key=KEY, device="press-8"),
            command("a6", "approve", {"run_id": waiting}, key=KEY, ttl_s=0.001),
        ]
        time.sleep(0.01)
        for payload in forged:
            anon.publish(topic, payload, qos=1).wait_for_publish(5)
        anon.publish("edge/press-7/ack", b"\x84\xa1v\x01\xa1s\xa7control\xa3seq\x01\xa6digest"
                     b"\xa0", qos=1).wait_for_publish(5)  # an unsigned ack
        want = {"cmd:unsigned": 3, "cmd:unknown_key": 1, "cmd:wrong_device": 1,
                "cmd:expired": 1, "ack:unsigned": 1}
        until(lambda: cli_json(cfg, "status")["sync"]["downlink"]["rejected"] == want,
              why=lambda: cli_json(cfg, "status")["sync"]["downlink"])
        assert cli_json(cfg, "runs", "show", waiting)["status"] == "waiting_approval"
        assert [r["run_id"] for r in cli_json(cfg, "runs")["runs"]] == [waiting]
        # the cloud's own, signed approval applies; replayed, it does nothing more
        real = command("c1", "approve", {"run_id": waiting, "by": "hq"}, key=KEY)
        anon.publish(topic, real, qos=1).wait_for_publish(5)
        until(lambda: cli_json(cfg, "runs", "show", waiting)["status"] == "completed")
        anon.publish(topic, seen[-1], qos=1).wait_for_publish(5)  # the approval, replayed
        want["cmd:replayed"] = 1
        until(lambda: cli_json(cfg, "status")["sync"]["downlink"]["rejected"] == want)
        logged = daemon.output()
        assert "insecure = true" in logged and "rejected a command" in logged
    finally:
        anon.disconnect()
        anon.loop_stop()
        daemon.close()


@pytest.fixture
def secure(tmp_path: Path) -> Iterator[SecureBroker]:
    with SecureBroker(tmp_path) as b:
        yield b


def test_another_device_cannot_mark_a_device_offline(tmp_path: Path,
                                                     secure: SecureBroker) -> None:
    db = tmp_path / "device.db"
    device_db(db)
    cloud_id, a_id, b_id = (secure.identity("cloud", cloud=True), secure.identity("dev-a"),
                            secure.identity("dev-b"))
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", cloud_id.port,
                           prefix=secure.cloud_prefix, sealer=Sealer(KEY), **cloud_id.tls())
    applied: list[str] = []
    e = edge(db, a_id.port, "dev-a", handler=lambda c, cmd: applied.append(cmd.id) or {},
             opener=_opener("dev-a"), **a_id.tls())
    b = make_client("dev-b-attacker", **b_id.tls())
    worker.start()
    e.start()
    try:
        until(lambda: e.connected and worker.connected.is_set(), 10)
        until(lambda: _online(store, "dev-a") is True, 10)
        b.connect("127.0.0.1", b_id.port)
        b.loop_start()
        until(b.is_connected, 5)
        for t in ("edge/dev-a/status", "fleet/edge/dev-a/status"):
            b.publish(t, b'{"state": "offline"}', qos=1, retain=True).wait_for_publish(5)
        b.publish("edge/dev-a/cmd", command("b1", "approve", {"run_id": "r"}, key=KEY,
                                            device="dev-a"), qos=1).wait_for_publish(5)
        cid = worker.send_command("dev-a", "approve", {"run_id": "r1"}, wait_s=5)
        until(lambda: (store.command(cid) or {}).get("state") == "confirmed", 10)
        time.sleep(0.5)
        assert _online(store, "dev-a") is True
        assert applied == [cid] and dict(e.stats.rejected) == {}  # B's command never arrived
        anon = make_client("anon", tls_ca=a_id.ca)  # and no certificate, no connection
        with pytest.raises(OSError):
            anon.connect("127.0.0.1", a_id.port)
            anon.loop_start()
            time.sleep(0.5)
            if not anon.is_connected():
                raise OSError("refused")
        anon.loop_stop()
    finally:
        b.disconnect()
        b.loop_stop()
        e.shutdown()
        worker.shutdown()
        store.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_an_approval_that_expired_while_offline_does_nothing(tmp_path: Path, broker: Broker,
                                                             protocol: str) -> None:
    """MQTT 5: the broker drops it. 3.1.1 (no message expiry): the device gets it late,
    answers "expired" and applies nothing."""
    db = tmp_path / "device.db"
    device_db(db)
    applied: list[str] = []

    def device() -> Any:
        return edge(db, broker.port, "dev-a", protocol=protocol, opener=_opener("dev-a"),
                    handler=lambda c, cmd: applied.append(cmd.id) or {})
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port,
                           protocol=protocol, sealer=Sealer(KEY))
    worker.start()
    e = device()
    e.start()
    try:
        until(lambda: e.connected and worker.connected.is_set(), 10)
        e.shutdown()  # offline; its session keeps what the cloud sends
        late = worker.send_command("dev-a", "approve", {"run_id": "r1"}, wait_s=5,
                                   expires_in_s=1)
        time.sleep(2.5)
        fresh = worker.send_command("dev-a", "approve", {"run_id": "r2"}, wait_s=5)
        e = device()
        e.start()
        until(lambda: (store.command(fresh) or {}).get("state") == "confirmed", 15)
        time.sleep(0.5)
        assert applied == [fresh]
        if protocol == "5":
            assert store.command(late)["state"] == "sent"  # dropped by the broker, never seen
        else:
            until(lambda: (store.command(late) or {}).get("state") == "expired", 10)
            assert store.command(late)["result"]["error"] == "expired"
            assert e.stats.rejected["cmd:expired"] == 1
    finally:
        e.shutdown()
        worker.shutdown()
        store.close()


def _opener(device: str) -> Any:
    from sync.signing import Opener
    return Opener(device, [public_key_text(KEY)])


def _online(store: Any, device: str) -> bool | None:
    return next((d["online"] for d in store.devices() if d["device_id"] == device), None)
