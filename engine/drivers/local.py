"""Local driver: runs one job's units on a thread pool; model calls go to Ray actors through their handles.

Resume rule: a unit is skipped when its record says done and every artifact still has its recorded sha256, and none
of its dependencies ran again in this invocation (a re-made keyframe makes its clip stale).
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from personavlog.engine.config import fingerprint, to_dict
from personavlog.engine.errors import TransientError
from personavlog.engine.graph import Graph, StageContext, run_unit
from personavlog.engine.pipeline import VLOG_GRAPH
from personavlog.engine.spec import JobSpec
from personavlog.engine.store import JobStore

ProgressFn = Callable[[str, str, dict[str, Any]], None]  # (unit, event, info)


@dataclass
class JobResult:
    job_id: str
    status: str  # succeeded | failed | cancelled
    dir: Path
    vlog: Optional[Path] = None
    error: Optional[dict[str, Any]] = None
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def run_job(spec: JobSpec, cfg: Any, out_root: Path, *, models: Mapping[str, Any], mllm: Any,
            graph: Graph = VLOG_GRAPH, progress: Optional[ProgressFn] = None, max_parallel: int = 8,
            unit_retries: int = 2, should_stop: Optional[Callable[[], bool]] = None) -> JobResult:
    """Run the units of one job. `should_stop` (optional) is polled before scheduling: once it returns True no
    further unit starts, units in flight finish, and the job ends as "cancelled" unless everything was done."""
    fp = fingerprint(cfg)
    job_id = spec.job_id(fp)
    store = JobStore(Path(out_root), job_id)
    units = graph.units_for(cfg, spec.shots)
    deps = {u: graph.dependencies(u, cfg, spec.shots) for u in units}
    config = to_dict(cfg)
    described = spec.describe()
    notify = progress or (lambda unit, event, info: None)
    stop_requested = should_stop or (lambda: False)

    def manifest(status: str, error: Optional[dict[str, Any]] = None) -> None:
        store.write_manifest(spec=described, fingerprint=fp, config=config, units=units, status=status, error=error)

    manifest("running")
    state: dict[str, str] = {}  # unit -> done | skipped | failed
    rerun: set[str] = set()
    attempts: dict[str, int] = {}
    running: dict[Future, str] = {}
    failure: Optional[dict[str, Any]] = None

    def ready(u: str) -> bool:
        return u not in state and u not in running.values() and all(state.get(d) in ("done", "skipped")
                                                                    for d in deps[u])

    with ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix=f"job-{job_id[:6]}") as pool:
        while True:
            if failure is None and not stop_requested():
                for u in units:
                    if not ready(u):
                        continue
                    if not any(d in rerun for d in deps[u]) and store.is_done(u):
                        state[u] = "skipped"
                        notify(u, "skipped", {})
                        continue
                    ctx = StageContext(spec=spec, cfg=cfg, store=store, models=models, mllm=mllm)
                    attempts[u] = attempts.get(u, 0) + 1
                    notify(u, "started", {"attempt": attempts[u]})
                    running[pool.submit(run_unit, graph, u, ctx)] = u
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                u = running.pop(fut)
                try:
                    rec = fut.result()
                except TransientError as exc:
                    if attempts[u] <= unit_retries and failure is None:
                        notify(u, "retrying", {"error": str(exc)})
                        time.sleep(min(2.0 ** attempts[u], 10.0))
                        continue  # not in state: picked up again by the next scan
                    rec = store.record(u) or {"error": {"class": type(exc).__name__, "message": str(exc)}}
                    rec["status"] = "failed"
                if rec["status"] == "done":
                    state[u] = "done"
                    rerun.add(u)
                    notify(u, "done", rec)
                else:
                    state[u] = "failed"
                    failure = failure or {"unit": u, **(rec.get("error") or {})}
                    notify(u, "failed", rec)
                manifest("running")
    complete = failure is None and all(state.get(u) in ("done", "skipped") for u in units)
    status = "succeeded" if complete else ("cancelled" if failure is None and stop_requested() else "failed")
    manifest(status, failure)
    vlog = store.path("vlog.mp4") if status == "succeeded" else None
    return JobResult(job_id=job_id, status=status, dir=store.dir, vlog=vlog, error=failure,
                     ran=[u for u, s in state.items() if s == "done"],
                     skipped=[u for u, s in state.items() if s == "skipped"])
