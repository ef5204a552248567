"""`cloud.toml`: [mqtt], [store], [signing], [otlp], [tools], [handoffs], [groups],
[collections]. Unknown keys are errors;
errors name key and value."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sync.documents import CollectionRules, DocumentError


class CloudConfigError(Exception):
    exit_code = 78

    def __init__(self, file: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{file}: {p}" for p in problems))


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
    tools: tuple[tuple[str, str], ...] = ()  # remote tools: (name, "module:function")
    handoffs: tuple[tuple[str, str], ...] = ()  # handed-off steps: (name, "module:function")
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # name -> devices
    collections: Mapping[str, CollectionRules] = field(default_factory=dict)  # as the devices'
    signing_key: str | None = None  # the Ed25519 key that seals every downlink message
    device_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # uplink keys
    require_device_keys: bool = False  # refuse batches from devices without a key
    insecure: bool = False  # unsigned downlink, no client identity: a lab broker only


def load_cloud_config(path: str | os.PathLike[str], *, need_key: bool = True) -> CloudConfig:
    """Parse and validate; `need_key=False` for `keys init`, which makes the key."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise CloudConfigError(str(file), ["file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CloudConfigError(str(file), [f"cannot read: {exc}"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise CloudConfigError(str(file), [f"TOML syntax error: {exc}"]) from exc
    problems: list[str] = []
    base = file.resolve().parent

    def table(name: str, allowed: set[str], required: bool = True) -> dict[str, Any]:
        t = data.get(name)
        if t is None:
            if required:
                problems.append(f"{name}: is required")
            return {}
        if not isinstance(t, dict):
            problems.append(f"{name}: must be a table (got {t!r})")
            return {}
        for k in t:
            if k not in allowed:
                problems.append(f"{name}.{k}: unknown key (got {t[k]!r})")
        return t

    for k in data:
        if k not in ("mqtt", "store", "signing", "otlp", "tools", "handoffs", "collections",
                     "groups"):
            problems.append(f"{k}: unknown key (got {data[k]!r})")
    mqtt = table("mqtt", {"broker", "tls", "username", "password_file", "topic_prefix",
                          "protocol", "group", "workers", "insecure"})
    store = table("store", {"url", "max_record_bytes"})
    otlp = table("otlp", {"endpoint"}, required=False)
    signing = table("signing", {"key", "device_keys", "require_device_keys"}, required=False)
    host, port = "", 0
    m = re.match(r"^([^:\s]+):(\d{1,5})$", str(mqtt.get("broker", "")))
    if not m or not 0 < int(m.group(2)) < 65536:
        problems.append(f"mqtt.broker: must be host:port (got {mqtt.get('broker')!r})")
    else:
        host, port = m.group(1), int(m.group(2))
    url = store.get("url")
    if not isinstance(url, str) or not url.startswith(("sqlite:///", "postgresql://",
                                                       "postgres://")):
        problems.append(f"store.url: must be sqlite:///PATH or postgresql://... (got {url!r})")
    elif url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.is_absolute():  # relative to the config's folder, not the cwd
            path = base / path
            url = f"sqlite:///{path}"
        if not path.parent.is_dir():
            problems.append(f"store.url: the directory {str(path.parent)!r} does not exist"
                            f" (got {store['url']!r})")
    protocol = mqtt.get("protocol", "5")
    if protocol not in ("5", "3.1.1"):
        problems.append(f"mqtt.protocol: must be '5' or '3.1.1' (got {protocol!r})")
    tls = mqtt.get("tls", {})
    if not isinstance(tls, dict) or set(tls) - {"ca", "cert", "key"}:
        problems.append(f"mqtt.tls: a table of ca, cert, key (got {tls!r})")
        tls = {}

    def rel(p: Any) -> str | None:
        return None if p is None else str(base / p)
    password = None
    if mqtt.get("password_file"):
        try:
            password = Path(rel(mqtt["password_file"]) or "").read_text().strip()
        except OSError as exc:
            problems.append(f"mqtt.password_file: cannot read ({exc.strerror}) "
                            f"(got {mqtt['password_file']!r})")
    workers = mqtt.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or not 1 <= workers <= 64:
        problems.append(f"mqtt.workers: must be 1..64 (got {workers!r})")
    tools = data.get("tools", {})
    if not isinstance(tools, dict) or not all(isinstance(v, str) and ":" in v
                                              for v in tools.values()):
        problems.append(f"tools: a table of name = \"module:function\" (got {tools!r})")
        tools = {}
    groups: dict[str, tuple[str, ...]] = {}
    raw_groups = data.get("groups", {})
    if not isinstance(raw_groups, dict):
        problems.append(f"groups: a table of name = [device ids] (got {raw_groups!r})")
        raw_groups = {}
    for gname, members in raw_groups.items():
        if not isinstance(members, list) or not members or not all(
                isinstance(m, str) and m and "/" not in m and "+" not in m and "#" not in m
                for m in members):
            problems.append(f"groups.{gname}: a non-empty list of device ids (got {members!r})")
        else:
            groups[gname] = tuple(dict.fromkeys(members))
    handoffs = data.get("handoffs", {})
    if not isinstance(handoffs, dict) or not all(isinstance(v, str) and ":" in v
                                                 for v in handoffs.values()):
        problems.append(f"handoffs: a table of name = \"module:function\" (got {handoffs!r})")
        handoffs = {}
    collections: dict[str, CollectionRules] = {}
    raw = data.get("collections", {})
    if not isinstance(raw, dict):
        problems.append(f"collections: a table of merge rules per collection (got {raw!r})")
        raw = {}
    for name, rules in raw.items():
        try:
            collections[name] = CollectionRules.from_mapping(rules if isinstance(rules, dict)
                                                             else {"?": rules})
        except DocumentError as exc:
            problems.append(f"collections.{name}: {exc} (got {rules!r})")
    max_record = store.get("max_record_bytes", 16 << 20)
    if not isinstance(max_record, int) or isinstance(max_record, bool) or max_record < 1024:
        problems.append(f"store.max_record_bytes: must be an integer >= 1024 (got"
                        f" {max_record!r})")
    endpoint = otlp.get("endpoint")
    if endpoint is not None and not str(endpoint).startswith(("http://", "https://")):
        problems.append(f"otlp.endpoint: must start with http:// or https:// (got {endpoint!r})")
    insecure = mqtt.get("insecure", False)
    if not isinstance(insecure, bool):
        problems.append(f"mqtt.insecure: must be true or false (got {insecure!r})")
        insecure = False
    signing_key = _signing_key(signing, rel, insecure, need_key, problems)
    device_keys: dict[str, tuple[str, ...]] = {}
    if signing.get("device_keys") is not None:
        from sync.cloud.device_keys import load_device_keys
        try:
            device_keys = load_device_keys(rel(signing["device_keys"]) or "")
        except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
            problems.append(f"signing.device_keys: {exc} (got {signing['device_keys']!r})")
    require_device_keys = signing.get("require_device_keys", False)
    if not isinstance(require_device_keys, bool):
        problems.append("signing.require_device_keys: must be true or false (got "
                        f"{require_device_keys!r})")
        require_device_keys = False
    if not insecure and not (tls.get("cert") and tls.get("key")):
        problems.append("mqtt.tls: a client certificate (cert, key) is required: the broker"
                        " knows the cloud by its CN (or mqtt.insecure = true for an anonymous"
                        f" lab broker) (got {tls or None!r})")
    if problems:
        raise CloudConfigError(str(file), problems)
    return CloudConfig(host=host, port=port, store_url=str(url),
                       topic_prefix=mqtt.get("topic_prefix", "edge"), protocol=protocol,
                       group=mqtt.get("group", "ingest"), tls_ca=rel(tls.get("ca")),
                       tls_cert=rel(tls.get("cert")), tls_key=rel(tls.get("key")),
                       username=mqtt.get("username"), password=password,
                       otlp_endpoint=endpoint, workers=workers, max_record_bytes=max_record,
                       tools=tuple(sorted(tools.items())), collections=collections,
                       handoffs=tuple(sorted(handoffs.items())),
                       groups=groups,
                       signing_key=signing_key, insecure=insecure, device_keys=device_keys,
                       require_device_keys=require_device_keys)


def _signing_key(signing: dict[str, Any], rel: Any, insecure: bool, need_key: bool,
                 problems: list[str]) -> str | None:
    key = signing.get("key")
    if key is None:
        if not insecure or not need_key:
            problems.append("signing.key: is required: the file of the key that signs every"
                            " downlink message (edge-agent-cloud keys init makes it), or"
                            " mqtt.insecure = true for an unsigned lab setup (got None)")
        return None
    if not isinstance(key, str) or not key:
        problems.append(f"signing.key: must be a file name (got {key!r})")
        return None
    path: str = rel(key)
    if need_key:
        from sync.signing import load_private_key
        try:
            load_private_key(path)
        except OSError as exc:
            problems.append(f"signing.key: cannot read ({exc.strerror}; edge-agent-cloud keys"
                            f" init makes it) (got {key!r})")
        except ValueError as exc:
            problems.append(f"signing.key: not an Ed25519 private key in PEM ({exc})"
                            f" (got {key!r})")
    return path
