"""The llama.cpp provider for `parallel = N`: one model, N sequences, continuous batching.

Agents of any run share the model: each request becomes a sequence of the running batch
(batch_scheduler.py) with its own sampler chain, seed and grammar, so several agents decode
together for little more than the cost of one. The provider's interface, its resampling of
invalid samples, its timeouts and cancellation are those of LlamaProvider (`parallel = 1`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from edge_agent.inference.batch_scheduler import BatchScheduler
from edge_agent.inference.batch_sequence import SeqRequest
from edge_agent.inference.kv_memory import kv_bytes, kv_shape
from edge_agent.inference.llama_load import load_batched
from edge_agent.inference.provider import (
    Cancelled,
    Completion,
    InferenceTimeout,
    Message,
    ModelLoadError,
)
from edge_agent.inference.resample import complete_validated
from edge_agent.inference.schema_grammar import grammar_for


def chat_formatter(model: Any, chat_format: str | None) -> Callable[..., Any]:
    """The prompt formatter llama-cpp-python would use: the named format, else the GGUF's
    own chat template."""
    from llama_cpp import llama_chat_format as lcf
    if chat_format is not None:
        fn = getattr(lcf, "format_" + chat_format.replace("-", "_").replace(".", "_"), None)
        if fn is None:
            raise ModelLoadError(model.path_model, f"chat_format {chat_format!r} is unknown")
        return fn  # type: ignore[no-any-return]
    template = model.metadata().get("tokenizer.chat_template")
    if template is None:
        raise ModelLoadError(model.path_model, "the GGUF has no chat template; set chat_format")
    eos = model.token_eos()
    return lcf.Jinja2ChatFormatter(template=template,
                                   eos_token=model.token_get_text(eos),
                                   bos_token=model.token_get_text(model.token_bos()),
                                   stop_token_ids=[eos])


class BatchedLlamaProvider:
    constrained = True
    provider = "llama.cpp"  # gen_ai.provider.name

    def __init__(self, name: str, path: str | Path, *, parallel: int, n_ctx: int = 2048,
                 n_gpu_layers: int = 0, n_threads: int | None = None, seed: int = 0,
                 chat_format: str | None = None, n_batch: int = 512) -> None:
        self.name = name
        self.path = Path(path)
        self.seed = seed
        self.parallel = parallel
        self.n_ctx = n_ctx
        self.model, self._ctx = load_batched(self.path, n_ctx=n_ctx, parallel=parallel,
                                             n_batch=n_batch, n_gpu_layers=n_gpu_layers,
                                             n_threads=n_threads)
        shape = kv_shape(self.path)
        self.kv_bytes = kv_bytes(shape, n_ctx=n_ctx, parallel=parallel) if shape else None
        self._format = chat_formatter(self.model, chat_format)
        self._grammars: dict[str, str] = {}
        self._closed = False
        self.scheduler = BatchScheduler(name, self.model, self._ctx.ctx, parallel=parallel,
                                        n_ctx=n_ctx, n_batch=n_batch)

    def tokens(self, messages: Sequence[Message]) -> tuple[list[int], tuple[str, ...]]:
        """The prompt's tokens as the chat template lays it out, and its stop strings."""
        resp = self._format(messages=list(messages))
        stop = resp.stop if isinstance(resp.stop, list) else [resp.stop] if resp.stop else []
        toks = self.model.tokenize(resp.prompt.encode(), add_bos=not resp.added_special,
                                   special=True)
        return list(toks), tuple(str(s) for s in stop)

    def generate(self, messages: Sequence[Message], *, schema: Mapping[str, Any] | None = None,
                 max_tokens: int = 256, temperature: float = 0.2, seed: int | None = None,
                 timeout_s: float | None = None,
                 cancel: threading.Event | None = None) -> Completion:
        if self._closed:
            raise Cancelled(f"{self.name}: the model is closed")
        cancel = cancel or threading.Event()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        tokens, stop = self.tokens(messages)
        grammar = self._grammar(schema) if schema else None

        def once(s: int) -> Completion:
            req = SeqRequest(tokens, max_tokens, temperature, s, grammar, stop, cancel)
            self.scheduler.submit(req)
            try:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                r = req.future.result(timeout=left)
            except FutureTimeout:
                cancel.set()  # the scheduler frees the sequence at its next step
                raise InferenceTimeout(self.name, timeout_s or 0.0) from None
            return Completion(text=r.text, model=self.name, prompt_tokens=r.prompt_tokens,
                              completion_tokens=r.completion_tokens, ttft_s=r.ttft_s,
                              decode_s=r.decode_s, total_s=r.total_s,
                              finish_reason=r.finish_reason,
                              extra={"reused_tokens": r.reused_tokens})
        return complete_validated(self.name, once, schema, self.seed if seed is None else seed)

    async def agenerate(self, messages: Sequence[Message], **kw: Any) -> Completion:
        """For the event loop: the future resolves from the scheduler thread, never blocking."""
        import asyncio
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.generate(messages, **kw))

    def _grammar(self, schema: Mapping[str, Any]) -> str:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = grammar_for(schema)
        return self._grammars[key]

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.scheduler.close()
        from llama_cpp._utils import suppress_stdout_stderr
        with suppress_stdout_stderr(disable=False):  # llama.cpp's farewell lines
            self._ctx.close()
            self.model.close()
