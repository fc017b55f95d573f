"""Small helpers shared by stage functions."""

from __future__ import annotations

import io
import string
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml


def shot_name(i: int) -> str:
    return f"shot_{i:02d}"


@lru_cache(maxsize=None)
def _edit_templates() -> dict[str, str]:
    return yaml.safe_load(resources.files("personavlog.prompts").joinpath("image_edit.yaml").read_text())


def edit_prompt(kind: str, **values: Any) -> str:
    text = string.Template(_edit_templates()[kind]).substitute(values)
    return " ".join(text.split())


def open_image(data: bytes) -> Any:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def open_audio(data: bytes) -> Any:
    import soundfile as sf

    from personavlog.actors.media import Audio

    samples, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return Audio(samples=samples.T, sample_rate=sr)


def clip_seconds(cfg: Any) -> float:
    """Length of one generated clip from the video model's params (frames / fps)."""
    p = cfg.models.image_to_video.params
    return float(p.get("num_frames", 81)) / float(p.get("fps", 16))
