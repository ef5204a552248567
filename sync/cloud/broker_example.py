"""The shipped Mosquitto example (config and ACL), rendered for a given machine: ports and
paths change, nothing else. The demo and the tests run the broker this way, so the secure
configuration they exercise is the one an operator copies."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

EXAMPLE_CONF = Path(__file__).with_name("mosquitto.example.conf")
EXAMPLE_ACL = Path(__file__).with_name("mosquitto.acl.example")
DEVICE_PORT, CLOUD_PORT = 8883, 8884
ETC = "/etc/mosquitto/"


@dataclass(frozen=True)
class RenderedBroker:
    conf: str
    acl: str
    cloud_prefix: str  # the topic prefix the cloud uses for the devices' "edge"
    own_cloud_listener: bool  # whether the cloud has a listener (and CA) of its own


def render(*, device_port: int, cloud_port: int, etc: Path, host: str = "127.0.0.1",
           conf: Path = EXAMPLE_CONF, acl: Path = EXAMPLE_ACL) -> RenderedBroker:
    """The example config with its listeners on `host` and these ports and its files
    (CAs, broker certificate, ACL) in `etc` instead of /etc/mosquitto/."""
    text = conf.read_text()
    own = re.search(rf"^listener {CLOUD_PORT}\b", text, re.MULTILINE) is not None
    mount = re.search(r"^mount_point (\S+)", text, re.MULTILINE)
    text = re.sub(rf"^listener {DEVICE_PORT}\b.*$", f"listener {device_port} {host}", text,
                  flags=re.MULTILINE)
    text = re.sub(rf"^listener {CLOUD_PORT}\b.*$", f"listener {cloud_port} {host}", text,
                  flags=re.MULTILINE)
    text = text.replace(ETC, f"{etc}/")
    return RenderedBroker(text, acl.read_text(), (mount.group(1) if mount else "") + "edge",
                          own)
