"""The model-actor contract.

A *model* (e.g. `FluxKontextImageEdit`) is a plain Python class: its constructor loads weights once from a
`ModelConf`, and `__call__` is its one typed call. `ModelActor` is the Ray actor that hosts one model: the local and
batch drivers create it with the resources from config, Ray Serve wraps the same class in a deployment. Stages never
see Ray: they call a `ModelHandle`, which the driver provides.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from personavlog.engine.config import ResourcesConf


@dataclass
class RanOn:
    """Where and how long one model call ran (goes into the manifest)."""

    actor: str
    node: str
    gpus: list[str] = field(default_factory=list)
    seconds: float = 0.0
    pid: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"actor": self.actor, "node": self.node, "gpus": list(self.gpus), "seconds": round(self.seconds, 4),
                "pid": self.pid}


class Model(Protocol):
    """What every model class offers."""

    def __call__(self, **kwargs: Any) -> Any: ...


class ModelHandle(Protocol):
    """What stages hold: call the model, get its result and where it ran. Drivers implement this."""

    role: str

    def __call__(self, **kwargs: Any) -> tuple[Any, RanOn]: ...


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str) -> Any:
    import torch

    try:
        dt = getattr(torch, name)
    except AttributeError:
        raise ValueError(f"dtype: unknown torch dtype {name!r}") from None
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"dtype: {name!r} is not a torch dtype")
    return dt


def ray_options(resources: ResourcesConf, runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ray actor options for one replica, from config."""
    opts: dict[str, Any] = {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus}
    if resources.accelerator_type:
        opts["accelerator_type"] = resources.accelerator_type
    if resources.memory_gb:
        opts["memory"] = int(resources.memory_gb * 1024**3)
    if runtime_env:
        opts["runtime_env"] = dict(runtime_env)
    return opts


class ModelHost:
    """Loads one model from its config once and runs its calls. Wrapped as a Ray actor by `ModelActor`."""

    def __init__(self, role: str, conf: Any):
        from personavlog.actors.registry import build_model, coerce_conf

        self.role = role
        self.conf = conf = coerce_conf(role, conf)
        self.name = f"{role}:{getattr(conf, 'kind', 'quality')}@{os.getpid()}"
        t0 = time.perf_counter()
        self.model = build_model(role, conf)
        _limit_threads(conf.resources.num_cpus)
        self.load_seconds = time.perf_counter() - t0
        self.calls = 0

    def call(self, **kwargs: Any) -> tuple[Any, RanOn]:
        t0 = time.perf_counter()
        result = self.model(**kwargs)
        self.calls += 1
        return result, RanOn(actor=self.name, node=_node_id(), gpus=_gpu_ids(), seconds=time.perf_counter() - t0,
                             pid=os.getpid())

    __call__ = call

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "kind": getattr(self.conf, "kind", self.role), "load_seconds": self.load_seconds, "calls": self.calls,
                "loads": getattr(self.model, "loads", 1)}

    def check_health(self) -> bool:
        check = getattr(self.model, "check_health", None)
        return bool(check()) if check else True


def _limit_threads(num_cpus: float) -> None:
    """As many torch threads as the CPU slots the replica holds (at least one): several model actors on one small
    machine would otherwise each spin up a thread per core and slow each other down many times over. Models that
    never import torch (stand-ins) stay torch-free."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(max(1, int(num_cpus)))


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray the host name is the best we have
        pass
    return socket.gethostname()


def _gpu_ids() -> list[str]:
    try:
        import ray

        if ray.is_initialized():
            return [str(g) for g in ray.get_runtime_context().get_accelerator_ids().get("GPU", [])]
    except Exception:  # noqa: BLE001
        pass
    return []
