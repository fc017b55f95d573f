"""The MLLM client interface shared by every agent.

A message is OpenAI-shaped: {"role": "system"|"user"|"assistant", "content": str | list of parts}, where a part is
{"type": "text", "text": str} or {"type": "image", "image": PIL.Image.Image}. Backends convert images themselves
(data URLs for openai, processor inputs for local, multi_modal_data for vLLM).

`chat(messages, schema)` returns a `ChatResult` whose `data` is a dict that validates against the pydantic `schema`
(the schema's JSON schema is sent as a structured-output constraint). Output that does not parse or validate raises
`UnusableOutputError`; 429/5xx/timeouts that outlive the retries raise `TransientError`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    def add(self, other: "Usage") -> "Usage":
        return Usage(self.prompt_tokens + other.prompt_tokens, self.completion_tokens + other.completion_tokens,
                     self.calls + other.calls)

    def as_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "calls": self.calls}


@dataclass
class ChatResult:
    data: dict[str, Any]  # validated against the schema
    text: str  # the raw text the model produced
    usage: Usage = field(default_factory=Usage)
    model: str = ""


class MLLMClient(Protocol):
    """What agents talk to. Implementations: OpenAIClient, ActorMLLMClient (local / vLLM engine actors)."""

    model: str

    def chat(self, messages: list[dict[str, Any]], schema: type[BaseModel], *, seed: int | None = None,
             temperature: float | None = None, max_tokens: int | None = None) -> ChatResult: ...


class MLLMEngine(Protocol):
    """An engine hosted in a Ray actor (or a Serve deployment): the same object serves batch and online."""

    def start(self) -> None: ...

    def chat(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], *, seed: int | None,
             temperature: float, max_tokens: int) -> tuple[str, Usage]: ...

    def check_health(self) -> bool: ...

    def shutdown(self) -> None: ...
