"""Typed, immutable configuration objects, produced once by `load_config`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for a tool or node. `retry_on` names error kinds; None means "what the error says"."""

    max_attempts: int = 1
    initial_delay_s: float = 1.0
    multiplier: float = 2.0
    max_delay_s: float = 60.0
    jitter: float = 0.1
    retry_on: frozenset[str] | None = None

    def delay(self, attempt: int, rand: float = 0.5) -> float:
        """Wait before attempt `attempt + 1`, given attempt numbers from 1; rand in [0, 1)."""
        base = min(self.max_delay_s, self.initial_delay_s * self.multiplier ** (attempt - 1))
        return max(0.0, base * (1.0 + self.jitter * (2.0 * rand - 1.0)))

    def should_retry(self, attempt: int, kind: str, retryable: bool) -> bool:
        if attempt >= self.max_attempts:
            return False
        return retryable if self.retry_on is None else kind in self.retry_on


@dataclass(frozen=True)
class DeviceConfig:
    id: str
    data_dir: Path
    runtime_dir: Path
    synchronous: str = "FULL"
    drain_timeout_s: float = 30.0
    database: str | None = None  # a postgresql:// URL; None: the SQLite file in data_dir


@dataclass(frozen=True)
class ModelConfig:
    name: str
    kind: str = "llama"  # llama | openai
    path: Path | None = None
    n_ctx: int = 2048
    parallel: int = 1  # sequences decoded together (continuous batching); 1: one at a time
    n_gpu_layers: int = 0
    n_threads: int | None = None
    seed: int = 0
    chat_format: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    model_id: str | None = None
    max_hint_retries: int = 2  # openai: re-asks with the schema and the error, then escalate
    timeout_s: float = 120.0


@dataclass(frozen=True)
class ToolConfig:
    name: str
    kind: str
    description: str = ""
    params: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    result: Mapping[str, Any] | None = None
    timeout_s: float = 10.0
    idempotent: bool = False
    location: str = "local"
    retry: RetryPolicy = RetryPolicy()
    on_unknown: str = "escalate"
    options: Mapping[str, Any] = field(default_factory=lambda: EMPTY)


@dataclass(frozen=True)
class AgentConfig:
    name: str
    model: str
    system: str = ""
    tools: tuple[str, ...] = ()
    handoff: tuple[str, ...] = ()
    max_turns: int = 8
    output_schema: Mapping[str, Any] | None = None
    allow_remote: bool = False
    max_tokens: int = 256
    temperature: float = 0.2


@dataclass(frozen=True)
class BranchRule:
    next: str
    when: str | None = None  # CEL; None = default


@dataclass(frozen=True)
class ApprovalSpec:
    prompt: str
    timeout_s: float | None = None
    on_timeout: str = "reject"  # approve | reject | escalate
    show: tuple[str, ...] = ()  # context keys a human needs
    patch_keys: tuple[str, ...] = ()  # context keys an answer's patch may add


@dataclass(frozen=True)
class NodeConfig:
    """One node of a workflow graph; `kind` says which fields matter."""

    name: str
    kind: str  # tool | agent | branch | approval | parallel | handoff | end
    next: str | None = None
    tool: str | None = None
    args: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    args_from: Mapping[str, str] = field(default_factory=lambda: EMPTY)  # arg -> CEL
    agent: str | None = None
    input: str | None = None  # CEL giving the agent's user message
    branch: tuple[BranchRule, ...] = ()
    approval: ApprovalSpec | None = None
    on_reject: str | None = None
    branches: tuple[str, ...] = ()
    join: str = "all"  # all | any | first_success | quorum
    quorum: int | None = None
    retry: RetryPolicy | None = None  # None: the tool's policy
    on_unknown: str | None = None  # None: the tool's
    escalate: str | None = None  # "approval" when attempts run out
    fallback: str | None = None  # node to go to when attempts run out
    output: str | None = None  # end node: CEL giving the run's output
    max_visits: int | None = None  # bound for nodes on a cycle
    timeout_s: float | None = None  # `handoff = "cloud:..."`: how long the cloud may hold it


@dataclass(frozen=True)
class TriggerSpec:
    """`every_s` (a timer) or `gpio` + `line` + `edge` (an edge on a declared input line)."""

    every_s: float | None = None
    input: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    gpio: str | None = None  # a [tools.<name>] of kind "gpio"
    line: str | None = None
    edge: str = "rising"


@dataclass(frozen=True)
class WorkflowConfig:
    name: str
    start: str
    nodes: Mapping[str, NodeConfig]
    description: str = ""
    trigger: TriggerSpec | None = None


@dataclass(frozen=True)
class TlsConfig:
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class SyncConfig:
    host: str
    port: int
    tls: TlsConfig | None = None
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    topic_prefix: str = "edge"
    protocol: str = "5"
    batch_max_records: int = 500
    batch_max_bytes: int = 256 * 1024
    linger_s: float = 0.05
    window: int = 8
    compression: bool = True
    keepalive_s: int = 30
    ack_timeout_s: float = 10.0
    max_record_bytes: int = 16 << 20  # larger records go to the cloud as stubs
    anti_entropy_s: float = 300.0  # how often a document summary goes up; 0 = never
    outbox_max_bytes: Mapping[str, int] = field(default_factory=lambda: EMPTY)
    collections: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: EMPTY)
    cloud_keys: tuple[str, ...] = ()  # pinned public keys that sign the downlink (base64)
    insecure: bool = False  # no pinned key, no client identity: a lab broker only
    device_key: Path | None = None  # seals uplink batches, if the cloud registers its key
    remote_config: tuple[str, ...] = ()  # tables a signed deployment may replace
    max_clock_skew_s: float = 300.0  # a signed command issued further ahead is refused


@dataclass(frozen=True)
class TelemetryConfig:
    log_format: str = "json"
    log_level: str = "INFO"
    levels: Mapping[str, str] = field(default_factory=lambda: EMPTY)
    otlp_endpoint: str | None = None
    service_name: str = "edge-agent"
    metrics_interval_s: float = 30.0


@dataclass(frozen=True)
class Config:
    path: Path
    device: DeviceConfig
    models: Mapping[str, ModelConfig]
    tools: Mapping[str, ToolConfig]
    agents: Mapping[str, AgentConfig]
    workflows: Mapping[str, WorkflowConfig]
    sync: SyncConfig | None
    telemetry: TelemetryConfig
    deployed: str | None = None  # SHA-256 of the deployed fragment merged in, if any

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def db_path(self) -> Path:
        return self.device.data_dir / "edge-agent.db"

    @property
    def database(self) -> str | Path:
        """The engine's store: `[device] database` (PostgreSQL), else the SQLite file."""
        return self.device.database or self.db_path
