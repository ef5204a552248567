"""Building the cloud's parts from cloud.toml: the store, the [tools] and [handoffs]
functions, an ingest worker (or a sender: the CLI's short-lived client)."""

from __future__ import annotations

from typing import Any

from sync.cloud.config import CloudConfig, CloudConfigError
from sync.cloud.ingest import IngestWorker
from sync.cloud.store import SqlCloudStore


def store_of(cfg: CloudConfig) -> SqlCloudStore:
    return SqlCloudStore(cfg.store_url, max_record_bytes=cfg.max_record_bytes,
                         projection=cfg.projection)


def load_tools(cfg: CloudConfig, entries: Any = None, table: str = "tools") -> dict[str, Any]:
    """Import the `"module:function"` entries; one that cannot be imported is a config error
    (exit 78, naming the key), not a traceback that systemd would restart forever."""
    import importlib

    from sync.config_reader import ConfigIssue
    out, issues = {}, []
    for name, entry in cfg.tools if entries is None else entries:
        module, _, attr = entry.partition(":")
        try:
            out[name] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            issues.append(ConfigIssue(f"{table}.{name}", f"cannot be imported ({exc}); install"
                                      " its module where the service runs", entry))
    if issues:
        raise CloudConfigError(cfg.path, issues)
    return out


def worker(cfg: CloudConfig, store: SqlCloudStore, **kw: Any) -> IngestWorker:
    """An ingest worker; the [tools] modules are imported only where `tools` is not given
    (by `run`, the one command that executes remote tools)."""
    if "tools" not in kw:
        kw["tools"] = load_tools(cfg)
        kw.setdefault("handoffs", load_tools(cfg, [
            (n, e) for n, e in cfg.handoffs if not e.startswith("workflow:")], "handoffs"))
    if cfg.signing_key:
        from sync.signing import Sealer, load_private_key
        kw.setdefault("sealer", Sealer(load_private_key(cfg.signing_key)))
    if cfg.device_keys or cfg.require_device_keys:
        from sync.cloud.device_keys import DeviceKeys
        kw.setdefault("uplink", DeviceKeys(cfg.device_keys, required=cfg.require_device_keys))
    if "work" not in kw:  # pools of its own, sized by [limits] (`run` shares one set)
        kw["limits"] = cfg.limits
    return IngestWorker(store, host=cfg.host, port=cfg.port, prefix=cfg.topic_prefix,
                        group=cfg.group, protocol=cfg.protocol, tls_ca=cfg.tls_ca,
                        tls_cert=cfg.tls_cert, tls_key=cfg.tls_key, username=cfg.username,
                        password=cfg.password, otlp_endpoint=cfg.otlp_endpoint,
                        collections=cfg.collections, **kw)


__all__ = ["load_tools", "store_of", "worker"]
