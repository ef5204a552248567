"""Load the device configuration: parse TOML, overlay the environment, validate once."""

from __future__ import annotations

import copy
import os
import re
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jsonschema

from edge_agent.config.model import (
    AgentConfig,
    Config,
    DeviceConfig,
    ModelConfig,
    RetryPolicy,
    SyncConfig,
    TelemetryConfig,
    TlsConfig,
    ToolConfig,
    WorkflowConfig,
)
from edge_agent.config.workflows import parse_retry, parse_workflow
from edge_agent.errors import ConfigError
from sync.config_reader import ConfigIssue, Table
from sync.dbapi import redact

DEFAULT_PATH = Path("/etc/edge-agent/config.toml")
MAX_CONFIG_BYTES = 4 * 1024 * 1024
SECTIONS = ("device", "model", "tools", "agents", "workflows", "sync", "telemetry")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
STREAMS = ("control", "checkpoints", "traces", "metrics")

# Environment variables that override single keys, applied before validation.
ENV_OVERLAY = {
    "EDGE_AGENT_DEVICE_ID": ("device", "id"),
    "EDGE_AGENT_DATA_DIR": ("device", "data_dir"),
    "EDGE_AGENT_RUNTIME_DIR": ("device", "runtime_dir"),
    "EDGE_AGENT_DATABASE": ("device", "database"),
    "EDGE_AGENT_LOG_FORMAT": ("telemetry", "log_format"),
    "EDGE_AGENT_LOG_LEVEL": ("telemetry", "log_level"),
}


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """--config, else $EDGE_AGENT_CONFIG, else /etc/edge-agent/config.toml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("EDGE_AGENT_CONFIG")
    return Path(env) if env else DEFAULT_PATH


def load_config(path: str | os.PathLike[str] | None = None,
                env: Mapping[str, str] | None = None, *, deployed: bool = True,
                candidate: dict[str, Any] | None = None) -> Config:
    """Read and validate the file; raise ConfigError listing every problem. With
    `deployed`, the fragment the cloud deployed (config/deployed.py) is merged in;
    `candidate` is a fragment to merge instead (checking a deployment before applying it)."""
    file = config_path(path)
    name = str(file)
    try:
        text = _read_config_file(file).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(name, [ConfigIssue("", "file not found", has_value=False)]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(name, [ConfigIssue("", f"cannot read: {exc}", has_value=False)]) from exc
    except ValueError as exc:
        raise ConfigError(name, [ConfigIssue("", f"cannot read: {exc}", has_value=False)]
                          ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(name, [ConfigIssue("", f"TOML syntax error: {exc}",
                                             has_value=False)]) from exc
    except RecursionError:
        raise ConfigError(name, [ConfigIssue("", "TOML nested too deeply",
                                             has_value=False)]) from None
    try:
        environ = os.environ if env is None else env
        cfg = parse_config(copy.deepcopy(data), file.resolve(), environ)
        if candidate is not None:
            from edge_agent.config.deployed import merge
            return parse_config(merge(data, candidate), cfg.path, environ)
        if deployed and cfg.sync is not None and cfg.sync.remote_config:
            return _with_deployment(cfg, data, environ)
        return cfg
    except RecursionError:
        raise ConfigError(name, [ConfigIssue("", "nested too deeply to check",
                                             has_value=False)]) from None


def _with_deployment(cfg: Config, data: dict[str, Any], env: Mapping[str, str]) -> Config:
    """The local config with the current deployment's fragment merged in."""
    import dataclasses

    from edge_agent.config.deployed import overlay
    assert cfg.sync is not None
    try:
        merged, sha = overlay(data, cfg.device.data_dir, cfg.sync.remote_config)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(cfg.path), [ConfigIssue(
            "sync.remote_config", f"the deployed config cannot be read ({exc}); `edge-agent"
            " config rollback` returns to the previous one", has_value=False)]) from exc
    if sha is None:
        return cfg
    return dataclasses.replace(parse_config(merged, cfg.path, env), deployed=sha)


