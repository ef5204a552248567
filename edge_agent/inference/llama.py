"""The llama.cpp provider: one worker thread per loaded model, a queue in front of it.

Requests can time out and be cancelled (checked between generated tokens). Output under a
schema is generated with edge-agent's own grammar (gbnf.py), then parsed strictly and
validated; a sample that still fails (a keyword enforced by validation only, or an answer
cut off by max_tokens) is drawn again with the next seed (see schema_grammar). The static
prefix of a prompt (system prompt and tool descriptions) stays in the KV cache: llama.cpp
reuses the longest common prefix with the previous request, and a RAM cache keeps prefix
states across agents that share the model.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from edge_agent.inference.llama_load import load_llama
from edge_agent.inference.provider import (
    Cancelled,
    Completion,
    InferenceTimeout,
    Message,
)
from edge_agent.inference.resample import complete_validated
from edge_agent.inference.schema_grammar import grammar_for

log = logging.getLogger(__name__)


class LlamaProvider:
    constrained = True
    provider = "llama.cpp"  # gen_ai.provider.name

    def __init__(self, name: str, path: str | Path, *, n_ctx: int = 2048, n_gpu_layers: int = 0,
                 n_threads: int | None = None, seed: int = 0, chat_format: str | None = None,
                 cache_bytes: int = 256 << 20, llm: Any = None) -> None:
        self.name = name
        self.path = Path(path)
        self.seed = seed
        self.llm = llm or load_llama(self.path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                                     n_threads=n_threads, seed=seed, chat_format=chat_format)
        if cache_bytes:
            from llama_cpp.llama_cache import LlamaRAMCache
            self.llm.set_cache(LlamaRAMCache(capacity_bytes=cache_bytes))
        self._grammars: dict[str, Any] = {}
        self._queue: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name=f"llama-{name}", daemon=True)
        self._thread.start()

    def generate(self, messages: Sequence[Message], *, schema: Mapping[str, Any] | None = None,
                 max_tokens: int = 256, temperature: float = 0.2, seed: int | None = None,
                 timeout_s: float | None = None,
                 cancel: threading.Event | None = None) -> Completion:
        fut: Future[Completion] = Future()
        cancel = cancel or threading.Event()
        self._queue.put((fut, list(messages), schema, max_tokens, temperature, seed, cancel))
        try:
            return fut.result(timeout=timeout_s)
        except TimeoutError:
            cancel.set()  # the worker stops at its next token, or skips the request
            raise InferenceTimeout(self.name, timeout_s or 0.0) from None

    async def agenerate(self, messages: Sequence[Message], **kw: Any) -> Completion:
        """For the event loop: the future resolves from the worker thread, never blocking."""
        import asyncio
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.generate(messages, **kw))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            fut, messages, schema, max_tokens, temperature, seed, cancel = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                if cancel.is_set():
                    raise Cancelled(f"{self.name}: request cancelled before it started")
                fut.set_result(self._complete(messages, schema, max_tokens, temperature, seed,
                                              cancel))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def _grammar(self, schema: Mapping[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            from llama_cpp.llama_grammar import LlamaGrammar
            self._grammars[key] = LlamaGrammar.from_string(
                grammar_for(schema), verbose=False)
        return self._grammars[key]

    def _complete(self, messages: list[Message], schema: Mapping[str, Any] | None,
                  max_tokens: int, temperature: float, seed: int | None,
                  cancel: threading.Event) -> Completion:
        return complete_validated(
            self.name, lambda s: self._once(messages, schema, max_tokens, temperature, s,
                                            cancel),
            schema, self.seed if seed is None else seed)

    def _once(self, messages: list[Message], schema: Mapping[str, Any] | None,
              max_tokens: int, temperature: float, seed: int,
              cancel: threading.Event) -> Completion:
        start = time.perf_counter()
        ttft = 0.0
        last = start
        parts: list[str] = []
        finish = ""
        n = 0
        stream = self.llm.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
            grammar=self._grammar(schema) if schema else None, stream=True)
        for chunk in stream:
            if cancel.is_set():
                raise Cancelled(f"{self.name}: request cancelled")
            choice = chunk["choices"][0]
            piece = choice.get("delta", {}).get("content")
            if piece:
                last = time.perf_counter()
                if not ttft:
                    ttft = last - start
                parts.append(piece)
                n += 1
            finish = choice.get("finish_reason") or finish
        text = "".join(parts)
        prompt_tokens = len(self.llm.tokenize(
            "\n".join(m["content"] for m in messages).encode(), add_bos=True))
        return Completion(text=text, model=self.name, prompt_tokens=prompt_tokens,
                          completion_tokens=n, ttft_s=ttft, decode_s=last - start - ttft,
                          total_s=time.perf_counter() - start,
                          finish_reason=finish or "stop")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)
