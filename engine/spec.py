"""JobSpec: what one vlog is made from, validated field by field, with a deterministic job id.

Inputs arrive as paths (CLI, batch files) or bytes (HTTP uploads); both go through the same checks. Images are
sniffed by content, size-checked before decoding and pixel-checked from the header, so a decompression bomb is
rejected without allocating it. Every error is an `InputError` naming the field.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from personavlog.engine.config import LimitsConf
from personavlog.engine.errors import InputError

JOB_ID_RE = re.compile(r"^[0-9a-f]{20}$")
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
_IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
_IMAGE_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}


def sniff_image_format(data: bytes) -> Optional[str]:
    """The image format from magic bytes, never from a file name or a client's content type."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def sniff_audio_format(data: bytes) -> Optional[str]:
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if data.startswith(b"fLaC"):
        return "FLAC"
    return None


def _check_text(field: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str):
        raise InputError(field, f"must be text, got {type(value).__name__}")
    text = unicodedata.normalize("NFC", value).strip()
    if not text:
        raise InputError(field, "must not be empty")
    if len(text) > max_chars:
        raise InputError(field, f"is {len(text)} characters long; the limit is {max_chars}")
    bad = [c for c in text if unicodedata.category(c) == "Cc" and c not in "\n\t"]
    if bad:
        raise InputError(field, f"contains control character U+{ord(bad[0]):04X}")
    return text


