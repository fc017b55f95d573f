"""assemble_vlog end to end with the real ffmpeg: timeline, audio placement, ducking, subtitles, atomic output."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import av
import numpy as np
import pytest
import soundfile as sf
from personavlog.actors.media import VideoClip
from personavlog.engine.assembly import (
    Shot,
    assemble_vlog,
    clean_subtitle_text,
    srt_timestamp,
)
from personavlog.engine.config import AssemblyConf
from personavlog.engine.errors import ConfigError, StageError
from personavlog.engine.media import encode_video, probe, read_video, run_ffmpeg

FPS = 16
CONF = AssemblyConf(fps=FPS, height=64, crf=23)
RED, GREEN, BLUE = (220, 30, 30), (30, 200, 30), (30, 30, 220)
SPEECH_HZ, MUSIC_HZ = 440.0, 220.0
SPEECH_S = (0.5, 2.0, 0.4)  # shot 1's monologue outlasts its 1.0625 s clip
MUSIC_S = 0.7  # shorter than the vlog: it has to loop
TEXTS = ("Hello, world", "今日は晴れ。\x07 Ça va?\r\nПривет", "")
SR = 48_000


def _flat_clip(path: Path, colour: tuple[int, int, int], frames: int, height: int, width: int, fps: int) -> Path:
    data = np.empty((frames, height, width, 3), np.uint8)
    data[:] = colour
    encode_video(VideoClip(frames=data, fps=fps), path)
    return path


def _tone(path: Path, hz: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> Path:
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    sf.write(path, (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32), sample_rate)
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("inputs")
    clips = [
        _flat_clip(d / "c0.mp4", RED, 17, 64, 64, FPS),  # 1.0625 s
        _flat_clip(d / "c1.mp4", GREEN, 17, 64, 48, FPS),  # narrower: letterboxed into the first shot's width
        _flat_clip(d / "c2.mp4", BLUE, 9, 32, 32, 8),  # 1.125 s at 8 fps: resampled to 16 fps, scaled up
    ]
    speech = [_tone(d / f"s{i}.wav", SPEECH_HZ, s, 24_000) for i, s in enumerate(SPEECH_S)]
    music = _tone(d / "music.wav", MUSIC_HZ, MUSIC_S, 44_100)
    short_clip = _flat_clip(d / "short.mp4", RED, 5, 64, 64, FPS)  # 0.3125 s
    return {"clips": clips, "speech": speech, "music": music, "short": short_clip}


def _shots(media: dict[str, Any], *, speech: bool = True) -> list[Shot]:
    return [Shot(clip=c, speech=s if speech else None, text=t)
            for c, s, t in zip(media["clips"], media["speech"], TEXTS)]


def _expected_frames(speech: bool) -> list[int]:
    clip_frames = [17, 17, 18]
    if not speech:
        return clip_frames
    gap = CONF.speech_gap_s
    return [max(c, int(np.ceil((s + gap) * FPS - 1e-9))) for c, s in zip(clip_frames, SPEECH_S)]


def _decode_audio(path: Path) -> np.ndarray:
    """Left channel, float32, from the start of the stream (the decoder drops the AAC priming samples)."""
    with av.open(str(path)) as c:
        frames = [f.to_ndarray() for f in c.decode(c.streams.audio[0])]
    return np.concatenate(frames, axis=1)[0].astype(np.float64)


def _rms(x: np.ndarray, a: float, b: float) -> float:
    seg = x[int(a * SR):int(b * SR)]
    return float(np.sqrt(np.mean(seg ** 2)))


def _tone_amplitude(x: np.ndarray, hz: float, a: float, b: float) -> float:
    seg = x[int(a * SR):int(b * SR)]
    t = np.arange(seg.size) / SR
    return float(2 * abs(np.sum(seg * np.exp(-2j * np.pi * hz * t))) / seg.size)


def _assemble(tmp: Path, shots: list[Shot], music: Optional[Path], conf: AssemblyConf = CONF) -> dict[str, Any]:
    out = tmp / "vlog.mp4"
    srt = tmp / "subtitles.srt"
    result = assemble_vlog(shots, music, out, srt, conf)
    return {"result": result, "mp4": out, "srt": srt, "dir": tmp}


@pytest.fixture(scope="module")
def full(media: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _assemble(tmp_path_factory.mktemp("full"), _shots(media), media["music"])


@pytest.fixture(scope="module")
def music_only(media: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _assemble(tmp_path_factory.mktemp("music_only"), _shots(media, speech=False), media["music"])


@pytest.fixture(scope="module")
def speech_only(media: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _assemble(tmp_path_factory.mktemp("speech_only"), _shots(media), None)


def _streams(path: Path) -> dict[str, list[dict[str, Any]]]:
    by_type: dict[str, list[dict[str, Any]]] = {}
    for s in probe(path)["streams"]:
        by_type.setdefault(s["type"], []).append(s)
    return by_type


def test_output_streams_and_duration(full: dict[str, Any]) -> None:
    streams = _streams(full["mp4"])
    assert sorted(streams) == ["audio", "subtitle", "video"]
    (video,), (audio,), (subs,) = streams["video"], streams["audio"], streams["subtitle"]
    assert video["codec"] == "h264" and (video["width"], video["height"]) == (64, 64)
    assert video["fps"] == pytest.approx(FPS)
    assert audio["codec"] == "aac" and audio["sample_rate"] == SR and audio["channels"] == 2
    assert subs["codec"] == "mov_text" and subs["language"] == "eng"

    frames = _expected_frames(speech=True)
    expected = sum(frames) / FPS
    result = full["result"]
    assert result["duration"] == pytest.approx(expected)
    assert result["duration"] >= 17 / 16 + 17 / 16 + 9 / 8  # never shorter than the clips
    assert video["frames"] == sum(frames)
    info = probe(full["mp4"])
    assert info["duration"] == pytest.approx(expected, abs=1 / FPS)
    assert video["duration"] == pytest.approx(expected, abs=0.05)
    assert audio["duration"] == pytest.approx(expected, abs=0.05)
    assert (result["width"], result["height"]) == (64, 64)


def test_timeline_extends_the_shot_whose_monologue_outlasts_its_clip(full: dict[str, Any]) -> None:
    shots = full["result"]["shots"]
    frames = _expected_frames(speech=True)
    starts = np.cumsum([0] + frames[:-1]) / FPS
    assert [s["start"] for s in shots] == pytest.approx(list(starts))
    assert [s["end"] - s["start"] for s in shots] == pytest.approx([f / FPS for f in frames])
    assert [s["extended"] for s in shots] == [False, True, False]
    # Shot 1 = speech + gap (rounded up to a frame), longer than its clip.
    assert shots[1]["end"] - shots[1]["start"] >= SPEECH_S[1] + CONF.speech_gap_s
    assert shots[1]["end"] - shots[1]["start"] > 17 / 16
    for a, b in zip(shots, shots[1:]):
        assert a["end"] == pytest.approx(b["start"])


def test_frames_follow_shot_order_and_hold_the_last_frame(full: dict[str, Any]) -> None:
    clip = read_video(full["mp4"])
    shots = full["result"]["shots"]

    def colour_at(t: float, x: slice = slice(28, 36)) -> np.ndarray:
        return clip.frames[int(t * FPS), 28:36, x].reshape(-1, 3).mean(axis=0)

    for shot, colour in zip(shots, (RED, GREEN, BLUE)):
        mid = (shot["start"] + shot["end"]) / 2
        np.testing.assert_allclose(colour_at(mid), colour, atol=30)
    # Shot 1's clip ends at 1.0625 s into the shot; its last frame is held (still green) until the shot ends.
    np.testing.assert_allclose(colour_at(shots[1]["end"] - 0.5 / FPS), GREEN, atol=30)
    # The 48-wide clip is fitted into the 64-wide frame with black bars at the sides.
    mid1 = (shots[1]["start"] + shots[1]["end"]) / 2
    assert colour_at(mid1, slice(0, 6)).max() < 40


def test_srt_cues_start_at_shot_starts(full: dict[str, Any]) -> None:
    text = full["srt"].read_text(encoding="utf-8")
    blocks = [b.split("\n") for b in text.strip().split("\n\n")]
    shots = full["result"]["shots"]
    assert [b[0] for b in blocks] == ["1", "2"]  # shot 2 has no text: no cue, numbering stays dense
    assert full["result"]["cues"] == 2
    (s0, e0), (s1, e1) = [b[1].split(" --> ") for b in blocks]
    assert s0 == srt_timestamp(shots[0]["start"]) == "00:00:00,000"
    assert e0 == srt_timestamp(1.0)  # max(speech 0.5 s, 1 s)
    assert s1 == srt_timestamp(shots[1]["start"]) == "00:00:01,062"
    assert e1 == srt_timestamp(shots[1]["start"] + SPEECH_S[1])
    assert blocks[0][2:] == ["Hello, world"]
    assert blocks[1][2:] == ["今日は晴れ。 Ça va?", "Привет"]  # BEL stripped, CRLF -> one line break


def test_subtitle_track_in_mp4_carries_the_same_utf8_text(full: dict[str, Any], tmp_path: Path) -> None:
    extracted = tmp_path / "back.srt"
    run_ffmpeg(["-i", str(full["mp4"]), "-map", "0:s:0", "-f", "srt", "-y", str(extracted)])
    back = extracted.read_text(encoding="utf-8")
    assert "今日は晴れ。 Ça va?" in back and "Привет" in back and "Hello, world" in back
    assert "00:00:01,062 --> 00:00:03,062" in back


def test_each_monologue_starts_at_its_shot_start(speech_only: dict[str, Any]) -> None:
    assert speech_only["result"]["audio"] == "speech"
    audio = _decode_audio(speech_only["mp4"])
    shots = speech_only["result"]["shots"]
    for shot, speech_s in zip(shots, SPEECH_S):
        start = shot["start"]
        if start > 0:  # silence just before the shot (the previous monologue and its gap are over)
            assert _rms(audio, start - 0.06, start - 0.03) < 0.01
        assert _rms(audio, start + 0.01, start + 0.05) > 0.1
        assert _rms(audio, start + speech_s - 0.1, start + speech_s - 0.02) > 0.1  # still talking
        assert _rms(audio, start + speech_s + 0.05, shot["end"] - 0.02) < 0.01  # the gap after it is silent
    assert _tone_amplitude(audio, MUSIC_HZ, 0.0, 3.0) < 0.01  # no music was given


def test_music_loops_to_the_end_and_fades(music_only: dict[str, Any]) -> None:
    result = music_only["result"]
    assert result["audio"] == "music"
    assert [s["extended"] for s in result["shots"]] == [False, False, False]
    assert result["duration"] == pytest.approx(sum(_expected_frames(speech=False)) / FPS)
    audio = _decode_audio(music_only["mp4"])
    early = _tone_amplitude(audio, MUSIC_HZ, 0.1, 0.6)
    assert early > 0.05
    # Well past the 0.7 s music file: it looped. Before the fade-out it plays at the same level.
    assert _tone_amplitude(audio, MUSIC_HZ, 1.5, 2.0) == pytest.approx(early, rel=0.1)
    end = result["duration"]
    assert _rms(audio, end - 0.1, end - 0.02) < 0.3 * _rms(audio, 0.1, 0.6)  # faded out
    assert _tone_amplitude(audio, SPEECH_HZ, 0.1, 2.0) < 0.01  # no speech was given


def test_music_is_ducked_under_speech(full: dict[str, Any], music_only: dict[str, Any]) -> None:
    mixed = _decode_audio(full["mp4"])
    bed = _decode_audio(music_only["mp4"])
    # The music bed depends only on time, not on the shots: compare its 220 Hz level at the same instants
    # (inside shot 1's monologue) with and without speech on top.
    start = full["result"]["shots"][1]["start"]
    ducked = _tone_amplitude(mixed, MUSIC_HZ, start + 0.3, start + 1.6)
    undisturbed = _tone_amplitude(bed, MUSIC_HZ, start + 0.3, start + 1.6)
    assert undisturbed > 0.05
    assert ducked < 0.5 * undisturbed
    # The speech itself is mixed in at full level (no normalisation by amix).
    assert _tone_amplitude(mixed, SPEECH_HZ, start + 0.3, start + 1.6) > 0.3


@pytest.mark.parametrize("with_speech,with_music,mode", [
    (True, True, "mix"), (True, False, "speech"), (False, True, "music"), (False, False, "silence"),
])
def test_always_exactly_one_audio_stream(media: dict[str, Any], tmp_path: Path, with_speech: bool,
                                         with_music: bool, mode: str) -> None:
    shots = _shots(media, speech=with_speech)[:2]  # two shots keep it quick
    out = _assemble(tmp_path, shots, media["music"] if with_music else None)
    assert out["result"]["audio"] == mode
    streams = _streams(out["mp4"])
    assert len(streams["audio"]) == 1 and streams["audio"][0]["codec"] == "aac"
    assert len(streams["video"]) == 1 and len(streams["subtitle"]) == 1
    expected = sum(_expected_frames(with_speech)[:2]) / FPS
    assert streams["audio"][0]["duration"] == pytest.approx(expected, abs=0.05)
    if mode == "silence":
        assert np.abs(_decode_audio(out["mp4"])).max() < 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subtitles.srt", "vlog.mp4"]


def test_cue_is_cut_at_a_short_shot_end(media: dict[str, Any], tmp_path: Path) -> None:
    shots = [Shot(clip=media["short"], speech=None, text="quick"), Shot(clip=media["clips"][0], speech=None,
                                                                         text="  \n\t ")]
    out = _assemble(tmp_path, shots, None)
    # 0.3125 s shot without speech: the 1 s minimum is cut at the shot end; blank text makes no cue at all.
    assert out["srt"].read_text(encoding="utf-8") == "1\n00:00:00,000 --> 00:00:00,312\nquick\n"


def test_no_temp_files_left_and_failing_ffmpeg_leaves_no_output(media: dict[str, Any], full: dict[str, Any],
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert sorted(p.name for p in full["dir"].iterdir()) == ["subtitles.srt", "vlog.mp4"]

    # An ffmpeg that dies half-way through writing its output (as a crash or a full disk would).
    crashing = tmp_path / "crashing-ffmpeg"
    crashing.write_text('#!/bin/sh\nfor last; do :; done\nprintf partial > "$last"\n'
                        'echo "simulated encoder crash" >&2\nexit 1\n')
    crashing.chmod(crashing.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PERSONAVLOG_FFMPEG", str(crashing))
    out_dir = tmp_path / "out"
    with pytest.raises(StageError, match="simulated encoder crash"):
        assemble_vlog(_shots(media), media["music"], out_dir / "vlog.mp4", out_dir / "subtitles.srt", CONF)
    assert list(out_dir.iterdir()) == []

    # A previous vlog survives a failed re-assembly untouched.
    (out_dir / "vlog.mp4").write_bytes(b"previous vlog")
    with pytest.raises(StageError):
        assemble_vlog(_shots(media), media["music"], out_dir / "vlog.mp4", out_dir / "subtitles.srt", CONF)
    assert sorted(p.name for p in out_dir.iterdir()) == ["vlog.mp4"]
    assert (out_dir / "vlog.mp4").read_bytes() == b"previous vlog"


def test_missing_inputs_name_the_shot(media: dict[str, Any], tmp_path: Path) -> None:
    shots = _shots(media)
    shots[1] = replace(shots[1], clip=tmp_path / "gone.mp4")
    with pytest.raises(StageError, match=r"shot 1: clip file not found"):
        assemble_vlog(shots, None, tmp_path / "v.mp4", tmp_path / "v.srt", CONF)
    shots = _shots(media)
    shots[2] = replace(shots[2], speech=tmp_path / "gone.wav")
    with pytest.raises(StageError, match=r"shot 2: speech file not found"):
        assemble_vlog(shots, None, tmp_path / "v.mp4", tmp_path / "v.srt", CONF)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 256)
    shots = _shots(media)
    shots[0] = replace(shots[0], clip=junk)
    with pytest.raises(StageError, match=r"shot 0: unreadable clip"):
        assemble_vlog(shots, None, tmp_path / "v.mp4", tmp_path / "v.srt", CONF)
    with pytest.raises(StageError, match="music file not found"):
        assemble_vlog(_shots(media), tmp_path / "gone.wav", tmp_path / "v.mp4", tmp_path / "v.srt", CONF)
    with pytest.raises(StageError, match="no shots"):
        assemble_vlog([], None, tmp_path / "v.mp4", tmp_path / "v.srt", CONF)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.mp4"]


@pytest.mark.parametrize("field,value", [
    ("height", 63), ("fps", 0), ("duck_ratio", 40.0), ("crf", 60), ("subtitle_language", "en"),
    ("audio_bitrate", "loud"), ("speech_gap_s", -1.0), ("music_volume", -0.5),
])
def test_bad_assembly_conf_names_the_key(media: dict[str, Any], tmp_path: Path, field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=f"assembly.{field}"):
        assemble_vlog(_shots(media), None, tmp_path / "v.mp4", tmp_path / "v.srt", replace(CONF, **{field: value}))


def test_srt_helpers() -> None:
    assert srt_timestamp(0) == "00:00:00,000"
    assert srt_timestamp(3723.4567) == "01:02:03,457"
    assert srt_timestamp(59.9996) == "00:01:00,000"
    assert clean_subtitle_text("a\x00b\x1b[31m\tc\n\n\nd\u2028e\ufeff") == "ab[31m c\nd\ne"
    assert clean_subtitle_text("   ") == ""
    assert clean_subtitle_text(None) == ""
    assert clean_subtitle_text("مرحبا 👋🏽 नमस्ते") == "مرحبا 👋🏽 नमस्ते"
