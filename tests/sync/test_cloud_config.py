"""cloud.toml through the shared reader: every key is read (none is reported unknown), a key
nobody reads is an error that names key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.cloud.config import CloudConfigError, load_cloud_config

EVERY_KEY = """
[mqtt]
broker = "broker.example:8883"
insecure = true
topic_prefix = "fleet/edge"
group = "ingest-b"
username = "cloud"
password_file = "pw"
workers = 3
protocol = "3.1.1"
tls = { ca = "ca.pem" }
[store]
url = "sqlite:///c.db"
max_record_bytes = 2048
[otlp]
endpoint = "http://collector:4318"
[tools]
lookup = "tools_mod:lookup"
[collections]
notes = { default = "max" }
"""


def test_every_key_is_read(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(EVERY_KEY)
    c = load_cloud_config(cfg)
    assert (c.host, c.port, c.topic_prefix, c.group, c.username, c.password) == (
        "broker.example", 8883, "fleet/edge", "ingest-b", "cloud", "secret")
    assert (c.workers, c.protocol, c.max_record_bytes, c.otlp_endpoint) == (
        3, "3.1.1", 2048, "http://collector:4318")
    assert c.tls_ca == str(tmp_path / "ca.pem") and c.store_url == f"sqlite:///{tmp_path}/c.db"
    assert c.tools == (("lookup", "tools_mod:lookup"),) and c.collections["notes"].default == "max"


def test_an_unknown_key_names_key_and_value(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    cfg = tmp_path / "cloud.toml"
    cfg.write_text(EVERY_KEY.replace("[store]", 'brokr = "x"\n[store]') + "[extra]\n")
    with pytest.raises(CloudConfigError) as exc:
        load_cloud_config(cfg)
    assert exc.value.exit_code == 78
    assert "mqtt.brokr: unknown key (got 'x')" in str(exc.value)
    assert "extra: unknown key (got {})" in str(exc.value)


def test_a_tools_module_that_cannot_be_imported_is_a_config_error(tmp_path: Path) -> None:
    """`edge-agent-cloud run --config cloud.toml --json` with a [tools] or [handoffs] entry
    whose module is not installed: exit 78 (systemd does not restart-loop on it) and a JSON
    error naming the key, not a traceback."""
    import contextlib
    import io
    import json

    from sync.cloud.cli import main as cloud_main
    cfg = tmp_path / "cloud.toml"
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n'
                   '[store]\nurl = "sqlite:///cloud.db"\n'
                   '[tools]\nlookup_part = "no_such_fleet_module:lookup"\n'
                   '[handoffs]\nreviewer = "json:no_such_function"\n')
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cloud_main(["run", "--config", str(cfg), "--json"]) == 78
    out = json.loads(err.getvalue())
    assert out["exit_code"] == 78
    assert f"{cfg}: tools.lookup_part: cannot be imported" in out["error"], out
    cfg.write_text('[mqtt]\nbroker = "127.0.0.1:1"\ninsecure = true\n'
                   '[store]\nurl = "sqlite:///cloud.db"\n'
                   '[handoffs]\nreviewer = "json:no_such_function"\n')
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cloud_main(["run", "--config", str(cfg)]) == 78
    assert "handoffs.reviewer: cannot be imported" in err.getvalue()
