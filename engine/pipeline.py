"""The PersonaVlog graph: the one declaration every driver runs."""

from __future__ import annotations

from personavlog.engine.graph import Graph, StageDef
from personavlog.engine.stages import assemble, clips, keyframes, music, plan, speech, stylize

VLOG_GRAPH = Graph([
    StageDef("stylize", stylize.run, models=("image_edit",)),
    StageDef("plan", plan.run, after=("stylize",), models=("mllm",)),
    StageDef("keyframe", keyframes.run, after=("plan",), per_shot=True, models=("image_edit",)),
    StageDef("clip", clips.run, after=("keyframe",), per_shot=True, models=("image_to_video",)),
    StageDef("music", music.run, after=("plan",), models=("music",)),
    StageDef("speech", speech.run, after=("plan",), per_shot=True, models=("speech",)),
    StageDef("assemble", assemble.run, after=("clip", "music", "speech")),
])
