"""Stages `frm_image` and `frm_video` (per shot): feedback and rollback (paper eqs. 7–11).

Each round: score the kept result, ask the quality agent; on "fail" regenerate (keyframe: edit agent → image edit of
the stylized reference; clip: image-to-video from the kept keyframe with the revised prompt), score the candidate,
and keep it only if every required score is strictly higher (engine/frm_rule.py), else roll back. Every round is
recorded with the scores before and after, the verdict, the prompt and the decision, so the rule can be checked from
the manifest alone. Candidates are stored under frm/ whether kept or not; the kept result is the `keyframe`/`clip`
artifact of this unit.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from personavlog.engine.agents.frm import edit_instruction, review_image, review_video
from personavlog.engine.frm_rule import IMAGE_SCORE_KEYS, VIDEO_SCORE_KEYS, accept
from personavlog.engine.graph import StageContext, StageOutput
from personavlog.engine.stages.clips import final_keyframe
from personavlog.engine.stages.common import edit_prompt, shot_name


def _keys(conf: Any, default: tuple[str, ...]) -> list[str]:
    return list(conf.required_scores) if conf.required_scores else list(default)


def _floats(scores: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in scores.items()}


def feedback_rounds(*, rounds: int, keys: list[str], kept: Any, kept_path: str, scores: dict[str, float],
                    review: Callable[[Any, dict[str, float], int], Any],
                    regenerate: Callable[[dict[str, Any], int], tuple[Any, str, str]],
                    score: Callable[[Any], dict[str, float]], usage: dict[str, int],
                    out: StageOutput) -> tuple[Any, str, dict[str, float], list[dict[str, Any]]]:
    """The FRM loop shared by keyframes and clips: review the kept result; on "fail" regenerate, score, and keep
    the candidate only if `accept` says every required score is strictly higher. Returns the kept result, its
    path, its scores and the audit trail."""
    trail = []
    for r in range(1, rounds + 1):
        verdict = review(kept, scores, r)
        _add(usage, verdict.usage.as_dict())
        entry: dict[str, Any] = {"round": r, "keys": keys, "scores_before": scores, "scores_after": None,
                                 "verdict": verdict.data, "prompt": None, "candidate": None, "accepted": False}
        trail.append(entry)
        if verdict.data["verdict"] == "pass":
            break
        candidate, cand_path, prompt = regenerate(verdict.data, r)
        after = _floats(score(candidate))
        entry.update(prompt=prompt, candidate=cand_path, scores_after=after, accepted=accept(scores, after, keys))
        out.artifacts[f"candidate_r{r}"] = cand_path
        if entry["accepted"]:
            kept, kept_path, scores = candidate, cand_path, after
    return kept, kept_path, scores, trail


def _seed(spec: Any, kind: int, r: int, i: int) -> int:
    return spec.seed * 7919 + 1000 * kind * r + i


def run_image(ctx: StageContext) -> StageOutput:
    i = ctx.shot
    assert i is not None
    spec, conf, store = ctx.spec, ctx.cfg.frm.image, ctx.store
    plan = ctx.plan()
    board = plan["storyboards"][i]
    board_text = f"{board['scene']} {board['behavior']}"
    stylized = store.read_image(ctx.artifact("stylize", "stylized"))
    kept_path = ctx.artifact(f"keyframe/{i}", "keyframe")
    out = StageOutput()
    usage: dict[str, int] = {}

    def score(image: Any) -> dict[str, float]:
        return ctx.call("scorer", out, image=image, reference=stylized, text=board_text)

    def review(kept: Any, scores: dict[str, float], r: int) -> Any:
        return review_image(ctx.mllm, storyboard=board_text, character=plan["character_description"],
                            reference=stylized, keyframe=kept, scores=scores, language=spec.language,
                            seed=_seed(spec, 1, r, i))

    def regenerate(verdict: dict[str, Any], r: int) -> tuple[Any, str, str]:
        edit = edit_instruction(ctx.mllm, storyboard=board_text, style=spec.style, problems=verdict["problems"],
                                suggestion=verdict["suggestion"], language=spec.language,
                                seed=_seed(spec, 1, r, i) + 1)
        _add(usage, edit.usage.as_dict())
        prompt = edit_prompt("frm_keyframe", style=spec.style, instruction=edit.data["prompt"],
                             behavior=board["behavior"], scene=board["scene"])
        image = ctx.call("image_edit", out, image=stylized, prompt=prompt, seed=_seed(spec, 1, r, i) + 2)
        return image, store.write_image(f"frm/keyframe_{shot_name(i)}_r{r}.png", image), prompt

    kept = store.read_image(kept_path)
    kept, kept_path, scores, trail = feedback_rounds(
        rounds=conf.rounds, keys=_keys(conf, IMAGE_SCORE_KEYS), kept=kept, kept_path=kept_path,
        scores=_floats(score(kept)), review=review, regenerate=regenerate, score=score, usage=usage, out=out)
    out.artifacts["keyframe"] = kept_path
    out.usage = usage
    out.data = {"kind": "image", "shot": i, "rounds": trail, "kept": kept_path, "final_scores": scores}
    return out


def sample_frames(frames: np.ndarray, n: int) -> list[Any]:
    from PIL import Image

    idx = np.linspace(0, len(frames) - 1, num=max(1, min(n, len(frames)))).round().astype(int)
    return [Image.fromarray(frames[j]) for j in idx]


def run_video(ctx: StageContext) -> StageOutput:
    from personavlog.engine.media import read_video

    i = ctx.shot
    assert i is not None
    spec, conf, store = ctx.spec, ctx.cfg.frm.video, ctx.store
    description = ctx.plan()["video_descriptions"][i]
    keyframe = store.read_image(final_keyframe(ctx, i))
    kept_path = ctx.artifact(f"clip/{i}", "clip")
    out = StageOutput()
    usage: dict[str, int] = {}

    def score(clip: Any) -> dict[str, float]:
        return ctx.call("scorer", out, frames=clip.frames, fps=clip.fps)

    def review(kept: Any, scores: dict[str, float], r: int) -> Any:
        return review_video(ctx.mllm, description=description, frames=sample_frames(kept.frames, conf.review_frames),
                            scores=scores, language=spec.language, seed=_seed(spec, 2, r, i))

    def regenerate(verdict: dict[str, Any], r: int) -> tuple[Any, str, str]:
        prompt = verdict["revised_prompt"].strip() or description
        clip = ctx.call("image_to_video", out, image=keyframe, prompt=prompt, seed=_seed(spec, 2, r, i) + 2)
        path = store.write_video(f"frm/clip_{shot_name(i)}_r{r}.mp4", clip)
        return read_video(store.path(path)), path, prompt  # score what was stored, as the viewer will see it

    kept = read_video(store.path(kept_path))
    kept, kept_path, scores, trail = feedback_rounds(
        rounds=conf.rounds, keys=_keys(conf, VIDEO_SCORE_KEYS), kept=kept, kept_path=kept_path,
        scores=_floats(score(kept)), review=review, regenerate=regenerate, score=score, usage=usage, out=out)
    out.artifacts["clip"] = kept_path
    out.usage = usage
    out.data = {"kind": "video", "shot": i, "rounds": trail, "kept": kept_path, "final_scores": scores}
    return out


def _add(total: dict[str, int], more: dict[str, int]) -> None:
    for k, v in more.items():
        total[k] = total.get(k, 0) + int(v)
