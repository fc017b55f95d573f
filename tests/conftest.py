import os
import shutil
from pathlib import Path

import pytest

from _support import EXAMPLE_IMAGE

# Local Ray instances in tests: no token auth, no dashboard, no usage stats.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def cfg():
    from personavlog.engine.config import load_config

    return load_config([])


@pytest.fixture
def example_image(tmp_path) -> Path:
    p = tmp_path / "reference.png"
    shutil.copy(EXAMPLE_IMAGE, p)
    return p
