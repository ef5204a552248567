"""Optional device keys: a device seals its uplink batches with its own key and the cloud
verifies them, so whoever can publish on a device's topic (a broker, an anonymous client)
cannot put records in the cloud in that device's name."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.broker import Broker
from support.daemon import until
from support.syncrig import append, assert_exactly_once, device_db, edge, ingest, wait_synced

from sync.cloud.config import CloudConfigError, load_cloud_config
from sync.cloud.device_keys import DeviceKeys
from sync.envelope import WireRecord, encode_batch
from sync.mqtt import make_client
from sync.signing import UPLINK_DOMAIN, Sealer, SealError, public_key_text

DEVICE_KEY = Ed25519PrivateKey.generate()


def test_only_batches_sealed_by_the_device_are_stored(tmp_path: Path, broker: Broker) -> None:
    db = tmp_path / "device.db"
    device_db(db)
    append(db, "checkpoints", 200)
    keys = DeviceKeys({"dev-a": [public_key_text(DEVICE_KEY)]})
    worker, store = ingest(f"sqlite:///{tmp_path / 'cloud.db'}", broker.port, uplink=keys)
    e = edge(db, broker.port, uplink_sealer=Sealer(DEVICE_KEY, domain=UPLINK_DOMAIN))
    worker.start()
    e.start()
    anon = make_client("anonymous")
    anon.connect("127.0.0.1", broker.port)
    anon.loop_start()
    try:
        wait_synced(db, 30)
        forged = encode_batch("dev-a", "checkpoints", 200,
                              [WireRecord(201, "rec", b"injected", time.time())])
        other = Ed25519PrivateKey.generate()
        for payload in (forged, Sealer(other, domain=UPLINK_DOMAIN).seal("dev-a", "batch",
                                                                          forged),
                        Sealer(DEVICE_KEY).seal("dev-a", "batch", forged)):  # downlink domain
            anon.publish("edge/dev-a/up", payload, qos=1).wait_for_publish(5)
        until(lambda: sum(worker.rejected.values()) == 3, 10)
        assert dict(worker.rejected) == {"unsigned": 1, "unknown_key": 1, "bad_seal": 1}
        assert_exactly_once(store, "dev-a", db)  # 1..200, nothing injected
    finally:
        anon.disconnect()
        anon.loop_stop()
        e.shutdown()
        worker.shutdown()
        store.close()


def test_devices_without_a_key_pass_unless_keys_are_required() -> None:
    batch = encode_batch("dev-c", "control", 0, [WireRecord(1, "rec", b"x", 0.0)])
    assert DeviceKeys({}).open("dev-c", batch) == batch
    with pytest.raises(SealError, match="unknown_device"):
        DeviceKeys({}, required=True).open("dev-c", batch)
    sealed = Sealer(DEVICE_KEY, domain=UPLINK_DOMAIN).seal("dev-a", "batch", batch)
    with pytest.raises(SealError, match="wrong_device"):  # dev-a's batch on dev-b's topic
        DeviceKeys({"dev-b": [public_key_text(DEVICE_KEY)]}).open("dev-b", sealed)


def test_keyring_in_the_cloud_config_and_init_key_on_the_device(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[device]\nid = "press-7"\ndata_dir = "data"\n[sync]\nbroker = "h:1"\n'
                   'insecure = true\ndevice_key = "keys/device.key"\n')
    r = subprocess.run([sys.executable, "-m", "edge_agent", "sync", "init-key", "--config",
                        str(cfg), "--json"], capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["device_id"] == "press-7"
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "device.key").st_mode) == 0o600
    again = subprocess.run([sys.executable, "-m", "edge_agent", "sync", "init-key",
                            "--config", str(cfg)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert again.returncode == 73
    (tmp_path / "device-keys.toml").write_text(f'"press-7" = ["{made["public_key"]}"]\n')
    cloud = tmp_path / "cloud.toml"
    base = '[mqtt]\nbroker = "h:1"\ninsecure = true\n[store]\nurl = "sqlite:///c.db"\n'
    cloud.write_text(base + '[signing]\ndevice_keys = "device-keys.toml"\n'
                     'require_device_keys = true\n')
    loaded = load_cloud_config(cloud)
    assert loaded.device_keys == {"press-7": (made["public_key"],)}
    assert loaded.require_device_keys is True
    (tmp_path / "device-keys.toml").write_text('"press-8" = ["c2hvcnQ="]\n')
    with pytest.raises(CloudConfigError, match=r"signing.device_keys: press-8"):
        load_cloud_config(cloud)
