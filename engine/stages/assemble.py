"""Stage `assemble`: clips in order + monologue at each shot + ducked music + subtitles -> vlog.mp4 (+ .srt)."""

from __future__ import annotations

from omegaconf import OmegaConf

from personavlog.engine.assembly import Shot, assemble_vlog
from personavlog.engine.graph import StageContext, StageOutput


def run(ctx: StageContext) -> StageOutput:
    plan = ctx.plan()
    store = ctx.store
    shots = []
    for i in range(ctx.spec.shots):
        speech = store.record(f"speech/{i}")
        shots.append(Shot(clip=store.path(_final_clip(ctx, i)),
                          speech=store.path(ctx.artifact(f"speech/{i}", "speech")) if speech else None,
                          text=plan["monologues"][i]))
    music = store.path(ctx.artifact("music", "music")) if store.record("music") else None
    conf = OmegaConf.merge(ctx.cfg.assembly, {"subtitle_language": subtitle_language(ctx.spec.language)})
    info = assemble_vlog(shots, music, store.path("vlog.mp4"), store.path("subtitles.srt"), conf)
    out = StageOutput(data=info)
    out.artifacts = {"subtitles": "subtitles.srt", "vlog": "vlog.mp4"}
    return out


# ISO 639-1 -> ISO 639-2/B (the tag mp4 subtitle tracks carry) for common languages; anything else is "und".
_ISO639_2 = {"en": "eng", "zh": "chi", "ja": "jpn", "ko": "kor", "fr": "fre", "de": "ger", "es": "spa", "it": "ita",
             "pt": "por", "ru": "rus", "ar": "ara", "hi": "hin", "nl": "dut", "sv": "swe", "pl": "pol", "tr": "tur",
             "vi": "vie", "th": "tha", "id": "ind", "uk": "ukr"}


def subtitle_language(tag: str) -> str:
    return _ISO639_2.get(tag.split("-")[0].lower(), "und")


def _final_clip(ctx: StageContext, i: int) -> str:
    rec = ctx.store.record(f"frm_video/{i}")
    if rec and rec.get("status") == "done" and "clip" in rec.get("artifacts", {}):
        return rec["artifacts"]["clip"]["path"]
    return ctx.artifact(f"clip/{i}", "clip")
