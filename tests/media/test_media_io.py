"""engine/media.py against the real ffmpeg binary and PyAV: encode/decode round trips, probing, failures."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from personavlog.actors.media import VideoClip
from personavlog.engine.errors import ConfigError, StageError
from personavlog.engine.media import (
    audio_duration,
    encode_video,
    ffmpeg_exe,
    probe,
    read_video,
    run_ffmpeg,
    video_duration,
)


def _gradient_clip(frames: int, height: int, width: int, fps: float) -> VideoClip:
    """Each frame a different flat grey level so frame order and count are visible after a lossy codec."""
    levels = np.linspace(20, 235, frames).astype(np.uint8)
    data = np.broadcast_to(levels[:, None, None, None], (frames, height, width, 3)).copy()
    return VideoClip(frames=data, fps=fps)


def test_round_trip_keeps_frame_count_size_rate_and_order(tmp_path: Path) -> None:
    clip = _gradient_clip(17, 64, 64, 16)
    # The run store writes to temp names ending in ".tmp.mp4": the container must not be guessed from the name.
    out = tmp_path / ".shot_00.mp4.abc.tmp.mp4"
    encode_video(clip, out)
    back = read_video(out)
    assert back.frames.shape == (17, 64, 64, 3)
    assert back.fps == pytest.approx(16.0)
    means = back.frames.reshape(17, -1).mean(axis=1)
    np.testing.assert_allclose(means, clip.frames.reshape(17, -1).mean(axis=1), atol=4)


def test_odd_sizes_are_padded_to_even(tmp_path: Path) -> None:
    frames = np.zeros((9, 33, 47, 3), np.uint8)
    frames[..., 0] = 200  # red
    out = tmp_path / "odd.mp4"
    encode_video(VideoClip(frames=frames, fps=8), out)
    back = read_video(out)
    assert back.frames.shape == (9, 34, 48, 3)
    assert back.fps == pytest.approx(8.0)
    centre = back.frames[4, 10:20, 10:30].reshape(-1, 3).mean(axis=0)
    assert centre[0] > 170 and centre[1] < 30 and centre[2] < 30


def test_fractional_frame_rate_survives(tmp_path: Path) -> None:
    out = tmp_path / "ntsc.mp4"
    encode_video(_gradient_clip(12, 16, 16, 30000 / 1001), out)
    assert read_video(out).fps == pytest.approx(30000 / 1001, rel=1e-4)
    assert video_duration(out) == pytest.approx(12 * 1001 / 30000, abs=1e-3)


def test_probe_reports_video_stream_facts(tmp_path: Path) -> None:
    out = tmp_path / "p.mp4"
    encode_video(_gradient_clip(17, 32, 48, 16), out)
    info = probe(out)
    assert info["duration"] == pytest.approx(17 / 16, abs=0.01)
    assert "mp4" in info["format"]
    (video,) = info["streams"]
    assert video["type"] == "video" and video["codec"] == "h264"
    assert (video["width"], video["height"]) == (48, 32)
    assert video["fps"] == pytest.approx(16.0)
    assert video["frames"] == 17
    assert video["duration"] == pytest.approx(17 / 16, abs=0.01)
    assert video_duration(out) == pytest.approx(17 / 16)


def test_encode_rejects_empty_clip_and_reports_ffmpeg_errors(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="empty clip"):
        encode_video(VideoClip(frames=np.zeros((0, 8, 8, 3), np.uint8), fps=8), tmp_path / "e.mp4")
    with pytest.raises(StageError, match="fps"):
        encode_video(VideoClip(frames=np.zeros((2, 8, 8, 3), np.uint8), fps=0.0), tmp_path / "e.mp4")
    with pytest.raises(ConfigError, match="crf"):
        encode_video(_gradient_clip(3, 8, 8, 8), tmp_path / "bad.mp4", crf=99)
    # ffmpeg itself fails (its output folder does not exist): its stderr reaches the error message.
    with pytest.raises(StageError, match=r"(?s)ffmpeg failed encoding bad\.mp4.*no-such-dir"):
        encode_video(_gradient_clip(3, 8, 8, 8), tmp_path / "no-such-dir" / "bad.mp4")


def test_audio_duration_wav_and_compressed(tmp_path: Path) -> None:
    wav = tmp_path / "tone.wav"
    sr = 24000
    sf.write(wav, (0.3 * np.sin(np.arange(int(sr * 1.25)) * 0.1)).astype(np.float32), sr)
    assert audio_duration(wav) == pytest.approx(1.25, abs=1e-6)
    # AAC in MP4 is not a libsndfile format: the PyAV path answers.
    m4a = tmp_path / "tone.m4a"
    run_ffmpeg(["-i", str(wav), "-c:a", "aac", "-f", "mp4", "-y", str(m4a)])
    assert audio_duration(m4a) == pytest.approx(1.25, abs=0.05)
    info = probe(m4a)
    (audio,) = info["streams"]
    assert audio["type"] == "audio" and audio["codec"] == "aac"
    assert audio["sample_rate"] == sr and audio["channels"] == 1


def test_missing_and_broken_files_raise_stage_errors(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="not found"):
        read_video(tmp_path / "nope.mp4")
    with pytest.raises(StageError, match="not found"):
        audio_duration(tmp_path / "nope.wav")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(StageError, match="cannot open"):
        probe(junk)


def test_run_ffmpeg_raises_with_stderr_tail(tmp_path: Path) -> None:
    with pytest.raises(StageError) as err:
        run_ffmpeg(["-i", str(tmp_path / "missing.wav"), "-f", "null", "-"])
    assert "exit" in str(err.value) and "missing.wav" in str(err.value)


def test_ffmpeg_exe_prefers_env_then_bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imageio_ffmpeg

    monkeypatch.delenv("PERSONAVLOG_FFMPEG", raising=False)
    assert ffmpeg_exe() == imageio_ffmpeg.get_ffmpeg_exe()
    fake = tmp_path / "my-ffmpeg"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PERSONAVLOG_FFMPEG", str(fake))
    assert os.path.samefile(ffmpeg_exe(), fake)
    monkeypatch.setenv("PERSONAVLOG_FFMPEG", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="PERSONAVLOG_FFMPEG"):
        ffmpeg_exe()


def test_job_store_write_video_goes_through_a_temp_file(tmp_path: Path) -> None:
    from personavlog.engine.store import JobStore

    store = JobStore(tmp_path, "0123456789abcdef0123")
    rel = store.write_video("clips/shot_00.mp4", _gradient_clip(9, 24, 40, 8))
    assert read_video(store.path(rel)).frames.shape == (9, 24, 40, 3)
    assert [p.name for p in store.path("clips").iterdir()] == ["shot_00.mp4"]
