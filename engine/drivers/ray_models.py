"""Ray plumbing shared by drivers: connect to (or start) Ray, start model actors from config, call them.

This is the only module besides the drivers that imports Ray; stages see `ModelPool` only as a callable handle.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from dataclasses import dataclass, fields
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


def _transient_ray_errors() -> tuple[type[BaseException], ...]:
    """Ray failures worth another try: the actor or its node died (it may be restarting elsewhere), the worker
    crashed or was killed for memory, an object was lost with its node, an RPC failed."""
    import ray.exceptions as rex

    names = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "ObjectLostError", "NodeDiedError",
             "WorkerCrashedError", "LocalRayletDiedError", "OutOfMemoryError", "RpcError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


@dataclass
class PooledRanOn(RanOn):
    """RanOn plus what the caller saw: time spent waiting for a free replica, and the call's wall time."""

    queued_s: float = 0.0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "queued_s": round(self.queued_s, 4), "wall_s": round(self.wall_s, 4)}


class _Waiter:
    __slots__ = ("event", "idx")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.idx = -1


class ModelPool:
    """Replicas of one model's actor, shared by every stage and job of this process that uses the model.

    A call waits until some replica has a free slot (`slots` calls at a time; 1 = a GPU runs one call) and goes to the
    least-busy one, so the shots of a job spread over replicas and a late call never queues behind a slow one while
    another replica idles. Waiters are served in arrival order. A replica that just failed is avoided for a few
    seconds while Ray restarts it. Picklable: handles travel to job-runner processes, each of which routes its own
    calls (the lock and counters are per process).
    """

    _COOLDOWN_S = 5.0

    def __init__(self, role: str, actors: list[Any], *, slots: int = 1):
        self.role = role
        self.actors = list(actors)
        self.slots = max(1, int(slots))
        self._init_local()

    def _init_local(self) -> None:
        self._inflight = [0] * len(self.actors)
        self._cooldown_until = [0.0] * len(self.actors)
        self._lock = threading.Lock()
        # Callers waiting for a slot, in arrival order. A freed slot is handed straight to the first one (one wake-up
        # per call, not a stampede of hundreds of job threads).
        self._waiting: collections.deque[_Waiter] = collections.deque()

    def __getstate__(self) -> dict[str, Any]:
        return {"role": self.role, "actors": self.actors, "slots": self.slots}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.role, self.actors, self.slots = state["role"], state["actors"], state["slots"]
        self._init_local()

    def _pick(self) -> Optional[int]:
        free = [i for i, n in enumerate(self._inflight) if n < self.slots]
        if not free:
            return None
        t = time.monotonic()
        ready = [i for i in free if self._cooldown_until[i] <= t] or free
        return min(ready, key=self._inflight.__getitem__)

    def _acquire(self) -> int:
        with self._lock:
            if not self._waiting:
                idx = self._pick()
                if idx is not None:
                    self._inflight[idx] += 1
                    return idx
            waiter = _Waiter()
            self._waiting.append(waiter)
        try:
            waiter.event.wait()
        except BaseException:
            with self._lock:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
                    raise
            self._release(waiter.idx, failed=False)  # the slot arrived as we were interrupted: give it back
            raise
        return waiter.idx

    def _release(self, idx: int, failed: bool) -> None:
        with self._lock:
            self._inflight[idx] -= 1
            if failed:
                self._cooldown_until[idx] = time.monotonic() + self._COOLDOWN_S
            while self._waiting:
                nxt = self._pick()
                if nxt is None:
                    break
                waiter = self._waiting.popleft()
                self._inflight[nxt] += 1
                waiter.idx = nxt
                waiter.event.set()

    def busy(self) -> list[int]:
        """Calls in flight per replica, as this process sees them."""
        with self._lock:
            return list(self._inflight)

    def __call__(self, **kwargs: Any) -> tuple[Any, RanOn]:
        import ray

        t0 = time.perf_counter()
        idx = self._acquire()
        t1 = time.perf_counter()
        failed = False
        try:
            result, ran_on = ray.get(self.actors[idx].call.remote(**kwargs))
        except _transient_ray_errors() as exc:
            failed = True
            raise TransientError(f"{self.role}: model actor unavailable ({type(exc).__name__})") from exc
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            if isinstance(cause, (TransientError, StageError, ValueError)):
                raise cause from None
            raise StageError(f"{self.role}: {type(cause).__name__}: {cause}") from None
        except ray.exceptions.UnserializableException as exc:
            # The model raised an error class Ray could not rebuild here: keep its last line, which names it.
            raise StageError(f"{self.role}: {_last_line(str(exc))}") from None
        finally:
            self._release(idx, failed)
        t2 = time.perf_counter()
        pooled = PooledRanOn(**{f.name: getattr(ran_on, f.name) for f in fields(RanOn)},
                             queued_s=t1 - t0, wall_s=t2 - t1)
        return result, pooled

    def info(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([a.info.remote() for a in self.actors])

    def call_logs(self) -> list[dict[str, Any]]:
        """Each replica's own record of its calls (stand-in actors only: SimModelHost.call_log)."""
        import ray

        return ray.get([a.call_log.remote() for a in self.actors])

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else "model error")[:500]


