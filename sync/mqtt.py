"""MQTT plumbing shared by the edge and the cloud: topics, client setup, TLS, sessions."""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

SESSION_EXPIRY_S = 7 * 24 * 3600  # a device may be offline for days; its queue waits


@dataclass(frozen=True)
class Topics:
    prefix: str
    device: str

    @property
    def up(self) -> str:
        return f"{self.prefix}/{self.device}/up"

    @property
    def ack(self) -> str:
        return f"{self.prefix}/{self.device}/ack"

    @property
    def cmd(self) -> str:
        return f"{self.prefix}/{self.device}/cmd"

    @property
    def status(self) -> str:
        return f"{self.prefix}/{self.device}/status"


def device_of(topic: str, prefix: str) -> str | None:
    parts = topic.split("/")
    pre = prefix.split("/")
    if len(parts) != len(pre) + 2 or parts[:len(pre)] != pre:
        return None
    return parts[len(pre)]


# paho retries a lost broker after 1 s, doubling; past 60 s a device that lost the broker
# for 16 s came back ~15 s after it did. 5 s bounds that wait; a fleet's retries stay cheap.
RECONNECT_MAX_S = 5


def make_client(client_id: str, *, protocol: str = "5", tls_ca: str | None = None,
                tls_cert: str | None = None, tls_key: str | None = None,
                username: str | None = None, password: str | None = None) -> mqtt.Client:
    proto = mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto,
                         clean_session=None if proto == mqtt.MQTTv5 else False)
    if tls_ca or tls_cert:
        client.tls_set(ca_certs=tls_ca, certfile=tls_cert, keyfile=tls_key,
                       cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if username:
        client.username_pw_set(username, password)
    client.reconnect_delay_set(min_delay=1, max_delay=RECONNECT_MAX_S)
    return client


def connect_properties(protocol: str) -> Properties | None:
    if protocol != "5":
        return None
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: untyped
    props.SessionExpiryInterval = SESSION_EXPIRY_S
    return props


def user_properties(msg: mqtt.MQTTMessage) -> dict[str, str]:
    props = getattr(msg, "properties", None)
    pairs = getattr(props, "UserProperty", None) or []
    return {str(k): str(v) for k, v in pairs}


def publish_properties(protocol: str, expiry_s: float | None = None,
                       **user: str) -> Properties | None:
    """MQTT 5 user properties and, with `expiry_s`, a message expiry (the broker drops the
    message for a subscriber that has not received it in time)."""
    if protocol != "5" or not (user or expiry_s):
        return None
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: untyped
    if user:
        props.UserProperty = list(user.items())
    if expiry_s:
        props.MessageExpiryInterval = max(1, int(expiry_s))
    return props