def _read_config_file(file: Path) -> bytes:
    """The file's bytes; ValueError for anything but a regular file of at most
    MAX_CONFIG_BYTES (a device, a FIFO or /dev/zero would block or never end)."""
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("is not a regular file")
        data = b""
        while len(data) <= MAX_CONFIG_BYTES and (chunk := os.read(fd, 1 << 16)):
            data += chunk
        if len(data) > MAX_CONFIG_BYTES:
            raise ValueError(f"is larger than {MAX_CONFIG_BYTES} bytes")
        return data
    finally:
        os.close(fd)


def parse_config(data: dict[str, Any], path: Path, env: Mapping[str, str]) -> Config:
    issues: list[ConfigIssue] = []
    for var, (section, key) in ENV_OVERLAY.items():
        if var in env:
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section][key] = env[var]
    base = path.parent
    root = Table(data, "", issues)
    device = _device(root, base)
    models = {n: m for n, t in root.tables("model").items() if (m := _model(n, t, base))}
    tools = {n: tc for n, t in root.tables("tools").items() if (tc := _tool(n, t, base))}
    for tc in tools.values():
        fb = tc.options.get("fallback") if tc.kind == "remote" else None
        if fb is not None and (fb not in tools or tools[fb].kind == "remote"):
            issues.append(ConfigIssue(f"tools.{tc.name}.fallback", "names no local tool", fb))
    agents = {n: a for n, t in root.tables("agents").items()
              if (a := _agent(n, t, models, tools))}
    for a in agents.values():
        for target in a.handoff:
            if target not in agents:
                issues.append(ConfigIssue(f"agents.{a.name}.handoff", "names no [agents.*] entry",
                                          target))
    workflows: dict[str, WorkflowConfig] = {}
    for n, t in root.tables("workflows").items():
        wf = parse_workflow(n, t, tools, agents)
        if wf is not None:
            workflows[n] = wf
    sync = _sync(root, base)
    if sync is not None and device is not None and device.database is not None:
        issues.append(ConfigIssue("device.database", "a PostgreSQL store is the cloud"
                                  " runner's; a device with [sync] keeps its SQLite file",
                                  redact(device.database)))
    telemetry = _telemetry(root)
    root.finish()
    if issues or device is None:
        raise ConfigError(str(path), issues or [ConfigIssue("device", "is required",
                                                            has_value=False)])
    return Config(path=path, device=device, models=MappingProxyType(models),
                  tools=MappingProxyType(tools), agents=MappingProxyType(agents),
                  workflows=MappingProxyType(workflows), sync=sync, telemetry=telemetry)


def _path(t: Table, key: str, base: Path, default: str | None = None) -> Path | None:
    value = t.string(key, default)
    if value is None:
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _device(root: Table, base: Path) -> DeviceConfig | None:
    t = root.table("device", required=True)
    if t is None:
        return None
    dev_id = t.string("id", required=True)
    if dev_id is not None and not _ID.match(dev_id):
        t.error("id", "must be 1-64 letters, digits, '.', '_' or '-' (it names MQTT topics)",
                dev_id)
        dev_id = None
    data_dir = _path(t, "data_dir", base, "/var/lib/edge-agent")
    runtime_dir = _path(t, "runtime_dir", base, os.environ.get("RUNTIME_DIRECTORY")
                        or "/run/edge-agent")
    sync_mode = t.string("synchronous", "FULL", choices=("FULL", "NORMAL", "EXTRA"))
    drain = t.number("drain_timeout_s", 30.0, min=0.0)
    # the engine's store: the SQLite file in data_dir, or (the cloud runner) PostgreSQL
    database = t.string("database")
    if database is not None and not database.startswith(("postgresql://", "postgres://")):
        t.error("database", "must be a postgresql:// URL (leave it out for the SQLite file"
                " in data_dir)", redact(database))
        database = None
    t.finish()
    if dev_id is None or data_dir is None or runtime_dir is None:
        return None
    return DeviceConfig(id=dev_id, data_dir=data_dir, runtime_dir=runtime_dir,
                        synchronous=sync_mode, drain_timeout_s=drain, database=database)


