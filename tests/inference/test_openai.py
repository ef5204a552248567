"""The remote provider against a local server speaking the chat-completions shape."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.openai_server import FakeOpenAI

from edge_agent.inference.openai import OpenAIProvider
from edge_agent.inference.provider import EscalationRequired, InferenceError

SCHEMA = {"type": "object", "properties": {"tool": {"const": "stamp"},
                                           "args": {"type": "object", "properties": {
                                               "part": {"type": "string"}},
                                               "required": ["part"]}},
          "required": ["tool", "args"]}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI([])
    yield f
    f.close()


def test_valid_answer_with_key(fake: FakeOpenAI) -> None:
    fake.answers = ['{"tool": "stamp", "args": {"part": "A"}}']
    p = OpenAIProvider("remote", fake.url, model_id="m", api_key="sk-test")
    c = p.generate([{"role": "user", "content": "go"}], schema=SCHEMA)
    assert c.parsed == {"tool": "stamp", "args": {"part": "A"}} and c.attempts == 1
    assert fake.requests[0]["auth"] == "Bearer sk-test"
    assert fake.requests[0]["body"]["model"] == "m"


def test_invalid_then_valid_uses_the_schema_and_error_as_a_hint(fake: FakeOpenAI) -> None:
    fake.answers = ['{"tool": "stamp", "args": {}}', "not json at all",
                    '{"tool": "stamp", "args": {"part": "B"}}']
    p = OpenAIProvider("remote", fake.url, max_hint_retries=2)
    c = p.generate([{"role": "user", "content": "go"}], schema=SCHEMA)
    assert c.parsed["args"]["part"] == "B" and c.attempts == 3
    hint = fake.requests[1]["body"]["messages"][-1]["content"]
    assert "'part' is a required property" in hint
    assert '"required"' in fake.requests[0]["body"]["messages"][0]["content"]


def test_invalid_answers_give_up_at_the_limit(fake: FakeOpenAI) -> None:
    fake.answers = ['{"tool": "other"}'] * 5
    p = OpenAIProvider("remote", fake.url, max_hint_retries=1)
    with pytest.raises(EscalationRequired) as info:
        p.generate([{"role": "user", "content": "go"}], schema=SCHEMA)
    assert info.value.attempts == 2 and len(fake.requests) == 2
    assert info.value.kind == "escalate" and not info.value.retryable


def test_server_errors_are_typed(fake: FakeOpenAI) -> None:
    fake.answers = [503, 400]
    p = OpenAIProvider("remote", fake.url)
    with pytest.raises(InferenceError) as info:
        p.generate([{"role": "user", "content": "go"}], schema=None)
    assert info.value.retryable
    with pytest.raises(InferenceError) as info:
        p.generate([{"role": "user", "content": "go"}], schema=None)
    assert not info.value.retryable
    dead = OpenAIProvider("remote", "http://127.0.0.1:9/v1", timeout_s=1)
    with pytest.raises(InferenceError) as info:
        dead.generate([{"role": "user", "content": "go"}], schema=None)
    assert info.value.retryable
