"""An OpenAI-compatible chat-completions provider (remote fallback), stdlib HTTP only.

It has no grammar: an answer that does not parse or validate is asked for again with the
schema and the validation error as a hint, up to `max_hint_retries`, then
EscalationRequired (the agent node escalates to a person, DESIGN section 3).
The API key comes from an environment variable or a file, never from the config.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any

from edge_agent.inference.provider import Completion, EscalationRequired, InferenceError, Message
from edge_agent.inference.schema_grammar import check


class OpenAIProvider:
    constrained = False
    provider = "openai"  # gen_ai.provider.name: an OpenAI-compatible API

    def __init__(self, name: str, base_url: str, *, model_id: str | None = None,
                 api_key: str | None = None, timeout_s: float = 60.0,
                 max_hint_retries: int = 2) -> None:
        self.name = name
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model_id = model_id or name
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.max_hint_retries = max_hint_retries

    def generate(self, messages: Sequence[Message], *, schema: Mapping[str, Any] | None = None,
                 max_tokens: int = 256, temperature: float = 0.2, seed: int | None = None,
                 timeout_s: float | None = None,
                 cancel: threading.Event | None = None) -> Completion:
        convo = [dict(m) for m in messages]
        if schema is not None:
            convo.insert(0, {"role": "system", "content": "Answer with one JSON object that "
                             "validates against this JSON Schema, and nothing else:\n"
                             + json.dumps(schema)})
        reason = ""
        for attempt in range(1, self.max_hint_retries + 2):
            out = self._post(convo, max_tokens, temperature, seed, timeout_s)
            out.attempts = attempt
            if schema is None:
                return out
            value, problem = check(out.text, schema)
            if problem is None:
                out.parsed = value
                return out
            reason = problem
            convo += [{"role": "assistant", "content": out.text},
                      {"role": "user", "content": f"That answer is invalid ({reason}). "
                       "Reply again with only a JSON object valid for the schema."}]
        raise EscalationRequired(self.name, reason, self.max_hint_retries + 1)

    def _post(self, messages: list[dict[str, str]], max_tokens: int, temperature: float,
              seed: int | None, timeout_s: float | None) -> Completion:
        body = {"model": self.model_id, "messages": messages, "max_tokens": max_tokens,
                "temperature": temperature}
        if seed is not None:
            body["seed"] = seed
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers,
                                     method="POST")
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise InferenceError(f"{self.name}: HTTP {exc.code}", retryable=exc.code >= 500
                                 or exc.code == 429, kind="remote") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise InferenceError(f"{self.name}: {exc}", retryable=True, kind="remote") from exc
        elapsed = time.perf_counter() - start
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as exc:
            raise InferenceError(f"{self.name}: unexpected response shape", kind="remote") \
                from exc
        usage = data.get("usage") or {}
        return Completion(text=text, model=self.name,
                          prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)),
                          ttft_s=elapsed, total_s=elapsed,
                          finish_reason=choice.get("finish_reason") or "stop")

    def close(self) -> None:
        pass
