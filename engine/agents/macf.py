"""MACF: the multi-agent collaborative framework (paper eqs. 1–5).

Five agents, each a generator G_i and a reviewer R_i on the MLLM. `R ∘ G` is the loop in `run_agent`: the generator
drafts, the reviewer returns a structured verdict, and on "revise" the generator drafts again with the reasons, up to
`macf.max_rounds` rounds. Every round is recorded. If no round passes, the last draft is kept (and the record says
so): a reviewer that never passes must not fail the job. The video, mono and music agents depend only on the
storyboards (and theme), so they run in parallel.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional

from pydantic import BaseModel

from personavlog.engine.agents import schemas
from personavlog.engine.agents.prompts import load_template
from personavlog.engine.mllm.base import MLLMClient, Usage


@dataclass
class AgentRun:
    """One agent's result and its audit trail."""

    name: str
    output: dict[str, Any]
    rounds: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = False
    usage: Usage = field(default_factory=Usage)

    def record(self) -> dict[str, Any]:
        return {"passed": self.passed, "rounds": self.rounds, "usage": self.usage.as_dict()}


def _messages(system: str, user: str, image: Any = None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": user}]
    if image is not None:
        content.append({"type": "image", "image": image})
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


def _dump(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1)


def run_agent(name: str, client: MLLMClient, schema: type[BaseModel], values: dict[str, Any], *,
              max_rounds: int, seed: int, image: Any = None, review_image: bool = False) -> AgentRun:
    """R_i ∘ G_i: draft, review, revise with the reviewer's reasons; at most `max_rounds` rounds."""
    gen_t = load_template(f"{name}_generator")
    rev_t = load_template(f"{name}_reviewer")
    run = AgentRun(name=name, output={})
    feedback = ""
    for r in range(1, max(1, max_rounds) + 1):
        system, user = gen_t.render(**values, feedback=feedback)
        draft = client.chat(_messages(system, user, image), schema, seed=seed * 1000 + r * 2)
        system, user = rev_t.render(**values, draft=_dump(draft.data))
        review = client.chat(_messages(system, user, image if review_image else None), schemas.ReviewVerdict,
                             seed=seed * 1000 + r * 2 + 1)
        run.usage = run.usage.add(draft.usage).add(review.usage)
        verdict = review.data
        run.output = draft.data
        run.rounds.append({"round": r, "draft": draft.data, "verdict": verdict["verdict"],
                           "reasons": verdict.get("reasons", []), "model": draft.model,
                           "usage": draft.usage.add(review.usage).as_dict()})
        if verdict["verdict"] == "pass":
            run.passed = True
            break
        reasons = "; ".join(verdict.get("reasons") or ["the reviewer asked for a revision"])
        feedback = ("A reviewer read your previous draft and asked for a revision.\nPrevious draft:\n"
                    f"{_dump(draft.data)}\nReasons: <<<{reasons}>>>\nWrite an improved draft.")
    return run


def _template_versions(names: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for n in names:
        t = load_template(n)
        out[n] = {"version": t.version, "sha256": t.sha256}
    return out


def plan_vlog(client: MLLMClient, *, theme: str, style: str, stylized_image: Any, k: int, language: str,
              seed: int, max_rounds: int, multi_agent: bool = True,
              pool: Optional[ThreadPoolExecutor] = None) -> dict[str, Any]:
    """All MACF outputs for one vlog, plus every review round (this is plan.json)."""
    base = {"theme": theme, "style": style, "k": k, "language": language}
    if not multi_agent:
        return _single_call_plan(client, base, stylized_image, k, seed)

    story = run_agent("story", client, schemas.StoryDraft, base, max_rounds=max_rounds, seed=seed,
                      image=stylized_image, review_image=True)
    character, story_text = story.output["character_description"], story.output["story"]
    seg = run_agent("seg", client, schemas.storyboards_for(k), {**base, "character": character, "story": story_text},
                    max_rounds=max_rounds, seed=seed + 1)
    boards = seg.output["storyboards"]
    after_seg = {**base, "character": character, "storyboards": _dump(boards)}

    jobs = {
        "video": (schemas.video_descriptions_for(k), seed + 2),
        "mono": (schemas.monologues_for(k), seed + 3),
        "music": (schemas.MusicDescription, seed + 4),
    }
    own_pool = pool is None
    ex = pool or ThreadPoolExecutor(max_workers=3, thread_name_prefix="macf")
    try:
        futures = {n: ex.submit(run_agent, n, client, s, after_seg, max_rounds=max_rounds, seed=sd)
                   for n, (s, sd) in jobs.items()}
        runs = {n: f.result() for n, f in futures.items()}
    finally:
        if own_pool:
            ex.shutdown(wait=True)
    all_runs = {"story": story, "seg": seg, **runs}
    usage = Usage()
    for r in all_runs.values():
        usage = usage.add(r.usage)
    return {
        "multi_agent": True,
        "character_description": character,
        "story": story_text,
        "storyboards": boards,
        "video_descriptions": [v["description"] for v in runs["video"].output["videos"]],
        "monologues": [m["text"] for m in runs["mono"].output["monologues"]],
        "music": runs["music"].output,
        "agents": {n: r.record() for n, r in all_runs.items()},
        "usage": usage.as_dict(),
        "prompts": _template_versions([f"{n}_{role}" for n in all_runs for role in ("generator", "reviewer")]),
    }


def _single_call_plan(client: MLLMClient, base: dict[str, Any], image: Any, k: int, seed: int) -> dict[str, Any]:
    t = load_template("single_plan")
    system, user = t.render(**base)
    res = client.chat(_messages(system, user, image), schemas.single_plan_for(k), seed=seed)
    d = res.data
    return {
        "multi_agent": False,
        "character_description": d["character_description"],
        "story": d["story"],
        "storyboards": [{"scene": s["scene"], "behavior": s["behavior"]} for s in d["shots"]],
        "video_descriptions": [s["video_description"] for s in d["shots"]],
        "monologues": [s["monologue"] for s in d["shots"]],
        "music": d["music"],
        "agents": {"single_plan": {"passed": True, "rounds": [{"round": 1, "draft": d, "verdict": None,
                                                                 "reasons": [], "model": res.model,
                                                                 "usage": res.usage.as_dict()}],
                                   "usage": res.usage.as_dict()}},
        "usage": res.usage.as_dict(),
        "prompts": _template_versions(["single_plan"]),
    }
