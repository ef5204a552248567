"""A real Mosquitto run from the shipped example config and ACL, as written.

Only ports and paths are templated: the listeners bind free loopback ports, /etc/mosquitto/
files live in the test's folder (CAs and certificates made with trustme: one CA for the
devices, one for the cloud), and the broker runs as whoever runs the tests.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import trustme

from support.broker import free_port, mosquitto_path
from sync.cloud.broker_example import EXAMPLE_ACL as SHIPPED_ACL
from sync.cloud.broker_example import EXAMPLE_CONF as SHIPPED_CONF
from sync.cloud.broker_example import render


@dataclass(frozen=True)
class Identity:
    """A client certificate and what a client needs to connect with it."""

    name: str
    port: int
    ca: str
    cert: str
    key: str

    def tls(self) -> dict[str, str]:
        return {"tls_ca": self.ca, "tls_cert": self.cert, "tls_key": self.key}


class SecureBroker:
    """The shipped broker config: devices' listener, cloud's listener, the shipped ACL."""

    def __init__(self, tmp: Path, conf: Path = SHIPPED_CONF, acl: Path = SHIPPED_ACL) -> None:
        self.tmp = tmp
        self.etc = tmp / "etc-mosquitto"
        self.etc.mkdir(exist_ok=True)
        self.devices_ca, self.cloud_ca = trustme.CA(), trustme.CA()
        server = self.devices_ca.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(self.etc / "broker.pem"))
        server.private_key_pem.write_to_path(str(self.etc / "broker.key"))
        self.devices_ca.cert_pem.write_to_path(str(self.etc / "devices-ca.pem"))
        self.cloud_ca.cert_pem.write_to_path(str(self.etc / "cloud-ca.pem"))
        self.devices_ca.cert_pem.write_to_path(str(self.etc / "ca.pem"))  # older examples
        self.device_port, cloud_port = free_port(), free_port()
        rendered = render(device_port=self.device_port, cloud_port=cloud_port, etc=self.etc,
                          conf=conf, acl=acl)
        self.cloud_port = cloud_port if rendered.own_cloud_listener else self.device_port
        self.cloud_prefix = rendered.cloud_prefix
        (self.etc / "edge-agent.acl").write_text(rendered.acl)
        self.conf = tmp / "mosquitto-secure.conf"
        self.conf.write_text(rendered.conf + f"\nuser {pwd.getpwuid(os.geteuid()).pw_name}\n")
        self.log = tmp / "mosquitto-secure.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def identity(self, name: str, *, cloud: bool = False) -> Identity:
        """A certificate with CN `name`: from the cloud's CA for the cloud's listener."""
        ca = self.cloud_ca if cloud and self.cloud_port != self.device_port else self.devices_ca
        cert = ca.issue_cert(name, common_name=name)
        pem, key = self.tmp / f"{name}.pem", self.tmp / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(pem))
        cert.private_key_pem.write_to_path(str(key))
        return Identity(name, self.cloud_port if cloud else self.device_port,
                        str(self.etc / "devices-ca.pem"), str(pem), str(key))

    def start(self) -> SecureBroker:
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen([mosquitto_path(), "-c", str(self.conf)], cwd=self.tmp,
                                     stdout=self._logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        for port in {self.device_port, self.cloud_port}:
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if self.proc.poll() is not None:
                        raise RuntimeError(
                            f"mosquitto exited: {self.log.read_text()[-2000:]}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError("mosquitto did not start") from None
                    time.sleep(0.05)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_logf"):
            self._logf.close()

    def restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> SecureBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
