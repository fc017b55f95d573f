"""GPU utilization of `personavlog batch` at cluster size, on one machine: N simulated jobs (models=sim, mllm=sim) on
simulated clusters of 8, 32 and 128 GPUs (ray.cluster_utils.Cluster with fake-GPU worker nodes).

    .venv/bin/python benchmarks/batch_utilization.py --gpus 8 32 128 --jobs 500

For each cluster size it sizes the model pools for the GPUs (greedy: every model gets one replica, then the pool
that limits throughput gets the next one while GPUs remain), runs the batch driver in this process against the
cluster, and prints:

- busy fraction of the bottleneck pool = busy GPU-seconds / (pool GPUs x makespan), busy time read from the stand-in
  actors' own call logs (SimModelHost.call_log), makespan = first job start to last job end;
- makespan over its lower bound, the bound being max over pools of (that pool's total call time / its replicas)
  (no schedule can beat the busiest pool), or one job's critical path if longer;
- the engine's own overhead per job: CPU seconds spent by the driver and job runners (incl. their ffmpeg children)
  per job, and the mean per-call dispatch overhead (caller's wall time minus the actor's own time: Ray's RPC and
  serialization, plus any wait in an actor's own queue, which a single job runner avoids);
- the time_scale used. Every simulated call sleeps (real seconds on the profile's GPU x time_scale), uniformly; the
  scale is chosen per cluster so the run's lower bound is --target-seconds, long enough that the 2-core box's CPU work
  (Python, ffmpeg assembly at --assembly-height) stays well below the simulated GPU work. Ratios do not depend on it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "reference.png"
ROLES = ("image_edit", "image_to_video", "music", "speech")


def per_job_seconds(sim, shots: int) -> dict[str, float]:
    """Real seconds one job keeps one replica of each model busy (profile timings, no compression)."""
    words = 4.0  # the sim MLLM's monologues are a few words long
    spoken = words / sim.words_per_second + 0.3
    return {
        "image_edit": (1 + shots) * sim.image_edit.seconds_per_call,  # stylize + keyframes
        "image_to_video": shots * sim.image_to_video.seconds_per_call,
        "music": sim.music.seconds_per_call,
        "speech": shots * (sim.speech.seconds_per_call + sim.speech.seconds_per_output_second * spoken),
    }


def size_pools(sim, gpus: int, shots: int, headroom: float = 2.0) -> dict[str, int]:
    """Replicas per model for a cluster of `gpus` GPUs: one each, then grow whichever pool limits throughput; then
    give every pool that feeds or trails the bottleneck `headroom` times the bottleneck's pace (a busy feeder makes
    the bottleneck wait on bursts), taking those GPUs from the bottleneck."""
    demand = per_job_seconds(sim, shots)
    per = {r: float(getattr(sim, r).num_gpus) for r in ROLES}
    n = {r: 1 for r in ROLES}
    used = sum(per.values())
    if used > gpus:
        raise SystemExit(f"{gpus} GPUs cannot hold one replica of every model ({used} needed)")
    while True:
        slowest = min(ROLES, key=lambda r: n[r] / demand[r])
        if used + per[slowest] > gpus + 1e-9:
            break
        n[slowest] += 1
        used += per[slowest]
    bottleneck = max(ROLES, key=lambda r: demand[r] / n[r])
    for role in ROLES:
        while role != bottleneck and n[role] / demand[role] < headroom * n[bottleneck] / demand[bottleneck]:
            if used + per[role] > gpus + 1e-9:
                if n[bottleneck] <= 1:
                    break
                n[bottleneck] -= 1
                used -= per[bottleneck]
                continue
            n[role] += 1
            used += per[role]
    return n


def write_jobs(folder: Path, n: int, shots: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE, folder / "reference.png")
    path = folder / "jobs.jsonl"
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"theme": f"A trip to the coast, chapter {i}", "style": "watercolor",
                                "image": "reference.png", "shots": shots, "seed": i}) + "\n")
    return path


def start_cluster(gpus: int, gpus_per_node: int, head_cpus: int):
    from ray.cluster_utils import Cluster

    # Fake nodes advertise many CPU slots; prestarted idle workers for all of them would swamp a small box.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": head_cpus, "num_gpus": 0, "include_dashboard": False,
        "_system_config": {"enable_worker_prestart": False, "prestart_worker_first_driver": False}})
    nodes = math.ceil(gpus / gpus_per_node)
    for i in range(nodes):
        g = min(gpus_per_node, gpus - i * gpus_per_node)
        cluster.add_node(num_gpus=g, num_cpus=2 * g + 2, wait=False)
    cluster.wait_for_nodes(timeout=300)
    return cluster


def busy_within(calls: list, t0: float, t1: float) -> float:
    return sum(max(0.0, min(e, t1) - max(s, t0)) for s, e in calls)


def analyse(summary, sim, replicas: dict[str, int], driver_cpu_s: float) -> dict:
    rows = [r for r in summary.rows if r.get("job_id")]
    done = [r for r in rows if r["status"] == "succeeded"]
    t0 = min(r["started_at"] for r in done)
    t1 = max(r["ended_at"] for r in done)
    makespan = t1 - t0
    pools = {}
    for role, info in summary.pools.items():
        calls = [c for log in info.get("call_logs", []) for c in log["calls"]]
        work = sum(e - s for s, e in calls)
        busy_gpu_s = busy_within(calls, t0, t1) * info["num_gpus"]
        pool_gpus = info["replicas"] * info["num_gpus"]
        pools[role] = {"replicas": info["replicas"], "gpus": pool_gpus, "calls": len(calls),
                       "busy_fraction": busy_gpu_s / (pool_gpus * makespan),
                       "lower_bound_s": work / info["replicas"]}
    bottleneck = max(pools, key=lambda r: pools[r]["lower_bound_s"])
    # one job's critical path: the shortest job from its first unit start to its end
    critical = min(max(s["ended_at"] for s in r["stages"]) - min(s["started_at"] for s in r["stages"]) for r in done)
    lower = max(max(p["lower_bound_s"] for p in pools.values()), critical)
    by_pid: dict[int, list[float]] = {}
    for r in rows:
        if r.get("runner_pid"):
            by_pid.setdefault(r["runner_pid"], []).append(r["runner_cpu_s"])
    # runner_cpu_s is the runner process's CPU time when each job ended; its growth over the run is its cost
    runner_cpu = sum((max(v) - min(v)) * len(v) / max(1, len(v) - 1) for v in by_pid.values())
    all_gpus = sum(p["gpus"] for p in pools.values())
    all_busy = sum(p["busy_fraction"] * p["gpus"] for p in pools.values()) / all_gpus
    overheads = []
    for r in done:
        for rec in _records(Path(r["dir"])):
            for call in rec.get("ran_on") or []:
                if "wall_s" in call:
                    overheads.append(call["wall_s"] - call["seconds"])
    return {
        "jobs": len(rows), "succeeded": len(done), "failed": len(rows) - len(done),
        "makespan_s": round(makespan, 2), "lower_bound_s": round(lower, 2),
        "makespan_over_lower_bound": round(makespan / lower, 4),
        "bottleneck": bottleneck, "bottleneck_gpus": pools[bottleneck]["gpus"],
        "busy_fraction": round(pools[bottleneck]["busy_fraction"], 4),
        "pools": {r: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in p.items()} for r, p in pools.items()},
        "engine_cpu_s_per_job": round((runner_cpu + driver_cpu_s) / max(1, len(rows)), 4),
        "runner_cpu_s_per_job": round(runner_cpu / max(1, len(rows)), 4),
        "driver_cpu_s_per_job": round(driver_cpu_s / max(1, len(rows)), 4),
        "all_pools_busy_fraction": round(all_busy, 4),
        "dispatch_overhead_ms_per_call": round(1000 * statistics.mean(overheads), 2) if overheads else None,
        "runners": len(by_pid),
    }


def _records(job_dir: Path) -> list[dict]:
    out = []
    for p in (job_dir / "records").glob("*.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            pass
    return out


def run_one(gpus: int, args, work: Path) -> dict:
    import ray

    from personavlog.engine.config import load_config
    from personavlog.engine.drivers.batch import BatchOptions, run_batch

    profile = load_config(["models=sim", "mllm=sim", f"sim={args.profile}"]).sim
    replicas = size_pools(profile, gpus, args.shots)
    demand = per_job_seconds(profile, args.shots)
    bound_real = max(args.jobs * demand[r] / replicas[r] for r in ROLES)
    time_scale = args.time_scale or args.target_seconds / bound_real
    overrides = ["models=sim", "mllm=sim", f"sim={args.profile}", f"sim.time_scale={time_scale:.6g}",
                 f"assembly.height={args.assembly_height}"]
    overrides += [f"models.{r}.resources.{k}={n}" for r, n in replicas.items()
                  for k in ("min_replicas", "max_replicas")]
    concurrency = args.concurrency or max(8, math.ceil(2 * replicas["image_to_video"] / args.shots) + 8)
    print(f"\n== {gpus} GPUs ({args.profile}): replicas {replicas}, time_scale {time_scale:.6g} "
          f"(a {profile.image_to_video.seconds_per_call:g} s Wan call takes "
          f"{profile.image_to_video.seconds_per_call * time_scale:.2f} s), {args.jobs} jobs x {args.shots} shots, "
          f"{concurrency} jobs in flight", flush=True)
    t = time.perf_counter()
    cluster = start_cluster(gpus, args.gpus_per_node, args.head_cpus)
    cluster_s = time.perf_counter() - t
    jobs = write_jobs(work / "in", args.jobs, args.shots)
    out = work / "out"
    try:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        cpu0 = time.process_time()
        summary = run_batch(BatchOptions(jobs_file=jobs, out=out, overrides=overrides, concurrency=concurrency,
                                         runners=args.runners, progress_seconds=15.0), stream=sys.stderr)
        driver_cpu = time.process_time() - cpu0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    result = analyse(summary, profile, replicas, driver_cpu)
    result.update(gpus=gpus, profile=args.profile, time_scale=float(f"{time_scale:.6g}"), shots=args.shots,
                  concurrency=concurrency, cluster_start_s=round(cluster_s, 1),
                  models_start_s=round(summary.timings.get("start_models_s", 0.0), 1),
                  line=summary.line())
    print(f"   {summary.line()}; makespan {result['makespan_s']:.1f} s, lower bound {result['lower_bound_s']:.1f} s "
          f"(x{result['makespan_over_lower_bound']:.3f}); bottleneck {result['bottleneck']} on "
          f"{result['bottleneck_gpus']:g} GPUs busy {result['busy_fraction']:.3f}; engine "
          f"{result['engine_cpu_s_per_job']:.3f} CPU-s/job, dispatch {result['dispatch_overhead_ms_per_call']} ms/call",
          flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, nargs="+", default=[8, 32, 128])
    ap.add_argument("--jobs", type=int, default=500)
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--profile", default="h200", choices=["h200", "h20"])
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--head-cpus", type=int, default=8, help="fake CPU slots on the head node (job runners)")
    ap.add_argument("--target-seconds", type=float, default=240.0,
                    help="wall seconds the busiest pool's work should take after compression (sets time_scale)")
    ap.add_argument("--time-scale", type=float, help="use this time_scale instead of --target-seconds")
    ap.add_argument("--concurrency", type=int, help="jobs in flight (default: enough to keep every clip replica fed)")
    ap.add_argument("--runners", type=int, default=1, help="job-runner processes (default 1, as the driver's)")
    ap.add_argument("--assembly-height", type=int, default=64)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    results = []
    for g in args.gpus:
        with tempfile.TemporaryDirectory(prefix=f"pv-util-{g}-") as tmp:
            results.append(run_one(g, args, Path(tmp)))
    print("\n| GPUs | jobs | bottleneck (GPUs) | busy fraction | makespan / lower bound | engine CPU-s/job | "
          "dispatch ms/call | time_scale |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['gpus']} | {r['jobs']} | {r['bottleneck']} ({r['bottleneck_gpus']:g}) | {r['busy_fraction']:.3f} "
              f"| {r['makespan_over_lower_bound']:.3f} | {r['engine_cpu_s_per_job']:.3f} | "
              f"{r['dispatch_overhead_ms_per_call']} | {r['time_scale']:g} |")
    print(json.dumps({"cpus": os.cpu_count(), "results": results}))
    if args.json:
        args.json.write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
