"""Chooses the MLLM backend from `mllm.backend`: openai and sim run in the caller's process, local and vllm in an
actor."""

from __future__ import annotations

import dataclasses
from typing import Any

from personavlog.engine.config import MLLMConf, ResourcesConf
from personavlog.engine.errors import ConfigError
from personavlog.engine.mllm.base import MLLMClient, MLLMEngine

BACKENDS = ("local", "openai", "vllm", "sim")
_ENGINE_BACKENDS = ("local", "vllm")


def as_mllm_conf(conf: Any) -> Any:
    """`conf` as something with attribute access: a plain dict (what drivers ship to actors) becomes an MLLMConf;
    an MLLMConf or an OmegaConf node is returned as is."""
    if not isinstance(conf, dict):
        return conf
    known = {f.name for f in dataclasses.fields(MLLMConf)}
    unknown = sorted(set(conf) - known)
    if unknown:
        raise ConfigError(f"mllm.{unknown[0]}: unknown key")
    values = dict(conf)
    if isinstance(values.get("resources"), dict):
        try:
            values["resources"] = ResourcesConf(**values["resources"])
        except TypeError as exc:
            raise ConfigError(f"mllm.resources: {exc}") from None
    return MLLMConf(**values)


def _backend(conf: Any) -> str:
    backend = str(getattr(as_mllm_conf(conf), "backend", ""))
    if backend not in BACKENDS:
        raise ConfigError(f"mllm.backend: unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    return backend


def needs_actor(conf: Any) -> bool:
    """True when the backend's model runs in an engine actor the driver must start (MLLMEngineActor)."""
    return _backend(conf) in _ENGINE_BACKENDS


def make_engine(conf: Any) -> MLLMEngine:
    """The engine for local/vllm (not started: call start() where it will run)."""
    conf = as_mllm_conf(conf)
    backend = _backend(conf)
    if backend == "local":
        from personavlog.engine.mllm.local import LocalVLMEngine

        return LocalVLMEngine(conf)
    if backend == "vllm":
        from personavlog.engine.mllm.vllm_engine import VLLMEngine

        return VLLMEngine(conf)
    if backend == "sim":
        from personavlog.engine.mllm.sim import SimMLLMEngine

        return SimMLLMEngine(conf)
    raise ConfigError("mllm.backend: openai has no engine to host; it is an in-process client (make_client)")


def make_client(conf: Any, *, actor_handle: Any = None, parse_retries: int = 2) -> MLLMClient:
    """The client agents talk to: OpenAIClient in-process, or ActorMLLMClient on the driver's engine actor."""
    conf = as_mllm_conf(conf)
    backend = _backend(conf)
    if backend == "openai":
        from personavlog.engine.mllm.openai_client import OpenAIClient

        return OpenAIClient(conf, parse_retries=parse_retries)
    if backend == "sim":
        from personavlog.engine.mllm.sim import SimMLLMClient

        return SimMLLMClient(conf, parse_retries=parse_retries)
    from personavlog.engine.mllm.actor_client import ActorMLLMClient

    return ActorMLLMClient(actor_handle, conf, parse_retries=parse_retries)
