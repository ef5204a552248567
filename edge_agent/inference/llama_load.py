"""Opening a GGUF model with llama.cpp, with errors that name the file and the value."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_agent.inference.provider import ModelLoadError

log = logging.getLogger(__name__)
GGUF_MAGIC = b"GGUF"


def trained_context(path: Path) -> int | None:
    """The context length the model was trained with, from the GGUF metadata."""
    try:
        from gguf import GGUFReader
        reader = GGUFReader(str(path))
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        field = reader.fields.get(f"{arch}.context_length")
        return int(field.parts[-1][0]) if field is not None else None
    except Exception as exc:  # noqa: BLE001 - a courtesy check; llama.cpp has the last word
        log.debug("%s: no context length in the metadata (%s)", path, exc)
        return None


def load_llama(path: str | Path, *, n_ctx: int, n_gpu_layers: int = 0,
               n_threads: int | None = None, seed: int = 0,
               chat_format: str | None = None) -> Any:
    """A llama_cpp.Llama for the file; ModelLoadError for every way that can fail."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(str(path), "no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ModelLoadError(str(path), f"not a GGUF file (starts with {magic!r})")
    if n_ctx < 0:
        raise ModelLoadError(str(path), f"n_ctx must be >= 0, 0 meaning the trained length "
                                        f"(got {n_ctx})")
    trained = trained_context(path)
    if trained is not None and n_ctx > trained:
        raise ModelLoadError(str(path), f"n_ctx {n_ctx} exceeds the model's trained context "
                                        f"{trained}")
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(str(path), "llama-cpp-python is not installed") from exc
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                               n_threads=n_threads, seed=seed, chat_format=chat_format,
                               verbose=False)
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(str(path), f"llama.cpp refused it ({exc})") from exc
