"""Media I/O: the ffmpeg binary we run, video encode/decode, and probing with PyAV (there is no ffprobe here).

Which ffmpeg: env PERSONAVLOG_FFMPEG when set (an operator's explicit choice wins), else the binary imageio-ffmpeg
ships (a known build with libx264 and aac), else `ffmpeg` on PATH. A system ffmpeg comes last because distro builds
differ in which encoders they carry.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from personavlog.actors.media import VideoClip
from personavlog.engine.errors import ConfigError, StageError

FFMPEG_ENV = "PERSONAVLOG_FFMPEG"
_STDERR_TAIL_LINES = 20

PathLike = Union[str, "os.PathLike[str]"]


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary to run (see the module docstring for the order)."""
    override = os.environ.get(FFMPEG_ENV, "").strip()
    if override:
        found = shutil.which(override)
        if not found:
            raise ConfigError(f"{FFMPEG_ENV}={override!r} is not an executable file")
        return found
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if exe and os.access(exe, os.X_OK):
            return exe
    except (ImportError, RuntimeError):
        pass  # no bundled binary for this platform: fall back to PATH
    found = shutil.which("ffmpeg")
    if found:
        return found
    raise ConfigError(f"no ffmpeg found: install imageio-ffmpeg, put ffmpeg on PATH or set {FFMPEG_ENV}")


