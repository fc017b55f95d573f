"""Throughput of each FRM quality scorer on a fixed synthetic clip.

    .venv/bin/python benchmarks/scorers.py --size tiny --device cpu
    .venv/bin/python benchmarks/scorers.py --size full --device cuda --frames 81 --height 480 --width 832

--size full builds the real architectures (CLIP ViT-L/14 + ViT-B/32, DINO ViT-B/16, RAFT-large, MUSIQ) from
conf/scorers/full.yaml with random weights: compute cost does not depend on weight values, and nothing is downloaded.
Prints one row per scorer (median seconds per call over --repeats after one warm-up call, and frames/s) and a JSON
line with the same numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np

VIDEO_SCORERS = ("subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree",
                 "aesthetic_quality", "imaging_quality")


def synthetic_clip(frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """A textured pattern drifting 2 px per frame: real motion for RAFT, real texture for the quality models."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 64, (height, width + 2 * frames, 3)).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width + 2 * frames].astype(np.float32)
    base = np.stack([127 + 100 * np.sin(xs / 23.0), 127 + 100 * np.cos(ys / 17.0),
                     127 + 100 * np.sin((xs + ys) / 31.0)], axis=-1)
    canvas = np.clip(base * 0.75 + texture, 0, 255).astype(np.uint8)
    return np.stack([canvas[:, 2 * t:2 * t + width] for t in range(frames)])


def build_conf(size: str, device: str):
    from personavlog.actors.scorers import load_scorer_conf

    common = [f"device={device}"]
    if size == "tiny":
        return load_scorer_conf("tiny", common)
    roles = ("clip", "background_clip", "aesthetic_clip", "aesthetic_head", "dino", "raft", "imaging")
    return load_scorer_conf("full", common + ["allow_random_weights=true", "weights_root=null",
                                              "raft.zero_flow_head=false"] + [f"{r}.weights=null" for r in roles])


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first calls pay for kernel selection and allocator growth
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--height", type=int, default=None, help="default: 128 (tiny), 480 (full)")
    ap.add_argument("--width", type=int, default=None, help="default: 128 (tiny), 832 (full)")
    ap.add_argument("--fps", type=float, default=16.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    height = args.height or (128 if args.size == "tiny" else 480)
    width = args.width or (128 if args.size == "tiny" else 832)

    import torch
    from PIL import Image

    from personavlog.actors.scorers import QualityScorer

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    scorer = QualityScorer(build_conf(args.size, args.device))
    load_s = time.perf_counter() - t0
    clip = synthetic_clip(args.frames, height, width)

    rows: dict[str, dict[str, float]] = {}
    for name in VIDEO_SCORERS:
        fn = getattr(scorer, name)
        sec = timed(lambda fn=fn: fn(frames=clip, fps=args.fps), args.repeats)
        rows[name] = {"seconds": sec, "frames_per_s": args.frames / sec}
    sec = timed(lambda: scorer.video_scores(frames=clip, fps=args.fps), args.repeats)
    rows["video_scores (all six)"] = {"seconds": sec, "frames_per_s": args.frames / sec}
    keyframe, reference = Image.fromarray(clip[0]), Image.fromarray(clip[-1])
    sec = timed(lambda: scorer.image_scores(image=keyframe, reference=reference,
                                            text="a traveller walks along a sunny harbour, watching the boats"),
                args.repeats)
    rows["image_scores (m_i2i, m_i2t)"] = {"seconds": sec, "frames_per_s": 1.0 / sec}

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(f"size={args.size} device={args.device} ({device_name}, torch threads={torch.get_num_threads()}) "
          f"clip={args.frames}x{height}x{width}@{args.fps:g}fps imaging={scorer.conf.imaging.arch} "
          f"raft={scorer.conf.raft.arch} load={load_s:.1f}s repeats={args.repeats}")
    print(f"{'scorer':32s} {'s/call':>9s} {'frames/s':>10s}")
    for name, r in rows.items():
        print(f"{name:32s} {r['seconds']:9.3f} {r['frames_per_s']:10.2f}")
    print(json.dumps({"size": args.size, "device": args.device, "frames": args.frames, "height": height,
                      "width": width, "load_s": round(load_s, 2),
                      "scorers": {k: {kk: round(vv, 4) for kk, vv in v.items()} for k, v in rows.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
