"""The KV cache each local model asks for (n_ctx x parallel sequences), beside the device's
memory: reported by `status` and `metrics`, and a model that cannot fit fails `config check`.

The figure comes from the GGUF metadata (inference/kv_memory.py); the model is not loaded.
The device's memory is its physical RAM, which the KV cache shares with the weights (and on
a Jetson with the GPU).
"""

from __future__ import annotations

import os
from typing import Any

from edge_agent.config.model import Config
from sync.config_reader import ConfigIssue


def model_memory(config: Config) -> list[dict[str, Any]]:
    """One entry per local model: parallel, n_ctx, KV bytes (None when the file has no
    figure), weights bytes (the file's size) and the device's memory."""
    from edge_agent.inference.kv_memory import device_memory_bytes, kv_bytes, kv_shape
    device = device_memory_bytes()
    out = []
    for name, m in sorted(config.models.items()):
        if m.kind != "llama" or m.path is None:
            continue
        shape = kv_shape(m.path) if os.path.isfile(m.path) else None
        out.append({"model": name, "parallel": m.parallel, "n_ctx": m.n_ctx,
                    "kv_bytes": kv_bytes(shape, n_ctx=m.n_ctx, parallel=m.parallel)
                    if shape else None,
                    "weights_bytes": os.path.getsize(m.path) if shape else None,
                    "device_bytes": device})
    return out


def check_model_memory(config: Config) -> list[ConfigIssue]:
    """An issue on model.X.parallel for each model whose weights and KV cache for its N
    sequences do not fit in the device's memory, with the figures."""
    from edge_agent.inference.kv_memory import mib
    issues = []
    for m in model_memory(config):
        kv, weights, device = m["kv_bytes"], m["weights_bytes"], m["device_bytes"]
        if kv is None or weights is None or device is None or kv + weights <= device:
            continue
        issues.append(ConfigIssue(
            f"model.{m['model']}.parallel",
            f"{m['parallel']} sequences x {m['n_ctx']} tokens need {mib(kv)} of KV cache "
            f"plus {mib(weights)} of weights, more than the device's {mib(device)}",
            m["parallel"]))
    return issues


def render_kv(entries: list[dict[str, Any]]) -> str:
    """`small 4 x 2048 tokens, KV 16.0 MiB` for each model; '-' when there is no figure."""
    from edge_agent.inference.kv_memory import mib
    parts = [f"{m['model']} {m['parallel']} x {m['n_ctx']} tokens, KV "
             + (mib(m["kv_bytes"]) if m["kv_bytes"] is not None else "-") for m in entries]
    return "; ".join(parts) or "no local model"