def _model(name: str, t: Table, base: Path) -> ModelConfig | None:
    kind = t.string("kind", "llama", choices=("llama", "openai"))
    fields: dict[str, Any] = {"name": name, "kind": kind}
    if kind == "llama":
        fields["path"] = _path(t, "path", base)
        if fields["path"] is None:
            t.error("path", "is required")
        fields["n_ctx"] = t.integer("n_ctx", 2048, min=64, max=1 << 20)
        fields["parallel"] = t.integer("parallel", 1, min=1, max=256)  # llama.cpp's limit
        fields["n_gpu_layers"] = t.integer("n_gpu_layers", 0, min=-1)
        fields["n_threads"] = t.integer("n_threads", min=1, max=256)
        fields["chat_format"] = t.string("chat_format")
    else:
        fields["base_url"] = t.string("base_url", required=True)
        if fields["base_url"] and not re.match(r"^https?://", fields["base_url"]):
            t.error("base_url", "must start with http:// or https://", fields["base_url"])
        fields["api_key_env"] = t.string("api_key_env")
        fields["api_key_file"] = _path(t, "api_key_file", base)
        fields["model_id"] = t.string("model_id")
        fields["max_hint_retries"] = t.integer("max_hint_retries", 2, min=0, max=10)
        if t.has("api_key"):
            t.raw("api_key")
            t.error("api_key", "keys never live in the config file; use api_key_env or "
                    "api_key_file", "***")
    fields["seed"] = t.integer("seed", 0, min=0)
    fields["timeout_s"] = t.number("timeout_s", 120.0, min=0.0, exclusive_min=True)
    t.finish()
    return ModelConfig(**{k: v for k, v in fields.items() if v is not None})


def _schema(t: Table, key: str) -> Mapping[str, Any] | None:
    value = t.mapping(key)
    if value is None:
        return None
    try:
        jsonschema.Draft202012Validator.check_schema(value)
    except jsonschema.SchemaError as exc:
        t.error(key, f"is not a valid JSON Schema: {exc.message}", value)
        return None
    from edge_agent.inference.gbnf import SchemaGrammarError
    from edge_agent.inference.schema_grammar import grammar_for, unsupported_keywords
    problems = unsupported_keywords(value)
    for where in problems:
        t.error(key, f"uses {where!r}, which grammar-constrained generation cannot honour",
                value)
    if not problems:
        try:
            grammar_for(value)
        except SchemaGrammarError as exc:
            t.error(key, f"admits no value a model could produce: {exc}", value)
            return None
    return MappingProxyType(value)


def _tool(name: str, t: Table, base: Path) -> ToolConfig | None:
    from edge_agent.tools.kinds import KINDS, check_tool_options

    kind = t.string("kind", required=True, choices=tuple(sorted(KINDS)))
    fields: dict[str, Any] = {
        "name": name, "kind": kind,
        "description": t.string("description", "", nonempty=False),
        "params": _schema(t, "params") or MappingProxyType({"type": "object"}),
        "result": _schema(t, "result"),
        "timeout_s": t.number("timeout_s", 10.0, min=0.0, exclusive_min=True),
        "idempotent": t.boolean("idempotent", False),
        "location": t.string("location", "local", choices=("local", "remote")),
        "retry": parse_retry(t) or RetryPolicy(),
        "on_unknown": t.string("on_unknown", "escalate", choices=("escalate", "fail",
                                                               "assume_failed")),
    }
    if kind == "kv":  # the built-in shared state: its own parameters, idempotent writes
        from edge_agent.tools.kv_kind import DESCRIPTION, PARAMS
        fields["params"] = MappingProxyType(dict(PARAMS))
        fields["description"] = fields["description"] or DESCRIPTION
        fields["idempotent"] = True
    options = t.rest()
    if kind is not None:
        for sub, message, value in check_tool_options(kind, options, base):
            t.error(sub, message, value)
    fields["options"] = MappingProxyType(options)
    if kind is None:
        return None
    return ToolConfig(**fields)


