"""The device configuration: one TOML file, validated once into immutable objects."""

from edge_agent.config.load import DEFAULT_PATH, config_path, load_config, parse_config
from edge_agent.config.model import (
    AgentConfig,
    ApprovalSpec,
    BranchRule,
    Config,
    DeviceConfig,
    ModelConfig,
    NodeConfig,
    RetryPolicy,
    SyncConfig,
    TelemetryConfig,
    TlsConfig,
    ToolConfig,
    TriggerSpec,
    WorkflowConfig,
)

__all__ = [
    "DEFAULT_PATH", "AgentConfig", "ApprovalSpec", "BranchRule", "Config", "DeviceConfig",
    "ModelConfig", "NodeConfig", "RetryPolicy", "SyncConfig", "TelemetryConfig", "TlsConfig",
    "ToolConfig", "TriggerSpec", "WorkflowConfig", "config_path", "load_config", "parse_config",
]
