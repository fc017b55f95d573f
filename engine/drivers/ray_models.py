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
    seconds while Ray restarts it; a call past `call_timeout_s` restarts its replica. Replicas added while the pool
    runs ("joining": still loading, or waiting for a node) take calls once they answer. Picklable: handles travel to
    job-runner processes, each of which routes its own calls (the lock and counters are per process).
    """

    _COOLDOWN_S = 5.0

    def __init__(self, role: str, actors: list[Any], *, slots: int = 1, ready: Optional[int] = None,
                 call_timeout_s: Optional[float] = None):
        self.role = role
        self.actors = list(actors)
        self.slots = max(1, int(slots))
        self.call_timeout_s = call_timeout_s
        # The first `ready` actors have loaded their model (the starter waited for them); the rest are joining: they
        # may still wait for a GPU (a node the autoscaler has yet to add) and take calls once they answer.
        self.ready = len(self.actors) if ready is None else max(0, min(int(ready), len(self.actors)))
        self._init_local()

    def _init_local(self) -> None:
        n = len(self.actors)
        self._inflight = [0] * n
        self._cooldown_until = [0.0] * n
        self._usable = [i < self.ready for i in range(n)]
        self._join_failed: dict[int, str] = {}
        self._watcher: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        # Callers waiting for a slot, in arrival order. A freed slot is handed straight to the first one (one wake-up
        # per call, not a stampede of hundreds of job threads).
        self._waiting: collections.deque[_Waiter] = collections.deque()

    def __getstate__(self) -> dict[str, Any]:
        return {"role": self.role, "actors": self.actors, "slots": self.slots, "ready": self.ready,
                "call_timeout_s": self.call_timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.role, self.actors, self.slots = state["role"], state["actors"], state["slots"]
        self.ready = state.get("ready", len(self.actors))
        self.call_timeout_s = state.get("call_timeout_s")
        self._init_local()

    def add_joining(self, actors: list[Any]) -> None:
        """Append replicas that are still starting (call before the pool is handed to other processes)."""
        with self._lock:
            self.actors.extend(actors)
            self._inflight.extend([0] * len(actors))
            self._cooldown_until.extend([0.0] * len(actors))
            self._usable.extend([False] * len(actors))

    def _start_watcher(self) -> None:
        """Watch the joining replicas from this process (once) and route calls to each as soon as it has loaded."""
        if self._watcher is not None:
            return
        joining = [i for i, ok in enumerate(self._usable) if not ok]
        self._watcher = threading.Thread(target=self._watch, args=(joining,), name=f"pool-{self.role}-join",
                                         daemon=True)
        self._watcher.start()

    def _watch(self, joining: list[int]) -> None:
        import ray

        refs = {self.actors[i].info.remote(): i for i in joining}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for ref in done:
                i = refs.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a replica that cannot load is left out, the rest go on
                    with self._lock:
                        self._join_failed[i] = f"{type(exc).__name__}: {_last_line(str(exc))}"
                    continue
                with self._lock:
                    self._usable[i] = True
                    self._hand_out()

    def _pick(self) -> Optional[int]:
        free = [i for i, n in enumerate(self._inflight) if n < self.slots and self._usable[i]]
        if not free:
            return None
        t = time.monotonic()
        ready = [i for i in free if self._cooldown_until[i] <= t] or free
        return min(ready, key=self._inflight.__getitem__)

    def _acquire(self) -> int:
        if self._watcher is None and self.ready < len(self.actors):
            with self._lock:
                self._start_watcher()
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
            self._hand_out()

    def _hand_out(self) -> None:
        """Give free slots to waiters, first come first served (caller holds the lock)."""
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

    def usable(self) -> list[bool]:
        """Per replica: has it loaded and does this process route calls to it."""
        with self._lock:
            return list(self._usable)

    def loaded_actors(self, timeout_s: float = 2.0) -> list[Any]:
        """The replicas that have loaded their model by now: the ones started ready, plus the joining ones that answer
        within `timeout_s` (one still waiting for a GPU never does)."""
        import ray

        refs = [a.info.remote() for a in self.actors]
        if self.ready:
            ray.wait(refs[: self.ready], num_returns=self.ready)
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        loaded = []
        for actor, ref in zip(self.actors, refs):
            if ref in done:
                try:
                    ray.get(ref)
                except Exception:  # noqa: BLE001
                    continue
                loaded.append(actor)
        return loaded

    def __call__(self, **kwargs: Any) -> tuple[Any, RanOn]:
        import ray

        t0 = time.perf_counter()
        idx = self._acquire()
        t1 = time.perf_counter()
        failed = False
        try:
            ref = self.actors[idx].call.remote(**kwargs)
            try:
                result, ran_on = ray.get(ref, timeout=self.call_timeout_s)
            except ray.exceptions.GetTimeoutError:
                failed = True
                # A running call on a synchronous actor cannot be cancelled: restart the replica (Ray brings it
                # back when max_restarts allows) so its GPU serves again, and let the unit be retried.
                ray.kill(self.actors[idx], no_restart=False)
                raise TransientError(f"{self.role}: call still running after call_timeout_s={self.call_timeout_s:g} s;"
                                     f" replica restarted") from None
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

    def call_logs(self, actors: Optional[list[Any]] = None) -> list[dict[str, Any]]:
        """Each replica's own record of its calls (stand-in actors only: SimModelHost.call_log); by default those of
        the replicas started ready."""
        import ray

        return ray.get([a.call_log.remote() for a in (self.actors[: self.ready] if actors is None else actors)])

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


def role_conf(cfg: Any, role: str) -> Any:
    """The config section of a model role (the FRM scorers live under `scorers`, the rest under `models`)."""
    return cfg.scorers if role == "scorer" else cfg.models.get(role)


def conf_key(role: str) -> str:
    """Where a role's config lives, for error messages."""
    return "scorers" if role == "scorer" else f"models.{role}"


