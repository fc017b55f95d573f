"""FRM decision logic through the real stage functions, with a scripted reviewer and scripted scores.

Image: worse regeneration rolled back, better kept, tie rolled back (two scores). Video: the same with six scores.
The real scorers and models run in the end-to-end test; here the scores are scripted so every branch is certain.
"""

import numpy as np
import pytest
from PIL import Image

from personavlog.actors.base import RanOn
from personavlog.actors.media import VideoClip
from personavlog.engine.audit import frm_violations
from personavlog.engine.config import load_config
from personavlog.engine.frm_rule import VIDEO_SCORE_KEYS
from personavlog.engine.graph import StageContext, run_unit
from personavlog.engine.mllm.base import ChatResult, Usage
from personavlog.engine.pipeline import VLOG_GRAPH
from personavlog.engine.spec import JobSpec
from personavlog.engine.store import JobStore

from _support import EXAMPLE_IMAGE


class Handle:
    def __init__(self, role, fn):
        self.role, self.fn, self.calls = role, fn, []

    def __call__(self, **kw):
        self.calls.append(kw)
        return self.fn(**kw), RanOn(actor=f"{self.role}:scripted", node="test")


class ScriptedReviewer:
    model = "scripted"

    def __init__(self, verdict):
        self.verdict = verdict

    def chat(self, messages, schema, **kw):
        name = schema.__name__
        if name == "ImageQualityVerdict":
            data = {"verdict": self.verdict, "problems": ["expression_or_pose"], "suggestion": "smile"}
        elif name == "EditInstruction":
            data = {"prompt": "make the character smile"}
        elif name == "VideoQualityVerdict":
            data = {"verdict": self.verdict, "revised_prompt": "slow pan, steady face", "reason": "flicker"}
        else:
            raise AssertionError(name)
        return ChatResult(data=schema.model_validate(data).model_dump(), text="", usage=Usage(5, 5, 1))


def _job(tmp_path, overrides):
    cfg = load_config(["frm.image.enabled=true", "frm.video.enabled=true", *overrides])
    spec = JobSpec.create(theme="beach", style="Pixar", image=EXAMPLE_IMAGE.read_bytes(), shots=3, cfg=cfg)
    store = JobStore(tmp_path, spec.job_id("test"))
    k = 3
    store.write_image("stylized.png", Image.new("RGB", (32, 32), (200, 100, 50)))
    store.put_record("stylize", {"status": "done", "artifacts": {"stylized": store.artifact_entry("stylized.png")}})
    plan = {"character_description": "kid", "storyboards": [{"scene": "beach", "behavior": "runs"}] * k,
            "video_descriptions": ["pan"] * k, "monologues": ["hi"] * k}
    store.write_json("plan.json", plan)
    store.put_record("plan", {"status": "done", "artifacts": {"plan": store.artifact_entry("plan.json")}})
    store.write_image("keyframes/shot_00.png", Image.new("RGB", (32, 32), (0, 0, 0)))
    store.put_record("keyframe/0", {"status": "done",
                                    "artifacts": {"keyframe": store.artifact_entry("keyframes/shot_00.png")}})
    store.write_video("clips/shot_00.mp4", VideoClip(np.zeros((5, 32, 32, 3), np.uint8), fps=8))
    store.put_record("clip/0", {"status": "done", "artifacts": {"clip": store.artifact_entry("clips/shot_00.mp4")}})
    return cfg, spec, store


def _scores_sequence(seq):
    it = iter(seq)
    return lambda **kw: next(it)


