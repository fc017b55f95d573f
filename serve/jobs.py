"""Jobs of the online endpoint: a bounded queue in front of the local driver, with progress events and cancel.

Each accepted vlog (or plan) becomes a `Job`; a small pool of worker threads runs `run_job` (the same driver as
`personavlog generate`) with model handles that call Serve deployments. The run store stays the source of truth:
a job's status, artifacts and plan are read from its folder, so a finished job answers the same after the job has
left memory or after a restart. Memory holds only what the store cannot: the event log (for server-sent events),
which units are running right now, and the cancel flag.

Ray-free on purpose: the ingress deployment builds a JobManager with handles; tests may build one with any callables.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Optional

from personavlog.engine.config import fingerprint
from personavlog.engine.drivers.local import run_job
from personavlog.engine.drivers.oneshot import pending_units
from personavlog.engine.graph import Graph, parse_unit
from personavlog.engine.pipeline import VLOG_GRAPH
from personavlog.engine.spec import JobSpec, validate_job_id
from personavlog.engine.store import JobStore

TERMINAL = ("succeeded", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")

# The fast path of POST /v1/plans: the first two stages of the one graph, nothing else.
PLAN_GRAPH = Graph([VLOG_GRAPH.stages["stylize"], VLOG_GRAPH.stages["plan"]])

# Artifacts never served back: the uploads themselves.
_PRIVATE_ARTIFACTS = {"reference", "voice"}
# Plan keys shown inline by GET (the full plan.json, review rounds and prompts included, is an artifact URL).
_PLAN_KEYS = ("character_description", "story", "storyboards", "video_descriptions", "monologues", "music")


class QueueFull(Exception):
    def __init__(self, retry_after: int, size: int):
        self.retry_after = retry_after
        self.size = size
        super().__init__(f"the queue holds {size} unfinished jobs; retry in {retry_after} s")


class Job:
    """One accepted job: its event log (append-only, numbered from 1) and what is running now."""

    def __init__(self, kind: str, job_id: str, spec: JobSpec, units: list[str], base_url: str):
        self.kind = kind
        self.id = job_id
        self.spec: Optional[JobSpec] = spec
        self.units = units
        self.base_url = base_url
        self.status = "queued"
        self.error: Optional[dict[str, Any]] = None
        self.created_at = time.time()
        self.started_at: Optional[float] = None
        self.ended_at: Optional[float] = None
        self.unit_state: dict[str, str] = {u: "pending" for u in units}
        self.cancel = threading.Event()
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    # -- event log -----------------------------------------------------------------------------------------------
    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            event = {"seq": len(self.events) + 1, "t": round(time.time() - self.created_at, 3), **event}
            self.events.append(event)
            waiters, self._waiters = self._waiters, []
        for loop, ev in waiters:
            try:
                loop.call_soon_threadsafe(ev.set)
            except RuntimeError:  # the subscriber's loop is gone (client disconnected, replica stopping)
                pass

    def events_after(self, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            return self.events[seq:]

    def watch(self, seq: int) -> Optional[asyncio.Event]:
        """An asyncio.Event set at the next event after `seq`; None when such events exist already."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if len(self.events) > seq:
                return None
            ev = asyncio.Event()
            self._waiters.append((loop, ev))
            return ev

    def set_status(self, status: str, *, only_from: Optional[str] = None, **extra: Any) -> bool:
        """Move to `status` and emit it; with `only_from`, only if the job is in that status now (atomic)."""
        with self._lock:
            if only_from is not None and self.status != only_from:
                return False
            self.status = status
            if status == "running":
                self.started_at = time.time()
            if status in TERMINAL:
                self.ended_at = time.time()
                self.spec = None  # the uploads (up to tens of MB) are in the run store now; memory keeps events only
        self.emit({"type": "job", "status": status, **extra})
        return True

    # -- progress callback of run_job (called from the job's scheduler thread, in order) --------------------------
    def on_progress(self, unit: str, event: str, info: dict[str, Any]) -> None:
        stage, shot = parse_unit(unit)
        state = {"started": "running", "retrying": "retrying", "done": "done", "skipped": "done",
                 "failed": "failed"}.get(event, event)
        with self._lock:
            self.unit_state[unit] = state
        payload: dict[str, Any] = {"type": "unit", "unit": unit, "stage": stage, "shot": shot, "event": event}
        if event == "started":
            payload["attempt"] = info.get("attempt", 1)
        elif event in ("done", "skipped"):
            if event == "done":
                payload["seconds"] = info.get("seconds")
                payload["ran_on"] = sorted({r.get("actor") or r.get("model") or "" for r in info.get("ran_on", [])})
            payload["artifacts"] = artifact_urls(self.base_url, unit, info.get("artifacts"))
        elif event == "failed":
            payload["error"] = public_error(info.get("error"))
        elif event == "retrying":
            payload["error"] = str(info.get("error", ""))[:500]
        self.emit(payload)