def _per_replica(res: Any) -> dict[str, float]:
    """What one replica asks Ray for, by resource name (memory in bytes, as Ray counts it)."""
    need = {"GPU": float(res.num_gpus or 0), "CPU": float(res.num_cpus or 0),
            "memory": float(res.memory_gb or 0) * 1024 ** 3}
    return {k: v for k, v in need.items() if v > 0}


def _capacity_problem(cfg: Any, roles: list[str], replicas: Optional[dict[str, int]], key_name: str) -> Optional[str]:
    import ray

    total = ray.cluster_resources()
    need: dict[str, float] = {}
    for role in roles:
        if role == "mllm":
            continue
        res = getattr(role_conf(cfg, role), "resources", None)
        if res is None:
            continue
        n = int((replicas or {}).get(role, res.get("replicas", 1)))
        for key, per in _per_replica(res).items():
            need[key] = need.get(key, 0.0) + per * n
            if per > total.get(key, 0.0):
                return (f"{conf_key(role)}.resources: one replica needs {_amount(key, per)} but the Ray cluster has "
                        f"{_amount(key, total.get(key, 0.0))} (join a cluster with ray.address=..., or lower it)")
        accel = res.get("accelerator_type")
        if accel and f"accelerator_type:{accel}" not in total:
            have = sorted(k.split(":", 1)[1] for k in total if k.startswith("accelerator_type:"))
            return (f"{conf_key(role)}.resources.accelerator_type: no node of the Ray cluster has a {accel} GPU "
                    f"(it has: {', '.join(have) or 'none'})")
    for key, amount in need.items():
        if amount > total.get(key, 0.0) + 1e-9:
            return (f"models: the model replicas need {_amount(key, amount)} together but the Ray cluster has "
                    f"{_amount(key, total.get(key, 0.0))}; lower models.<role>.resources.{key_name}")
    return None


def _amount(key: str, value: float) -> str:
    return f"{value / 1024 ** 3:g} GiB of memory" if key == "memory" else f"{value:g} {key}(s)"


def check_capacity(cfg: Any, roles: list[str], replicas: Optional[dict[str, int]] = None, *,
                   wait_s: float = 0.0, key_name: str = "replicas") -> None:
    """Fail, naming the model, when the Ray cluster cannot hold the pools (Ray would wait forever instead). With
    `wait_s` > 0 (an autoscaling cluster) keep looking that long for the nodes to appear first."""
    deadline = time.monotonic() + max(0.0, wait_s)
    while True:
        problem = _capacity_problem(cfg, roles, replicas, key_name)
        if problem is None:
            return
        if time.monotonic() >= deadline:
            if wait_s > 0:
                problem += f" (waited {wait_s:g} s for the autoscaler: ray.autoscaling_wait_s)"
            raise ConfigError(problem)
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


def call_timeout(cfg: Any, role: str) -> Optional[float]:
    """models.<role>.call_timeout_s, checked (scorers have none)."""
    value = getattr(role_conf(cfg, role), "call_timeout_s", None)
    if value is None:
        return None
    if not float(value) > 0:
        raise ConfigError(f"{conf_key(role)}.call_timeout_s: must be > 0 seconds (or null for no limit), got {value}")
    return float(value)


def replica_bounds(cfg: Any, role: str) -> tuple[int, int]:
    """(min_replicas, max_replicas) of a model, checked."""
    res = role_conf(cfg, role).resources
    lo, hi = int(res.min_replicas), int(res.max_replicas)
    prefix = conf_key(role)
    if lo < 1:
        raise ConfigError(f"{prefix}.resources.min_replicas: must be >= 1, got {lo}")
    if hi < lo:
        raise ConfigError(f"{prefix}.resources.max_replicas: must be >= min_replicas ({lo}), got {hi}")
    return lo, hi


