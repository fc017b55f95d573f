"""WanImageToVideo at toy size: the real diffusers I2V pipeline with random weights, on CPU."""

from __future__ import annotations

import numpy as np
import pytest

from personavlog.actors.media import VideoClip
from personavlog.engine.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def model(tiny_conf):
    from personavlog.actors.image_to_video import WanImageToVideo

    return WanImageToVideo(tiny_conf("image_to_video"))


@pytest.fixture(scope="module")
def clip(model, photo):
    return model(image=photo, prompt="she walks along the beach", seed=0)


def test_clip_has_config_shape_dtype_and_fps(clip):
    assert isinstance(clip, VideoClip)
    assert clip.frames.shape == (17, 64, 64, 3)  # tiny.yaml: 17 frames of 64x64
    assert clip.frames.dtype == np.uint8
    assert clip.fps == 16.0
    assert clip.seconds == pytest.approx(17 / 16)
    assert clip.frames.std() > 0


def test_requested_frames_and_size(model, photo):
    out = model(image=photo, prompt="p", seed=0, num_frames=5, height=32, width=48, steps=1, guidance=1.0,
                negative_prompt="blurry")
    assert out.frames.shape == (5, 32, 48, 3)


def test_same_seed_same_clip_other_seed_other_clip(model, photo, clip):
    again = model(image=photo, prompt="she walks along the beach", seed=0)
    other = model(image=photo, prompt="she walks along the beach", seed=1)
    assert np.array_equal(clip.frames, again.frames)
    assert not np.array_equal(clip.frames, other.frames)


def test_loaded_once_across_calls(model, photo, clip):
    pipe = model.pipe
    model(image=photo, prompt="p", seed=3, num_frames=5, steps=1)
    model(image=photo, prompt="p", seed=4, num_frames=5, steps=1)
    assert model.loads == 1
    assert model.pipe is pipe


@pytest.mark.parametrize("kwargs, field", [
    ({"num_frames": 16}, "num_frames"),  # must be 4k+1
    ({"num_frames": 0}, "num_frames"),
    ({"height": 40}, "height"),  # must be a multiple of 16
    ({"width": -16}, "width"),
    ({"steps": 0}, "steps"),
    ({"guidance": -1.0}, "guidance"),
    ({"negative_prompt": 3}, "negative_prompt"),
    ({"prompt": ""}, "prompt"),
    ({"seed": "0"}, "seed"),
    ({"image": np.zeros((8, 8, 3), np.uint8)}, "image"),
])
def test_bad_arguments_name_their_field(model, photo, kwargs, field):
    call = {"image": photo, "prompt": "p", "seed": 0, **kwargs}
    with pytest.raises(InputError) as err:
        model(**call)
    assert err.value.field == field


def test_num_frames_error_suggests_valid_counts(model, photo):
    with pytest.raises(InputError, match=r"4k\+1 \(e\.g\. 13 or 17\)"):
        model(image=photo, prompt="p", seed=0, num_frames=16)


def test_bad_config_params_fail_at_load(tiny_conf):
    from personavlog.actors.image_to_video import WanImageToVideo

    with pytest.raises(ConfigError, match=r"models\.image_to_video\.params\.fps"):
        WanImageToVideo(tiny_conf("image_to_video", params={"fps": 0}))
    with pytest.raises(ConfigError, match="frames"):
        WanImageToVideo(tiny_conf("image_to_video", params={"frames": 17}))
