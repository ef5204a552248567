"""Builds the engine's agent runner from config: providers per model, tool descriptions."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.agents.loop import AgentResult, ToolInfo, run_agent
from edge_agent.config import Config, ModelConfig
from edge_agent.engine.bindings import AgentContext, AgentRunner, ToolBinding
from edge_agent.inference.provider import ModelLoadError, Provider


def make_provider(m: ModelConfig) -> Provider:
    if m.kind == "openai":
        from edge_agent.inference.openai import OpenAIProvider
        key = os.environ.get(m.api_key_env) if m.api_key_env else None
        if key is None and m.api_key_file is not None:
            key = Path(m.api_key_file).read_text().strip()
        return OpenAIProvider(m.name, m.base_url or "", model_id=m.model_id, api_key=key,
                              timeout_s=m.timeout_s, max_hint_retries=m.max_hint_retries)
    assert m.path is not None
    if m.parallel > 1:
        from edge_agent.inference.llama_batched import BatchedLlamaProvider
        return BatchedLlamaProvider(m.name, m.path, parallel=m.parallel, n_ctx=m.n_ctx,
                                    n_gpu_layers=m.n_gpu_layers, n_threads=m.n_threads,
                                    seed=m.seed, chat_format=m.chat_format)
    from edge_agent.inference.llama import LlamaProvider
    return LlamaProvider(m.name, m.path, n_ctx=m.n_ctx, n_gpu_layers=m.n_gpu_layers,
                         n_threads=m.n_threads, seed=m.seed, chat_format=m.chat_format)


class Providers:
    """Loaded on first use; a model that fails to load is reported on every use."""

    def __init__(self, models: Mapping[str, ModelConfig]) -> None:
        self.models = models
        self._loaded: dict[str, Provider | Exception] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Provider | None:
        with self._lock:
            if name not in self._loaded:
                try:
                    self._loaded[name] = make_provider(self.models[name])
                except (ModelLoadError, OSError, KeyError) as exc:
                    self._loaded[name] = exc
            got = self._loaded[name]
        return None if isinstance(got, Exception) else got

    def remote(self) -> Provider | None:
        for name, m in self.models.items():
            if m.kind == "openai":
                return self.get(name)
        return None


def make_agent_runner(cfg: Config, tools: Mapping[str, ToolBinding]) -> AgentRunner:
    providers = Providers(cfg.models)
    infos = {n: ToolInfo(n, t.description, t.params) for n, t in cfg.tools.items()}

    def runner(agent_name: str, message: str, ctx: AgentContext) -> AgentResult:
        agent = cfg.agents[agent_name]
        local = cfg.models.get(agent.model)
        provider = providers.get(agent.model) if local and local.kind == "llama" else None
        remote = providers.remote() if agent.allow_remote else None
        if local is not None and local.kind == "openai":
            remote = providers.get(agent.model) if agent.allow_remote else None
        return run_agent(agent, message, ctx, provider=provider, tools=infos, remote=remote)
    runner.providers = providers  # type: ignore[attr-defined]
    return runner


__all__: list[Any] = ["Providers", "make_agent_runner"]
