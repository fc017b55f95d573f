"""The PersonaVlog graph: the one declaration every driver runs."""

from __future__ import annotations

from personavlog.engine.graph import Graph, StageDef
from personavlog.engine.stages import assemble, clips, frm, keyframes, music, plan, speech, stylize

VLOG_GRAPH = Graph([
    StageDef("stylize", stylize.run, models=("image_edit",)),
    StageDef("plan", plan.run, after=("stylize",), models=("mllm",)),
    StageDef("keyframe", keyframes.run, after=("plan",), per_shot=True, models=("image_edit",)),
    StageDef("frm_image", frm.run_image, after=("keyframe",), per_shot=True,
             models=("scorer", "mllm", "image_edit"), enabled=lambda cfg: cfg.frm.image.enabled),
    StageDef("clip", clips.run, after=("frm_image",), per_shot=True, models=("image_to_video",)),
    StageDef("frm_video", frm.run_video, after=("clip",), per_shot=True,
             models=("scorer", "mllm", "image_to_video"), enabled=lambda cfg: cfg.frm.video.enabled),
    StageDef("music", music.run, after=("plan",), models=("music",)),
    StageDef("speech", speech.run, after=("plan",), per_shot=True, models=("speech",)),
    StageDef("assemble", assemble.run, after=("frm_video", "music", "speech")),
])
