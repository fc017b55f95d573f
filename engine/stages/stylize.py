"""Stage `stylize`: the reference photo I_r -> stylized reference I_s with the image-edit model (paper §Method i)."""

from __future__ import annotations

from personavlog.engine.graph import StageContext, StageOutput
from personavlog.engine.stages.common import edit_prompt, open_image


def run(ctx: StageContext) -> StageOutput:
    spec, store = ctx.spec, ctx.store
    out = StageOutput()
    out.artifacts["reference"] = store.write_bytes(f"input/reference.{spec.image_ext}", spec.image)
    if spec.voice is not None:
        out.artifacts["voice"] = store.write_bytes(f"input/voice.{spec.voice_ext}", spec.voice)
    prompt = edit_prompt("stylize", style=spec.style)
    image = ctx.call("image_edit", out, image=open_image(spec.image), prompt=prompt, seed=spec.seed)
    out.artifacts["stylized"] = store.write_image("stylized.png", image)
    out.data = {"prompt": prompt, "size": list(image.size)}
    return out