def host_class(conf: Any) -> type:
    """The actor class for one model: stand-ins get the host that keeps a call log."""
    if getattr(conf, "kind", None) == "sim" or (isinstance(conf, dict) and conf.get("kind") == "sim"):
        from personavlog.actors.sim import SimModelHost

        return SimModelHost
    from personavlog.actors.base import ModelHost

    return ModelHost


def check_capacity(cfg: Any, roles: list[str], replicas: Optional[dict[str, int]] = None) -> None:
    """Fail fast, naming the model, when the Ray cluster cannot hold the pools (Ray would wait forever instead)."""
    import ray

    total = ray.cluster_resources()
    need: dict[str, float] = {}
    for role in roles:
        if role == "mllm":
            continue
        conf = cfg.scorers if role == "scorer" else cfg.models.get(role)
        res = getattr(conf, "resources", None)
        if res is None:
            continue
        n = int((replicas or {}).get(role, res.get("replicas", 1)))
        for key, per in (("GPU", float(res.num_gpus or 0)), ("CPU", float(res.num_cpus or 0))):
            if per <= 0:
                continue
            need[key] = need.get(key, 0.0) + per * n
            if per > total.get(key, 0.0):
                raise ConfigError(f"models.{role}.resources: one replica needs {per:g} {key}(s) but the Ray cluster "
                                  f"has {total.get(key, 0.0):g} (join a cluster with ray.address=..., or lower it)")
    for key, amount in need.items():
        if amount > total.get(key, 0.0) + 1e-9:
            raise ConfigError(f"models: the model replicas need {amount:g} {key}(s) together but the Ray cluster has "
                              f"{total.get(key, 0.0):g}; lower models.<role>.resources.replicas")


def start_model_pools(cfg: Any, roles: list[str], *, wait: bool = True, max_restarts: int = 2,
                      replicas: Optional[dict[str, int]] = None) -> dict[str, ModelPool]:
    """One pool per model role named in `roles` (the MLLM is started separately).

    Replicas per role: `replicas[role]` when given, else the role's `resources.replicas`. A replica that dies (its
    process, or its node) is restarted by Ray up to `max_restarts` times (-1 = always); calls in flight on it fail
    with TransientError and the caller retries them.
    """
    import ray

    check_capacity(cfg, roles, replicas)
    pools: dict[str, ModelPool] = {}
    for role in roles:
        if role == "mllm":
            continue
        conf = cfg.scorers if role == "scorer" else cfg.models.get(role)
        if conf is None:
            raise ConfigError(f"models.{role}: missing from the config")
        conf_dict = OmegaConf.to_container(conf, resolve=True)
        opts = ray_options(conf.resources, conf_dict.get("runtime_env"))  # type: ignore[union-attr]
        n = (replicas or {}).get(role, conf.resources.get("replicas", 1))
        if int(n) < 1:
            raise ConfigError(f"models.{role}.resources.replicas: must be >= 1, got {n}")
        actor_cls = ray.remote(host_class(conf_dict))
        actors = [actor_cls.options(max_restarts=max_restarts, max_task_retries=0, **opts).remote(role, conf_dict)
                  for _ in range(int(n))]
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
