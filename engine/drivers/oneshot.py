"""One job on this machine: skip Ray entirely when the run store already holds the finished vlog; otherwise start
Ray (or join `ray.address`), start only the models the remaining units need, run the local driver, clean up."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from personavlog.engine.config import fingerprint
from personavlog.engine.drivers.local import JobResult, ProgressFn, run_job
from personavlog.engine.errors import ClusterError
from personavlog.engine.graph import Graph, parse_unit
from personavlog.engine.pipeline import VLOG_GRAPH
from personavlog.engine.spec import JobSpec
from personavlog.engine.store import JobStore


def pending_units(spec: JobSpec, cfg: Any, out_root: Path, graph: Graph = VLOG_GRAPH) -> list[str]:
    """Units that must run (not done, or downstream of one that must)."""
    store = JobStore(out_root, spec.job_id(fingerprint(cfg)))
    todo: list[str] = []
    for u in graph.units_for(cfg, spec.shots):
        deps = graph.dependencies(u, cfg, spec.shots)
        if any(d in todo for d in deps) or not store.is_done(u):
            todo.append(u)
    return todo


def generate(spec: JobSpec, cfg: Any, out_root: Path, *, progress: Optional[ProgressFn] = None,
             graph: Graph = VLOG_GRAPH) -> JobResult:
    todo = pending_units(spec, cfg, out_root, graph)
    roles = list(dict.fromkeys(m for u in todo for m in graph.stages[parse_unit(u)[0]].models))
    if not todo:
        return run_job(spec, cfg, out_root, models={}, mllm=None, graph=graph, progress=progress)

    import ray

    from personavlog.engine.drivers.ray_models import connect_ray, start_mllm, start_model_pools

    started_here = not ray.is_initialized()
    try:
        connect_ray(cfg)
    except Exception as exc:  # noqa: BLE001 - Ray raises bare Exceptions for a start-up timeout
        raise ClusterError(f"ray: could not {'join ' + cfg.ray.address if cfg.ray.address else 'start a local Ray'}"
                           f" ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    pools: dict[str, Any] = {}
    engine_actor = None
    try:
        pools = start_model_pools(cfg, [r for r in roles if r != "mllm"], wait=False)
        mllm = None
        if "mllm" in roles:
            mllm, engine_actor = start_mllm(cfg)
        from personavlog.engine.drivers.ray_models import wait_ready

        wait_ready(pools)
        return run_job(spec, cfg, out_root, models=pools, mllm=mllm, graph=graph, progress=progress)
    finally:
        for p in pools.values():
            p.shutdown()
        if engine_actor is not None:
            ray.kill(engine_actor, no_restart=True)
        if started_here:
            ray.shutdown()
