"""The `[console]` table of cloud.toml, and `--listen HOST:PORT`, validated.

    [console]
    listen = "127.0.0.1:8080"         # where the console serves
    tokens = "console-tokens.json"    # the token hashes (relative to cloud.toml)
    insecure = false                  # true: no login, loopback only
    tls_cert = "console.crt"          # optional: serve HTTPS (cookies then Secure)
    tls_key = "console.key"
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sync.config_reader import Table

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_TOKENS = "console-tokens.json"


@dataclass(frozen=True)
class ConsoleSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    tokens: str = DEFAULT_TOKENS  # absolute once read from a config file
    insecure: bool = False  # serve without tokens (refused on anything but loopback)
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


def parse_listen(text: Any) -> tuple[str, int] | None:
    """`HOST:PORT` or `[V6]:PORT`; None when it is neither."""
    m = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([^:\s\[\]]+)):(\d{1,5})$", str(text))
    if not m or not 0 < int(m.group(3)) < 65536:
        return None
    return m.group(1) or m.group(2), int(m.group(3))


def is_loopback(host: str) -> bool:
    """Only what cannot be reached from another machine: 127.0.0.0/8, ::1, localhost."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


def read_console(table: Table, rel: Callable[[Any], str | None]) -> ConsoleSettings:
    """Read `[console]`; each problem is recorded on the table with its key and value."""
    listen = table.raw("listen", DEFAULT_LISTEN)
    where = parse_listen(listen)
    if where is None:
        table.error("listen", "must be host:port (or [v6]:port)", listen)
        where = ("127.0.0.1", 8080)
    tokens = table.string("tokens", DEFAULT_TOKENS)
    insecure = table.boolean("insecure", False)
    if insecure and not is_loopback(where[0]):
        table.error("insecure", "is refused on anything but loopback (listen is "
                    f"{listen!r}): add tokens (edge-agent-cloud console token add)", insecure)
    cert, key = table.string("tls_cert"), table.string("tls_key")
    if (cert is None) != (key is None):
        table.error("tls_cert" if cert is None else "tls_key",
                    "tls_cert and tls_key go together", cert or key)
        cert = key = None
    return ConsoleSettings(host=where[0], port=where[1], tokens=rel(tokens) or DEFAULT_TOKENS,
                           insecure=bool(insecure), tls_cert=rel(cert), tls_key=rel(key))