def _agent(name: str, t: Table, models: Mapping[str, ModelConfig],
           tools: Mapping[str, ToolConfig]) -> AgentConfig | None:
    model = t.string("model", required=True)
    if model is not None and model not in models:
        t.error("model", "names no [model.*] entry", model)
    allowed = t.list_of_str("tools", ()) or ()
    for tool in allowed:
        if tool not in tools:
            t.error("tools", "names no [tools.*] entry", tool)
    agent = AgentConfig(
        name=name, model=model or "",
        system=t.string("system", "", nonempty=False),
        tools=allowed,
        handoff=t.list_of_str("handoff", ()) or (),
        max_turns=t.integer("max_turns", 8, min=1, max=100),
        output_schema=_schema(t, "output_schema"),
        allow_remote=t.boolean("allow_remote", False),
        max_tokens=t.integer("max_tokens", 256, min=1, max=32768),
        temperature=t.number("temperature", 0.2, min=0.0, max=5.0),
    )
    t.finish()
    return agent if model else None


def _sync(root: Table, base: Path) -> SyncConfig | None:
    t = root.table("sync")
    if t is None:
        return None
    broker = t.string("broker", required=True)
    host, port = None, None
    if broker is not None:
        m = re.match(r"^(\[[^\]]+\]|[^:\s]+):(\d{1,5})$", broker)
        if not m or not 0 < int(m.group(2)) < 65536:
            t.error("broker", "must be host:port", broker)
        else:
            host, port = m.group(1).strip("[]"), int(m.group(2))
    tls = None
    tt = t.table("tls")
    if tt is not None:
        tls = TlsConfig(ca=_path(tt, "ca", base), cert=_path(tt, "cert", base),
                        key=_path(tt, "key", base))
        if (tls.cert is None) != (tls.key is None):
            tt.error("cert", "cert and key go together", str(tls.cert or tls.key))
        tt.finish()
    limits: dict[str, int] = {}
    lt = t.table("outbox_max_bytes")
    if lt is not None:
        for stream in lt.data:
            if stream not in STREAMS:
                lt.error(stream, "is not a stream (" + ", ".join(STREAMS) + ")", lt.data[stream])
                lt.raw(stream)
            else:
                limits[stream] = lt.integer(stream, min=1024)
        lt.finish()
    collections = t.mapping("collections", {})
    cfg = dict(
        tls=tls,
        username=t.string("username"),
        password_file=_path(t, "password_file", base),
        password_env=t.string("password_env"),
        topic_prefix=t.string("topic_prefix", "edge"),
        protocol=t.string("protocol", "5", choices=("5", "3.1.1")),
        batch_max_records=t.integer("batch_max_records", 500, min=1, max=100_000),
        batch_max_bytes=t.integer("batch_max_bytes", 256 * 1024, min=1024, max=256 * 1024 * 1024),
        linger_s=t.number("linger_s", 0.05, min=0.0, max=60.0),
        window=t.integer("window", 8, min=1, max=1000),
        compression=t.boolean("compression", True),
        keepalive_s=t.integer("keepalive_s", 30, min=5, max=65535),
        ack_timeout_s=t.number("ack_timeout_s", 10.0, min=0.0, exclusive_min=True),
        max_record_bytes=t.integer("max_record_bytes", 16 << 20, min=1024),
        anti_entropy_s=t.number("anti_entropy_s", 300.0, min=0.0),
        outbox_max_bytes=MappingProxyType({k: v for k, v in limits.items() if v is not None}),
        collections=MappingProxyType(_collections(t, collections)),
        cloud_keys=tuple(t.list_of_str("cloud_keys", ()) or ()),
        insecure=t.boolean("insecure", False),
        device_key=_path(t, "device_key", base),
        remote_config=_remote_config(t),
        max_clock_skew_s=t.number("max_clock_skew_s", 300.0, min=0.0, max=86400.0),
    )
    _sync_security(t, cfg["cloud_keys"], bool(cfg["insecure"]), tls, cfg["username"])
    prefix = cfg["topic_prefix"]
    if prefix is not None and any(c in prefix for c in "#+") :
        t.error("topic_prefix", "must not contain MQTT wildcards", prefix)
    t.finish()
    if host is None or port is None:
        return None
    return SyncConfig(host=host, port=port, **{k: v for k, v in cfg.items() if v is not None})


