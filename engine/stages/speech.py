"""Stage `speech` (per shot): M_sp^i = F_t2s(T_mono^i, s) (eq. 12), cloning the voice sample when the model can."""

from __future__ import annotations

from personavlog.actors.registry import model_class
from personavlog.engine.graph import StageContext, StageOutput
from personavlog.engine.stages.common import open_audio


def run(ctx: StageContext) -> StageOutput:
    i = ctx.shot
    assert i is not None
    text = ctx.plan()["monologues"][i]
    voice = open_audio(ctx.spec.voice) if ctx.spec.voice is not None else None
    out = StageOutput()
    audio = ctx.call("speech", out, text=text, seed=ctx.spec.seed + 300 + i, language=ctx.spec.language,
                     voice=voice)
    out.artifacts["speech"] = ctx.store.write_audio(f"audio/speech_{i:02d}.wav", audio)
    clones = bool(getattr(model_class("speech", ctx.cfg.models.speech.kind), "clones_voice", False))
    out.data = {"text": text, "seconds": round(audio.seconds, 4),
                "voice_sample_used": voice is not None and clones,
                "note": ("the speech model does not clone voices; the voice sample was not used"
                         if voice is not None and not clones else None)}
    return out