def public_error(error: Optional[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """What a client may see of an error: class, message, unit and field; never a traceback or a server path."""
    if not error:
        return None
    out = {k: error[k] for k in ("unit", "class", "message", "field", "transient") if k in error}
    if "message" in out:
        out["message"] = str(out["message"])[:1000]
    return out


def artifact_urls(base_url: str, unit: str, artifacts: Optional[Mapping[str, Any]]) -> dict[str, str]:
    return {name: f"{base_url}/files/{entry['path']}" for name, entry in (artifacts or {}).items()
            if name not in _PRIVATE_ARTIFACTS and isinstance(entry, Mapping) and "path" in entry}


class JobManager:
    """Accepts jobs up to `serve.queue_size`, runs `serve.max_concurrent_jobs` at once, answers views and events."""

    def __init__(self, cfg: Any, *, models: Mapping[str, Any], mllm: Any, url_prefix: str = ""):
        self.cfg = cfg
        self.conf = cfg.serve
        self.fingerprint = fingerprint(cfg)
        self.models = dict(models)
        self.mllm = mllm
        self.url_prefix = url_prefix.rstrip("/")
        out = Path(cfg.out)
        self.kinds: dict[str, tuple[Graph, Path, str]] = {  # kind -> (graph, run store root, URL collection)
            "vlog": (VLOG_GRAPH, out, "vlogs"),
            "plan": (PLAN_GRAPH, out / "plans", "plans"),
        }
        self._jobs: OrderedDict[tuple[str, str], Job] = OrderedDict()
        self._lock = threading.Lock()
        self._durations: deque[float] = deque(maxlen=20)
        self._pool = ThreadPoolExecutor(max_workers=max(1, int(self.conf.max_concurrent_jobs)),
                                        thread_name_prefix="serve-job")
        self._closed = False

    # -- helpers ---------------------------------------------------------------------------------------------------
    def base_url(self, kind: str, job_id: str) -> str:
        return f"{self.url_prefix}/v1/{self.kinds[kind][2]}/{job_id}"

    def store(self, kind: str, job_id: str) -> JobStore:
        return JobStore(self.kinds[kind][1], validate_job_id(job_id))

    def job(self, kind: str, job_id: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get((kind, job_id))

    def inflight(self) -> int:
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.status in ACTIVE)

    def _retry_after(self) -> int:
        """Seconds until a queue slot is likely free: the running job closest to the typical duration."""
        if not self._durations:
            return int(self.conf.retry_after_s)
        typical = sum(self._durations) / len(self._durations)
        now = time.time()
        running = [now - j.started_at for j in self._jobs.values() if j.status == "running" and j.started_at]
        left = min((typical - e for e in running), default=typical)
        return int(min(3600, max(1, math.ceil(left))))

    def finished_on_disk(self, kind: str, spec: JobSpec, job_id: str) -> bool:
        graph, root, _ = self.kinds[kind]
        store = JobStore(root, job_id)
        try:
            manifest = store.read_json("manifest.json")
        except (OSError, ValueError):
            return False
        return manifest.get("status") == "succeeded" and not pending_units(spec, self.cfg, root, graph)

    # -- submit / cancel -------------------------------------------------------------------------------------------
    def submit(self, kind: str, spec: JobSpec) -> tuple[str, Optional[Job]]:
        """Accept a job. Returns (job_id, job); job is None when the run store already holds the finished result.

        An identical request (same job id) while one is queued or running joins it instead of starting another.
        Raises QueueFull past `serve.queue_size`.
        """
        graph = self.kinds[kind][0]
        job_id = spec.job_id(self.fingerprint)
        existing = self.job(kind, job_id)
        if existing is not None and not existing.terminal:
            return job_id, existing
        if self.finished_on_disk(kind, spec, job_id):
            return job_id, None
        with self._lock:
            if self._closed:
                raise QueueFull(int(self.conf.retry_after_s), 0)
            existing = self._jobs.get((kind, job_id))
            if existing is not None and not existing.terminal:
                return job_id, existing
            active = sum(1 for j in self._jobs.values() if j.status in ACTIVE)
            if active >= int(self.conf.queue_size):
                raise QueueFull(self._retry_after(), active)
            job = Job(kind, job_id, spec, graph.units_for(self.cfg, spec.shots), self.base_url(kind, job_id))
            self._jobs.pop((kind, job_id), None)
            self._jobs[(kind, job_id)] = job
            self._evict()
        job.emit({"type": "job", "status": "queued"})
        self._pool.submit(self._run, job)
        return job_id, job

    def cancel(self, kind: str, job_id: str) -> Optional[dict[str, Any]]:
        job = self.job(kind, job_id)
        if job is None:
            return self.view(kind, job_id)
        if not job.terminal:
            first = not job.cancel.is_set()
            job.cancel.set()
            # A queued job ends here; a running one stops scheduling units and ends when those in flight finish.
            if not job.set_status("cancelled", only_from="queued") and first and not job.terminal:
                job.emit({"type": "job", "status": "cancelling"})
        return self.view(kind, job_id)

    def _evict(self) -> None:
        finished = [k for k, j in self._jobs.items() if j.terminal]
        for key in finished[: max(0, len(finished) - int(self.conf.keep_finished))]:
            del self._jobs[key]

    def _run(self, job: Job) -> None:
        if job.cancel.is_set() or not job.set_status("running", only_from="queued"):
            return  # cancelled while it waited
        graph, root, _ = self.kinds[job.kind]
        assert job.spec is not None
        try:
            result = run_job(job.spec, self.cfg, root, models=self.models, mllm=self.mllm, graph=graph,
                             progress=job.on_progress, max_parallel=int(self.conf.max_parallel_units),
                             unit_retries=int(self.conf.unit_retries), should_stop=job.cancel.is_set)
            status, error = result.status, result.error
        except Exception as exc:  # noqa: BLE001 - the driver itself failed (e.g. the store is unwritable)
            status, error = "failed", {"class": type(exc).__name__, "message": str(exc)}
        job.error = public_error(error)
        if status == "succeeded" and job.started_at:
            self._durations.append(time.time() - job.started_at)
        extra: dict[str, Any] = {"error": job.error} if job.error else {}
        if status == "succeeded" and job.kind == "vlog":
            extra["video"] = f"{job.base_url}/video"
        job.set_status(status, **extra)

    def shutdown(self) -> None:
        """Stop taking jobs; running ones stop scheduling units (units in flight finish)."""
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        for job in jobs:
            if not job.terminal:
                self.cancel(job.kind, job.id)
        self._pool.shutdown(wait=False, cancel_futures=True)

    @property
    def healthy(self) -> bool:
        return not self._closed

    # -- views -----------------------------------------------------------------------------------------------------
    def view(self, kind: str, job_id: str) -> Optional[dict[str, Any]]:
        """Status, per-stage progress, plan and artifact URLs; None when no such job exists."""
        store = self.store(kind, job_id)
        job = self.job(kind, job_id)
        manifest = None
        if store.path("manifest.json").is_file():
            try:
                manifest = store.read_json("manifest.json")
            except (OSError, ValueError):
                manifest = None
        if job is None and manifest is None:
            return None
        base = self.base_url(kind, job_id)
        records = store.records()
        if job is not None:
            status, error = job.status, job.error
            if job.cancel.is_set() and status == "running":
                status = "cancelling"
            units = dict(job.unit_state)
            times = {"created_at": job.created_at, "started_at": job.started_at, "ended_at": job.ended_at}
        else:
            assert manifest is not None
            status, error = manifest.get("status", "failed"), public_error(manifest.get("error"))
            if status == "running":  # nobody runs it now: the server stopped while it ran
                status = "interrupted"
                error = {"message": "the server stopped while this job ran; send the same request again to resume"}
            units = {u: ("done" if r.get("status") == "done" else r.get("status", "pending"))
                     for u, r in (manifest.get("stages") or {}).items()}
            times = {"created_at": None, "started_at": None, "ended_at": manifest.get("updated_at")}
        progress: dict[str, dict[str, int]] = {}
        artifacts: dict[str, dict[str, str]] = {}
        for unit, state in units.items():
            stage, _ = parse_unit(unit)
            counts = progress.setdefault(stage, {"total": 0, "done": 0, "running": 0, "failed": 0})
            counts["total"] += 1
            if state == "done":
                counts["done"] += 1
            elif state in ("running", "retrying"):
                counts["running"] += 1
            elif state == "failed":
                counts["failed"] += 1
            rec = records.get(unit)
            if state == "done" and rec and rec.get("status") == "done":
                urls = artifact_urls(base, unit, rec.get("artifacts"))
                if urls:
                    artifacts[unit] = urls
        out: dict[str, Any] = {"id": job_id, "kind": kind, "status": status, "error": error, **times,
                               "progress": progress, "units": units, "artifacts": artifacts,
                               "events_url": f"{base}/events", "plan": None}
        if units.get("plan") == "done" and "plan" in artifacts:
            try:
                plan = store.read_json("plan.json")
                out["plan"] = {k: plan.get(k) for k in _PLAN_KEYS}
            except (OSError, ValueError):
                pass
        if kind == "vlog":
            out["video_url"] = f"{base}/video" if status == "succeeded" else None
        return out

    def past_events(self, kind: str, job_id: str) -> Optional[list[dict[str, Any]]]:
        """Events of a job no longer in memory, rebuilt from its records (one `done` per finished unit, in order)."""
        view = self.view(kind, job_id)
        if view is None:
            return None
        store = self.store(kind, job_id)
        records = store.records()
        base = self.base_url(kind, job_id)
        done = sorted(((r.get("ended_at") or 0, u, r) for u, r in records.items()
                       if u in view["units"] and r.get("status") == "done"), key=lambda x: (x[0], x[1]))
        events: list[dict[str, Any]] = []
        for _, unit, rec in done:
            stage, shot = parse_unit(unit)
            events.append({"seq": len(events) + 1, "type": "unit", "unit": unit, "stage": stage, "shot": shot,
                           "event": "done", "seconds": rec.get("seconds"),
                           "artifacts": artifact_urls(base, unit, rec.get("artifacts"))})
        final: dict[str, Any] = {"seq": len(events) + 1, "type": "job", "status": view["status"]}
        if view.get("error"):
            final["error"] = view["error"]
        if view.get("video_url"):
            final["video"] = view["video_url"]
        events.append(final)
        return events

    def file_path(self, kind: str, job_id: str, rel: str) -> Optional[Path]:
        """The file behind an artifact URL: only paths a finished unit recorded as its artifact, inside the job."""
        store = self.store(kind, job_id)
        for rec in store.records().values():
            if rec.get("status") != "done":
                continue
            for name, entry in (rec.get("artifacts") or {}).items():
                if name in _PRIVATE_ARTIFACTS or not isinstance(entry, Mapping) or entry.get("path") != rel:
                    continue
                try:
                    path = store.path(rel)
                except ValueError:
                    return None
                return path if path.is_file() else None
        return None
