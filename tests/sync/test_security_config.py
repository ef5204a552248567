"""Anonymous mode is explicit: without pinned keys and a client identity the device's config
fails (exit 78, naming the key) unless `insecure = true`; the cloud likewise without its
signing key; `keys init` makes the key once, 0600, and prints what devices pin."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sync.cloud.cli import main as cloud_main
from sync.cloud.config import CloudConfigError, load_cloud_config

DEVICE = '[device]\nid = "d1"\ndata_dir = "data"\n[sync]\nbroker = "h:8883"\n'
KEY = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
TLS = '[sync.tls]\nca = "ca.pem"\ncert = "d1.pem"\nkey = "d1.key"\n'


def check(tmp: Path, text: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp / "config.toml"
    cfg.write_text(text)
    return subprocess.run([sys.executable, "-m", "edge_agent", "config", "check", "--config",
                           str(cfg)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("text", "named"), [
    (DEVICE, ["sync.cloud_keys: is required", "sync.tls: is required"]),
    (DEVICE + f'cloud_keys = ["{KEY}"]\n', ["sync.tls: is required"]),
    (DEVICE + TLS, ["sync.cloud_keys: is required"]),
    (DEVICE + 'cloud_keys = ["c2hvcnQ="]\ninsecure = true\n',
     ["sync.cloud_keys[0]: not an Ed25519 public key"]),
    (DEVICE + f'cloud_keys = ["{KEY}", "{KEY}", "{KEY}"]\n' + TLS,
     ["sync.cloud_keys: pins at most 2 keys"]),
    (DEVICE + 'insecure = "yes"\n', ["sync.insecure: must be"]),
])
def test_device_config_without_security_fails_naming_the_key(tmp_path: Path, text: str,
                                                              named: list[str]) -> None:
    r = check(tmp_path, text)
    assert r.returncode == 78, r.stdout + r.stderr
    for n in named:
        assert n in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize("text", [DEVICE + "insecure = true\n",
                                  DEVICE + f'cloud_keys = ["{KEY}", "{KEY}"]\n' + TLS])
def test_device_config_secure_or_explicitly_insecure_passes(tmp_path: Path, text: str) -> None:
    r = check(tmp_path, text)
    assert r.returncode == 0, r.stderr


CLOUD = '[mqtt]\nbroker = "h:8884"\n{mqtt}[store]\nurl = "sqlite:///c.db"\n{rest}'
CLOUD_TLS = 'tls = { ca = "ca.pem", cert = "cloud.pem", key = "cloud.key" }\n'


def test_cloud_config_needs_a_key_and_an_identity_unless_insecure(tmp_path: Path) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(CLOUD.format(mqtt="", rest=""))
    with pytest.raises(CloudConfigError) as exc:
        load_cloud_config(cfg)
    assert exc.value.exit_code == 78
    assert "signing.key: is required" in str(exc.value) and "mqtt.tls:" in str(exc.value)
    cfg.write_text(CLOUD.format(mqtt="insecure = true\n", rest=""))
    assert load_cloud_config(cfg).insecure is True
    cfg.write_text(CLOUD.format(mqtt=CLOUD_TLS, rest='[signing]\nkey = "k/signing.key"\n'))
    with pytest.raises(CloudConfigError, match=r"signing.key: cannot read"):
        load_cloud_config(cfg)


def test_keys_init_makes_the_key_once_and_prints_what_devices_pin(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(CLOUD.format(mqtt=CLOUD_TLS, rest='[signing]\nkey = "k/signing.key"\n'))
    assert cloud_main(["keys", "init", "--config", str(cfg), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    path = tmp_path / "k" / "signing.key"
    assert made["key"] == str(path) and len(made["public_key"]) == 44
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    before = path.read_bytes()
    assert cloud_main(["keys", "init", "--config", str(cfg)]) == 73  # never overwrites
    assert path.read_bytes() == before
    assert cloud_main(["keys", "show", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.strip() == made["public_key"]
    cfg_loaded = load_cloud_config(cfg)  # now the config is whole
    assert cfg_loaded.signing_key == str(path)
