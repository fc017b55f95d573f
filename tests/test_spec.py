"""Job-spec validation: every bad field gets an InputError naming it; job ids are deterministic."""

import io
import wave

import pytest
from PIL import Image

from personavlog.engine.errors import InputError
from personavlog.engine.spec import JobSpec, validate_job_id

from _support import png_header_only


def _png(w=64, h=48, fmt="PNG", color=(10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format=fmt)
    return buf.getvalue()


def _wav(seconds=1.0, rate=16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"\x00\x00" * int(seconds * rate))
    return buf.getvalue()


def make(cfg, **kw):
    args = dict(theme="A day at the beach", style="Pixar style", image=_png())
    args.update(kw)
    return JobSpec.create(cfg=cfg, **args)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepts_png_jpeg_webp_by_content(cfg, fmt):
    spec = make(cfg, image=_png(fmt=fmt))
    assert spec.image_format == fmt
    assert spec.shots == cfg.shots and spec.seed == cfg.seed and spec.language == cfg.language


@pytest.mark.parametrize("field,kw,match", [
    ("theme", {"theme": ""}, "empty"),
    ("theme", {"theme": "   "}, "empty"),
    ("theme", {"theme": "x" * 10_000}, "limit is 500"),
    ("theme", {"theme": "bad\x00char"}, "control character"),
    ("style", {"style": ""}, "empty"),
    ("style", {"style": "s" * 101}, "limit is 100"),
    ("image", {"image": b"hello, I am text"}, "not a PNG, JPEG or WebP"),
    ("image", {"image": b""}, "empty"),
    ("image", {"image": png_header_only(20000, 20000)}, "pixels"),
    ("image", {"image": _png()[:60]}, "not a readable"),
    ("image", {"image": _png(8, 8)}, "at least"),
    ("shots", {"shots": 2}, "between 3 and 12"),
    ("shots", {"shots": 13}, "between 3 and 12"),
    ("shots", {"shots": "four"}, "integer"),
    ("shots", {"shots": True}, "integer"),
    ("seed", {"seed": -1}, "between"),
    ("language", {"language": "english!"}, "language tag"),
    ("voice", {"voice": b"not audio at all"}, "WAV or FLAC"),
    ("voice", {"voice": _wav(31.0)}, "limit is 30"),
])
def test_bad_fields_name_the_field(cfg, field, kw, match):
    with pytest.raises(InputError, match=match) as info:
        make(cfg, **kw)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_image_byte_limit_checked_before_decoding(cfg):
    from personavlog.engine.config import load_config

    small = load_config(["limits.image_max_bytes=1000"])
    with pytest.raises(InputError, match="limit is 1000 bytes"):
        make(small, image=_png(200, 200, color=None) + b"\x00" * 2000)


def test_paths(cfg, tmp_path):
    with pytest.raises(InputError, match="file not found") as info:
        JobSpec.from_paths(theme="t", style="s", image=tmp_path / "missing.png", cfg=cfg)
    assert info.value.field == "image"
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image")
    with pytest.raises(InputError, match="not a PNG") as info:
        JobSpec.from_paths(theme="t", style="s", image=fake, cfg=cfg)
    assert info.value.field == "image"
    with pytest.raises(InputError) as info:
        JobSpec.from_paths(theme="t", style="s", image=tmp_path, cfg=cfg)
    assert info.value.field == "image"


def test_voice_accepted(cfg):
    spec = make(cfg, voice=_wav(2.0))
    assert spec.voice_format == "WAV" and spec.voice_ext == "wav"


def test_job_id_is_deterministic_and_sensitive(cfg):
    a, b = make(cfg), make(cfg)
    assert a.job_id("f1") == b.job_id("f1")
    validate_job_id(a.job_id("f1"))
    others = [make(cfg, theme="Another theme"), make(cfg, style="Ghibli"), make(cfg, seed=7),
              make(cfg, image=_png(color=(1, 2, 3))), make(cfg, shots=5), make(cfg, voice=_wav())]
    ids = {a.job_id("f1")} | {o.job_id("f1") for o in others} | {a.job_id("f2")}
    assert len(ids) == len(others) + 2


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABCDEF0123456789abcd", "", "0" * 21, "..%2F..%2Fetc"])
def test_job_id_validation_rejects_paths(bad):
    with pytest.raises(InputError):
        validate_job_id(bad)


def test_input_error_survives_pickling():
    """Ray pickles exceptions raised inside actors: the field must come back."""
    import pickle

    err = pickle.loads(pickle.dumps(InputError("voice", "is not a WAV or FLAC file")))
    assert isinstance(err, InputError) and err.field == "voice" and str(err) == "voice: is not a WAV or FLAC file"
