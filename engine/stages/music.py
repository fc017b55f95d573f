"""Stage `music`: M_bgm = F_t2m(T_music) (eq. 12). The assembler loops or trims it to the vlog's length."""

from __future__ import annotations

from personavlog.engine.graph import StageContext, StageOutput
from personavlog.engine.stages.common import clip_seconds


def music_prompt(music: dict) -> str:
    return f"{music['description']} Mood: {music['mood']}. Instruments: {', '.join(music['instruments'])}."


def run(ctx: StageContext) -> StageOutput:
    plan = ctx.plan()
    prompt = music_prompt(plan["music"])
    wanted = ctx.spec.shots * clip_seconds(ctx.cfg)
    seconds = min(wanted, float(ctx.cfg.models.music.params.get("seconds", wanted)))
    out = StageOutput()
    audio = ctx.call("music", out, prompt=prompt, seconds=seconds, seed=ctx.spec.seed + 200)
    out.artifacts["music"] = ctx.store.write_audio("audio/music.wav", audio)
    out.data = {"prompt": prompt, "seconds": round(audio.seconds, 4), "requested_seconds": round(seconds, 4)}
    return out
