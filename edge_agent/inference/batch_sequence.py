"""One sequence of a batched model: the request it serves, its own sampler chain, its cache.

Each sequence samples with a llama.cpp sampler chain of its own (its seed, its temperature,
its grammar), built like llama-cpp-python's default chain, so a sequence's tokens depend on
its logits and its seed only, never on which other sequences share the batch.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

TOP_K, TOP_P, MIN_P, TYPICAL_P = 40, 0.95, 0.05, 1.0  # llama-cpp-python's defaults


@dataclass
class SeqResult:
    """What one sequence produced, with the figures a Completion carries."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float
    decode_s: float
    total_s: float
    finish_reason: str
    reused_tokens: int = 0  # prompt tokens found in the cache (own or copied)


@dataclass
class SeqRequest:
    tokens: list[int]
    max_tokens: int
    temperature: float
    seed: int
    grammar: str | None
    stop: tuple[str, ...]
    cancel: threading.Event
    future: Future[SeqResult] = field(default_factory=Future)


def sampler_chain(vocab: Any, temperature: float, seed: int, grammar: Any | None) -> Any:
    """A fresh chain: grammar first (tool calls valid by construction), then the usual
    top-k, typical, top-p, min-p, temperature and a seeded draw; greedy at temperature 0."""
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if grammar is not None:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_clone(grammar))
    if temperature == 0.0:
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
    else:
        for s in (llama_cpp.llama_sampler_init_top_k(TOP_K),
                  llama_cpp.llama_sampler_init_typical(TYPICAL_P, 1),
                  llama_cpp.llama_sampler_init_top_p(TOP_P, 1),
                  llama_cpp.llama_sampler_init_min_p(MIN_P, 1),
                  llama_cpp.llama_sampler_init_temp(temperature),
                  llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF)):
            llama_cpp.llama_sampler_chain_add(chain, s)
    return chain


class Sequence:
    """A KV sequence id and what it holds: `cached` lists the tokens whose keys and values
    are in the cache at positions 0..len-1; `req` is the request it serves, if any."""

    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.cached: list[int] = []
        self.req: SeqRequest | None = None
        self.chain: Any = None
        self.pending: list[int] = []  # prompt tokens not yet evaluated
        self.next_token: int | None = None  # sampled, to be evaluated in the next step
        self.out: list[bytes] = []
        self.raw = bytearray()  # the pieces of `out`, joined as they come
        self.stop_reach = 0  # the bytes a stop string can span, plus an unfinished character
        self.n_out = 0
        self.logit_index = -1
        self.started = self.first = self.last = 0.0
        self.reused = 0

    def start(self, req: SeqRequest, keep: int, chain: Any) -> None:
        self.req = req
        self.cached = self.cached[:keep]
        self.pending = req.tokens[keep:]
        self.reused = keep
        self.chain = chain
        self.next_token = None
        self.out, self.n_out, self.raw = [], 0, bytearray()
        self.stop_reach = max((len(s.encode()) for s in req.stop), default=0) + 3
        self.started = time.perf_counter()
        self.first = self.last = 0.0

    def add(self, piece: bytes) -> None:
        self.out.append(piece)
        self.raw += piece
        self.n_out += 1

    def stopped(self) -> bool:
        """Whether a stop string is in the text. It was not before the last piece, so a new
        one ends in that piece: only the text's last bytes are decoded, not all of it."""
        assert self.req is not None
        tail = self.raw[-(len(self.out[-1]) + self.stop_reach):].decode("utf-8", "replace")
        return any(s in tail for s in self.req.stop)

    def result(self, finish: str) -> SeqResult:
        assert self.req is not None
        now = time.perf_counter()
        text = b"".join(self.out).decode("utf-8", errors="ignore")
        for stop in self.req.stop:
            if stop and stop in text:
                text, finish = text[:text.index(stop)], "stop"
        first = self.first or now
        return SeqResult(text=text, prompt_tokens=len(self.req.tokens),
                         completion_tokens=self.n_out, ttft_s=first - self.started,
                         decode_s=(self.last or first) - first, total_s=now - self.started,
                         finish_reason=finish, reused_tokens=self.reused)

    def release(self) -> SeqRequest | None:
        req, self.req = self.req, None
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None
        self.pending, self.next_token, self.logit_index = [], None, -1
        return req


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
