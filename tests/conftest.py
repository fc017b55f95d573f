import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_IMAGE = REPO / "examples" / "reference.png"

# Local Ray instances in tests: no token auth, no dashboard, no usage stats.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def cfg():
    from personavlog.engine.config import load_config

    return load_config([])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (for bomb tests: never decodable, never allocated)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


@pytest.fixture
def example_image(tmp_path) -> Path:
    p = tmp_path / "reference.png"
    shutil.copy(EXAMPLE_IMAGE, p)
    return p
