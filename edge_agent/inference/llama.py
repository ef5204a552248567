"""The llama.cpp provider: one worker thread per loaded model, a queue in front of it.

Requests can time out and be cancelled (checked between generated tokens). Output under a
schema is generated with a grammar, then parsed strictly and validated; an invalid sample
is drawn again with another seed (see schema_grammar). The static prefix of a prompt
(system prompt and tool descriptions) stays in the KV cache: llama.cpp reuses the longest
common prefix with the previous request, and a RAM cache keeps prefix states across
agents that share the model.
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

from edge_agent.inference.provider import (
    Cancelled, Completion, InferenceError, InvalidOutput, Message, ModelLoadError,
)
from edge_agent.inference.schema_grammar import check, tighten

log = logging.getLogger(__name__)
MAX_RESAMPLES = 8


def load_llama(path: Path, *, n_ctx: int, n_gpu_layers: int, n_threads: int | None,
               seed: int, chat_format: str | None) -> Any:
    if not path.exists():
        raise ModelLoadError(str(path), "no such file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ModelLoadError(str(path), "not a GGUF file")
    try:
        import llama_cpp
    except ImportError as exc:
        raise ModelLoadError(str(path), "llama-cpp-python is not installed") from exc
    try:
        from gguf import GGUFReader
        reader = GGUFReader(str(path))
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        field = reader.fields.get(f"{arch}.context_length")
        trained = int(field.parts[-1][0]) if field is not None else None
    except Exception:  # noqa: BLE001 - the metadata check is a courtesy; llama.cpp decides
        trained = None
    if trained is not None and n_ctx > trained:
        raise ModelLoadError(str(path), f"n_ctx {n_ctx} exceeds the model's trained context "
                                        f"{trained}")
    try:
        return llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                               n_threads=n_threads, seed=seed, chat_format=chat_format,
                               verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(str(path), str(exc)) from exc


def gbnf_for(schema: Mapping[str, Any]) -> str:
    """The stock conversion of the tightened schema, with JSON's ban on raw control
    characters in strings added to the `char` rule (the stock rule lets them through)."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf
    text = json_schema_to_gbnf(json.dumps(tighten(schema)))
    return text.replace('char ::= [^"\\\\] |', 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |')


class LlamaProvider:
    constrained = True

    def __init__(self, name: str, path: str | Path, *, n_ctx: int = 2048, n_gpu_layers: int = 0,
                 n_threads: int | None = None, seed: int = 0, chat_format: str | None = None,
                 cache_bytes: int = 256 << 20, llm: Any = None) -> None:
        self.name = name
        self.path = Path(path)
        self.seed = seed
        self.llm = llm or load_llama(self.path, n_ctx=n_ctx, n_gpu_layers=n_gpu_layers,
                                     n_threads=n_threads, seed=seed, chat_format=chat_format)
        if cache_bytes:
            import llama_cpp
            self.llm.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=cache_bytes))
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
        deadline = time.monotonic() + timeout_s if timeout_s else None
        self._queue.put((fut, list(messages), schema, max_tokens, temperature, seed, deadline,
                         cancel))
        try:
            return fut.result(timeout=timeout_s)
        except TimeoutError:
            cancel.set()
            raise InferenceError(f"{self.name}: no answer within {timeout_s:g}s",
                                 retryable=True, kind="timeout") from None

    async def agenerate(self, messages: Sequence[Message], **kw: Any) -> Completion:
        """For the event loop: the future resolves from the worker thread, never blocking."""
        import asyncio
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.generate(messages, **kw))

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            fut, messages, schema, max_tokens, temperature, seed, deadline, cancel = item
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(self._complete(messages, schema, max_tokens, temperature, seed,
                                              deadline, cancel))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                fut.set_exception(exc)

    def _grammar(self, schema: Mapping[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            import llama_cpp
            self._grammars[key] = llama_cpp.LlamaGrammar.from_string(
                gbnf_for(schema), verbose=False)
        return self._grammars[key]

    def _complete(self, messages: list[Message], schema: Mapping[str, Any] | None,
                  max_tokens: int, temperature: float, seed: int | None,
                  deadline: float | None, cancel: threading.Event) -> Completion:
        base_seed = self.seed if seed is None else seed
        reason = ""
        for attempt in range(1, (MAX_RESAMPLES if schema else 1) + 1):
            out = self._once(messages, schema, max_tokens, temperature,
                             base_seed + attempt - 1, deadline, cancel)
            out.attempts = attempt
            if schema is None:
                return out
            value, reason = check(out.text, schema)
            if reason is None:
                out.parsed = value
                return out
            log.debug("%s: sample %d invalid (%s); drawing again", self.name, attempt, reason)
        raise InvalidOutput(reason or "invalid", MAX_RESAMPLES)

    def _once(self, messages: list[Message], schema: Mapping[str, Any] | None,
              max_tokens: int, temperature: float, seed: int, deadline: float | None,
              cancel: threading.Event) -> Completion:
        start = time.perf_counter()
        ttft = 0.0
        parts: list[str] = []
        finish = ""
        n = 0
        stream = self.llm.create_chat_completion(
            messages=messages, max_tokens=max_tokens, temperature=temperature, seed=seed,
            grammar=self._grammar(schema) if schema else None, stream=True)
        for chunk in stream:
            if cancel.is_set():
                raise Cancelled(f"{self.name}: request cancelled")
            if deadline is not None and time.monotonic() > deadline:
                raise InferenceError(f"{self.name}: generation timed out", retryable=True,
                                     kind="timeout")
            choice = chunk["choices"][0]
            piece = choice.get("delta", {}).get("content")
            if piece:
                if not ttft:
                    ttft = time.perf_counter() - start
                parts.append(piece)
                n += 1
            finish = choice.get("finish_reason") or finish
        text = "".join(parts)
        prompt_tokens = len(self.llm.tokenize(
            "\n".join(m["content"] for m in messages).encode(), add_bos=True))
        return Completion(text=text, model=self.name, prompt_tokens=prompt_tokens,
                          completion_tokens=n, ttft_s=ttft, total_s=time.perf_counter() - start,
                          finish_reason=finish or "stop")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)
