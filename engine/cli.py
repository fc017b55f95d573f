"""`personavlog` command line: generate (one vlog, local driver), batch (a jobs file on Ray Data), serve (the HTTP API
on Ray Serve).

Exit codes: 0 success (last stdout line = path of vlog.mp4), 1 the job failed (reason on stderr), 2 bad input or
config (one line on stderr naming the field, no traceback).
batch: 0 when the batch ran, even if some jobs failed (last stdout line `N succeeded, M failed, S skipped`; reasons
in DIR/results.parquet), 2 for bad command-line input (jobs file, overrides).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from personavlog.engine.errors import ClusterError, ConfigError, InputError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        sys.stderr.write(f"personavlog: error: {message}\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="personavlog", description="Personalized vlogs from a theme, a style and one photo.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    g = sub.add_parser("generate", help="make one vlog on this machine (starts a local Ray instance if needed)")
    g.add_argument("--theme", required=True, help="what the vlog is about (1-500 characters)")
    g.add_argument("--style", required=True, help="visual style, e.g. 'Pixar style' (1-100 characters)")
    g.add_argument("--image", required=True, help="reference photo: PNG, JPEG or WebP")
    g.add_argument("--voice", help="optional voice sample for the monologue: WAV or FLAC, at most 30 s")
    g.add_argument("--shots", help="number of shots k (3-12; default from config)")
    g.add_argument("--seed", help="random seed (default from config)")
    g.add_argument("--language", help="language of story, monologue and subtitles (default from config)")
    g.add_argument("--out", help="run store folder (default: config `out`)")
    g.add_argument("--quiet", action="store_true", help="no per-stage progress on stderr")
    g.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. models=paper mllm=openai frm.image.enabled=true")
    b = sub.add_parser("batch", help="run every job of a Parquet/JSONL/CSV file on Ray Data (resumable)")
    b.add_argument("--jobs", required=True, help="jobs file: .parquet, .jsonl or .csv with columns theme, style, "
                   "image (paths relative to the file), optional voice, shots, seed, language, overrides, name")
    b.add_argument("--out", required=True, help="output folder: run store, results.parquet, journal")
    b.add_argument("--concurrency", type=int, help="jobs in flight at once (default: twice the model replicas)")
    b.add_argument("--runners", type=int, default=1,
                   help="job-runner processes (default 1: one process routes every model call globally)")
    b.add_argument("--retry-failed", action="store_true", help="rerun jobs whose last run failed for good")
    b.add_argument("--quiet", action="store_true", help="no progress on stderr")
    b.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides for every job, e.g. models=sim mllm=sim")
    sv = sub.add_parser("serve", help="the authenticated HTTP API on Ray Serve (token: $PERSONAVLOG_API_TOKEN)")
    sv.add_argument("--host", help="address of the HTTP proxy (default from config: 127.0.0.1)")
    sv.add_argument("--port", type=int, help="port of the HTTP proxy (default from config: 8000)")
    sv.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, e.g. models=paper mllm=vllm serve.queue_size=16")
    return p


def _fail(message: str, code: int = 2) -> int:
    sys.stderr.write(f"personavlog: error: {message}\n")
    return code


class _Progress:
    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, unit: str, event: str, info: dict[str, Any]) -> None:
        if self.quiet or event == "started":
            return
        t = time.perf_counter() - self.t0
        if event == "done":
            where = ", ".join(sorted({r.get("actor") or r.get("model", "") for r in info.get("ran_on", [])}))
            detail = f"{info.get('seconds', 0):.1f}s" + (f" on {where}" if where else "")
        elif event == "failed":
            err = info.get("error") or {}
            detail = f"{err.get('class', '')}: {err.get('message', '')}"
        else:
            detail = str(info.get("error", ""))
        sys.stderr.write(f"[{t:7.1f}s] {unit:<12} {event:<8} {detail}\n")
        sys.stderr.flush()


def cmd_generate(args: argparse.Namespace) -> int:
    from personavlog.engine.config import load_config
    from personavlog.engine.spec import JobSpec

    overrides = list(args.overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        return _fail(f"overrides: expected key=value, got {bad[0]!r}")
    if args.out:
        overrides.append(f"out={args.out}")
    try:
        cfg = load_config(overrides)
        spec = JobSpec.from_paths(theme=args.theme, style=args.style, image=args.image, voice=args.voice,
                                  shots=args.shots, seed=args.seed, language=args.language, cfg=cfg)
    except (InputError, ConfigError) as exc:
        return _fail(str(exc))

    from personavlog.engine.drivers.oneshot import generate

    progress = _Progress(args.quiet)
    try:
        result = generate(spec, cfg, Path(cfg.out), progress=progress)
    except (InputError, ConfigError) as exc:
        return _fail(str(exc))
    except ClusterError as exc:
        return _fail(str(exc), code=1)
    if result.status != "succeeded":
        err = result.error or {}
        return _fail(f"job {result.job_id} failed in {err.get('unit', '?')}: {err.get('class', '')}: "
                     f"{err.get('message', '')} (manifest: {result.dir / 'manifest.json'})", code=1)
    if not args.quiet:
        sys.stderr.write(f"done: {len(result.ran)} units ran, {len(result.skipped)} skipped; "
                         f"manifest: {result.dir / 'manifest.json'}\n")
    print(result.vlog)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from personavlog.engine.drivers.batch import BatchOptions, run_batch

    for flag, value in (("--concurrency", args.concurrency), ("--runners", args.runners)):
        if value is not None and value < 1:
            return _fail(f"{flag}: must be >= 1, got {value}")
    opts = BatchOptions(jobs_file=Path(args.jobs), out=Path(args.out), overrides=list(args.overrides),
                        concurrency=args.concurrency, runners=args.runners, retry_failed=args.retry_failed,
                        quiet=args.quiet)
    try:
        summary = run_batch(opts, stream=sys.stderr)
    except (InputError, ConfigError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail(f"interrupted; finished jobs are in {Path(args.out) / 'results.parquet'}, rerun to resume", 130)
    if not args.quiet:
        sys.stderr.write(f"results: {summary.results_path}\n")
    print(summary.line())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from personavlog.engine.config import load_config

    overrides = list(args.overrides)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        return _fail(f"overrides: expected key=value, got {bad[0]!r}")
    if args.host is not None:
        if not args.host or not all(c.isalnum() or c in ".:-" for c in args.host):
            return _fail(f"--host: not a host name or address: {args.host!r}")
        overrides.append(f"serve.host={args.host}")
    if args.port is not None:
        if not 1 <= args.port <= 65535:
            return _fail(f"--port: must be between 1 and 65535, got {args.port}")
        overrides.append(f"serve.port={args.port}")
    try:
        cfg = load_config(overrides)
        from personavlog.serve.auth import load_tokens

        load_tokens(cfg.serve)  # refuse to start without a token, before anything starts
    except (InputError, ConfigError) as exc:
        return _fail(str(exc))
    from personavlog.serve.deployments import serve_forever

    try:
        return serve_forever(cfg, overrides)
    except ConfigError as exc:
        return _fail(str(exc), code=1)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "generate":
        return cmd_generate(args)
    if args.command == "batch":
        return cmd_batch(args)
    if args.command == "serve":
        return cmd_serve(args)
    return _fail(f"unknown command {args.command!r}")


if __name__ == "__main__":
    raise SystemExit(main())
