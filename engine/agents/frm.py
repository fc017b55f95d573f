"""FRM agents (paper eqs. 7, 8, 10): image quality, edit, and video quality — one MLLM call each."""

from __future__ import annotations

import json
from typing import Any

from personavlog.engine.agents import schemas
from personavlog.engine.agents.prompts import load_template
from personavlog.engine.mllm.base import ChatResult, MLLMClient


def _ask(client: MLLMClient, role: str, schema: type, values: dict[str, Any], images: list[Any],
         seed: int) -> ChatResult:
    system, user = load_template(role).render(**values)
    content: list[dict[str, Any]] = [{"type": "text", "text": user}]
    content += [{"type": "image", "image": im} for im in images]
    return client.chat([{"role": "system", "content": system}, {"role": "user", "content": content}], schema,
                       seed=seed)


def _scores(scores: dict[str, float]) -> str:
    return json.dumps({k: round(float(v), 4) for k, v in scores.items()})


def review_image(client: MLLMClient, *, storyboard: str, character: str, reference: Any, keyframe: Any,
                 scores: dict[str, float], language: str, seed: int) -> ChatResult:
    return _ask(client, "image_quality", schemas.ImageQualityVerdict,
                {"storyboard": storyboard, "character": character, "scores": _scores(scores), "language": language},
                [reference, keyframe], seed)


def edit_instruction(client: MLLMClient, *, storyboard: str, style: str, problems: list[str], suggestion: str,
                     language: str, seed: int) -> ChatResult:
    return _ask(client, "edit", schemas.EditInstruction,
                {"storyboard": storyboard, "style": style, "problems": ", ".join(problems) or "unspecified",
                 "suggestion": suggestion or "improve the keyframe", "language": language}, [], seed)


def review_video(client: MLLMClient, *, description: str, frames: list[Any], scores: dict[str, float],
                 language: str, seed: int) -> ChatResult:
    return _ask(client, "video_quality", schemas.VideoQualityVerdict,
                {"description": description, "scores": _scores(scores), "language": language}, frames, seed)
