"""Stage `plan`: MACF writes story, storyboards, video descriptions, monologues and music description (eqs. 1–5)."""

from __future__ import annotations

from personavlog.engine.agents.macf import plan_vlog
from personavlog.engine.errors import StageError
from personavlog.engine.graph import StageContext, StageOutput


def run(ctx: StageContext) -> StageOutput:
    spec, cfg = ctx.spec, ctx.cfg
    stylized = ctx.store.read_image(ctx.artifact("stylize", "stylized"))
    plan = plan_vlog(ctx.mllm, theme=spec.theme, style=spec.style, stylized_image=stylized, k=spec.shots,
                     language=spec.language, seed=spec.seed, max_rounds=cfg.macf.max_rounds,
                     multi_agent=cfg.macf.multi_agent)
    for key in ("storyboards", "video_descriptions", "monologues"):
        if len(plan[key]) != spec.shots:  # the schema pins k; a backend that ignores it must not slip through
            raise StageError(f"plan: {key} has {len(plan[key])} entries, expected {spec.shots}")
    out = StageOutput(usage=plan["usage"])
    out.artifacts["plan"] = ctx.store.write_json("plan.json", plan)
    out.ran_on.append({"role": "mllm", "backend": cfg.mllm.backend, "model": getattr(ctx.mllm, "model", "")})
    out.data = {"multi_agent": plan["multi_agent"],
                "agents_passed": {n: a["passed"] for n, a in plan["agents"].items()},
                "rounds": {n: len(a["rounds"]) for n, a in plan["agents"].items()}}
    return out
