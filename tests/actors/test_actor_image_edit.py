"""FluxKontextImageEdit at toy size: the real diffusers pipeline with random weights, on CPU."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from personavlog.engine.errors import ConfigError, InputError


@pytest.fixture(scope="module")
def model(tiny_conf):
    from personavlog.actors.image_edit import FluxKontextImageEdit

    return FluxKontextImageEdit(tiny_conf("image_edit"))


def test_output_is_rgb_at_config_size(model, photo):
    out = model(image=photo, prompt="make it a watercolor", seed=0)
    assert isinstance(out, Image.Image)
    assert out.mode == "RGB"
    assert out.size == (64, 64)  # tiny.yaml: height 64, width 64
    arr = np.asarray(out)
    assert arr.dtype == np.uint8 and arr.shape == (64, 64, 3)
    assert arr.std() > 0  # the VAE decoded something, not a blank frame


def test_requested_size_wins_over_config(model, photo):
    out = model(image=photo, prompt="p", seed=0, height=32, width=80, steps=1, guidance=1.0)
    assert out.size == (80, 32)


def test_same_seed_same_image_other_seed_other_image(model, photo):
    a = np.asarray(model(image=photo, prompt="a cat", seed=7))
    b = np.asarray(model(image=photo, prompt="a cat", seed=7))
    c = np.asarray(model(image=photo, prompt="a cat", seed=8))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_loaded_once_across_calls(model, photo):
    pipe = model.pipe
    for seed in range(3):
        model(image=photo, prompt="again", seed=seed)
    assert model.loads == 1
    assert model.pipe is pipe


def test_odd_reference_images_are_accepted(model):
    # Grey-scale, a thin strip and a big image all become a valid RGB reference for the pipeline.
    for image in (Image.new("L", (40, 40), 90), Image.new("RGB", (400, 8), (1, 2, 3)), Image.new("RGB", (900, 700))):
        assert model(image=image, prompt="p", seed=1, steps=1).size == (64, 64)


@pytest.mark.parametrize("kwargs, field", [
    ({"height": 50}, "height"),  # not a multiple of 16
    ({"width": 0}, "width"),
    ({"steps": 0}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"guidance": "high"}, "guidance"),
    ({"guidance": float("nan")}, "guidance"),
    ({"seed": -1}, "seed"),
    ({"seed": True}, "seed"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"image": b"\x89PNG"}, "image"),
])
def test_bad_arguments_name_their_field(model, photo, kwargs, field):
    call = {"image": photo, "prompt": "p", "seed": 0, **kwargs}
    with pytest.raises(InputError) as err:
        model(**call)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_call_is_keyword_only(model, photo):
    with pytest.raises(TypeError):
        model(photo, "p", 0)  # type: ignore[misc]


@pytest.mark.parametrize("params, needle", [
    ({"steps": 0}, "models.image_edit.params.steps"),
    ({"stpes": 2}, "stpes"),
    ({"height": "tall"}, "models.image_edit.params.height"),
])
def test_bad_config_params_fail_at_load(tiny_conf, params, needle):
    from personavlog.actors.image_edit import FluxKontextImageEdit

    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        FluxKontextImageEdit(tiny_conf("image_edit", params=params))
