"""`personavlog batch` on the embedded default (tiny models, tiny local MLLM): N jobs with 5 deliberately broken ones,
then the same command again.

    .venv/bin/python benchmarks/batch_embedded.py --jobs 200 --work /tmp/batch200

Rows: N-5 good jobs (distinct themes and seeds, shots=3), one duplicate of the first good row, and 5 broken jobs:
a corrupt PNG, a text file named .png, an empty theme, shots out of range, and a job whose MLLM can never finish its
JSON (per-job override mllm.max_tokens=8: the toy MLLM is cut off, every attempt is unusable output). Checks: one
results row per job, the broken ones failed alone with their reasons, the rerun skips every job (the four rows that
are invalid input fail again at validation; the job whose MLLM failed counts as finished) in a fraction of the first
run's time. Prints both runs' wall times and a JSON line. tests/batch/test_batch_embedded.py runs the same checks with
a small N.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "reference.png"
CLI = str(Path(sys.executable).with_name("personavlog"))
SHOTS = 3

# broken row -> (error_field or None, error_class, text expected in the message)
BROKEN = {
    "corrupt_png": ("image", "InputError", "not a readable PNG image"),
    "text_as_image": ("image", "InputError", "not a PNG, JPEG or WebP image"),
    "empty_theme": ("theme", "InputError", "must not be empty"),
    "shots_out_of_range": ("shots", "InputError", "between"),
    "mllm_unusable": (None, "UnusableOutputError", "unusable output"),
}


def write_jobs(folder: Path, total: int) -> Path:
    """`total` rows: total-5 good jobs, 5 broken ones and one duplicate row (so total+1 lines)."""
    good = total - len(BROKEN)
    if good < 1:
        raise SystemExit(f"--jobs must be at least {len(BROKEN) + 1}")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE, folder / "reference.png")
    data = EXAMPLE.read_bytes()
    (folder / "corrupt.png").write_bytes(data[:200])  # a PNG signature and header, then nothing
    (folder / "notes.png").write_text("These are my travel notes, not a picture.\n")
    rows = [{"theme": f"A weekend in a small harbour town, part {i}", "style": "watercolor", "image": "reference.png",
             "shots": SHOTS, "seed": i, "name": f"good-{i}"} for i in range(good)]
    rows.insert(1, dict(rows[0], name="duplicate-of-good-0"))
    base = {"style": "watercolor", "image": "reference.png", "shots": SHOTS}
    rows += [
        {**base, "theme": "A broken picture", "image": "corrupt.png", "name": "corrupt_png"},
        {**base, "theme": "Notes instead of a photo", "image": "notes.png", "name": "text_as_image"},
        {**base, "theme": "", "name": "empty_theme"},
        {**base, "theme": "Too many shots", "shots": 99, "name": "shots_out_of_range"},
        {**base, "theme": "A model that never finishes", "overrides": ["mllm.max_tokens=8"], "name": "mllm_unusable"},
    ]
    path = folder / "jobs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cli(jobs: Path, out: Path, *extra: str,
            timeout: float = 24 * 3600) -> tuple[subprocess.CompletedProcess, float]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run([CLI, "batch", "--jobs", str(jobs), "--out", str(out), *extra], capture_output=True,
                          text=True, timeout=timeout, env=env)
    return proc, time.perf_counter() - t0


def read_results(out: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(out / "results.parquet").to_pylist()


def check_first_run(proc: subprocess.CompletedProcess, out: Path, total: int) -> list[dict]:
    """One results row per job, each broken one failed alone with its reason, every good one succeeded."""
    good = total - len(BROKEN)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_results(out)
    assert proc.stdout.strip().splitlines()[-1] == \
        f"{good} succeeded, {len(BROKEN)} failed, 0 skipped", proc.stdout[-500:] + proc.stderr[-3000:]
    assert len(rows) == total, f"{len(rows)} results rows for {total} jobs"
    by_name = {r["name"]: r for r in rows}
    dup = by_name["good-0"]
    assert dup["rows"] == [1, 2] and "duplicate-of-good-0" not in by_name, "the duplicate row must not run again"
    for r in rows:
        if r["name"].startswith("good-"):
            assert r["status"] == "succeeded", r
            assert Path(r["vlog"]).is_file() and r["stages"] and r["prompt_tokens"] > 0
            assert all(s["status"] == "done" for s in r["stages"])
            clip = next(s for s in r["stages"] if s["unit"] == "clip/0")
            assert clip["actors"] and clip["actors"][0].startswith("image_to_video:")
    for name, (field, cls, text) in BROKEN.items():
        r = by_name[name]
        assert r["status"] == "failed", r
        assert r["error_class"] == cls and text in r["error_message"], r
        assert r["error_field"] == field, r
    assert by_name["mllm_unusable"]["error_unit"] == "plan"
    return rows


def check_rerun(proc: subprocess.CompletedProcess, out: Path, total: int, first_rows: list[dict]) -> None:
    """Every job skipped; the rows that are invalid input fail again, with the same reasons."""
    assert proc.returncode == 0, proc.stderr[-4000:]
    invalid = len(BROKEN) - 1
    assert proc.stdout.strip().splitlines()[-1] == f"0 succeeded, {invalid} failed, {total - invalid} skipped", \
        proc.stdout[-500:] + proc.stderr[-3000:]
    rows = {r["name"]: r for r in read_results(out)}
    for r in first_rows:
        again = rows[r["name"]]
        if r["job_id"] is None:
            assert again["status"] == "failed" and again["error_message"] == r["error_message"]
        else:
            assert again["status"] == "skipped" and again["previous_status"] == r["status"], again
            assert again["vlog"] == r["vlog"] and again["stages"] == r["stages"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200, help="jobs in the file, 5 of them broken (default 200)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/personavlog-batch-embedded"))
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for both runs")
    args = ap.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    jobs = write_jobs(args.work / "in", args.jobs)
    out = args.work / "out"
    first, first_s = run_cli(jobs, out, *args.overrides)
    rows = check_first_run(first, out, args.jobs)
    again, again_s = run_cli(jobs, out, *args.overrides)
    check_rerun(again, out, args.jobs, rows)
    ok = [r for r in rows if r["status"] == "succeeded"]
    print(f"first run: {first_s:.1f} s ({first.stdout.strip().splitlines()[-1]})")
    print(f"rerun:     {again_s:.1f} s ({again.stdout.strip().splitlines()[-1]}) = "
          f"{again_s / first_s:.1%} of the first")
    print(json.dumps({"jobs": args.jobs, "first_s": round(first_s, 1), "rerun_s": round(again_s, 1),
                      "rerun_fraction": round(again_s / first_s, 4), "succeeded": len(ok),
                      "broken_failed": len(BROKEN),
                      "mean_job_s": round(sum(r["seconds"] for r in ok) / max(1, len(ok)), 2),
                      "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
