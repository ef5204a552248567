"""Continuous batching: one llama.cpp context with room for N sequences, one thread that
drives it.

Each step is one llama_decode holding one token for every sequence that is generating plus
chunks of the prompts of sequences that are joining. A request takes a free sequence as soon
as one is free and gives it back when it finishes, is cancelled or times out (checked at
every step). Before a prompt is evaluated, the sequence keeps the part of its own cache that
matches the prompt, or, when another sequence holds a longer match (a shared system prompt),
copies them from it (llama_memory_seq_cp copies the other sequence's KV stream, then the
copy is cut back to the shared prefix), so a static prefix is evaluated once for all.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import llama_cpp

from edge_agent.inference.batch_sequence import (
    SeqRequest,
    SeqResult,
    Sequence,
    common_prefix,
    sampler_chain,
)
from edge_agent.inference.provider import Cancelled, InferenceError

log = logging.getLogger(__name__)


@dataclass
class BatchStats:
    """Counters the tests and the benchmark read."""

    steps: int = 0
    peak_active: int = 0
    copied_tokens: int = 0  # prompt tokens taken from another sequence's cells
    reused_tokens: int = 0  # prompt tokens found in the sequence's own cells
    completed: int = 0
    cancelled: int = 0


class BatchScheduler:
    """Owns the context (`ctx`, a llama_context_p) and its N sequences; `submit` is
    thread-safe, everything else runs on the scheduler's own thread."""

    def __init__(self, name: str, model: Any, ctx: Any, *, parallel: int, n_ctx: int,
                 n_batch: int) -> None:
        self.name = name
        self.model = model
        self.ctx = ctx
        self.n_ctx = n_ctx  # per sequence
        self.n_batch = n_batch
        self.vocab = llama_cpp.llama_model_get_vocab(model.model)
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.seqs = [Sequence(i) for i in range(parallel)]
        self.stats = BatchStats()
        self._grammars: dict[str, Any] = {}
        self._pieces: dict[int, bytes] = {}  # token -> its bytes, looked up once
        self._inbox: queue.Queue[SeqRequest | None] = queue.Queue()
        self._waiting: deque[SeqRequest] = deque()
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"llama-batch-{name}",
                                        daemon=True)
        self._thread.start()

    def submit(self, req: SeqRequest) -> None:
        if self._stopping or not self._thread.is_alive():
            req.future.set_exception(Cancelled(f"{self.name}: the model is closed"))
            return
        self._inbox.put(req)

    def free_sequences(self) -> int:
        return sum(1 for s in self.seqs if s.req is None)

    def close(self) -> None:
        self._inbox.put(None)
        self._thread.join(10)
        if not self._thread.is_alive():
            llama_cpp.llama_batch_free(self._batch)
            for g in self._grammars.values():
                llama_cpp.llama_sampler_free(g)
            self._grammars.clear()

    # the scheduler thread

    def _run(self) -> None:
        while True:
            active = any(s.req is not None for s in self.seqs)
            if not active or self._inbox.qsize():  # no exception raised per step
                try:
                    self._take(block=not active and not self._waiting)
                except queue.Empty:
                    pass
            if self._stopping:
                break
            self._admit()
            if any(s.req is not None for s in self.seqs):
                try:
                    self._step()
                except Exception as exc:  # every waiting caller learns of it
                    log.exception("%s: batched decode failed", self.name)
                    self._fail_all(exc)
        self._fail_all(Cancelled(f"{self.name}: the model is closing"))

    def _take(self, block: bool) -> None:
        item = self._inbox.get(block=block)
        while True:
            if item is None:
                self._stopping = True
                return
            self._waiting.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _admit(self) -> None:
        while self._waiting:
            free = [s for s in self.seqs if s.req is None]
            if not free:
                return
            req = self._waiting.popleft()
            if not req.future.set_running_or_notify_cancel():
                continue
            if req.cancel.is_set():
                req.future.set_exception(Cancelled(f"{self.name}: request cancelled before "
                                                   "it started"))
                continue
            if len(req.tokens) >= self.n_ctx:
                req.future.set_exception(InferenceError(
                    f"{self.name}: the prompt has {len(req.tokens)} tokens, the context of a "
                    f"sequence {self.n_ctx}", kind="context"))
                continue
            self._place(req, free)

    def _place(self, req: SeqRequest, free: list[Sequence]) -> None:
        # the free sequence whose own cache matches most, and the best match anywhere
        seq = max(free, key=lambda s: common_prefix(s.cached, req.tokens))
        own = common_prefix(seq.cached, req.tokens)
        src = max(self.seqs, key=lambda s: common_prefix(s.cached, req.tokens))
        best = common_prefix(src.cached, req.tokens)
        limit = len(req.tokens) - 1  # the last prompt token is evaluated for its logits
        if best > own and src is not seq:
            keep = min(best, limit)
            # each sequence has a stream of its own: llama.cpp copies whole streams only
            llama_cpp.llama_memory_seq_rm(self.mem, seq.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_cp(self.mem, src.seq_id, seq.seq_id, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.mem, seq.seq_id, keep, -1)
            seq.cached = src.cached[:keep]
            self.stats.copied_tokens += keep
        else:
            keep = min(own, limit)
            llama_cpp.llama_memory_seq_rm(self.mem, seq.seq_id, keep, -1)
            self.stats.reused_tokens += keep
        seq.start(req, keep, sampler_chain(self.vocab, req.temperature, req.seed,
                                           self._grammar(req.grammar)))

    def _grammar(self, text: str | None) -> Any | None:
        if text is None:
            return None
        if text not in self._grammars:
            g = llama_cpp.llama_sampler_init_grammar(self.vocab, text.encode(), b"root")
            if not g:
                raise InferenceError(f"{self.name}: llama.cpp refused the grammar")
            self._grammars[text] = g
        return self._grammars[text]

    def _step(self) -> None:
        b = self._batch
        n = 0
        batch_of: list[tuple[Sequence, list[int]]] = []
        for seq in self.seqs:
            if seq.req is not None and seq.req.cancel.is_set():
                self._finish(seq, error=Cancelled(f"{self.name}: request cancelled"))
        for seq in self.seqs:  # one token for every generating sequence
            if seq.req is not None and seq.next_token is not None:
                self._put(b, n, seq.next_token, len(seq.cached), seq.seq_id, True)
                seq.logit_index = n
                batch_of.append((seq, [seq.next_token]))
                seq.next_token = None
                n += 1
        for seq in self.seqs:  # then prompt chunks, as far as the batch has room
            if seq.req is None or not seq.pending or n >= self.n_batch:
                continue
            chunk = seq.pending[:self.n_batch - n]
            seq.pending = seq.pending[len(chunk):]
            pos = len(seq.cached)
            for i, tok in enumerate(chunk):
                last = not seq.pending and i == len(chunk) - 1
                self._put(b, n, tok, pos + i, seq.seq_id, last)
                if last:
                    seq.logit_index = n
                n += 1
            batch_of.append((seq, chunk))
        if n == 0:
            return
        b.n_tokens = n
        rc = llama_cpp.llama_decode(self.ctx, b)
        if rc != 0:
            raise InferenceError(f"{self.name}: llama_decode returned {rc} with {n} tokens")
        self.stats.steps += 1
        self.stats.peak_active = max(self.stats.peak_active,
                                     sum(1 for s in self.seqs if s.req is not None))
        for seq, toks in batch_of:
            seq.cached.extend(toks)
        for seq, _ in batch_of:
            if seq.logit_index >= 0:
                self._sample(seq)

    @staticmethod
    def _put(b: Any, i: int, tok: int, pos: int, seq_id: int, logits: bool) -> None:
        b.token[i] = tok
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits

    def _sample(self, seq: Sequence) -> None:
        assert seq.req is not None
        idx, seq.logit_index = seq.logit_index, -1
        tok = llama_cpp.llama_sampler_sample(seq.chain, self.ctx, idx)
        now = time.perf_counter()
        seq.first = seq.first or now
        if llama_cpp.llama_vocab_is_eog(self.vocab, tok):
            self._finish(seq, finish="stop")
            return
        seq.add(self._piece(tok))
        seq.last = now
        if seq.req.stop and seq.stopped():
            self._finish(seq, finish="stop")
        elif seq.n_out >= seq.req.max_tokens or len(seq.cached) + 1 >= self.n_ctx:
            self._finish(seq, finish="length")
        else:
            seq.next_token = tok

    def _piece(self, tok: int) -> bytes:
        piece = self._pieces.get(tok)
        if piece is None:
            piece = self._pieces[tok] = self._detokenize(tok)
        return piece

    def _detokenize(self, tok: int) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, tok, buf, len(buf), 0, False)
        return buf.raw[:n]

    def _finish(self, seq: Sequence, *, finish: str = "", error: BaseException | None = None
                ) -> None:
        result: SeqResult | None = None if error else seq.result(finish)
        if error is not None:  # a cancelled sequence gives its cells back at once
            llama_cpp.llama_memory_seq_rm(self.mem, seq.seq_id, -1, -1)
            seq.cached = []
            self.stats.cancelled += 1
        else:
            self.stats.completed += 1
        req = seq.release()
        if req is None:
            return
        if error is not None:
            req.future.set_exception(error)
        else:
            assert result is not None
            req.future.set_result(result)

    def _fail_all(self, exc: BaseException) -> None:
        for seq in self.seqs:
            if seq.req is not None:
                llama_cpp.llama_memory_seq_rm(self.mem, seq.seq_id, -1, -1)
                seq.cached = []
                req = seq.release()
                if req is not None and not req.future.done():
                    req.future.set_exception(exc)
        while self._waiting:
            req = self._waiting.popleft()
            if req.future.set_running_or_notify_cancel():
                req.future.set_exception(exc)
