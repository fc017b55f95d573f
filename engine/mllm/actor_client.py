"""MLLMClient over an engine hosted in a Ray actor, and the plain class the drivers turn into that actor.

The client does what every backend shares: builds the JSON schema, validates the text against the pydantic model
and retries unusable output with another seed. The actor only decodes. Ray failures become our error classes here,
so agents and stages never handle a Ray exception: a dead or unreachable actor is a `TransientError` (the driver
may restart it and retry the job), an engine error arrives as the project error the engine raised.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from personavlog.engine.errors import ConfigError, PersonaVlogError, StageError, TransientError, UnusableOutputError
from personavlog.engine.mllm.base import ChatResult, Usage
from personavlog.engine.mllm.schema import json_schema_for, validate


class MLLMEngineActor:
    """Hosts one MLLM engine. The driver applies `ray.remote` (with resources from config) to this class."""

    def __init__(self, conf: Any):
        """`conf`: an MLLMConf, an OmegaConf node or a plain dict of the `mllm` section."""
        from personavlog.engine.mllm.factory import make_engine

        self.engine = make_engine(conf)
        # Load at construction, so a bad model path fails the actor's creation and not the first agent call.
        self.engine.start()

    def chat(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], *, seed: int | None,
             temperature: float, max_tokens: int) -> tuple[str, Usage]:
        return self.engine.chat(messages, json_schema, seed=seed, temperature=temperature, max_tokens=max_tokens)

    def check_health(self) -> bool:
        return bool(self.engine.check_health())

    def shutdown(self) -> None:
        self.engine.shutdown()


class RetryingMLLMClient:
    """The part of an MLLMClient every in-cluster backend shares: build the JSON schema, validate what comes back
    against the pydantic model, and ask again with another seed when the output is unusable. Subclasses decode
    (`_call`) and set `conf`, `model`, `parse_retries`, `max_string_chars` and `max_list_items`."""

    conf: Any
    model: str
    parse_retries: int
    max_string_chars: int | None = None
    max_list_items: int | None = None

    def chat(self, messages: list[dict[str, Any]], schema: type[BaseModel], *, seed: int | None = None,
             temperature: float | None = None, max_tokens: int | None = None) -> ChatResult:
        json_schema = json_schema_for(schema, max_string_chars=self.max_string_chars,
                                      max_list_items=self.max_list_items)
        temp = float(self.conf.temperature if temperature is None else temperature)
        limit = int(self.conf.max_tokens if max_tokens is None else max_tokens)
        total = Usage()
        problem = ""
        for attempt in range(self.parse_retries + 1):
            # Another seed per attempt: the same seed would decode the same unusable text again.
            call_seed = None if seed is None else int(seed) + attempt
            try:
                text, usage = self._call(messages, json_schema, call_seed, temp, limit)
            except UnusableOutputError as exc:
                problem = str(exc)
                total = total.add(self._unusable_usage(limit))
                continue
            total = total.add(usage)
            try:
                data = validate(schema, text)
            except UnusableOutputError as exc:
                problem = str(exc)
                continue
            return ChatResult(data=data, text=text, usage=total, model=self.model)
        raise UnusableOutputError(f"mllm ({self.model}): {self.parse_retries + 1} attempt(s) gave unusable output; "
                                  f"last: {problem}")

    def _call(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], seed: int | None,
              temperature: float, max_tokens: int) -> tuple[str, Usage]:
        raise NotImplementedError

    def _unusable_usage(self, max_tokens: int) -> Usage:
        """What an attempt the engine itself rejected (e.g. cut off at max_tokens) is charged."""
        return Usage(calls=1)


class ActorMLLMClient(RetryingMLLMClient):
    """MLLMClient whose engine runs in a Ray actor reached through `handle` (an ActorHandle of MLLMEngineActor)."""

    def __init__(self, handle: Any, conf: Any, *, parse_retries: int = 2):
        from personavlog.engine.mllm.factory import as_mllm_conf

        conf = as_mllm_conf(conf)
        if handle is None:
            raise ConfigError(f"mllm.backend={conf.backend}: needs an engine actor handle (MLLMEngineActor)")
        if parse_retries < 0:
            raise ConfigError(f"macf.parse_retries: must be >= 0, got {parse_retries}")
        self.handle = handle
        self.conf = conf
        self.model = str(conf.model)
        self.params = dict(conf.params or {})
        self.parse_retries = parse_retries
        self.max_string_chars = self.params.get("max_string_chars")
        self.max_list_items = self.params.get("max_list_items")

    def _call(self, messages: list[dict[str, Any]], json_schema: dict[str, Any], seed: int | None,
              temperature: float, max_tokens: int) -> tuple[str, Usage]:
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError, RayError, RayTaskError

        ref = None
        try:
            ref = self.handle.chat.remote(messages, json_schema, seed=seed, temperature=temperature,
                                          max_tokens=max_tokens)
            text, usage = ray.get(ref, timeout=float(self.conf.timeout_s))
        except RayActorError as exc:  # includes ActorDiedError and ActorUnavailableError
            raise TransientError(f"mllm ({self.model}): engine actor unavailable: {_first_line(exc)}") from None
        except GetTimeoutError:
            if ref is not None:
                ray.cancel(ref)
            raise TransientError(f"mllm ({self.model}): no answer within {self.conf.timeout_s} s") from None
        except RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, PersonaVlogError):
                raise cause from None
            raise StageError(f"mllm ({self.model}): engine failed: {type(cause).__name__}: "
                             f"{_first_line(cause)}") from None
        except RayError as exc:  # worker crash, node death, object loss: all worth one more try by the driver
            raise TransientError(f"mllm ({self.model}): {type(exc).__name__}: {_first_line(exc)}") from None
        return str(text), usage


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
