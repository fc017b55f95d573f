"""MLLMClient for any OpenAI-compatible chat-completions endpoint (OpenAI, Gemini's compatible API, `vllm serve`).

The openai package's own retries are off (max_retries=0): we retry here, a bounded number of times with exponential
backoff that honours the server's Retry-After, so the policy is the same on every endpoint and the attempts are
countable. Structured output uses `response_format: json_schema` in strict mode; the reply is still parsed and
validated here, since compatible servers differ in how strictly they enforce the schema.

`mllm.params` read here: max_string_chars / max_list_items (schema caps, default none), string_patterns (default
true; false drops the printable-text `pattern` for endpoints whose schema subset lacks it) and max_tokens_field
("max_tokens", or "max_completion_tokens" for endpoints that want that name).
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from personavlog.engine.config import MLLMConf
from personavlog.engine.errors import ConfigError, StageError, TransientError, UnusableOutputError
from personavlog.engine.mllm.base import ChatResult, Usage
from personavlog.engine.mllm.images import with_data_urls
from personavlog.engine.mllm.schema import json_schema_for, validate

# A server asking for a longer pause than this is treated as asking for this much: one call must not stall a job.
MAX_RETRY_AFTER_S = 60.0
_RETRYABLE_STATUS = {408, 409, 429}


def schema_name(schema: type[BaseModel]) -> str:
    """The json_schema `name` field: OpenAI allows [a-zA-Z0-9_-], at most 64 characters."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", schema.__name__)[:64] or "output"


def retry_after_s(headers: Any) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, then Retry-After as seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIClient:
    """MLLMClient over the chat-completions API, with our own bounded retries."""

    def __init__(self, conf: MLLMConf, *, parse_retries: int = 2, sleep: Callable[[float], None] = time.sleep):
        import openai

        key = os.environ.get(str(conf.api_key_env), "")
        if not key:
            raise ConfigError(f"mllm.api_key_env: environment variable {conf.api_key_env} is not set "
                              f"(it must hold the API key for {conf.base_url or 'api.openai.com'})")
        if conf.max_retries < 0:
            raise ConfigError(f"mllm.max_retries: must be >= 0, got {conf.max_retries}")
        if parse_retries < 0:
            raise ConfigError(f"macf.parse_retries: must be >= 0, got {parse_retries}")
        self.conf = conf
        self.model = str(conf.model)
        self.params = dict(conf.params or {})
        self.parse_retries = parse_retries
        self._sleep = sleep
        self._client = openai.OpenAI(base_url=conf.base_url, api_key=key, timeout=float(conf.timeout_s),
                                     max_retries=0)
        self.attempts = 0  # HTTP requests sent over this client's life (retries included)

    def check_health(self) -> bool:
        """True when the endpoint answers; servers without a model list still count as up."""
        import openai

        try:
            self._client.models.list()
        except openai.APIStatusError as exc:
            return exc.status_code in (404, 405)
        except openai.APIError:
            return False
        return True

    def chat(self, messages: list[dict[str, Any]], schema: type[BaseModel], *, seed: int | None = None,
             temperature: float | None = None, max_tokens: int | None = None) -> ChatResult:
        json_schema = json_schema_for(schema, max_string_chars=self.params.get("max_string_chars"),
                                      max_list_items=self.params.get("max_list_items"),
                                      string_patterns=bool(self.params.get("string_patterns", True)))
        body: dict[str, Any] = {
            "model": self.model,
            "messages": with_data_urls(messages, int(self.conf.max_image_side)),
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": schema_name(schema), "schema": json_schema, "strict": True}},
            "temperature": float(self.conf.temperature if temperature is None else temperature),
            # Some endpoints only know one of the two names; mllm.params.max_tokens_field picks it.
            str(self.params.get("max_tokens_field", "max_tokens")):
                int(self.conf.max_tokens if max_tokens is None else max_tokens),
        }
        total = Usage()
        problem = ""
        for attempt in range(self.parse_retries + 1):
            if seed is not None:
                # Another seed per attempt: resampling the same seed would likely return the same bad output.
                body["seed"] = int(seed) + attempt
            resp = self._request(body)
            usage = _usage(resp)
            total = total.add(usage)
            try:
                text = _content(resp)
                data = validate(schema, text)
            except UnusableOutputError as exc:
                problem = str(exc)
                continue
            return ChatResult(data=data, text=text, usage=total, model=str(getattr(resp, "model", "") or self.model))
        raise UnusableOutputError(f"mllm ({self.model}): {self.parse_retries + 1} attempt(s) gave unusable output; "
                                  f"last: {problem}")

    def _request(self, body: dict[str, Any]) -> Any:
        import openai

        attempts = int(self.conf.max_retries) + 1
        last = ""
        for attempt in range(attempts):
            self.attempts += 1
            wait: float | None = None
            try:
                return self._client.chat.completions.create(**body)
            except openai.APIStatusError as exc:
                status = exc.status_code
                if status not in _RETRYABLE_STATUS and status < 500:
                    raise StageError(f"mllm ({self.model}): HTTP {status}: {_short(exc.message)}") from None
                last = f"HTTP {status}: {_short(exc.message)}"
                wait = retry_after_s(getattr(exc.response, "headers", None))
            except openai.APITimeoutError:
                last = f"timed out after {self.conf.timeout_s} s"
            except openai.APIConnectionError as exc:
                last = f"connection error: {_short(str(exc))}"
            if attempt + 1 < attempts:
                backoff = float(self.conf.backoff_s) * (2 ** attempt)
                self._sleep(min(wait, MAX_RETRY_AFTER_S) if wait is not None else backoff)
        raise TransientError(f"mllm ({self.model}): gave up after {attempts} attempt(s); last: {last}")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _usage(resp: Any) -> Usage:
    u = getattr(resp, "usage", None)
    return Usage(prompt_tokens=int(getattr(u, "prompt_tokens", 0) or 0),
                 completion_tokens=int(getattr(u, "completion_tokens", 0) or 0), calls=1)


def _content(resp: Any) -> str:
    """The reply text, or UnusableOutputError saying why there is none worth parsing."""
    choices = getattr(resp, "choices", None) or []
    if not choices:
        raise UnusableOutputError("reply has no choices")
    choice = choices[0]
    message = choice.message
    refusal = getattr(message, "refusal", None)
    if refusal:
        raise UnusableOutputError(f"model refused: {_short(refusal, 200)}")
    if choice.finish_reason == "length":
        raise UnusableOutputError("reply was cut at max_tokens")
    if not message.content:
        raise UnusableOutputError("reply is empty")
    return message.content