def _check_int(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise InputError(field, f"must be an integer, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise InputError(field, f"must be an integer, got {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise InputError(field, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(field, f"must be between {lo} and {hi}, got {value}")
    return value


def check_image(data: bytes, limits: LimitsConf, field: str = "image") -> tuple[str, tuple[int, int]]:
    """Validate image bytes; returns (format, (width, height)). Decodes fully only after the header checks pass."""
    from PIL import Image

    if not data:
        raise InputError(field, "is empty")
    if len(data) > limits.image_max_bytes:
        raise InputError(field, f"is {len(data)} bytes; the limit is {limits.image_max_bytes} bytes")
    fmt = sniff_image_format(data)
    if fmt is None:
        raise InputError(field, "is not a PNG, JPEG or WebP image (checked by content, not by name)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:  # reads the header only
                width, height = im.size
                if width * height > limits.image_max_pixels:
                    raise InputError(field, f"is {width}x{height} = {width * height} pixels; the limit is "
                                            f"{limits.image_max_pixels} pixels")
                if min(width, height) < limits.image_min_side:
                    raise InputError(field, f"is {width}x{height}; each side must be at least "
                                            f"{limits.image_min_side} pixels")
                im.load()  # decode now so a truncated or corrupt file fails here, not in a stage
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(field, f"has more pixels than the limit of {limits.image_max_pixels} "
                                "(decompression-bomb guard)") from None
    except Exception as exc:  # noqa: BLE001 - any decoder error means the file is unusable
        raise InputError(field, f"is not a readable {fmt} image ({type(exc).__name__}: {exc})") from None
    return fmt, (width, height)


def check_voice(data: bytes, limits: LimitsConf, field: str = "voice") -> tuple[str, float]:
    import soundfile as sf

    if not data:
        raise InputError(field, "is empty")
    if len(data) > limits.voice_max_bytes:
        raise InputError(field, f"is {len(data)} bytes; the limit is {limits.voice_max_bytes} bytes")
    fmt = sniff_audio_format(data)
    if fmt is None:
        raise InputError(field, "is not a WAV or FLAC file (checked by content, not by name)")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001
        raise InputError(field, f"is not a readable {fmt} file ({exc})") from None
    seconds = info.frames / float(info.samplerate) if info.samplerate else 0.0
    if seconds <= 0.1:
        raise InputError(field, "is shorter than 0.1 s")
    if seconds > limits.voice_max_seconds:
        raise InputError(field, f"is {seconds:.1f} s long; the limit is {limits.voice_max_seconds:g} s")
    return fmt, seconds


def _read_file(field: str, path: Any, max_bytes: int) -> bytes:
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise InputError(field, f"file not found: {p}")
    if not p.is_file():
        raise InputError(field, f"not a regular file: {p}")
    size = p.stat().st_size
    if size > max_bytes:
        raise InputError(field, f"{p} is {size} bytes; the limit is {max_bytes} bytes")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise InputError(field, f"cannot read {p}: {exc.strerror}") from None


@dataclass(frozen=True)
class JobSpec:
    theme: str
    style: str
    image: bytes  # validated PNG/JPEG/WebP bytes
    image_format: str  # PNG | JPEG | WEBP
    shots: int
    seed: int
    language: str
    voice: Optional[bytes] = None  # validated WAV/FLAC bytes
    voice_format: Optional[str] = None

    @classmethod
    def create(cls, *, theme: Any, style: Any, image: bytes, shots: Any = None, seed: Any = None,
               language: Any = None, voice: Optional[bytes] = None, cfg: Any) -> "JobSpec":
        """Validate every field against `cfg.limits` (defaults for shots/seed/language from cfg)."""
        limits: LimitsConf = cfg.limits
        theme = _check_text("theme", theme, limits.theme_max_chars)
        style = _check_text("style", style, limits.style_max_chars)
        shots = _check_int("shots", cfg.shots if shots is None else shots, limits.shots_min, limits.shots_max)
        seed = _check_int("seed", cfg.seed if seed is None else seed, 0, 2**32 - 1)
        language = cfg.language if language is None else language
        if not isinstance(language, str) or not _LANGUAGE_RE.match(language.strip()):
            raise InputError("language", f"must be a language tag like 'en' or 'zh-CN', got {language!r}")
        image_format, _ = check_image(image, limits)
        voice_format = None
        if voice is not None:
            voice_format, _ = check_voice(voice, limits)
        return cls(theme=theme, style=style, image=image, image_format=image_format, shots=shots, seed=seed,
                   language=language.strip(), voice=voice, voice_format=voice_format)

    @classmethod
    def from_paths(cls, *, theme: Any, style: Any, image: Any, voice: Any = None, cfg: Any, **kw: Any) -> "JobSpec":
        if image is None or str(image).strip() == "":
            raise InputError("image", "is required")
        image_bytes = _read_file("image", image, cfg.limits.image_max_bytes)
        voice_bytes = None
        if voice is not None and str(voice).strip() != "":
            voice_bytes = _read_file("voice", voice, cfg.limits.voice_max_bytes)
        return cls.create(theme=theme, style=style, image=image_bytes, voice=voice_bytes, cfg=cfg, **kw)

    @property
    def image_ext(self) -> str:
        return _IMAGE_EXT[self.image_format]

    @property
    def voice_ext(self) -> Optional[str]:
        return None if self.voice_format is None else self.voice_format.lower()

    def job_id(self, config_fingerprint: str) -> str:
        """Deterministic: same inputs + same output-relevant config -> same id (and so the same run folder)."""
        key = {
            "image": hashlib.sha256(self.image).hexdigest(),
            "voice": hashlib.sha256(self.voice).hexdigest() if self.voice is not None else None,
            "theme": self.theme, "style": self.style, "seed": self.seed, "shots": self.shots,
            "language": self.language, "config": config_fingerprint,
        }
        blob = json.dumps(key, sort_keys=True, ensure_ascii=False).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def describe(self) -> dict[str, Any]:
        """The spec as JSON-safe data for the manifest (hashes instead of bytes)."""
        return {
            "theme": self.theme, "style": self.style, "shots": self.shots, "seed": self.seed,
            "language": self.language, "image_format": self.image_format,
            "image_sha256": hashlib.sha256(self.image).hexdigest(),
            "voice_format": self.voice_format,
            "voice_sha256": hashlib.sha256(self.voice).hexdigest() if self.voice is not None else None,
        }


def validate_job_id(value: str) -> str:
    if not isinstance(value, str) or not JOB_ID_RE.match(value):
        raise InputError("id", "is not a job id (20 lowercase hex characters)")
    return value
