"""Batch driver: thousands of jobs from a Parquet, JSONL or CSV file through the same stage graph, on Ray Data.

    personavlog batch --jobs FILE --out DIR [key=value ...]

Columns of FILE: theme, style, image (required; paths relative to FILE or absolute), voice, shots, seed, language
(optional, defaults from config), name (a label copied to the results), overrides (a list of key=value, or one string
of them separated by spaces in CSV) limited to keys that keep the model pools the same: macf.*, frm.*, assembly.*,
mllm.max_tokens, mllm.temperature, mllm.max_image_side. A job that turns FRM on gets the scorer pool started.

How a batch runs:

1. Ray Data reads FILE (row order kept, so every row has its number). JSONL is read as lines, so a line that is not
   JSON fails that row alone.
2. Ray Data tasks validate every row (the same checks as `generate`, image paths relative to FILE) and compute its job
   id. A bad row becomes a failed result naming the field; rows with the same job id run once.
3. Jobs already finished in DIR (journal entry plus a verified vlog in the run store) are skipped; the rest stream
   through `map_batches` into an actor pool of CPU-only job runners (compute=ActorPoolStrategy, several jobs per
   runner on threads). Each runner calls `run_job` (the local driver) for its job, so the shots of one vlog fan out
   over the model replicas, and an unfinished job resumes from its last finished unit.
4. Heavy models live in pools of GPU-pinned actors started once by this driver and shared by every stage and job: one
   image-edit pool serves stylization, keyframes and FRM edits. Each pool starts `resources.min_replicas` (and waits
   for them to load), then asks for more up to `max_replicas`, never more than the batch has units for that model:
   on a fixed cluster as many as fit in the free resources (shared in proportion to max_replicas), with
   `ray.autoscaling=true` all of them, pending until the autoscaler adds their nodes. A replica takes calls as soon
   as it has loaded; pools are released when the batch ends.

Exactly once: a runner holds an exclusive lock on the job (DIR/.locks/<job_id>.lock, released by the OS when its
process dies) while it runs it, removes temp files a killed writer left, and writes the job's result to the journal
DIR/results/<job_id>.json (temp + os.replace) when it ends. The driver rebuilds DIR/results.parquet from results as
they stream in (every few seconds, atomically) and at the end, so a killed driver loses no finished job: the rerun
finds them in the journal and skips them. Ray Data's own checkpointing (ray.data.checkpoint, beta in 2.60) is not
used: it needs a `write_*` sink and an id column present in FILE, while job ids here derive from the inputs' content,
and the run store already resumes at unit granularity.

Failure isolation: every exception of a job is caught in its runner and becomes that job's failed row. TransientError
(429s, timeouts, a model actor or its node lost) is retried per unit by `run_job` and then once more per job
(resuming); model actors are restarted by Ray (max_restarts=-1), runner actors and their in-flight jobs by Ray Data.
A job that ended with a non-transient failure counts as finished: a rerun skips it unless --retry-failed.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, TextIO

from personavlog.engine.errors import ConfigError, InputError, PersonaVlogError

RESULTS_FILE = "results.parquet"
JOURNAL_DIR = "results"
LOCK_DIR = ".locks"

JOB_COLUMNS = ("theme", "style", "image", "voice", "shots", "seed", "language", "overrides", "name")
REQUIRED_COLUMNS = ("theme", "style", "image")
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
# Per-job overrides may change how a job is made, never which model actors serve it nor its input limits.
JOB_OVERRIDE_KEYS = ("macf.", "frm.", "assembly.", "mllm.max_tokens=", "mllm.temperature=", "mllm.max_image_side=")


# --------------------------------------------------------------------------------------------------------------------
# options and summary


@dataclass
class BatchOptions:
    jobs_file: Path
    out: Path
    overrides: list[str] = field(default_factory=list)
    concurrency: Optional[int] = None  # jobs in flight at once; None = twice the model replicas (at least 4)
    # Job-runner processes. One routes every model call with a global view of the replicas (a call waits for a free
    # replica instead of queueing at a busy one); several each route with their own counters, so calls can queue at
    # an actor while another idles. More than one only pays when one process's CPU cannot keep up.
    runners: int = 1
    runner_cpus: float = 1.0  # Ray CPU slots one job runner holds
    retry_failed: bool = False  # rerun jobs whose last run failed for a non-transient reason
    unit_retries: int = 2  # per unit, on TransientError (run_job)
    job_retries: int = 1  # per job, after a transient failure outlived its unit retries
    max_parallel: int = 8  # units of one job at once
    flush_seconds: float = 5.0  # how often results.parquet is rebuilt while the batch runs
    progress_seconds: float = 2.0
    quiet: bool = False


@dataclass
class BatchSummary:
    succeeded: int
    failed: int
    skipped: int
    results_path: Path
    rows: list[dict[str, Any]]
    seconds: float
    timings: dict[str, float]
    pools: dict[str, Any] = field(default_factory=dict)  # role -> {"replicas", "num_gpus", "call_logs"} (sim)

    def line(self) -> str:
        return f"{self.succeeded} succeeded, {self.failed} failed, {self.skipped} skipped"


# --------------------------------------------------------------------------------------------------------------------
# reading and validating FILE


def jobs_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError("jobs", f"{path.name}: unknown format; expected one of {', '.join(sorted(FORMATS))}")
    return fmt


def _plain(value: Any) -> Any:
    """Python values from what Ray Data hands back (numpy scalars and arrays, pandas NA)."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of FILE as {"row": n (1-based), "raw": {...}} or {"row": n, "bad": message}, in file order."""
    import ray.data

    fmt = jobs_format(path)
    ctx = ray.data.DataContext.get_current()
    keep = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        if fmt == "jsonl":
            lines = [r["text"] for r in ray.data.read_text(str(path), drop_empty_lines=False).take_all()]
            rows: list[dict[str, Any]] = []
            for n, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    rows.append({"row": n, "bad": f"line {n} is not JSON ({exc.msg})"})
                    continue
                if not isinstance(obj, dict):
                    rows.append({"row": n, "bad": f"line {n} is not a JSON object"})
                    continue
                rows.append({"row": n, "raw": obj})
        else:
            ds = ray.data.read_parquet(str(path)) if fmt == "parquet" else ray.data.read_csv(str(path))
            rows = [{"row": n, "raw": _plain(dict(r))} for n, r in enumerate(ds.take_all(), start=1)]
    except PersonaVlogError:
        raise
    except Exception as exc:  # noqa: BLE001 - a file pyarrow cannot parse at all is bad CLI input
        raise InputError("jobs", f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") \
            from None
    finally:
        ctx.execution_options.preserve_order = keep
    columns: set[str] = set()
    for r in rows:
        columns.update(r.get("raw", {}))
    unknown = sorted(columns - set(JOB_COLUMNS))
    if unknown:
        raise InputError("jobs", f"unknown column {unknown[0]!r} in {path.name}; the columns are "
                                 f"{', '.join(JOB_COLUMNS)}")
    if rows and not any("raw" in r for r in rows):
        return rows
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if rows and missing:
        raise InputError("jobs", f"{path.name} has no {missing[0]!r} column")
    return rows


def parse_job_overrides(value: Any) -> list[str]:
    """The `overrides` cell: a list of key=value strings, or one string of them separated by spaces (CSV)."""
    if value is None or value == "":
        return []
    items = value.split() if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if items is None or not all(isinstance(i, str) for i in items):
        raise InputError("overrides", f"must be a list of key=value strings, got {value!r}")
    for item in items:
        if "=" not in item:
            raise InputError("overrides", f"expected key=value, got {item!r}")
        if not item.startswith(JOB_OVERRIDE_KEYS):
            raise InputError("overrides", f"{item.split('=')[0]!r} cannot be set per job; allowed: "
                                          f"{', '.join(k.rstrip('=') for k in JOB_OVERRIDE_KEYS)}")
    return items


class ConfigCache:
    """Composed configs per distinct per-job override list (Hydra's global state is not thread-safe)."""

    def __init__(self, base: list[str]):
        self.base = list(base)
        self._cfgs: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def get(self, job_overrides: Iterable[str] = (), *, resolved: bool = False) -> Any:
        """The composed config; `resolved=True`: the same values with every interpolation resolved once, which makes
        the fingerprint and manifest conversions a job does many times over cheap (identical data, same job id)."""
        from omegaconf import OmegaConf

        from personavlog.engine.config import load_config

        key = tuple(job_overrides)
        with self._lock:
            cfg = self._cfgs.get(key)
            if cfg is None:
                try:
                    cfg = load_config(self.base + list(key))
                except ConfigError as exc:
                    raise InputError("overrides", str(exc)) from None
                self._cfgs[key] = cfg
            if not resolved:
                return cfg
            plain = self._cfgs.get(("<resolved>",) + key)
            if plain is None:
                plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
                OmegaConf.set_readonly(plain, True)
                self._cfgs[("<resolved>",) + key] = plain
            return plain


_VALIDATION_CACHE: dict[tuple[str, ...], ConfigCache] = {}


def _resolve(base: Path, value: Any) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    p = Path(str(value)).expanduser()
    return str(p if p.is_absolute() else (base / p))


def validate_row(raw: dict[str, Any], *, base_dir: Path, configs: ConfigCache) -> dict[str, Any]:
    """A job description ready for a runner: resolved paths, per-job overrides, the job id. Raises InputError."""
    from personavlog.engine.config import fingerprint
    from personavlog.engine.spec import JobSpec

    overrides = parse_job_overrides(raw.get("overrides"))
    cfg = configs.get(overrides)
    for name in REQUIRED_COLUMNS:
        if raw.get(name) is None:
            raise InputError(name, "is required")
    image, voice = _resolve(base_dir, raw.get("image")), _resolve(base_dir, raw.get("voice"))
    spec = JobSpec.from_paths(theme=raw.get("theme"), style=raw.get("style"), image=image, voice=voice,
                              shots=raw.get("shots"), seed=raw.get("seed"), language=raw.get("language"), cfg=cfg)
    name = raw.get("name")
    return {"job_id": spec.job_id(fingerprint(cfg)), "overrides": overrides,
            "name": None if name is None else str(name)[:200],
            "spec": {"theme": spec.theme, "style": spec.style, "image": image, "voice": voice, "shots": spec.shots,
                     "seed": spec.seed, "language": spec.language}}


def _validate_batch(batch: dict[str, Any], *, base_overrides: list[str], base_dir: str) -> dict[str, Any]:
    """Ray Data task: raw rows (JSON text) -> validated job or the reason it is unusable (JSON text)."""
    import numpy as np

    configs = _VALIDATION_CACHE.setdefault(tuple(base_overrides), ConfigCache(base_overrides))
    out = []
    for text in batch["item"]:
        item = json.loads(text)
        try:
            job = validate_row(item["raw"], base_dir=Path(base_dir), configs=configs)
            out.append(json.dumps({"row": item["row"], "ok": True, **job}))
        except InputError as exc:
            out.append(json.dumps({"row": item["row"], "ok": False, "error": _error(exc)}))
        except Exception as exc:  # noqa: BLE001 - one unreadable row never stops the batch
            out.append(json.dumps({"row": item["row"], "ok": False, "error": _error(exc)}))
    return {"item": np.array(out, dtype=object)}


def _error(exc: BaseException, unit: Optional[str] = None) -> dict[str, Any]:
    return {"class": type(exc).__name__, "message": str(exc)[:2000], "field": getattr(exc, "field", None),
            "unit": unit, "transient": False}


# --------------------------------------------------------------------------------------------------------------------
# results rows and the table


def results_schema() -> Any:
    import pyarrow as pa

    stage = pa.struct([("unit", pa.string()), ("status", pa.string()), ("started_at", pa.float64()),
                       ("ended_at", pa.float64()), ("seconds", pa.float64()), ("actors", pa.list_(pa.string())),
                       ("nodes", pa.list_(pa.string())), ("gpus", pa.list_(pa.string()))])
    return pa.schema([
        ("job_id", pa.string()), ("name", pa.string()), ("rows", pa.list_(pa.int64())),
        ("status", pa.string()),  # succeeded | failed | skipped (this run)
        ("previous_status", pa.string()),  # for skipped jobs: how their finished run ended
        ("error_class", pa.string()), ("error_message", pa.string()), ("error_field", pa.string()),
        ("error_unit", pa.string()), ("error_transient", pa.bool_()),
        ("dir", pa.string()), ("vlog", pa.string()), ("subtitles", pa.string()), ("manifest", pa.string()),
        ("artifacts", pa.map_(pa.string(), pa.string())),  # "unit:name" -> absolute path
        ("theme", pa.string()), ("style", pa.string()), ("shots", pa.int64()), ("seed", pa.int64()),
        ("language", pa.string()), ("overrides", pa.list_(pa.string())),
        ("started_at", pa.float64()), ("ended_at", pa.float64()), ("seconds", pa.float64()),
        ("attempts", pa.int64()), ("units_ran", pa.int64()), ("units_skipped", pa.int64()),
        ("stages", pa.list_(stage)),
        ("frm_rounds", pa.int64()), ("frm_accepted", pa.int64()), ("frm_decisions", pa.string()),  # JSON
        ("prompt_tokens", pa.int64()), ("completion_tokens", pa.int64()), ("mllm_calls", pa.int64()),
        ("runner_pid", pa.int64()), ("runner_cpu_s", pa.float64()),
    ])


def write_results(path: Path, rows: list[dict[str, Any]]) -> None:
    """results.parquet, atomically (temp file + os.replace), rows sorted by their first FILE row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from personavlog.engine.store import atomic_path

    schema = results_schema()
    ordered = sorted(rows, key=lambda r: (min(r.get("rows") or [0]), r.get("job_id") or ""))
    data = [{name: r.get(name) for name in schema.names} for r in ordered]
    for r in data:
        if isinstance(r.get("artifacts"), dict):
            r["artifacts"] = list(r["artifacts"].items())
    table = pa.Table.from_pylist(data, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _row_from_manifest(store_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    stages = []
    artifacts: dict[str, str] = {}
    for unit, rec in (manifest.get("stages") or {}).items():
        ran_on = rec.get("ran_on") or []
        stages.append({"unit": unit, "status": rec.get("status"), "started_at": rec.get("started_at"),
                       "ended_at": rec.get("ended_at"), "seconds": rec.get("seconds"),
                       "actors": sorted({str(r.get("actor") or r.get("model") or "") for r in ran_on} - {""}),
                       "nodes": sorted({str(r["node"]) for r in ran_on if r.get("node")}),
                       "gpus": sorted({str(g) for r in ran_on for g in (r.get("gpus") or [])})})
        for name, art in (rec.get("artifacts") or {}).items():
            artifacts[f"{unit}:{name}"] = str(store_dir / art["path"])
    frm = manifest.get("frm") or {}
    rounds = [r for trail in frm.values() for shot in trail if shot for r in shot]
    usage = manifest.get("usage") or {}
    done = manifest.get("status") == "succeeded"
    return {"stages": stages, "artifacts": artifacts,
            "vlog": str(store_dir / "vlog.mp4") if done else None,
            "subtitles": str(store_dir / "subtitles.srt") if done else None,
            "manifest": str(store_dir / "manifest.json"),
            "frm_rounds": len(rounds), "frm_accepted": sum(1 for r in rounds if r.get("accepted")),
            "frm_decisions": json.dumps(frm) if frm else None,
            "prompt_tokens": int(usage.get("prompt_tokens", 0)),
            "completion_tokens": int(usage.get("completion_tokens", 0)), "mllm_calls": int(usage.get("calls", 0))}


def _invalid_row(row: int, error: dict[str, Any], raw: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    raw = raw or {}
    return {"job_id": None, "name": None if raw.get("name") is None else str(raw.get("name"))[:200], "rows": [row],
            "status": "failed", "error_class": error.get("class"), "error_message": error.get("message"),
            "error_field": error.get("field"), "error_unit": None, "error_transient": False}


# --------------------------------------------------------------------------------------------------------------------
# the job runner (a Ray Data actor UDF; several jobs at once on threads)


def _cpu_seconds() -> float:
    """This process's CPU time plus its finished children's (ffmpeg)."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + kids.ru_utime + kids.ru_stime


def remove_stale_temps(job_dir: Path) -> int:
    """Temp files a killed writer left (atomic_path names them `.<name>.<random>.tmp<ext>`). Call under the job lock."""
    n = 0
    if job_dir.is_dir():
        for p in job_dir.rglob(".*.tmp*"):
            if p.is_file():
                p.unlink()
                n += 1
    return n


class JobLock:
    """Exclusive per-job lock on a file; the OS drops it when the holding process dies, so it never goes stale."""

    def __init__(self, out: Path, job_id: str):
        (out / LOCK_DIR).mkdir(parents=True, exist_ok=True)
        self.path = out / LOCK_DIR / f"{job_id}.lock"
        self._fd: Optional[int] = None

    def __enter__(self) -> "JobLock":
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class JobRunner:
    """Runs jobs with the shared model pools. Built once per runner actor by Ray Data; called on several threads."""

    def __init__(self, *, base_overrides: list[str], out: str, pools: dict[str, Any], mllm_actor: Any = None,
                 unit_retries: int = 2, job_retries: int = 1, max_parallel: int = 8):
        import logging

        logging.getLogger("personavlog").setLevel(logging.WARNING)
        self.configs = ConfigCache(base_overrides)
        self.out = Path(out)
        self.pools = pools
        self.mllm_actor = mllm_actor
        self.unit_retries = unit_retries
        self.job_retries = job_retries
        self.max_parallel = max_parallel
        self._clients: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    def _client(self, overrides: list[str], cfg: Any) -> Any:
        from personavlog.engine.mllm.factory import make_client, needs_actor

        key = tuple(overrides)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                handle = self.mllm_actor if needs_actor(cfg.mllm) else None
                client = make_client(cfg.mllm, actor_handle=handle, parse_retries=cfg.macf.parse_retries)
                self._clients[key] = client
            return client

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        return {"result": np.array([json.dumps(self.run(json.loads(p))) for p in batch["job"]], dtype=object)}

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """One job to its result row; never raises (a failure is the row's status)."""
        from personavlog.engine.store import atomic_write_json

        started = time.time()
        row = {"job_id": job["job_id"], "name": job.get("name"), "rows": job.get("rows") or [],
               "overrides": job.get("overrides") or [], "attempts": 0, **job["spec"]}
        try:
            with JobLock(self.out, job["job_id"]):
                row.update(self._run_locked(job, row))
        except Exception as exc:  # noqa: BLE001 - the job fails alone, whatever went wrong
            row.update(status="failed", error_class=type(exc).__name__, error_message=str(exc)[:2000],
                       error_field=getattr(exc, "field", None), error_unit=None, error_transient=False)
        row.update(started_at=started, ended_at=time.time(), seconds=round(time.time() - started, 4),
                   runner_pid=os.getpid(), runner_cpu_s=round(_cpu_seconds(), 4))
        try:
            atomic_write_json(self.out / JOURNAL_DIR / f"{job['job_id']}.json", row)
        except OSError:
            pass  # the driver still gets the row; only a rerun would redo the (all-skipped) job
        return row

    def _run_locked(self, job: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
        from personavlog.engine.config import fingerprint
        from personavlog.engine.drivers.local import run_job
        from personavlog.engine.spec import JobSpec

        cfg = self.configs.get(job.get("overrides") or [], resolved=True)
        s = job["spec"]
        spec = JobSpec.from_paths(theme=s["theme"], style=s["style"], image=s["image"], voice=s.get("voice"),
                                  shots=s["shots"], seed=s["seed"], language=s["language"], cfg=cfg)
        if spec.job_id(fingerprint(cfg)) != job["job_id"]:
            raise InputError("image", f"{s['image']} changed while the batch ran (its job id no longer matches)")
        remove_stale_temps(self.out / job["job_id"])
        mllm = self._client(job.get("overrides") or [], cfg)
        attempts, ran, skipped = 0, 0, 0
        while True:
            attempts += 1
            result = run_job(spec, cfg, self.out, models=self.pools, mllm=mllm, unit_retries=self.unit_retries,
                             max_parallel=self.max_parallel)
            ran += len(result.ran)
            skipped = len(result.skipped) if attempts == 1 else skipped
            transient = bool((result.error or {}).get("transient"))
            if result.status == "succeeded" or not transient or attempts > self.job_retries:
                break
        manifest = json.loads((result.dir / "manifest.json").read_text())
        err = result.error or {}
        return {"status": "succeeded" if result.status == "succeeded" else "failed", "dir": str(result.dir),
                "attempts": attempts, "units_ran": ran, "units_skipped": skipped,
                "error_class": err.get("class"), "error_message": err.get("message"), "error_field": err.get("field"),
                "error_unit": err.get("unit"), "error_transient": bool(err.get("transient")) if err else None,
                **_row_from_manifest(result.dir, manifest)}


# --------------------------------------------------------------------------------------------------------------------
# the driver


class _Progress:
    def __init__(self, total: int, skipped: int, invalid: int, stream: Optional[TextIO], every: float, t0: float):
        self.total, self.stream, self.every = total, stream, every
        self.succeeded, self.failed, self.skipped = 0, invalid, skipped
        self.t0 = t0
        self.run_t0: Optional[float] = None
        self.run_done = 0
        self._last = 0.0

    def started(self) -> None:
        self.run_t0 = time.perf_counter()

    def add(self, status: str) -> None:
        if status == "succeeded":
            self.succeeded += 1
        else:
            self.failed += 1
        self.run_done += 1
        self.show()

    def show(self, force: bool = False) -> None:
        if self.stream is None:
            return
        t = time.perf_counter()
        if not force and t - self._last < self.every:
            return
        self._last = t
        done = self.succeeded + self.failed + self.skipped
        rate_txt, eta_txt = "", ""
        if self.run_t0 is not None and self.run_done:
            rate = self.run_done / max(t - self.run_t0, 1e-9)
            rate_txt = f" · {rate * 60:.1f} jobs/min"
            eta_txt = f" · ETA {_duration((self.total - done) / rate)}"
        self.stream.write(f"[{t - self.t0:7.1f}s] {done}/{self.total} done · {self.succeeded} succeeded · "
                          f"{self.failed} failed · {self.skipped} skipped{rate_txt}{eta_txt}\n")
        self.stream.flush()


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _finished(out: Path, job_id: str, retry_failed: bool) -> Optional[dict[str, Any]]:
    """The journal row of a job that needs no run, or None."""
    from personavlog.engine.store import JobStore

    p = out / JOURNAL_DIR / f"{job_id}.json"
    try:
        prev = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if prev.get("status") == "succeeded":
        return prev if JobStore(out, job_id).is_done("assemble") else None
    if prev.get("status") == "failed" and not prev.get("error_transient") and not retry_failed:
        return prev
    return None


def _quiet_ray_data() -> None:
    import logging

    import ray.data
    from ray.util.debug import log_once

    # Ray Data warns once per process that progress bars are off; we print our own progress, so mark it as said.
    log_once("ray_data_progress_manager_disabled")

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.verbose_stats_logs = False
    for name in ("ray.data", "ray.data._internal", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run_batch(opts: BatchOptions, *, stream: Optional[TextIO] = sys.stderr) -> BatchSummary:
    """Run every job of `opts.jobs_file`; the summary of this run. Raises InputError/ConfigError for bad CLI input
    (missing or unreadable FILE, unknown columns, bad overrides) before any job runs."""
    import ray
    import ray.data

    from personavlog.engine.config import load_config
    from personavlog.engine.drivers.ray_models import (connect_ray, grow_pools, replica_bounds, role_conf,
                                                       start_mllm, start_model_pools)
    from personavlog.engine.pipeline import VLOG_GRAPH

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    jobs_file = Path(opts.jobs_file).expanduser().resolve()
    out = Path(opts.out).expanduser().resolve()
    if not jobs_file.is_file():
        raise InputError("jobs", f"file not found: {jobs_file}")
    jobs_format(jobs_file)
    bad = [o for o in opts.overrides if "=" not in o]
    if bad:
        raise InputError("overrides", f"expected key=value, got {bad[0]!r}")
    base_overrides = list(opts.overrides) + [f"out={out}"]
    cfg = load_config(base_overrides)
    out.mkdir(parents=True, exist_ok=True)
    if stream is not None and not opts.quiet:
        stream.write(f"batch: {jobs_file} -> {out}\n")
    started_here = not ray.is_initialized()
    connect_ray(cfg)
    _quiet_ray_data()
    pools: dict[str, Any] = {}
    engine_actor = None
    summary_pools: dict[str, Any] = {}
    rows_out: dict[str, dict[str, Any]] = {}
    invalid: list[dict[str, Any]] = []
    results_path = out / RESULTS_FILE
    try:
        # 1-2: read and validate --------------------------------------------------------------------------------
        t = time.perf_counter()
        rows = read_rows(jobs_file)
        timings["read_s"] = time.perf_counter() - t
        t = time.perf_counter()
        for r in rows:
            if "bad" in r:
                invalid.append(_invalid_row(r["row"], {"class": "InputError", "message": r["bad"], "field": "row"}))
        good = [r for r in rows if "raw" in r]
        checked: list[dict[str, Any]] = []
        if good:
            items = [{"item": json.dumps({"row": r["row"], "raw": r["raw"]}, default=str)} for r in good]
            ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 32, 64)))
            ds = ds.map_batches(_validate_batch, batch_size=32, num_cpus=0.5,
                                fn_kwargs={"base_overrides": base_overrides, "base_dir": str(jobs_file.parent)})
            checked = [json.loads(r["item"]) for r in ds.take_all()]
        raw_by_row = {r["row"]: r["raw"] for r in good}
        jobs: dict[str, dict[str, Any]] = {}
        for c in sorted(checked, key=lambda c: c["row"]):
            if not c["ok"]:
                invalid.append(_invalid_row(c["row"], c["error"], raw_by_row.get(c["row"])))
                continue
            job = jobs.get(c["job_id"])
            if job is None:
                jobs[c["job_id"]] = {**c, "rows": [c["row"]]}
            else:
                job["rows"].append(c["row"])  # the same job again: it runs once, the row is noted
        timings["validate_s"] = time.perf_counter() - t

        # 3: what is finished already ---------------------------------------------------------------------------
        todo: list[dict[str, Any]] = []
        for job_id, job in jobs.items():
            prev = _finished(out, job_id, opts.retry_failed)
            if prev is None:
                todo.append(job)
            else:
                rows_out[job_id] = {**prev, "rows": job["rows"], "name": job.get("name"), "status": "skipped",
                                    "previous_status": prev.get("status")}
        total = len(jobs) + len(invalid)
        progress = _Progress(total, len(rows_out), len(invalid), None if opts.quiet else stream,
                             opts.progress_seconds, t_start)
        if stream is not None and not opts.quiet:
            stream.write(f"batch: {len(rows)} rows -> {len(jobs)} jobs ({len(invalid)} invalid rows, "
                         f"{sum(len(j['rows']) - 1 for j in jobs.values())} duplicate rows), "
                         f"{len(rows_out)} already finished, {len(todo)} to run\n")
        write_results(results_path, list(rows_out.values()) + invalid)

        # 4: start the models and stream the jobs ---------------------------------------------------------------
        if todo:
            t = time.perf_counter()
            configs = ConfigCache(base_overrides)
            roles: list[str] = []
            for key in {tuple(j["overrides"]) for j in todo}:
                roles.extend(VLOG_GRAPH.model_roles(configs.get(key)))
            roles = list(dict.fromkeys(roles))
            for role in roles:
                if role != "mllm":
                    replica_bounds(cfg, role)
            pools = start_model_pools(cfg, roles, wait=True, max_restarts=-1, count_key="min_replicas",
                                      wait_for_nodes_s=cfg.ray.autoscaling_wait_s if cfg.ray.autoscaling else 0.0)
            if "mllm" in roles:
                from personavlog.engine.mllm.factory import needs_actor

                if needs_actor(cfg.mllm):
                    _, engine_actor = start_mllm(cfg)
            timings["start_models_s"] = time.perf_counter() - t
            demand: dict[str, int] = {}
            for j in todo:
                for role, n in VLOG_GRAPH.model_demand(configs.get(tuple(j["overrides"])),
                                                       int(j["spec"]["shots"])).items():
                    demand[role] = demand.get(role, 0) + n
            grow_pools(cfg, pools, demand, max_restarts=-1,
                       reserve={"CPU": opts.runner_cpus * max(1, opts.runners)})
            replicas = sum(len(p.actors) for p in pools.values())
            concurrency = opts.concurrency or max(4, 2 * replicas)
            concurrency = max(1, min(concurrency, len(todo)))
            runners = max(1, min(opts.runners, concurrency))
            per_runner = math.ceil(concurrency / runners)
            if stream is not None and not opts.quiet:
                stream.write(f"batch: models up in {timings['start_models_s']:.1f}s "
                             f"({', '.join(_pool_size(p) for p in pools.values())}); "
                             f"{runners} runner(s) x {per_runner} jobs in flight\n")
            payloads = [{"job": json.dumps({"job_id": j["job_id"], "rows": j["rows"], "name": j.get("name"),
                                            "overrides": j["overrides"], "spec": j["spec"]})} for j in todo]
            ds = ray.data.from_items(payloads, override_num_blocks=len(payloads))
            ds = ds.map_batches(
                JobRunner, batch_size=1, num_cpus=opts.runner_cpus,
                compute=ray.data.ActorPoolStrategy(size=runners, max_tasks_in_flight_per_actor=per_runner,
                                                   max_concurrent_calls_per_actor=per_runner,
                                                   enable_true_multi_threading=True),
                fn_constructor_kwargs={"base_overrides": base_overrides, "out": str(out), "pools": pools,
                                       "mllm_actor": engine_actor, "unit_retries": opts.unit_retries,
                                       "job_retries": opts.job_retries, "max_parallel": opts.max_parallel})
            t = time.perf_counter()
            progress.started()
            last_flush = time.perf_counter()
            for r in ds.iter_rows():
                res = json.loads(r["result"])
                first = res["job_id"] not in rows_out
                rows_out[res["job_id"]] = res  # a re-executed task reports the same job again: keep one row
                if first:
                    progress.add(res["status"])
                if time.perf_counter() - last_flush >= opts.flush_seconds:
                    write_results(results_path, list(rows_out.values()) + invalid)
                    last_flush = time.perf_counter()
            timings["run_s"] = time.perf_counter() - t
            for role, pool in pools.items():
                conf = role_conf(cfg, role)
                resources = getattr(conf, "resources", None)
                loaded = pool.loaded_actors()
                entry: dict[str, Any] = {"replicas": len(loaded), "requested": len(pool.actors),
                                         "num_gpus": float(getattr(resources, "num_gpus", 0.0) or 0.0)}
                if getattr(conf, "kind", None) == "sim":
                    entry["call_logs"] = pool.call_logs(loaded)
                summary_pools[role] = entry
        progress.show(force=True)
    finally:
        if rows_out or invalid:
            try:
                write_results(results_path, list(rows_out.values()) + invalid)
            except Exception:  # noqa: BLE001 - never hide the original error behind a failed table write
                pass
        for p in pools.values():
            try:
                p.shutdown()
            except Exception:  # noqa: BLE001
                pass
        if engine_actor is not None:
            ray.kill(engine_actor, no_restart=True)
        if started_here:
            ray.shutdown()
    all_rows = list(rows_out.values()) + invalid
    counts = {s: sum(1 for r in all_rows if r.get("status") == s) for s in ("succeeded", "failed", "skipped")}
    return BatchSummary(succeeded=counts["succeeded"], failed=counts["failed"], skipped=counts["skipped"],
                        results_path=results_path, rows=all_rows, seconds=time.perf_counter() - t_start,
                        timings=timings, pools=summary_pools)


def _pool_size(pool: Any) -> str:
    joining = len(pool.actors) - pool.ready
    return f"{pool.role}x{pool.ready}" + (f" (+{joining} joining)" if joining else "")
