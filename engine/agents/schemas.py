"""The structured outputs of every MACF agent (paper eqs. 1–5).

Each is a pydantic model; its JSON schema is sent to the MLLM as a structured-output constraint. Models that depend
on the number of shots k are built per job by the `*_for(k)` functions so that "exactly k storyboards" is part of the
schema, not a hope.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model


class _Strict(BaseModel):
    # Stripping makes a blank answer ("   ") fail min_length, so it is retried like any unusable output instead of
    # reaching a model as an empty prompt or an empty monologue.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class StoryDraft(_Strict):
    """Story agent G1: character description T_c and story T_story from the theme and the stylized image."""

    character_description: str = Field(min_length=1, max_length=1200)
    story: str = Field(min_length=1, max_length=4000)


class Storyboard(_Strict):
    """One storyboard T_board^i: where and what, plus the character's behaviour line."""

    scene: str = Field(min_length=1, max_length=600)
    behavior: str = Field(min_length=1, max_length=400)


class VideoDescription(_Strict):
    """T_video^i: camera movement, emotional atmosphere, cultural details."""

    description: str = Field(min_length=1, max_length=1200)


class Monologue(_Strict):
    """T_mono^i: what the character thinks at that moment, spoken over the shot."""

    text: str = Field(min_length=1, max_length=300)


class MusicDescription(_Strict):
    """T_music: emotions, instruments and style of the background music."""

    description: str = Field(min_length=1, max_length=600)
    mood: str = Field(min_length=1, max_length=80)
    instruments: list[str] = Field(min_length=1, max_length=6)


class ReviewVerdict(_Strict):
    """What every reviewer R_i answers."""

    verdict: Literal["pass", "revise"]
    reasons: list[str] = Field(default_factory=list, max_length=5)


@lru_cache(maxsize=None)
def storyboards_for(k: int) -> type[BaseModel]:
    return create_model(f"Storyboards{k}", __base__=_Strict,
                        storyboards=(list[Storyboard], Field(min_length=k, max_length=k)))


@lru_cache(maxsize=None)
def video_descriptions_for(k: int) -> type[BaseModel]:
    return create_model(f"VideoDescriptions{k}", __base__=_Strict,
                        videos=(list[VideoDescription], Field(min_length=k, max_length=k)))


@lru_cache(maxsize=None)
def monologues_for(k: int) -> type[BaseModel]:
    return create_model(f"Monologues{k}", __base__=_Strict,
                        monologues=(list[Monologue], Field(min_length=k, max_length=k)))


@lru_cache(maxsize=None)
def single_plan_for(k: int) -> type[BaseModel]:
    """The ablation `macf.multi_agent=false`: one call writes everything."""

    class Shot(_Strict):
        scene: str = Field(min_length=1, max_length=600)
        behavior: str = Field(min_length=1, max_length=400)
        video_description: str = Field(min_length=1, max_length=1200)
        monologue: str = Field(min_length=1, max_length=300)

    return create_model(f"SinglePlan{k}", __base__=_Strict,
                        character_description=(str, Field(min_length=1, max_length=1200)),
                        story=(str, Field(min_length=1, max_length=4000)),
                        shots=(list[Shot], Field(min_length=k, max_length=k)),
                        music=(MusicDescription, ...))


# --- FRM agents (paper eqs. 7, 8, 10) -----------------------------------------------------------------------------

ImageProblem = Literal[
    "limbs_or_body_parts",  # (i) incorrect number of limbs or body parts
    "expression_or_pose",  # (ii) abnormal expressions or poses
    "background_or_foreground",  # (iii) abnormal background or foreground
    "clothing_or_accessories",  # (iv) unreasonable clothing or accessories
    "resolution_or_clarity",  # (v) insufficient resolution or clarity
    "description_misalignment",  # (vi) inconsistent alignment with the description
]


class ImageQualityVerdict(_Strict):
    """A_quality^image: which of the six problem classes are present, and a modification suggestion T_mod."""

    verdict: Literal["pass", "fail"]
    problems: list[ImageProblem] = Field(default_factory=list, max_length=6)
    suggestion: str = Field(default="", max_length=600)


class EditInstruction(_Strict):
    """A_edit: the suggestion turned into a prompt for the image-edit model."""

    prompt: str = Field(min_length=1, max_length=600)


class VideoQualityVerdict(_Strict):
    """A_quality^video: pass, or a revised video prompt and the reason for it."""

    verdict: Literal["pass", "fail"]
    revised_prompt: str = Field(default="", max_length=1200)
    reason: str = Field(default="", max_length=600)