IMG = {"m_i2i": 0.5, "m_i2t": 0.3}
CASES = {
    "worse": ({"m_i2i": 0.4, "m_i2t": 0.2}, False),
    "better": ({"m_i2i": 0.6, "m_i2t": 0.35}, True),
    "tie": ({"m_i2i": 0.6, "m_i2t": 0.3}, False),  # one score equal -> not strictly higher on both
    "one_worse": ({"m_i2i": 0.9, "m_i2t": 0.29}, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_image_frm_keeps_only_strict_improvements(tmp_path, case):
    after, accepted = CASES[case]
    cfg, spec, store = _job(tmp_path, [])
    models = {"scorer": Handle("scorer", _scores_sequence([IMG, after])),
              "image_edit": Handle("image_edit", lambda **kw: Image.new("RGB", (32, 32), (255, 255, 255)))}
    ctx = StageContext(spec=spec, cfg=cfg, store=store, models=models, mllm=ScriptedReviewer("fail"))
    rec = run_unit(VLOG_GRAPH, "frm_image/0", ctx)
    assert rec["status"] == "done", rec.get("error")
    (r,) = rec["data"]["rounds"]
    assert r["accepted"] is accepted and r["scores_before"] == IMG and r["scores_after"] == after
    assert "make the character smile" in r["prompt"]
    kept = rec["artifacts"]["keyframe"]["path"]
    assert kept == ("frm/keyframe_shot_00_r1.png" if accepted else "keyframes/shot_00.png")
    assert store.path("frm/keyframe_shot_00_r1.png").is_file()  # the candidate is kept on disk either way
    assert models["image_edit"].calls[0]["image"].getpixel((0, 0)) == (200, 100, 50)  # edits start from I_s
    manifest = store.write_manifest(spec={}, fingerprint="f", config={}, units=["frm_image/0"], status="running")
    assert manifest["frm"]["image"][0] == rec["data"]["rounds"]
    assert frm_violations(manifest) == []


def test_image_frm_pass_means_no_regeneration(tmp_path):
    cfg, spec, store = _job(tmp_path, [])
    edit = Handle("image_edit", lambda **kw: pytest.fail("a passing keyframe must not be regenerated"))
    ctx = StageContext(spec=spec, cfg=cfg, store=store, models={"scorer": Handle("scorer", lambda **kw: IMG),
                                                                "image_edit": edit}, mllm=ScriptedReviewer("pass"))
    rec = run_unit(VLOG_GRAPH, "frm_image/0", ctx)
    (r,) = rec["data"]["rounds"]
    assert r["scores_after"] is None and r["accepted"] is False and r["prompt"] is None
    assert rec["artifacts"]["keyframe"]["path"] == "keyframes/shot_00.png"


VID = dict.fromkeys(VIDEO_SCORE_KEYS, 0.5)


def _vid(delta, *, except_key=None, except_delta=0.0):
    return {k: 0.5 + (except_delta if k == except_key else delta) for k in VIDEO_SCORE_KEYS}


@pytest.mark.parametrize("after,accepted", [
    (_vid(-0.1), False),
    (_vid(+0.1), True),
    (_vid(+0.1, except_key="dynamic_degree", except_delta=0.0), False),  # tie on one of six
    (_vid(+0.2, except_key="imaging_quality", except_delta=-0.01), False),
])
def test_video_frm_needs_all_six_strictly_higher(tmp_path, after, accepted):
    cfg, spec, store = _job(tmp_path, [])
    models = {"scorer": Handle("scorer", _scores_sequence([VID, after])),
              "image_to_video": Handle("image_to_video",
                                       lambda **kw: VideoClip(np.full((5, 32, 32, 3), 255, np.uint8), fps=8))}
    ctx = StageContext(spec=spec, cfg=cfg, store=store, models=models, mllm=ScriptedReviewer("fail"))
    rec = run_unit(VLOG_GRAPH, "frm_video/0", ctx)
    assert rec["status"] == "done", rec.get("error")
    (r,) = rec["data"]["rounds"]
    assert r["accepted"] is accepted and r["keys"] == list(VIDEO_SCORE_KEYS)
    assert models["image_to_video"].calls[0]["prompt"] == "slow pan, steady face"
    assert rec["artifacts"]["clip"]["path"] == ("frm/clip_shot_00_r1.mp4" if accepted else "clips/shot_00.mp4")
    manifest = store.write_manifest(spec={}, fingerprint="f", config={}, units=["frm_video/0"], status="running")
    assert frm_violations(manifest) == []


def test_audit_catches_an_accepted_regression():
    bad = {"frm": {"image": [[{"round": 1, "keys": ["m_i2i", "m_i2t"], "scores_before": IMG,
                                "scores_after": {"m_i2i": 0.6, "m_i2t": 0.3}, "candidate": "frm/x.png",
                                "accepted": True}]]},
           "stages": {"frm_image/0": {"artifacts": {"keyframe": {"path": "frm/x.png"}}}}}
    assert any("m_i2t" in p for p in frm_violations(bad))


def test_more_rounds_keep_improving_from_the_kept_result(tmp_path):
    cfg, spec, store = _job(tmp_path, ["frm.image.rounds=3"])
    seq = [IMG, {"m_i2i": 0.6, "m_i2t": 0.4}, {"m_i2i": 0.55, "m_i2t": 0.5}, {"m_i2i": 0.7, "m_i2t": 0.45}]
    models = {"scorer": Handle("scorer", _scores_sequence(seq)),
              "image_edit": Handle("image_edit", lambda **kw: Image.new("RGB", (32, 32), (9, 9, 9)))}
    ctx = StageContext(spec=spec, cfg=cfg, store=store, models=models, mllm=ScriptedReviewer("fail"))
    rec = run_unit(VLOG_GRAPH, "frm_image/0", ctx)
    assert [r["accepted"] for r in rec["data"]["rounds"]] == [True, False, True]
    assert rec["data"]["rounds"][2]["scores_before"] == seq[1]  # compared with the kept one, not the original
    assert rec["artifacts"]["keyframe"]["path"] == "frm/keyframe_shot_00_r3.png"
