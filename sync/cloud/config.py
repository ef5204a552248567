"""`cloud.toml`: [mqtt], [store], [signing], [otlp], [tools], [handoffs], [groups],
[collections], [console], [limits]. Unknown keys are errors;
errors name key and value."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.cloud.console.settings import ConsoleSettings, read_console
from sync.cloud.work import Limits
from sync.config_reader import ConfigIssue, Table
from sync.dbapi import redact
from sync.documents import CollectionRules, DocumentError


class CloudConfigError(Exception):
    """The cloud configuration cannot be used; lists every problem found."""

    exit_code = 78  # EX_CONFIG: systemd must not restart-loop on it

    def __init__(self, file: str, issues: list[ConfigIssue]) -> None:
        self.file = file
        self.issues = issues
        super().__init__("\n".join(i.render(file) for i in issues))


@dataclass(frozen=True)
class CloudConfig:
    host: str
    port: int
    store_url: str
    topic_prefix: str = "edge"
    protocol: str = "5"
    group: str = "ingest"
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    username: str | None = None
    password: str | None = None
    otlp_endpoint: str | None = None
    workers: int = 1
    max_record_bytes: int = 16 << 20  # larger records are kept as stubs (size and digest)
    projection: bool = True  # keep the fleet's projection of runs with each batch
    tools: tuple[tuple[str, str], ...] = ()  # remote tools: (name, "module:function")
    handoffs: tuple[tuple[str, str], ...] = ()  # handed-off steps: (name, "module:function")
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # name -> devices
    collections: Mapping[str, CollectionRules] = field(default_factory=dict)  # as the devices'
    signing_key: str | None = None  # the Ed25519 key that seals every downlink message
    device_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # uplink keys
    require_device_keys: bool = False  # refuse batches from devices without a key
    path: str = ""  # the file it was read from, for errors found later (a [tools] import)
    insecure: bool = False  # unsigned downlink, no client identity: a lab broker only
    console: ConsoleSettings = field(default_factory=ConsoleSettings)  # the web console
    limits: Limits = field(default_factory=Limits)  # the bounded pools of remote work


def load_cloud_config(path: str | os.PathLike[str], *, need_key: bool = True) -> CloudConfig:
    """Parse and validate; `need_key=False` for `keys init`, which makes the key."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise CloudConfigError(str(file), [ConfigIssue("", "file not found", has_value=False)]
                               ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CloudConfigError(str(file), [ConfigIssue("", f"cannot read: {exc}",
                                                       has_value=False)]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise CloudConfigError(str(file), [ConfigIssue("", f"TOML syntax error: {exc}",
                                                       has_value=False)]) from exc
    issues: list[ConfigIssue] = []
    base = file.resolve().parent
    root = Table(data, "", issues)

    def table(name: str, required: bool = True) -> Table:
        return root.table(name, required=required) or Table({}, name, issues)

    mqtt, store = table("mqtt"), table("store")
    otlp, signing = table("otlp", required=False), table("signing", required=False)
    limits_t = table("limits", required=False)
    limits = _limits(limits_t)
    host, port = "", 0
    broker = mqtt.raw("broker")
    m = re.match(r"^([^:\s]+):(\d{1,5})$", str(broker if broker is not None else ""))
    if not m or not 0 < int(m.group(2)) < 65536:
        mqtt.error("broker", "must be host:port", broker)
    else:
        host, port = m.group(1), int(m.group(2))
    url = store.raw("url")
    if not isinstance(url, str) or not url.startswith(("sqlite:///", "postgresql://",
                                                       "postgres://")):
        store.error("url", "must be sqlite:///PATH or postgresql://...",
                    redact(url) if isinstance(url, str) else url)
    elif url.startswith("sqlite:///"):
        given = url
        path = Path(url[len("sqlite:///"):])
        if not path.is_absolute():  # relative to the config's folder, not the cwd
            path = base / path
            url = f"sqlite:///{path}"
        if not path.parent.is_dir():
            store.error("url", f"the directory {str(path.parent)!r} does not exist", given)
    protocol = mqtt.raw("protocol", "5")
    if protocol not in ("5", "3.1.1"):
        mqtt.error("protocol", "must be '5' or '3.1.1'", protocol)
    tls = mqtt.raw("tls", {})
    if not isinstance(tls, dict) or set(tls) - {"ca", "cert", "key"}:
        mqtt.error("tls", "a table of ca, cert, key", tls)
        tls = {}

    def rel(p: Any) -> str | None:
        return None if p is None else str(base / p)
    password = None
    password_file = mqtt.raw("password_file")
    if password_file:
        try:
            password = Path(rel(password_file) or "").read_text().strip()
        except OSError as exc:
            mqtt.error("password_file", f"cannot read ({exc.strerror})", password_file)
    workers = mqtt.raw("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 64:
        mqtt.error("workers", "must be 1..64", workers)
    tools = root.raw("tools", {})
    if not isinstance(tools, dict) or not all(isinstance(v, str) and ":" in v
                                              for v in tools.values()):
        root.error("tools", 'a table of name = "module:function"', tools)
        tools = {}
    groups: dict[str, tuple[str, ...]] = {}
    raw_groups = root.raw("groups", {})
    if not isinstance(raw_groups, dict):
        root.error("groups", "a table of name = [device ids]", raw_groups)
        raw_groups = {}
    for gname, members in raw_groups.items():
        if not isinstance(members, list) or not members or not all(
                isinstance(m, str) and m and "/" not in m and "+" not in m and "#" not in m
                for m in members):
            issues.append(ConfigIssue(f"groups.{gname}", "a non-empty list of device ids",
                                      members))
        else:
            groups[gname] = tuple(dict.fromkeys(members))
    handoffs = root.raw("handoffs", {})
    if not isinstance(handoffs, dict) or not all(isinstance(v, str) and ":" in v
                                                 for v in handoffs.values()):
        root.error("handoffs", 'a table of name = "module:function"', handoffs)
        handoffs = {}
    collections: dict[str, CollectionRules] = {}
    raw = root.raw("collections", {})
    if not isinstance(raw, dict):
        root.error("collections", "a table of merge rules per collection", raw)
        raw = {}
    for name, rules in raw.items():
        try:
            collections[name] = CollectionRules.from_mapping(rules if isinstance(rules, dict)
                                                             else {"?": rules})
        except DocumentError as exc:
            issues.append(ConfigIssue(f"collections.{name}", str(exc), rules))
    max_record = store.raw("max_record_bytes", 16 << 20)
    if not isinstance(max_record, int) or isinstance(max_record, bool) or max_record < 1024:
        store.error("max_record_bytes", "must be an integer >= 1024", max_record)
    projection: bool = store.boolean("projection", True)
    endpoint = otlp.raw("endpoint")
    if endpoint is not None and not str(endpoint).startswith(("http://", "https://")):
        otlp.error("endpoint", "must start with http:// or https://", endpoint)
    insecure: bool = mqtt.boolean("insecure", False)
    signing_key = _signing_key(signing, rel, insecure, need_key)
    device_keys: dict[str, tuple[str, ...]] = {}
    device_keys_file = signing.raw("device_keys")
    if device_keys_file is not None:
        from sync.cloud.device_keys import load_device_keys
        try:
            device_keys = load_device_keys(rel(device_keys_file) or "")
        except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
            signing.error("device_keys", str(exc), device_keys_file)
    require_device_keys: bool = signing.boolean("require_device_keys", False)
    if not insecure and not (tls.get("cert") and tls.get("key")):
        mqtt.error("tls", "a client certificate (cert, key) is required: the broker knows the"
                   " cloud by its CN (or mqtt.insecure = true for an anonymous lab broker)",
                   tls or None)
    topic_prefix, group = mqtt.raw("topic_prefix", "edge"), mqtt.raw("group", "ingest")
    username = mqtt.raw("username")
    console_table = table("console", required=False)
    console = read_console(console_table, rel)
    for t in (root, mqtt, store, otlp, signing, console_table, limits_t):  # every key nobody read is unknown
        t.finish()
    if issues:
        raise CloudConfigError(str(file), issues)
    return CloudConfig(host=host, port=port, store_url=str(url),
                       topic_prefix=topic_prefix, protocol=protocol,
                       group=group, tls_ca=rel(tls.get("ca")),
                       tls_cert=rel(tls.get("cert")), tls_key=rel(tls.get("key")),
                       username=username, password=password,
                       otlp_endpoint=endpoint, workers=workers, max_record_bytes=max_record,
                       projection=projection,
                       tools=tuple(sorted(tools.items())), collections=collections,
                       handoffs=tuple(sorted(handoffs.items())),
                       groups=groups,
                       signing_key=signing_key, insecure=insecure, device_keys=device_keys,
                       require_device_keys=require_device_keys, path=str(file),
                       console=console, limits=limits)



def _limits(t: Table) -> Limits:
    """`[limits]`: the sizes of the pools that run remote tools and hand-offs."""
    d = Limits()
    return Limits(handoff_workers=t.integer("handoff_workers", d.handoff_workers, min=1,
                                            max=256),
                  tool_workers=t.integer("tool_workers", d.tool_workers, min=1, max=256),
                  per_device_in_flight=t.integer("per_device_in_flight",
                                                 d.per_device_in_flight, min=1, max=1024),
                  max_queued=t.integer("max_queued", d.max_queued, min=1, max=100_000))


def _signing_key(signing: Table, rel: Callable[[Any], str | None], insecure: bool,
                 need_key: bool) -> str | None:
    key = signing.raw("key")
    if key is None:
        if not insecure or not need_key:
            signing.error("key", "is required: the file of the key that signs every downlink"
                          " message (edge-agent-cloud keys init makes it), or mqtt.insecure ="
                          " true for an unsigned lab setup", None)
        return None
    if not isinstance(key, str) or not key:
        signing.error("key", "must be a file name", key)
        return None
    path = rel(key) or ""
    if need_key:
        from sync.signing import load_private_key
        try:
            load_private_key(path)
        except OSError as exc:
            signing.error("key", f"cannot read ({exc.strerror}; edge-agent-cloud keys init"
                          " makes it)", key)
        except ValueError as exc:
            signing.error("key", f"not an Ed25519 private key in PEM ({exc})", key)
    return path
