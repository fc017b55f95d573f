"""Stage `clip` (per shot): V^i = F_i2v(T_video^i, I_key^i) (eq. 9)."""

from __future__ import annotations

from personavlog.engine.graph import StageContext, StageOutput
from personavlog.engine.stages.common import shot_name


def final_keyframe(ctx: StageContext, i: int) -> str:
    """The keyframe the clip starts from: FRM's kept image when image FRM ran, else the first keyframe."""
    rec = ctx.store.record(f"frm_image/{i}")
    if rec and rec.get("status") == "done" and "keyframe" in rec.get("artifacts", {}):
        return rec["artifacts"]["keyframe"]["path"]
    return ctx.artifact(f"keyframe/{i}", "keyframe")


def run(ctx: StageContext) -> StageOutput:
    i = ctx.shot
    assert i is not None
    plan = ctx.plan()
    keyframe = ctx.store.read_image(final_keyframe(ctx, i))
    prompt = plan["video_descriptions"][i]
    out = StageOutput()
    clip = ctx.call("image_to_video", out, image=keyframe, prompt=prompt, seed=ctx.spec.seed + 100 + i)
    out.artifacts["clip"] = ctx.store.write_video(f"clips/{shot_name(i)}.mp4", clip)
    out.data = {"prompt": prompt, "frames": int(clip.frames.shape[0]), "fps": float(clip.fps),
                "seconds": round(clip.seconds, 4)}
    return out
