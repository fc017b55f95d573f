"""End to end through the real classes: the CLI on the embedded default (tiny models, local MLLM, real Ray, ffmpeg).

One vlog is made once per module and then checked from several sides; the rerun and corruption tests reuse it.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from personavlog.engine.media import probe

pytestmark = pytest.mark.slow

CLI = str(Path(sys.executable).with_name("personavlog"))
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reference.png"
SHOTS = 3


def generate(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "generate", "--theme", "A rainy day in a small mountain town",
                           "--style", "Studio Ghibli watercolor", "--image", str(EXAMPLE), "--shots", str(SHOTS),
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    proc = generate(out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    vlog = Path(proc.stdout.strip().splitlines()[-1])
    return out, vlog, proc


def _manifest(vlog: Path) -> dict:
    return json.loads((vlog.parent / "manifest.json").read_text())


def test_vlog_has_video_audio_and_subtitles(first_run):
    _, vlog, _ = first_run
    assert vlog.name == "vlog.mp4" and vlog.is_file()
    info = probe(vlog)
    kinds = sorted(s["type"] for s in info["streams"])
    assert kinds == ["audio", "subtitle", "video"], info
    manifest = _manifest(vlog)
    p = manifest["config"]["models"]["image_to_video"]["params"]
    clip_len = p["num_frames"] / p["fps"]
    assert info["duration"] >= SHOTS * clip_len - 0.05
    srt = (vlog.parent / "subtitles.srt").read_text()
    plan = json.loads((vlog.parent / "plan.json").read_text())
    assert srt.startswith("1\n") and plan["monologues"][0].strip()[:10] in srt


def test_manifest_lists_every_stage_done(first_run):
    _, vlog, _ = first_run
    m = _manifest(vlog)
    assert m["status"] == "succeeded"
    expected = {"stylize", "plan", "music", "assemble"} | {f"{s}/{i}" for s in ("keyframe", "clip", "speech")
                                                          for i in range(SHOTS)}
    assert set(m["stages"]) == expected
    for unit, rec in m["stages"].items():
        assert rec["status"] == "done", unit
        assert rec["ended_at"] >= rec["started_at"]
        for art in rec["artifacts"].values():
            assert (vlog.parent / art["path"]).is_file() and len(art["sha256"]) == 64
    assert m["stages"]["clip/0"]["ran_on"][0]["actor"].startswith("image_to_video:wan_i2v")
    assert m["usage"]["calls"] >= 10  # five agents x (generator + reviewer)
    plan = json.loads((vlog.parent / "plan.json").read_text())
    assert len(plan["storyboards"]) == SHOTS and set(plan["agents"]) == {"story", "seg", "video", "mono", "music"}


def test_progress_on_stderr_and_path_last_on_stdout(first_run):
    _, vlog, proc = first_run
    assert proc.stdout.strip().splitlines()[-1] == str(vlog)
    assert "assemble" in proc.stderr and "done" in proc.stderr


def test_second_run_regenerates_nothing(first_run):
    out, vlog, _ = first_run
    before = _manifest(vlog)["stages"]
    hashes = {p: p.read_bytes() for p in vlog.parent.rglob("*") if p.is_file() and p.name != "manifest.json"}
    proc = generate(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(vlog)
    after = _manifest(vlog)["stages"]
    for unit in before:
        assert after[unit]["started_at"] == before[unit]["started_at"], unit
        assert after[unit]["artifacts"] == before[unit]["artifacts"], unit
    assert {p: p.read_bytes() for p in hashes} == hashes
    assert "0 units ran" in proc.stderr


def test_corrupted_artifact_reruns_its_unit_and_downstream_only(first_run, tmp_path):
    out, vlog, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    job = copy / vlog.parent.name
    before = json.loads((job / "manifest.json").read_text())["stages"]
    (job / "clips" / "shot_01.mp4").write_bytes(b"garbage")
    proc = generate(copy)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = json.loads((job / "manifest.json").read_text())["stages"]
    rerun = {u for u in before if after[u]["started_at"] != before[u]["started_at"]}
    assert rerun == {"clip/1", "assemble"}
    assert probe(job / "vlog.mp4")["duration"] > 0


def test_frm_on_writes_an_audit_trail_that_keeps_the_rule(tmp_path):
    """FRM on, with a voice sample: every shot has image and video rounds; the manifest alone proves the rule."""
    import numpy as np
    import soundfile as sf

    from personavlog.engine.audit import frm_violations

    voice = tmp_path / "voice.wav"
    t = np.arange(16000 * 2) / 16000
    sf.write(voice, 0.3 * np.sin(2 * np.pi * 180 * t), 16000)
    proc = generate(tmp_path / "out", "--voice", str(voice), "frm.image.enabled=true", "frm.video.enabled=true")
    assert proc.returncode == 0, proc.stderr[-4000:]
    vlog = Path(proc.stdout.strip().splitlines()[-1])
    m = _manifest(vlog)
    assert m["status"] == "succeeded"
    for kind in ("image", "video"):
        trail = m["frm"][kind]
        assert len(trail) == SHOTS and all(rounds for rounds in trail), trail
        for rounds in trail:
            for r in rounds:
                assert set(r) >= {"scores_before", "scores_after", "verdict", "prompt", "accepted"}
                assert (r["scores_after"] is None) == (r["verdict"]["verdict"] == "pass")
    assert frm_violations(m) == []
    # the clip of each shot starts from the keyframe FRM kept, and the vlog uses the clip FRM kept
    assert m["stages"]["clip/0"]["status"] == "done" and m["stages"]["assemble"]["status"] == "done"
    assert (vlog.parent / "input" / "voice.wav").is_file()
    assert m["stages"]["speech/0"]["data"]["note"]  # VITS cannot clone: said plainly