def _tail(stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    return "\n".join(lines[-_STDERR_TAIL_LINES:]) or "(no output on stderr)"


def _command(args: Sequence[PathLike]) -> list[str]:
    return [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", *(os.fspath(a) for a in args)]


def run_ffmpeg(args: list[str], *, timeout_s: float = 600) -> None:
    """Run ffmpeg with `args` (no shell); raise StageError with the tail of its stderr when it fails or hangs."""
    cmd = _command(args)
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        raise StageError(f"ffmpeg timed out after {timeout_s:g} s:\n{_tail(e.stderr or b'')}") from None
    if proc.returncode != 0:
        raise StageError(f"ffmpeg failed (exit {proc.returncode}):\n{_tail(proc.stderr)}")


def _rate(fps: float) -> str:
    """ffmpeg rate string; a fraction keeps 29.97-style rates exact instead of a rounded decimal."""
    return str(Fraction(fps).limit_denominator(1001 * 1000))


def encode_video(clip: VideoClip, path: Path, *, crf: int = 12) -> None:
    """Encode `clip` to H.264 (yuv420p) MP4 at clip.fps, raw RGB piped into ffmpeg's stdin.

    yuv420p needs even sizes, so an odd width/height is padded by one black column/row (right/bottom): the file's
    frames are then one pixel larger than the clip's. The container is forced with `-f mp4` because callers write
    to temp names such as `x.tmp.mp4`.
    """
    frames = np.ascontiguousarray(clip.frames, dtype=np.uint8)
    t, h, w, _ = frames.shape
    if t == 0 or h == 0 or w == 0:
        raise StageError(f"cannot encode an empty clip (frames shape {frames.shape})")
    if not (math.isfinite(clip.fps) and clip.fps > 0):
        raise StageError(f"cannot encode a clip at fps={clip.fps!r}")
    if not 0 <= int(crf) <= 51:
        raise ConfigError(f"crf must be within [0, 51] (libx264 silently clamps anything else), got {crf!r}")
    cmd = _command([
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", _rate(clip.fps), "-i", "pipe:0",
        "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
        "-c:v", "libx264", "-crf", str(int(crf)), "-pix_fmt", "yuv420p", "-movflags", "+faststart",
        "-f", "mp4", "-y", os.fspath(path),
    ])
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # A flat uint8 view: communicate() slices it into pipe-sized writes without copying the whole clip.
        _, err = proc.communicate(input=memoryview(frames.reshape(-1)), timeout=max(60.0, t * 2.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise StageError(f"ffmpeg timed out encoding {t} frames:\n{_tail(err)}") from None
    # communicate() swallows a broken pipe (ffmpeg died early), so the exit status is the only verdict.
    if proc.returncode != 0:
        raise StageError(f"ffmpeg failed encoding {path.name} (exit {proc.returncode}):\n{_tail(err)}")


def _open(path: PathLike) -> Any:
    import av

    p = Path(path)
    if not p.is_file():
        raise StageError(f"media file not found: {p}")
    try:
        return av.open(str(p))
    except av.FFmpegError as e:
        raise StageError(f"cannot open media file {p}: {e}") from None


def read_video(path: PathLike) -> VideoClip:
    """Decode the first video stream of `path` to uint8 RGB frames at its average frame rate."""
    import av

    with _open(path) as container:
        if not container.streams.video:
            raise StageError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        try:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        except av.FFmpegError as e:
            raise StageError(f"{path}: video decode failed: {e}") from None
    if not frames:
        raise StageError(f"{path}: video stream has no frames")
    return VideoClip(frames=np.stack(frames), fps=float(rate) if rate else 0.0)


def _seconds(value: Optional[int], time_base: Any) -> Optional[float]:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def probe(path: PathLike) -> dict[str, Any]:
    """Container facts: {"format", "duration", "bit_rate", "streams": [...]}, durations in seconds.

    Each stream: index, type ("video"|"audio"|"subtitle"|...), codec, duration, language, frames, plus width/height/
    fps for video and sample_rate/channels for audio. Missing facts are None.
    """
    with _open(path) as container:
        streams: list[dict[str, Any]] = []
        for s in container.streams:
            ctx = s.codec_context
            lang = (s.metadata or {}).get("language")
            info: dict[str, Any] = {
                "index": s.index,
                "type": s.type,
                "codec": ctx.name if ctx is not None else None,
                "duration": _seconds(s.duration, s.time_base),
                "language": lang if lang and lang != "und" else None,
                "frames": int(s.frames) or None,
            }
            if s.type == "video":
                rate = s.average_rate or s.guessed_rate
                info.update(width=ctx.width, height=ctx.height, fps=float(rate) if rate else None)
            elif s.type == "audio":
                info.update(sample_rate=ctx.sample_rate, channels=ctx.channels)
            streams.append(info)
        duration = container.duration / 1_000_000 if container.duration is not None else None
        return {
            "format": container.format.name,
            "duration": duration,
            "bit_rate": container.bit_rate or None,
            "streams": streams,
        }


def video_duration(path: PathLike) -> float:
    """Seconds of the first video stream: frames / average rate when the container counts frames (exact for the
    constant-rate clips we make), else the stream's or the container's duration."""
    with _open(path) as container:
        if not container.streams.video:
            raise StageError(f"{path}: no video stream")
        s = container.streams.video[0]
        rate = s.average_rate or s.guessed_rate
        if s.frames and rate:
            return float(s.frames / rate)
        d = _seconds(s.duration, s.time_base)
        if d is None and container.duration is not None:
            d = container.duration / 1_000_000
        if not d or d <= 0:
            raise StageError(f"{path}: cannot tell the video's duration")
        return float(d)


def audio_duration(path: PathLike) -> float:
    """Seconds of audio in `path`: soundfile for WAV/FLAC/OGG, else PyAV (stream duration, else decoded samples)."""
    p = Path(path)
    if not p.is_file():
        raise StageError(f"audio file not found: {p}")
    import soundfile as sf

    try:
        info = sf.info(str(p))
        if info.samplerate > 0 and info.frames >= 0:
            return info.frames / float(info.samplerate)
    except (RuntimeError, sf.LibsndfileError):
        pass  # not a libsndfile format (mp3 in mp4, ...): ask PyAV
    import av

    with _open(p) as container:
        if not container.streams.audio:
            raise StageError(f"{p}: no audio stream")
        s = container.streams.audio[0]
        d = _seconds(s.duration, s.time_base)
        if d is not None and d > 0:
            return d
        try:
            samples = sum(frame.samples for frame in container.decode(s))
        except av.FFmpegError as e:
            raise StageError(f"{p}: audio decode failed: {e}") from None
        rate = s.codec_context.sample_rate or s.rate
        if not rate:
            raise StageError(f"{p}: cannot tell the audio's sample rate")
        return samples / float(rate)
