"""Stage `keyframe` (per shot): I_key^i = F_edit(T_board^i, I_s) (eq. 6)."""

from __future__ import annotations

from personavlog.engine.graph import StageContext, StageOutput
from personavlog.engine.stages.common import edit_prompt, shot_name


def keyframe_prompt(plan: dict, i: int, style: str) -> str:
    board = plan["storyboards"][i]
    return edit_prompt("keyframe", style=style, character=plan["character_description"],
                       behavior=board["behavior"], scene=board["scene"])


def run(ctx: StageContext) -> StageOutput:
    i = ctx.shot
    assert i is not None
    plan = ctx.plan()
    stylized = ctx.store.read_image(ctx.artifact("stylize", "stylized"))
    prompt = keyframe_prompt(plan, i, ctx.spec.style)
    out = StageOutput()
    image = ctx.call("image_edit", out, image=stylized, prompt=prompt, seed=ctx.spec.seed + 1 + i)
    out.artifacts["keyframe"] = ctx.store.write_image(f"keyframes/{shot_name(i)}.png", image)
    out.data = {"prompt": prompt}
    return out