def plan_extra_replicas(pools: dict[str, tuple[int, int, dict[str, float]]], free: Optional[dict[str, float]]
                        ) -> dict[str, int]:
    """How many replicas to add per role. `pools`: role -> (replicas now, ceiling, what one replica needs).

    `free` None (an autoscaling cluster): everything up to the ceiling; the pending replicas are the demand the
    autoscaler answers. Otherwise the free resources are handed out one replica at a time to the role furthest from
    its ceiling in proportion (replicas / ceiling lowest), so a model allowed 16 replicas gets four for every one of a
    model allowed 4; a replica that does not fit is skipped.
    """
    if free is None:
        return {role: max(0, ceiling - now) for role, (now, ceiling, _) in pools.items()}
    extra = {role: 0 for role in pools}
    left = dict(free)
    while True:
        best, best_ratio = None, None
        for role, (now, ceiling, need) in pools.items():
            count = now + extra[role]
            if count >= ceiling or any(left.get(k, 0.0) + 1e-9 < v for k, v in need.items()):
                continue
            ratio = count / ceiling
            if best_ratio is None or ratio < best_ratio:
                best, best_ratio = role, ratio
        if best is None:
            return extra
        extra[best] += 1
        for k, v in pools[best][2].items():
            left[k] = left.get(k, 0.0) - v


def _start_actors(cfg: Any, role: str, n: int, max_restarts: int) -> list[Any]:
    import ray

    conf = role_conf(cfg, role)
    conf_dict = OmegaConf.to_container(conf, resolve=True)
    opts = ray_options(conf.resources, conf_dict.get("runtime_env"))  # type: ignore[union-attr]
    actor_cls = ray.remote(host_class(conf_dict))
    return [actor_cls.options(max_restarts=max_restarts, max_task_retries=0, **opts).remote(role, conf_dict)
            for _ in range(int(n))]


def grow_pools(cfg: Any, pools: dict[str, ModelPool], demand: dict[str, int], *, max_restarts: int = -1,
               reserve: Optional[dict[str, float]] = None) -> dict[str, int]:
    """Add joining replicas to started pools, up to each model's max_replicas and never beyond `demand` (the units
    the batch has for it). On a fixed cluster only what fits in the free resources (less `reserve`, e.g. the job
    runners' CPUs) is asked for; with `ray.autoscaling` the rest is asked for too, and Ray places each replica when
    its node arrives. Returns the replicas added per role."""
    import ray

    plan_in: dict[str, tuple[int, int, dict[str, float]]] = {}
    for role, pool in pools.items():
        _, hi = replica_bounds(cfg, role)
        ceiling = max(len(pool.actors), min(hi, max(1, int(demand.get(role, 0)))))
        plan_in[role] = (len(pool.actors), ceiling, _per_replica(role_conf(cfg, role).resources))
    free: Optional[dict[str, float]] = None
    if not cfg.ray.autoscaling:
        free = dict(ray.available_resources())
        for k, v in (reserve or {}).items():
            free[k] = free.get(k, 0.0) - v
    extra = plan_extra_replicas(plan_in, free)
    for role, n in extra.items():
        if n > 0:
            pools[role].add_joining(_start_actors(cfg, role, n, max_restarts))
    return extra


def start_model_pools(cfg: Any, roles: list[str], *, wait: bool = True, max_restarts: int = 2,
                      replicas: Optional[dict[str, int]] = None, wait_for_nodes_s: float = 0.0,
                      count_key: str = "replicas") -> dict[str, ModelPool]:
    """One pool per model role named in `roles` (the MLLM is started separately).

    Replicas per role: `replicas[role]` when given, else the role's `resources.<count_key>`. A replica that dies (its
    process, or its node) is restarted by Ray up to `max_restarts` times (-1 = always); calls in flight on it fail
    with TransientError and the caller retries them.
    """
    roles = [r for r in roles if r != "mllm"]
    counts: dict[str, int] = {}
    for role in roles:
        conf = role_conf(cfg, role)
        if conf is None:
            raise ConfigError(f"{conf_key(role)}: missing from the config")
        n = int((replicas or {}).get(role, conf.resources.get(count_key, 1)))
        if n < 1:
            raise ConfigError(f"{conf_key(role)}.resources.{count_key}: must be >= 1, got {n}")
        counts[role] = n
    check_capacity(cfg, roles, counts, wait_s=wait_for_nodes_s, key_name=count_key)
    pools = {role: ModelPool(role, _start_actors(cfg, role, n, max_restarts),
                             call_timeout_s=call_timeout(cfg, role)) for role, n in counts.items()}
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
            raise ConfigError(f"{conf_key(role)}: the model failed to load: {type(cause).__name__}: "
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
