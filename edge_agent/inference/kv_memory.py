"""How much memory a model's KV cache takes for N sequences, from the GGUF metadata alone.

llama.cpp keeps, for every cell of the cache, one key and one value vector per layer, in F16
by default: n_ctx x parallel cells x n_layer x (k_len + v_len) x n_head_kv x 2 bytes. The
figure is for full-attention models (llama and its kin); a sliding-window or recurrent
architecture keeps less, so the figure is an upper bound there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
F16_BYTES = 2


@dataclass(frozen=True)
class KvShape:
    """The metadata that sizes one token's cache cell."""

    n_layer: int
    n_head_kv: int
    k_len: int
    v_len: int

    @property
    def bytes_per_token(self) -> int:
        return self.n_layer * (self.k_len + self.v_len) * self.n_head_kv * F16_BYTES


def kv_shape(path: str | Path) -> KvShape | None:
    """The cache shape the GGUF describes, or None when its metadata does not say."""
    try:
        from gguf import GGUFReader
        reader = GGUFReader(str(path))

        def field(key: str) -> Any:
            f = reader.fields.get(key)
            return None if f is None else f.parts[-1][0]
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        n_layer = field(f"{arch}.block_count")
        n_embd = field(f"{arch}.embedding_length")
        n_head = field(f"{arch}.attention.head_count")
        if n_layer is None or n_embd is None or not n_head:
            return None
        n_head_kv = field(f"{arch}.attention.head_count_kv") or n_head
        k_len = field(f"{arch}.attention.key_length") or int(n_embd) // int(n_head)
        v_len = field(f"{arch}.attention.value_length") or int(n_embd) // int(n_head)
        return KvShape(int(n_layer), int(n_head_kv), int(k_len), int(v_len))
    except Exception as exc:  # noqa: BLE001 - a file we cannot read has no figure
        log.debug("%s: no KV shape in the metadata (%s)", path, exc)
        return None


def kv_bytes(shape: KvShape, *, n_ctx: int, parallel: int) -> int:
    """Bytes of KV cache for `parallel` sequences of `n_ctx` tokens each."""
    return shape.bytes_per_token * n_ctx * parallel


def device_memory_bytes() -> int | None:
    """Physical memory of this machine (on a Jetson the GPU shares it)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"
