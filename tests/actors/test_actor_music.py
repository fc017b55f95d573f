"""StableAudioMusic at toy size: the real diffusers Stable Audio pipeline with random weights, on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from personavlog.actors.media import Audio
from personavlog.engine.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def model(tiny_conf):
    from personavlog.actors.music import StableAudioMusic

    return StableAudioMusic(tiny_conf("music"))


def test_audio_has_config_length_and_valid_samples(model):
    out = model(prompt="calm piano with soft strings", seed=0)  # tiny.yaml: seconds 2.0
    assert isinstance(out, Audio)
    assert out.sample_rate == model.sample_rate == 16_000
    assert out.samples.dtype == np.float32
    assert out.samples.shape == (2, 32_000)  # stereo, 2 s
    assert np.isfinite(out.samples).all()
    assert np.abs(out.samples).max() <= 1.0
    assert out.samples.std() > 0


def test_requested_seconds(model):
    out = model(prompt="drums", seconds=1.25, seed=0, steps=1, guidance=1.0)
    assert out.samples.shape == (2, 20_000)
    assert out.seconds == pytest.approx(1.25)


def test_longer_than_one_window_returns_one_full_window(model):
    assert model.max_seconds == pytest.approx(4.096)  # 256 latent frames x hop 256 / 16 kHz
    out = model(prompt="drums", seconds=60.0, seed=0, steps=1)
    assert out.samples.shape == (2, 65_536)
    assert out.seconds == pytest.approx(model.max_seconds)


def test_same_seed_same_audio_other_seed_other_audio(model):
    a = model(prompt="jazz", seed=11).samples
    b = model(prompt="jazz", seed=11).samples
    c = model(prompt="jazz", seed=12).samples
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_loaded_once_across_calls(model):
    pipe = model.pipe
    for seed in range(3):
        model(prompt="x", seed=seed, steps=1)
    assert model.loads == 1
    assert model.pipe is pipe


@pytest.mark.parametrize("kwargs, field", [
    ({"seconds": 0}, "seconds"),
    ({"seconds": -3.0}, "seconds"),
    ({"seconds": float("inf")}, "seconds"),
    ({"steps": 0}, "steps"),
    ({"guidance": "loud"}, "guidance"),
    ({"prompt": ""}, "prompt"),
    ({"seed": 1.5}, "seed"),
])
def test_bad_arguments_name_their_field(model, kwargs, field):
    with pytest.raises(InputError) as err:
        model(**{"prompt": "p", "seed": 0, **kwargs})
    assert err.value.field == field


def test_bad_config_params_fail_at_load(tiny_conf):
    from personavlog.actors.music import StableAudioMusic

    with pytest.raises(ConfigError, match=r"models\.music\.params\.seconds"):
        StableAudioMusic(tiny_conf("music", params={"seconds": 0}))