def _remote_config(t: Table) -> tuple[str, ...]:
    from edge_agent.config.deployed import REMOTE_TABLES
    names = t.list_of_str("remote_config", ()) or ()
    for name in names:
        if name not in REMOTE_TABLES:
            t.error("remote_config", "names tables a deployment may replace: "
                    + ", ".join(REMOTE_TABLES), name)
            return ()
    return tuple(dict.fromkeys(names))


def _sync_security(t: Table, keys: tuple[str, ...], insecure: bool, tls: TlsConfig | None,
                   username: str | None) -> None:
    """Signed downlink and a broker identity, unless `insecure = true` says otherwise."""
    from sync.signing import parse_public_key
    for i, key in enumerate(keys):
        try:
            parse_public_key(key)
        except ValueError as exc:
            t.error(f"cloud_keys[{i}]", f"not an Ed25519 public key: {exc}", key)
    if len(keys) > 2:
        t.error("cloud_keys", "pins at most 2 keys (the current one and, during a rollover,"
                " the next)", list(keys))
    if insecure:
        return
    if not keys:
        t.error("cloud_keys", "is required: the cloud's public key that signs every downlink"
                " message (edge-agent-cloud keys init prints it), or insecure = true for an"
                " unsigned lab setup")
    if tls is None or (tls.cert is None and not username):
        t.error("tls.cert" if tls is not None else "tls", "is required: the device's client"
                " certificate (the broker knows the device by its CN), or insecure = true"
                " for an anonymous lab broker")


def _collections(t: Table, collections: dict[str, Any]) -> dict[str, Mapping[str, Any]]:
    from sync.documents import CollectionRules, DocumentError
    out: dict[str, Mapping[str, Any]] = {}
    for name, rules in collections.items():
        if not isinstance(rules, dict):
            t.error(f"collections.{name}", "must be a table", rules)
            continue
        try:
            CollectionRules.from_mapping(rules)
        except DocumentError as exc:  # the rules' own typed error names the key
            t.error(f"collections.{name}", str(exc), rules)
            continue
        out[name] = MappingProxyType(rules)
    return out


def _telemetry(root: Table) -> TelemetryConfig:
    t = root.table("telemetry")
    if t is None:
        return TelemetryConfig()
    levels = t.mapping("levels", {})
    for logger, level in levels.items():
        if not isinstance(level, str) or level.upper() not in _LEVELS:
            t.error(f"levels.{logger}", "must be one of " + ", ".join(_LEVELS), level)
    endpoint = t.string("otlp_endpoint")
    if endpoint is not None and not re.match(r"^https?://", endpoint):
        t.error("otlp_endpoint", "must start with http:// or https://", endpoint)
        endpoint = None
    level = t.string("log_level", "INFO")
    if level is not None and level.upper() not in _LEVELS:
        t.error("log_level", "must be one of " + ", ".join(_LEVELS), level)
        level = "INFO"
    cfg = TelemetryConfig(
        log_format=t.string("log_format", "json", choices=("json", "text")) or "json",
        log_level=(level or "INFO").upper(),
        levels=MappingProxyType({k: str(v).upper() for k, v in levels.items()}),
        otlp_endpoint=endpoint,
        service_name=t.string("service_name", "edge-agent") or "edge-agent",
        metrics_interval_s=t.number("metrics_interval_s", 30.0, min=0.5),
    )
    t.finish()
    return cfg
