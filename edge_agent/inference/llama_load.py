"""Opening a GGUF model with llama.cpp, with errors that name the file and the value."""

from __future__ import annotations

import logging
import os
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


def check_model(path: str | Path, n_ctx: int) -> Path:
    """The file, if it is a GGUF whose trained context holds n_ctx; ModelLoadError if not."""
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
    return path


def load_llama(path: str | Path, *, n_ctx: int, n_gpu_layers: int = 0,
               n_threads: int | None = None, seed: int = 0,
               chat_format: str | None = None) -> Any:
    """A llama_cpp.Llama for the file; ModelLoadError for every way that can fail."""
    path = check_model(path, n_ctx)
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


def load_batched(path: str | Path, *, n_ctx: int, parallel: int, n_batch: int = 512,
                 n_gpu_layers: int = 0, n_threads: int | None = None) -> tuple[Any, Any]:
    """The model and one context with room for `parallel` sequences of n_ctx tokens each:
    one KV stream per sequence (parallel x n_ctx cells), so a token attends to its own
    sequence's cells only and a step costs what its tokens cost."""
    path = check_model(path, n_ctx)
    if n_ctx == 0:
        n_ctx = trained_context(path) or 2048
    try:
        import llama_cpp
        from llama_cpp import _internals as internals
        from llama_cpp._utils import suppress_stdout_stderr
    except ImportError as exc:
        raise ModelLoadError(str(path), "llama-cpp-python is not installed") from exc
    if parallel > llama_cpp.llama_max_parallel_sequences():
        raise ModelLoadError(str(path), f"parallel {parallel} exceeds llama.cpp's limit of "
                                        f"{llama_cpp.llama_max_parallel_sequences()}")
    threads = n_threads or max(os.cpu_count() or 2, 2) // 2
    try:
        from llama_cpp._logger import set_verbose
        set_verbose(False)  # llama.cpp's own log: errors only, as Llama(verbose=False) does
        with suppress_stdout_stderr(disable=False):
            llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if n_gpu_layers == -1 else n_gpu_layers
        model = internals.LlamaModel(path_model=str(path), params=mparams, verbose=False)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx * parallel
        cparams.n_batch = cparams.n_ubatch = n_batch
        cparams.n_seq_max = parallel
        cparams.kv_unified = False
        cparams.n_threads = cparams.n_threads_batch = threads
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as Llama does
        cparams.no_perf = True
        with suppress_stdout_stderr(disable=False):
            ctx = internals.LlamaContext(model=model, params=cparams, verbose=False)
        return model, ctx
    except (ValueError, RuntimeError, OSError) as exc:
        raise ModelLoadError(str(path), f"llama.cpp refused it ({exc})") from exc
