"""The remote provider against a local server speaking the chat-completions shape."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from edge_agent.inference.openai import OpenAIProvider
from edge_agent.inference.provider import InferenceError, InvalidOutput

SCHEMA = {"type": "object", "properties": {"tool": {"const": "stamp"},
                                           "args": {"type": "object", "properties": {
                                               "part": {"type": "string"}},
                                               "required": ["part"]}},
          "required": ["tool", "args"]}


class FakeOpenAI:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                answer = fake.answers.pop(0) if fake.answers else "{}"
                if isinstance(answer, int):
                    self.send_response(answer)
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"role": "assistant",
                                                            "content": answer},
                                                "finish_reason": "stop"}],
                                   "usage": {"prompt_tokens": 10, "completion_tokens": 5}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data.encode())

            def log_message(self, *a: Any) -> None:
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    f = FakeOpenAI([])
    yield f
    f.server.shutdown()
    f.server.server_close()


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
    with pytest.raises(InvalidOutput) as info:
        p.generate([{"role": "user", "content": "go"}], schema=SCHEMA)
    assert info.value.attempts == 2 and len(fake.requests) == 2


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
