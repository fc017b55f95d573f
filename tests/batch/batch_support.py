"""Helpers shared by the batch tests (imported by name; a unique module name, since every test folder's conftest
is a module called `conftest`): jobs files, the batch CLI as a subprocess, journal and job-folder checks."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "reference.png"
CLI = str(Path(sys.executable).with_name("personavlog"))

# Head: CPU only (the driver and job runners may land there). Two workers with fake GPUs, each able to hold every
# model pool alone, so losing one leaves room for Ray to restart its actors on the other.
HEAD = {"num_cpus": 4, "num_gpus": 0}
WORKER = {"num_cpus": 10, "num_gpus": 4}
# Fast failure detection: a removed node is declared dead within ~2 s instead of ~15 s.
# No prestarted idle workers for the fake CPU slots (they would only load the box).
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                 "health_check_failure_threshold": 3, "enable_worker_prestart": False,
                 "prestart_worker_first_driver": False}

# models=sim sized for the 4-GPU workers: Wan 2 x 1 GPU, Kontext 1 x 1, music and speech 0.5 each = 4 GPUs. Fixed
# pool sizes (min = max), so either worker can take every replica the other one loses.
SIM_OVERRIDES = ["models=sim", "mllm=sim", "sim.time_scale=0.003", "sim.jitter=0",
                 "models.image_to_video.resources.min_replicas=2", "models.image_to_video.resources.max_replicas=2",
                 "models.image_edit.resources.max_replicas=1", "models.music.resources.num_gpus=0.5",
                 "assembly.height=64"]


def env() -> dict:
    e = dict(os.environ)
    e.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             RAY_DEDUP_LOGS="1")
    return e


def write_jobs(folder: Path, n: int, *, shots: int = 3, prefix: str = "A weekend by the sea") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE, folder / "reference.png")
    path = folder / "jobs.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"theme": f"{prefix}, day {i}", "style": "watercolor", "image": "reference.png",
                                "shots": shots, "seed": i}) + "\n")
    return path


def batch_cli(jobs: Path, out: Path, *overrides: str, timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "batch", "--jobs", str(jobs), "--out", str(out), *overrides],
                          capture_output=True, text=True, timeout=timeout, env=env(), **popen)


def start_batch(jobs: Path, out: Path, *overrides: str, log: Path) -> subprocess.Popen:
    fh = open(log, "w")
    return subprocess.Popen([CLI, "batch", "--jobs", str(jobs), "--out", str(out), *overrides],
                            stdout=fh, stderr=subprocess.STDOUT, text=True, env=env())


def journal(out: Path) -> dict:
    entries = {}
    for p in sorted((out / "results").glob("*.json")):
        try:
            entries[p.stem] = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return entries


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen = None, log: Path = None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            pytest.fail(f"the batch exited ({proc.returncode}) before {what}:\n{tail}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}:\n{log.read_text()[-3000:] if log else ''}")


def job_files(job_dir: Path) -> dict:
    """Every file of a job folder (relative path -> bytes hash), lock and journal live outside it."""
    from personavlog.engine.store import sha256_file

    return {str(p.relative_to(job_dir)): sha256_file(p) for p in sorted(job_dir.rglob("*")) if p.is_file()}


def expected_files(job_dir: Path) -> set:
    """What a finished job folder may hold: each record's artifacts (once), the records, the manifest."""
    names = {"manifest.json"}
    for rec_path in (job_dir / "records").glob("*.json"):
        names.add(str(rec_path.relative_to(job_dir)))
        rec = json.loads(rec_path.read_text())
        for art in (rec.get("artifacts") or {}).values():
            names.add(art["path"])
    return names
