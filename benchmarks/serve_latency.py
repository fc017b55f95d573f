"""End-to-end latency of the online endpoint against its ideal, on the calibrated simulation (models=sim mllm=sim).

Starts a private local Ray with logical GPUs, deploys the real Serve application (`personavlog serve`'s), and sends
`--requests` vlog requests over HTTP, at most `--concurrency` at once, each with its own seed. A request's latency runs
from its POST to the terminal event on its SSE stream. Its ideal is its own critical path with k free GPUs, from the
unit records the run store holds:

    stylize + plan + max(max_i(keyframe_i + clip_i), music, max_i speech_i) + assemble

where each term is that unit's recorded time less the time its model calls spent being routed and waiting for a
free replica (`ran_on.call_seconds - ran_on.seconds`): the stage's own work (model call, reading inputs, encoding
outputs) as it would run with a free GPU at once. The ratio latency / ideal is what the endpoint adds: HTTP and
admission, Serve routing, waiting for replicas, scheduling between units, event delivery. Replicas are provisioned so
each in-flight vlog has k free GPUs (image_edit and image_to_video: concurrency x k; music, speech: concurrency).
Goal: p95 ratio <= 1.15. The simulation compresses model time by `sim.time_scale` (0.01 by default) but not the
endpoint's fixed costs, so a small time_scale overstates the ratio a real deployment would see.

    .venv/bin/python benchmarks/serve_latency.py --requests 8 --concurrency 2 --shots 4
    .venv/bin/python benchmarks/serve_latency.py --requests 8 --concurrency 2 --shots 4 sim.time_scale=0.05
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "reference.png"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ideal_seconds(job_dir: Path, shots: int) -> dict[str, float]:
    """The job's critical path with k free GPUs, from its unit records."""
    def rec(unit: str) -> dict[str, Any]:
        return json.loads((job_dir / "records" / (unit.replace("/", "__") + ".json")).read_text())

    def wait(unit: str) -> float:  # routing + waiting for a free replica, summed over the unit's model calls
        return sum(max(0.0, c["call_seconds"] - c["seconds"]) for c in rec(unit).get("ran_on", [])
                   if "call_seconds" in c)

    def service(unit: str) -> float:  # the unit as it would run with a free replica at once
        return float(rec(unit)["seconds"]) - wait(unit)

    stylize, plan, assemble = service("stylize"), service("plan"), service("assemble")
    shot_path = max(service(f"keyframe/{i}") + service(f"clip/{i}") for i in range(shots))
    audio = max([service("music")] + [service(f"speech/{i}") for i in range(shots)])
    # Where the actual run lost time on its critical path (the shot whose clip ended last):
    last = max(range(shots), key=lambda i: rec(f"clip/{i}")["ended_at"])
    path = ["stylize", "plan", f"keyframe/{last}", f"clip/{last}", "assemble"]
    recs = [rec(u) for u in path]
    waits = sum(wait(u) for u in path)
    gaps = sum(b["started_at"] - a["ended_at"] for a, b in zip(recs, recs[1:]))
    return {"stylize": stylize, "plan": plan, "shot_path": shot_path, "audio": audio, "assemble": assemble,
            "ideal": stylize + plan + max(shot_path, audio) + assemble,
            "first_start": recs[0]["started_at"], "last_end": recs[-1]["ended_at"],
            "replica_wait": waits, "sched_gaps": gaps}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=8, help="measured requests (after one warm-up)")
    ap.add_argument("--concurrency", type=int, default=2, help="requests in flight at once")
    ap.add_argument("--shots", type=int, default=4, help="shots k per vlog")
    ap.add_argument("--out", help="run store (default: a temp folder)")
    ap.add_argument("--json", help="write the per-request figures here")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. sim=h20")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1 or not 3 <= args.shots <= 12:
        ap.error("--requests and --concurrency must be >= 1, --shots in 3..12")

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance, dashboard off, loopback only
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    token = secrets.token_urlsafe(32)
    os.environ["PERSONAVLOG_API_TOKEN"] = token  # replicas inherit it from this process

    import httpx
    import ray
    from ray import serve

    from personavlog.engine.config import load_config
    from personavlog.serve.deployments import deploy, model_roles

    out = Path(args.out or tempfile.mkdtemp(prefix="serve-latency-"))
    c, k = args.concurrency, args.shots
    per_shot = c * k
    overrides = ["models=sim", "mllm=sim", f"out={out}", f"serve.queue_size={c}", f"serve.max_concurrent_jobs={c}",
                 "serve.rate_limit.burst=100000", "serve.rate_limit.requests_per_s=1000",
                 f"models.image_edit.resources.min_replicas={per_shot}",
                 f"models.image_edit.resources.max_replicas={per_shot}",
                 f"models.image_to_video.resources.min_replicas={per_shot}",
                 f"models.image_to_video.resources.max_replicas={per_shot}",
                 f"models.music.resources.min_replicas={c}", f"models.music.resources.max_replicas={c}",
                 f"models.speech.resources.min_replicas={c}", f"models.speech.resources.max_replicas={c}",
                 *args.overrides]
    cfg = load_config(overrides)
    gpus = cpus = 0.0
    for role in model_roles(cfg):
        res = cfg.models[role].resources
        gpus += float(res.num_gpus) * int(res.max_replicas)
        cpus += float(res.num_cpus) * int(res.max_replicas)
    print(f"# {cfg.sim.gpu} profile, time_scale {cfg.sim.time_scale}; k={k}, concurrency {c}, {args.requests} "
          f"requests; {gpus:g} logical GPUs; run store {out}", flush=True)
    ray.init(address="local", num_cpus=int(cpus) + 8, num_gpus=int(gpus + 0.999), include_dashboard=False,
             log_to_driver=False)
    try:
        t0 = time.perf_counter()
        url = deploy(cfg, overrides, host="127.0.0.1", port=_free_port())
        print(f"# deployed in {time.perf_counter() - t0:.1f} s at {url}", flush=True)
        headers = {"Authorization": f"Bearer {token}"}
        image = EXAMPLE.read_bytes()
        lock = threading.Lock()
        rows: list[dict[str, Any]] = []

        def one(seed: int, record: bool) -> None:
            with httpx.Client(base_url=url, timeout=600, headers=headers) as client:
                t_start = time.perf_counter()
                wall_start = time.time()
                r = client.post("/v1/vlogs", data={"theme": "A rainy day in a small mountain town",
                                                   "style": "Studio Ghibli watercolor", "shots": str(k),
                                                   "seed": str(seed)},
                                files={"image": ("reference.png", image, "image/png")})
                if r.status_code != 202:
                    raise RuntimeError(f"POST answered {r.status_code}: {r.text[:300]}")
                job_id = r.json()["id"]
                final: dict[str, Any] = {}
                plan_at = None
                with client.stream("GET", f"/v1/vlogs/{job_id}/events") as stream:
                    for line in stream.iter_lines():
                        if not line.startswith("data: "):
                            continue
                        ev = json.loads(line[6:])
                        if ev.get("unit") == "plan" and ev.get("event") == "done":
                            plan_at = time.perf_counter() - t_start
                        if ev["type"] == "job":
                            final = ev
                latency = time.perf_counter() - t_start
                wall_end = time.time()
                if final.get("status") != "succeeded":
                    raise RuntimeError(f"job {job_id} ended {final}")
                if client.get(f"/v1/vlogs/{job_id}/video").status_code != 200:
                    raise RuntimeError(f"job {job_id}: no video")
            if record:
                parts = ideal_seconds(out / job_id, k)
                parts["admission"] = parts.pop("first_start") - wall_start  # POST -> first unit starts
                parts["tail"] = wall_end - parts.pop("last_end")  # assemble done -> client sees the final event
                with lock:
                    rows.append({"seed": seed, "id": job_id, "latency": latency, "plan_at": plan_at, **parts,
                                 "ratio": latency / parts["ideal"]})

        one(10_000, record=False)  # warm-up: first-call imports in the ingress and the first ffmpeg run
        with ThreadPoolExecutor(max_workers=c) as pool:
            for f in [pool.submit(one, seed, True) for seed in range(args.requests)]:
                f.result()
    finally:
        serve.shutdown()
        ray.shutdown()

    rows.sort(key=lambda r: r["seed"])
    print(f"{'seed':>5} {'latency':>8} {'ideal':>6} {'ratio':>6} {'plan at':>7} | {'stylize':>7} {'plan':>5} "
          f"{'kf+clip':>7} {'assemble':>8} | overhead: {'admit':>5} {'route':>5} {'gaps':>5} {'tail':>5}")
    for r in rows:
        print(f"{r['seed']:>5} {r['latency']:>8.2f} {r['ideal']:>6.2f} {r['ratio']:>6.3f} {r['plan_at'] or 0:>7.2f} | "
              f"{r['stylize']:>7.2f} {r['plan']:>5.2f} {r['shot_path']:>7.2f} {r['assemble']:>8.2f} | "
              f"{'':>9} {r['admission']:>5.2f} {r['replica_wait']:>5.2f} {r['sched_gaps']:>5.2f} {r['tail']:>5.2f}")
    print("(seconds; ideal parts are unit times less routing/waiting; overhead on the critical path: admit = POST "
          "to first unit, route = Serve routing + waiting for a free replica, gaps = between units, tail = last unit "
          "to the client's final event)")
    ratios = [r["ratio"] for r in rows]
    lat = [r["latency"] for r in rows]
    p50, p95 = _percentile(ratios, 0.5), _percentile(ratios, 0.95)
    print(f"latency p50 {_percentile(lat, 0.5):.2f} s, p95 {_percentile(lat, 0.95):.2f} s; ideal median "
          f"{statistics.median(r['ideal'] for r in rows):.2f} s")
    print(f"latency / ideal: p50 {p50:.3f}, p95 {p95:.3f}  (goal <= 1.15: {'met' if p95 <= 1.15 else 'NOT met'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"overrides": overrides, "rows": rows, "p50": p50, "p95": p95},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
