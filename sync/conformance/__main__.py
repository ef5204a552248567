"""`python -m sync.conformance --broker HOST:PORT --play device|cloud [--device ID]`."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from sync.conformance import as_cloud, as_device


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sync.conformance",
                                description="check a peer against sync/PROTOCOL.md")
    p.add_argument("--broker", required=True, help="HOST:PORT")
    p.add_argument("--play", choices=("device", "cloud"), required=True,
                   help="device: check the cloud under test; cloud: check a device")
    p.add_argument("--device", help="with --play cloud: the id of the device under test")
    p.add_argument("--prefix", default="edge")
    p.add_argument("--ack-timeout", type=float, default=10.0,
                   help="the device's ack timeout, or how long to wait for the cloud")
    p.add_argument("--tls-ca")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--username")
    p.add_argument("--password-file")
    a = p.parse_args(argv)
    m = re.match(r"^([^:\s]+):(\d{1,5})$", a.broker)
    if not m:
        p.error(f"--broker: must be host:port (got {a.broker!r})")
    if a.play == "cloud" and not a.device:
        p.error("--play cloud needs --device")
    password = None
    if a.password_file:
        with open(a.password_file) as f:
            password = f.read().strip()
    wire = {"host": m.group(1), "port": int(m.group(2)), "tls_ca": a.tls_ca,
            "tls_cert": a.tls_cert, "tls_key": a.tls_key, "username": a.username,
            "password": password}
    if a.play == "device":
        report = as_device.run(wire, a.prefix, a.ack_timeout)
    else:
        report = as_cloud.run(wire, a.device, a.prefix, a.ack_timeout)
    print(report.render())
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
