"""Ray plumbing shared by drivers: connect to (or start) Ray, start model actors from config, call them.

This is the only module besides the drivers that imports Ray; stages see `ModelPool` only as a callable handle.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Optional

from omegaconf import OmegaConf

from personavlog.actors.base import RanOn, ray_options
from personavlog.engine.errors import ConfigError, StageError, TransientError


def connect_ray(cfg: Any, *, log_to_driver: bool = False) -> None:
    """Join `ray.address` when given, else start a private local Ray instance (never attach to a stray one)."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.ray.address or "local"
    kwargs: dict[str, Any] = {"namespace": cfg.ray.namespace, "log_to_driver": log_to_driver,
                              "configure_logging": True, "logging_level": "ERROR"}
    if address == "local":
        kwargs["include_dashboard"] = bool(cfg.ray.include_dashboard)
        if cfg.ray.include_dashboard:
            kwargs["dashboard_host"] = cfg.ray.dashboard_host
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(address=address, **kwargs)


def _actor_errors() -> tuple[type[BaseException], ...]:
    import ray.exceptions as rex

    return tuple(getattr(rex, n) for n in ("RayActorError", "ActorDiedError", "ActorUnavailableError")
                 if hasattr(rex, n))


class ModelPool:
    """Replicas of one model's actor; a call goes to the replica with the fewest calls in flight."""

    def __init__(self, role: str, actors: list[Any]):
        self.role = role
        self.actors = actors
        self._inflight = [0] * len(actors)
        self._lock = threading.Lock()

    def __call__(self, **kwargs: Any) -> tuple[Any, RanOn]:
        import ray

        with self._lock:
            idx = min(range(len(self.actors)), key=self._inflight.__getitem__)
            self._inflight[idx] += 1
        try:
            return ray.get(self.actors[idx].call.remote(**kwargs))
        except _actor_errors() as exc:
            raise TransientError(f"{self.role}: model actor unavailable ({type(exc).__name__})") from exc
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if isinstance(cause, (TransientError, StageError, ValueError)):
                raise cause from None
            raise StageError(f"{self.role}: {type(cause).__name__}: {cause}") from None
        finally:
            with self._lock:
                self._inflight[idx] -= 1

    def info(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([a.info.remote() for a in self.actors])

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)


def start_model_pools(cfg: Any, roles: list[str], *, wait: bool = True) -> dict[str, ModelPool]:
    """One pool per model role named in `roles` (the MLLM is started separately)."""
    import ray

    from personavlog.actors.base import ModelHost

    actor_cls = ray.remote(ModelHost)
    pools: dict[str, ModelPool] = {}
    for role in roles:
        if role == "mllm":
            continue
        conf = cfg.scorers if role == "scorer" else cfg.models.get(role)
        if conf is None:
            raise ConfigError(f"models.{role}: missing from the config")
        conf_dict = OmegaConf.to_container(conf, resolve=True)
        opts = ray_options(conf.resources, conf_dict.get("runtime_env"))  # type: ignore[union-attr]
        replicas = conf.resources.get("replicas", 1)
        actors = [actor_cls.options(max_restarts=2, max_task_retries=0, **opts).remote(role, conf_dict)
                  for _ in range(max(1, int(replicas)))]
        pools[role] = ModelPool(role, actors)
    if wait:
        wait_ready(pools)
    return pools


def wait_ready(pools: dict[str, Any]) -> None:
    """Block until every actor has loaded its model; a load failure becomes one clear error naming the role."""
    import ray

    for role, pool in pools.items():
        try:
            ray.get([a.info.remote() for a in pool.actors])
        except Exception as exc:  # noqa: BLE001
            cause = getattr(exc, "cause", None) or exc
            if isinstance(cause, ConfigError):
                raise ConfigError(str(cause)) from None
            raise ConfigError(f"models.{role}: the model failed to load: {type(cause).__name__}: "
                              f"{str(cause).splitlines()[0] if str(cause) else ''}") from None


def start_mllm(cfg: Any, *, parse_retries: Optional[int] = None) -> tuple[Any, Optional[Any]]:
    """The MLLM client for agents, and the engine actor behind it when the backend needs one."""
    import ray

    from personavlog.engine.mllm.factory import make_client, needs_actor

    retries = cfg.macf.parse_retries if parse_retries is None else parse_retries
    if not needs_actor(cfg.mllm):
        return make_client(cfg.mllm, parse_retries=retries), None
    from personavlog.engine.mllm.actor_client import MLLMEngineActor

    conf_dict = OmegaConf.to_container(cfg.mllm, resolve=True)
    actor = ray.remote(MLLMEngineActor).options(max_restarts=2, max_task_retries=0,
                                                **ray_options(cfg.mllm.resources)).remote(conf_dict)
    try:
        ray.get(actor.check_health.remote())
    except Exception as exc:  # noqa: BLE001
        cause = getattr(exc, "cause", None) or exc
        raise ConfigError(f"mllm: the {cfg.mllm.backend} engine failed to start: {type(cause).__name__}: "
                          f"{str(cause).splitlines()[0] if str(cause) else ''}") from None
    return make_client(cfg.mllm, actor_handle=actor, parse_retries=retries), actor
