"""Final vlog assembly: shot clips + monologue speech + background music + subtitles -> one MP4 (and an .srt).

One ffmpeg run with a filter_complex does all of it; the timeline is computed here first (in whole output frames)
so the video, the audio and the subtitle cues are cut from the same numbers.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from personavlog.engine.config import AssemblyConf
from personavlog.engine.errors import ConfigError, StageError
from personavlog.engine.media import audio_duration, probe, run_ffmpeg, video_duration
from personavlog.engine.store import atomic_path

SAMPLE_RATE = 48_000  # output audio rate; every input is resampled to it
MIN_CUE_S = 1.0  # a subtitle stays on screen at least this long (when the shot allows it)
FADE_OUT_S = 1.0  # music fade-out at the end (shortened for very short vlogs)
# Ducking: the speech key is far above this level whenever someone talks, so the music drops by ~ratio there.
DUCK_THRESHOLD = 0.02
DUCK_ATTACK_MS = 20
DUCK_RELEASE_MS = 300


@dataclass
class Shot:
    """One shot of the vlog: its clip, its monologue speech (optional) and the monologue text (the subtitle)."""

    clip: Path
    speech: Optional[Path]
    text: str


@dataclass
class _Planned:
    index: int
    clip: Path
    speech: Optional[Path]
    text: str
    width: int
    height: int
    clip_s: float
    speech_s: float
    frames: int = 0  # output frames of this shot
    start_frame: int = 0


def _check_conf(conf: AssemblyConf) -> None:
    if not (isinstance(conf.fps, int) and conf.fps > 0):
        raise ConfigError(f"assembly.fps must be a positive integer, got {conf.fps!r}")
    if not (isinstance(conf.height, int) and conf.height >= 2 and conf.height % 2 == 0):
        raise ConfigError(f"assembly.height must be an even integer >= 2 (H.264 yuv420p), got {conf.height!r}")
    if not (conf.music_volume >= 0 and math.isfinite(conf.music_volume)):
        raise ConfigError(f"assembly.music_volume must be >= 0, got {conf.music_volume!r}")
    if not 1.0 <= conf.duck_ratio <= 20.0:
        raise ConfigError(f"assembly.duck_ratio must be within [1, 20] (ffmpeg sidechaincompress), got {conf.duck_ratio!r}")
    if not (conf.speech_gap_s >= 0 and math.isfinite(conf.speech_gap_s)):
        raise ConfigError(f"assembly.speech_gap_s must be >= 0, got {conf.speech_gap_s!r}")
    if not (isinstance(conf.crf, int) and 0 <= conf.crf <= 51):
        raise ConfigError(f"assembly.crf must be an integer within [0, 51], got {conf.crf!r}")
    lang = conf.subtitle_language
    if not (isinstance(lang, str) and len(lang) == 3 and lang.isascii() and lang.isalpha() and lang.islower()):
        raise ConfigError(f"assembly.subtitle_language must be an ISO 639-2 code like 'eng', got {lang!r}")
    rate = str(conf.audio_bitrate)
    if not (rate[:-1].isdigit() and rate[-1] in "kK" or rate.isdigit()):
        raise ConfigError(f"assembly.audio_bitrate must look like '160k', got {conf.audio_bitrate!r}")


def clean_subtitle_text(text: Optional[str]) -> str:
    """Subtitle text as SRT can hold it: control characters dropped, line breaks normalised, blank lines removed
    (a blank line would end the cue early). Any script is kept as is."""
    if not text:
        return ""
    lines: list[str] = []
    for raw in str(text).replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n").split("\n"):
        kept = "".join(" " if ch == "\t" else ch for ch in raw
                       if ch == "\t" or (unicodedata.category(ch) != "Cc" and ch != "\ufeff"))
        kept = " ".join(kept.split())
        if kept:
            lines.append(kept)
    return "\n".join(lines)


def srt_timestamp(seconds: float) -> str:
    """HH:MM:SS,mmm (milliseconds rounded)."""
    ms = max(0, int(round(seconds * 1000)))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def _plan(shots: list[Shot], conf: AssemblyConf) -> list[_Planned]:
    planned: list[_Planned] = []
    for i, shot in enumerate(shots):
        clip = Path(shot.clip)
        if not clip.is_file():
            raise StageError(f"shot {i}: clip file not found: {clip}")
        try:
            info = probe(clip)
            clip_s = video_duration(clip)
        except StageError as e:
            raise StageError(f"shot {i}: unreadable clip {clip}: {e}") from None
        video = next((s for s in info["streams"] if s["type"] == "video"), None)
        if video is None or not video.get("width") or not video.get("height"):
            raise StageError(f"shot {i}: clip {clip} has no video stream")
        speech = Path(shot.speech) if shot.speech is not None else None
        speech_s = 0.0
        if speech is not None:
            if not speech.is_file():
                raise StageError(f"shot {i}: speech file not found: {speech}")
            try:
                speech_s = audio_duration(speech)
            except StageError as e:
                raise StageError(f"shot {i}: unreadable speech {speech}: {e}") from None
        planned.append(_Planned(i, clip, speech, clean_subtitle_text(shot.text), int(video["width"]),
                                int(video["height"]), clip_s, speech_s))

    fps = conf.fps
    start = 0
    for p in planned:
        clip_frames = max(1, round(p.clip_s * fps))
        # Shot length = max(clip, speech + gap), in whole frames, rounded up so the gap is never shortened.
        speech_frames = math.ceil((p.speech_s + conf.speech_gap_s) * fps - 1e-9) if p.speech is not None else 0
        p.frames = max(clip_frames, speech_frames)
        p.start_frame = start
        start += p.frames
    return planned


def _srt(planned: list[_Planned], fps: int) -> tuple[str, int]:
    """SRT text and its number of cues."""
    cues: list[str] = []
    for p in planned:
        if not p.text:
            continue
        start = p.start_frame / fps
        end = min(start + max(p.speech_s, MIN_CUE_S), (p.start_frame + p.frames) / fps)
        cues.append(f"{len(cues) + 1}\n{srt_timestamp(start)} --> {srt_timestamp(end)}\n{p.text}\n")
    return "\n".join(cues), len(cues)


def _sample(frame: int, fps: int) -> int:
    """Audio sample index of a video frame boundary; rounding at each boundary (not per shot) avoids drift."""
    return round(frame * SAMPLE_RATE / fps)


def _filter_graph(planned: list[_Planned], width: int, conf: AssemblyConf, music_input: Optional[int],
                  music_loop_samples: int, speech_inputs: dict[int, int]) -> tuple[str, str]:
    """The filter_complex and the label of its audio output ([vout] is the video)."""
    fps, height = conf.fps, conf.height
    parts: list[str] = []
    for p in planned:
        # Pad by a whole shot's length, not just the planned hold: a clip whose container over-states its frame
        # count still fills its shot exactly (trim cuts the surplus, so the extra costs nothing).
        hold_s = (p.frames + 2) / fps
        parts.append(
            f"[{p.index}:v:0]setpts=PTS-STARTPTS,"
            f"scale={width}:{height}:force_original_aspect_ratio=decrease:force_divisible_by=2,"
            f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1,fps={fps},format=yuv420p,"
            # Hold the last frame while the monologue runs on, then cut to the shot's exact frame count.
            f"tpad=stop_mode=clone:stop_duration={hold_s:.6f},trim=end_frame={p.frames},setpts=PTS-STARTPTS[v{p.index}]"
        )
    parts.append("".join(f"[v{p.index}]" for p in planned) + f"concat=n={len(planned)}:v=1:a=0[vout]")

    total_frames = planned[-1].start_frame + planned[-1].frames
    total_samples = _sample(total_frames, fps)
    total_s = total_frames / fps
    fmt = f"aresample={SAMPLE_RATE},aformat=sample_fmts=fltp:channel_layouts=stereo"

    speech_label: Optional[str] = None
    if speech_inputs:
        # Each shot's audio segment is exactly as long as its video (speech padded with silence, or silence
        # alone), so after concat each monologue starts exactly at its shot's first frame.
        for p in planned:
            n = _sample(p.start_frame + p.frames, fps) - _sample(p.start_frame, fps)
            if p.index in speech_inputs:
                parts.append(f"[{speech_inputs[p.index]}:a:0]asetpts=PTS-STARTPTS,{fmt},"
                             f"apad=whole_len={n},atrim=end_sample={n}[s{p.index}]")
            else:
                parts.append(f"anullsrc=r={SAMPLE_RATE}:cl=stereo,atrim=end_sample={n},{fmt}[s{p.index}]")
        parts.append("".join(f"[s{p.index}]" for p in planned) + f"concat=n={len(planned)}:v=0:a=1[speech]")
        speech_label = "speech"

    if music_input is None:
        if speech_label:
            return ";".join(parts), speech_label
        parts.append(f"anullsrc=r={SAMPLE_RATE}:cl=stereo,atrim=end_sample={total_samples},{fmt}[silence]")
        return ";".join(parts), "silence"

    fade_s = min(FADE_OUT_S, total_s / 4)
    # aloop (not -stream_loop) because ffmpeg's demuxer looping dropped audio at each seam, shortening the bed.
    loop = f"aloop=loop=-1:size={music_loop_samples}," if music_loop_samples else ""
    parts.append(
        f"[{music_input}:a:0]{loop}{fmt},atrim=end_sample={total_samples},asetpts=N/SR/TB,volume={conf.music_volume:g},"
        f"afade=t=out:st={total_s - fade_s:.6f}:d={fade_s:.6f}[music]"
    )
    if not speech_label:
        return ";".join(parts), "music"
    parts.append("[speech]asplit=2[speech_mix][speech_key]")
    parts.append(f"[music][speech_key]sidechaincompress=threshold={DUCK_THRESHOLD}:ratio={conf.duck_ratio:g}:"
                 f"attack={DUCK_ATTACK_MS}:release={DUCK_RELEASE_MS}[ducked]")
    parts.append("[ducked][speech_mix]amix=inputs=2:duration=first:dropout_transition=0:normalize=0[mix]")
    return ";".join(parts), "mix"


def _music_loop_samples(music: Path, planned: list[_Planned], fps: int) -> int:
    """Samples (at the music's own rate) aloop must repeat, or 0 when the music already covers the vlog.

    Rounded up: aloop restarts at the input's end when its buffer is not full, so too many is harmless while too
    few would cut the end of every repetition.
    """
    try:
        music_s = audio_duration(music)
        stream = next((s for s in probe(music)["streams"] if s["type"] == "audio"), None)
    except StageError as e:
        raise StageError(f"assemble: unreadable music {music}: {e}") from None
    if stream is None or not stream.get("sample_rate") or music_s <= 0:
        raise StageError(f"assemble: music file {music} has no audio")
    total_s = (planned[-1].start_frame + planned[-1].frames) / fps
    if music_s >= total_s:
        return 0
    return math.ceil(music_s * stream["sample_rate"])


def assemble_vlog(shots: list[Shot], music: Optional[Path], out_mp4: Path, out_srt: Path,
                  conf: AssemblyConf) -> dict[str, Any]:
    """Cut the shots into one vlog MP4 with music, monologues and soft subtitles; also write the .srt.

    Rules:
      * Clips play in order. Each is scaled to `conf.height` keeping its aspect; the first shot fixes the output
        width (its scaled width rounded to even); a later clip whose aspect differs is fitted inside that frame and
        padded with black. Every clip is resampled to `conf.fps`.
      * Shot i lasts max(clip duration, speech duration + conf.speech_gap_s), counted in whole output frames and
        rounded up (a shot without speech lasts its clip). When the monologue outlasts the clip, the clip's last
        frame is held (tpad stop_mode=clone), so monologues never overlap.
      * Shot i's speech starts exactly at shot i's first frame. The speech track is built by concatenating, per
        shot, the speech padded with silence to the shot's exact length (silence for shots without speech).
      * Shot i's subtitle cue spans [shot start, shot start + max(speech duration, 1 s)], cut at the shot's end.
        Shots with empty (after cleaning) text get no cue; cues are numbered from 1 in shot order. Control
        characters are stripped; any script is kept. (ffmpeg's SRT reader treats `{\\...}` as styling codes.)
      * Only the clips' pictures are used; any audio inside a clip is ignored.
      * Music (when given) is looped (aloop) and trimmed to the vlog's length, scaled by conf.music_volume, faded out over
        the last second (a quarter of the vlog if that is shorter), ducked under the speech with sidechaincompress
        (ratio conf.duck_ratio, the speech track as key) and mixed with the speech without normalisation.
        No music -> speech only; no speech -> music only; neither -> silence. There is always one stereo 48 kHz
        AAC track (conf.audio_bitrate).
      * Output: H.264 yuv420p (crf conf.crf, +faststart) + AAC + a mov_text subtitle track tagged
        conf.subtitle_language, made from the same SRT that is written to `out_srt` (UTF-8).
      * Both files are written to temp files beside their final paths and moved into place only after ffmpeg
        succeeded, the SRT first and the MP4 last; a failure leaves neither temp file behind.

    Returns {"duration", "width", "height", "audio": "mix"|"speech"|"music"|"silence", "cues",
    "shots": [{"start", "end", "clip", "speech", "extended"}]} with times in seconds.
    """
    _check_conf(conf)
    if not shots:
        raise StageError("assemble: no shots to assemble")
    if music is not None:
        music = Path(music)
        if not music.is_file():
            raise StageError(f"assemble: music file not found: {music}")
    planned = _plan(list(shots), conf)
    music_loop_samples = _music_loop_samples(music, planned, conf.fps) if music is not None else 0

    first = planned[0]
    width = max(2, 2 * round(first.width * conf.height / first.height / 2))
    fps = conf.fps
    total_frames = planned[-1].start_frame + planned[-1].frames
    duration = total_frames / fps

    args: list[str] = []
    for p in planned:
        args += ["-i", str(p.clip)]
    speech_inputs: dict[int, int] = {}
    for p in planned:
        if p.speech is not None:
            speech_inputs[p.index] = len(planned) + len(speech_inputs)
            args += ["-i", str(p.speech)]
    music_input: Optional[int] = None
    if music is not None:
        music_input = len(planned) + len(speech_inputs)
        args += ["-i", str(music)]
    srt_input = len(planned) + len(speech_inputs) + (music is not None)

    graph, audio_label = _filter_graph(planned, width, conf, music_input, music_loop_samples, speech_inputs)
    srt_text, cue_count = _srt(planned, fps)

    out_mp4, out_srt = Path(out_mp4), Path(out_srt)
    # Nesting order makes the SRT land first and the MP4 last; an exception in ffmpeg removes both temp files.
    with atomic_path(out_mp4) as tmp_mp4:
        with atomic_path(out_srt) as tmp_srt:
            tmp_srt.write_text(srt_text, encoding="utf-8")
            run_ffmpeg(args + [
                "-f", "srt", "-i", str(tmp_srt),
                "-filter_complex", graph,
                "-map", "[vout]", "-map", f"[{audio_label}]", "-map", f"{srt_input}:s:0",
                "-c:v", "libx264", "-crf", str(conf.crf), "-pix_fmt", "yuv420p", "-r", str(fps),
                "-c:a", "aac", "-b:a", str(conf.audio_bitrate), "-ar", str(SAMPLE_RATE), "-ac", "2",
                "-c:s", "mov_text", "-metadata:s:s:0", f"language={conf.subtitle_language}",
                "-map_metadata", "-1", "-movflags", "+faststart",
                "-f", "mp4", "-y", str(tmp_mp4),
            ], timeout_s=max(600.0, 20.0 * duration))

    return {
        "duration": duration,
        "width": width,
        "height": conf.height,
        "audio": audio_label,
        "cues": cue_count,
        "shots": [
            {
                "start": p.start_frame / fps,
                "end": (p.start_frame + p.frames) / fps,
                "clip": str(p.clip),
                "speech": str(p.speech) if p.speech is not None else None,
                "extended": p.frames > max(1, round(p.clip_s * fps)),
            }
            for p in planned
        ],
    }
