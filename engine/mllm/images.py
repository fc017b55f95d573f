"""Image handling shared by the MLLM backends: message walking, downscaling and data URLs."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

from personavlog.engine.errors import InputError


def downscale(image: Any, max_side: int) -> Any:
    """A copy of `image` no larger than `max_side` on its longer side, in a mode every backend reads (RGB/RGBA/L)."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        raise InputError("messages.content.image", f"expected a PIL image, got {type(image).__name__}")
    if max_side < 1:
        raise InputError("mllm.max_image_side", f"must be >= 1, got {max_side}")
    img = image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def to_data_url(image: Any, max_side: int) -> str:
    """A base64 PNG data URL of the downscaled image (lossless, so what the model sees is what we generated)."""
    buf = io.BytesIO()
    downscale(image, max_side).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def map_parts(messages: list[dict[str, Any]], on_image: Callable[[Any], dict[str, Any]]) -> list[dict[str, Any]]:
    """Copy `messages`, replacing each {"type": "image", "image": PIL} part with `on_image(image)`.

    Checks the message shape on the way so a malformed message fails here, naming its place, and not inside a
    backend's template code.
    """
    if not isinstance(messages, list) or not messages:
        raise InputError("messages", "must be a non-empty list of {role, content} dicts")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in ("system", "user", "assistant"):
            raise InputError(f"messages[{i}].role", "must be one of system, user, assistant")
        content = msg.get("content")
        if isinstance(content, str):
            out.append({"role": msg["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise InputError(f"messages[{i}].content", "must be a string or a list of parts")
        parts: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text"), str):
                    raise InputError(f"messages[{i}].content[{j}].text", "must be a string")
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image":
                parts.append(on_image(part.get("image")))
            else:
                raise InputError(f"messages[{i}].content[{j}].type", f"must be 'text' or 'image', got {kind!r}")
        out.append({"role": msg["role"], "content": parts})
    return out


def with_data_urls(messages: list[dict[str, Any]], max_side: int) -> list[dict[str, Any]]:
    """OpenAI-style messages: image parts become image_url parts holding PNG data URLs."""
    return map_parts(messages, lambda img: {"type": "image_url", "image_url": {"url": to_data_url(img, max_side)}})
