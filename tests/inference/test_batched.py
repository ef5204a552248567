"""`parallel = N`: one model, N sequences decoded together, each with its own grammar and
seed (real llama.cpp on the generated GGUF)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from inference.test_llama import MESSAGES, TOOLS

from edge_agent.agents.providers import make_provider
from edge_agent.config.model import ModelConfig
from edge_agent.inference.batch_sequence import common_prefix
from edge_agent.inference.llama import LlamaProvider
from edge_agent.inference.llama_batched import BatchedLlamaProvider
from edge_agent.inference.provider import Cancelled, Completion, InferenceTimeout
from edge_agent.inference.schema_grammar import tool_choice_schema

SYSTEM = "You run a press cell. " + " ".join(f"Rule {i}: check edge {i} for burrs." for i in
                                             range(12))


@pytest.fixture
def batched(model_path: Path) -> Iterator[BatchedLlamaProvider]:
    p = BatchedLlamaProvider("small", model_path, parallel=4, n_ctx=1024, seed=0)
    try:
        yield p
    finally:
        p.close()


def at_once(calls: list[Callable[[], Completion]]) -> list[Completion | BaseException]:
    """Run the calls on their own threads, released together."""
    out: list[Completion | BaseException] = [RuntimeError("not run")] * len(calls)
    gate = threading.Barrier(len(calls))

    def go(i: int) -> None:
        gate.wait()
        try:
            out[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out[i] = exc
    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def test_four_agents_decode_together_and_every_tool_call_validates(
        batched: BatchedLlamaProvider) -> None:
    schema = tool_choice_schema(TOOLS, handoff=("reviewer",))
    results: list[Any] = []
    for rnd in range(6):
        results += at_once([lambda s=seed: batched.generate(
            MESSAGES, schema=schema, max_tokens=120, temperature=1.0, seed=s)
            for seed in range(rnd * 4 * 101, (rnd + 1) * 4 * 101, 101)])
    for c in results:
        assert isinstance(c, Completion), c
        jsonschema.validate(json.loads(c.text), schema)
        assert c.parsed == json.loads(c.text)
    stats = batched.scheduler.stats
    assert stats.peak_active == 4  # four sequences in one batch
    tokens = sum(c.completion_tokens for c in results if isinstance(c, Completion))
    assert stats.steps < tokens  # decodes shared, not one per token
    assert len({c.parsed["tool"] for c in results if isinstance(c, Completion)}) >= 3


def test_same_seed_same_tokens_alone_or_in_a_batch(model_path: Path,
                                                   batched: BatchedLlamaProvider) -> None:
    schema = tool_choice_schema(TOOLS)
    seeds = list(range(8))
    alone = [batched.generate(MESSAGES, schema=schema, temperature=0.9, seed=s) for s in seeds]
    together = at_once([lambda s=s: batched.generate(MESSAGES, schema=schema,
                                                     temperature=0.9, seed=s) for s in seeds])
    assert [c.text for c in alone] == [c.text for c in together  # type: ignore[union-attr]
                                       if isinstance(c, Completion)]
    # and the same tokens as parallel = 1 (whose streamed text drops multi-byte characters,
    # so the comparison holds where the answer is ASCII)
    today = LlamaProvider("today", model_path, n_ctx=1024, seed=0, cache_bytes=0)
    try:
        for s, c in zip(seeds, alone, strict=True):
            if c.text.isascii():
                assert today.generate(MESSAGES, schema=schema, temperature=0.9,
                                      seed=s).text == c.text
    finally:
        today.close()


def wait_busy(p: BatchedLlamaProvider, n: int) -> None:
    deadline = time.monotonic() + 30
    while p.scheduler.free_sequences() > p.parallel - n:
        assert time.monotonic() < deadline, "the sequences never filled"
        time.sleep(0.005)


def test_a_cancelled_request_frees_its_sequence_and_the_others_finish(
        batched: BatchedLlamaProvider) -> None:
    stop = threading.Event()
    calls: list[Callable[[], Completion]] = [
        lambda i=i: batched.generate([*MESSAGES[:1], {"role": "user", "content": f"part {i}"}],
                                     schema=None, max_tokens=900, temperature=0.0,
                                     cancel=stop if i == 0 else None) for i in range(4)]
    results: list[Completion | BaseException] = []
    runner = threading.Thread(target=lambda: results.extend(at_once(calls)))
    runner.start()
    deadline = time.monotonic() + 30
    while not any(s.req is not None and s.req.cancel is stop for s in batched.scheduler.seqs):
        assert time.monotonic() < deadline, "the request never got a sequence"
        time.sleep(0.002)
    stop.set()
    runner.join(120)
    assert isinstance(results[0], Cancelled)
    assert all(isinstance(c, Completion) and c.completion_tokens > 0 for c in results[1:])
    assert batched.scheduler.stats.cancelled == 1
    assert batched.scheduler.free_sequences() == 4
    with pytest.raises(InferenceTimeout):
        batched.generate(MESSAGES * 10, schema=None, max_tokens=900, timeout_s=0.05)
    deadline = time.monotonic() + 10
    while batched.scheduler.free_sequences() < 4:  # freed at the scheduler's next step
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert batched.generate(MESSAGES, schema=None, max_tokens=5).completion_tokens > 0


def test_a_shared_system_prompt_is_evaluated_once_and_copied(
        model_path: Path, batched: BatchedLlamaProvider) -> None:
    schema = tool_choice_schema(TOOLS)
    msgs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"part {i}"}]
            for i in range(4)]
    batched.generate(msgs[0], schema=None, max_tokens=1, temperature=0.0)  # warm sequence
    holder = threading.Thread(target=lambda: batched.generate(  # keeps that sequence busy
        msgs[0], schema=None, max_tokens=200, temperature=0.0))
    holder.start()
    wait_busy(batched, 1)
    warm = batched.generate(msgs[1], schema=schema, temperature=0.8, seed=3)
    holder.join(60)
    prefix = common_prefix(batched.tokens(msgs[0])[0], batched.tokens(msgs[1])[0])
    assert prefix > 400 and warm.extra["reused_tokens"] == prefix  # the system prompt
    assert batched.scheduler.stats.copied_tokens >= prefix
    cold = BatchedLlamaProvider("cold", model_path, parallel=2, n_ctx=1024, seed=0)
    try:
        again = cold.generate(msgs[1], schema=schema, temperature=0.8, seed=3)
        assert again.extra["reused_tokens"] == 0 and again.text == warm.text
    finally:
        cold.close()


def test_parallel_one_keeps_todays_provider(model_path: Path) -> None:
    one = make_provider(ModelConfig("m", path=model_path, n_ctx=512))
    four = make_provider(ModelConfig("m", path=model_path, n_ctx=512, parallel=4))
    try:
        assert type(one) is LlamaProvider
        assert isinstance(four, BatchedLlamaProvider) and four.kv_bytes == 4 * 512 * 512
    finally:
        one.close()
        four.close()


def test_a_closed_model_answers_at_once(model_path: Path) -> None:
    p = BatchedLlamaProvider("closing", model_path, parallel=2, n_ctx=512)
    p.close()
    with pytest.raises(Cancelled, match="closed"):
        p.generate(MESSAGES, schema=None, max_tokens=5, timeout_s=5)
