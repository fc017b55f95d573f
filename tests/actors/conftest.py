"""Fixtures for the model-class tests: tiny ModelConfs from the shipped config, test images and voices."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest


def _tiny_conf(role: str, **overrides: Any) -> Any:
    """The ModelConf conf/models/tiny.yaml gives `role`, with top-level fields replaced by `overrides`."""
    from omegaconf import OmegaConf

    from personavlog.engine.config import load_config

    conf = OmegaConf.to_object(load_config([]).models[role])
    for key, value in overrides.items():
        setattr(conf, key, value)
    return conf


@pytest.fixture(scope="session")
def tiny_conf():
    """tiny_conf(role, **overrides) -> ModelConf."""
    return _tiny_conf


@pytest.fixture(scope="session")
def photo():
    """A 96x72 RGB gradient with a red square: not a multiple of any model's size step, not square."""
    from PIL import Image

    y, x = np.mgrid[0:72, 0:96]
    rgb = np.stack([x * 255 // 95, y * 255 // 71, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    rgb[20:40, 30:50] = (255, 0, 0)
    return Image.fromarray(rgb, "RGB")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Toy models are far too small to gain from intra-op threads, and on a shared 2-core box OpenMP workers spinning
    against other processes make each call 10-30x slower. Restored afterwards for other test folders."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
