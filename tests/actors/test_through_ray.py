"""All four installable toy models hosted in Ray actors, as the drivers host them: results and RanOn come back."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from personavlog.actors.media import Audio, VideoClip


@pytest.fixture(scope="module")
def ray_local():
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray

    # Ray starts workers with OMP_NUM_THREADS=1 unless told otherwise, which the four toy models sharing two cores
    # need (see conftest.one_torch_thread).
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_tiny_models_run_in_ray_actors(ray_local, tiny_conf, photo):
    from personavlog.actors.base import ModelHost, RanOn

    ray = ray_local
    calls = {
        "image_edit": {"image": photo, "prompt": "make it a comic", "seed": 0},
        "image_to_video": {"image": photo, "prompt": "waves roll in", "seed": 0, "num_frames": 9},
        "music": {"prompt": "lofi beat", "seconds": 1.0, "seed": 0},
        "speech": {"text": "Hello from Ray.", "seed": 0},
    }
    host = ray.remote(ModelHost)
    actors = {role: host.options(num_cpus=0).remote(role, tiny_conf(role)) for role in calls}
    first = {role: actors[role].call.remote(**kw) for role, kw in calls.items()}
    second = {role: actors[role].call.remote(**kw) for role, kw in calls.items()}
    results = {role: ray.get(ref, timeout=300) for role, ref in first.items()}
    repeats = {role: ray.get(ref, timeout=300) for role, ref in second.items()}

    for role, (result, ran_on) in results.items():
        assert isinstance(ran_on, RanOn)
        assert ran_on.actor.startswith(f"{role}:") and ran_on.pid != os.getpid() and ran_on.seconds > 0
        assert ran_on.node  # the Ray node id

    image, _ = results["image_edit"]
    assert isinstance(image, Image.Image) and image.size == (64, 64)
    clip, _ = results["image_to_video"]
    assert isinstance(clip, VideoClip) and clip.frames.shape == (9, 64, 64, 3) and clip.frames.dtype == np.uint8
    music, _ = results["music"]
    assert isinstance(music, Audio) and music.samples.shape == (2, 16_000)
    speech, _ = results["speech"]
    assert isinstance(speech, Audio) and speech.samples.shape[0] == 1 and speech.samples.shape[1] > 0

    # Same seed in the same actor -> the same output, after the model was loaded once.
    assert np.array_equal(np.asarray(image), np.asarray(repeats["image_edit"][0]))
    assert np.array_equal(clip.frames, repeats["image_to_video"][0].frames)
    assert np.array_equal(music.samples, repeats["music"][0].samples)
    assert np.array_equal(speech.samples, repeats["speech"][0].samples)
    infos = ray.get([actors[role].info.remote() for role in calls])
    assert [(i["loads"], i["calls"]) for i in infos] == [(1, 2)] * 4


def test_quality_scorer_loads_once_per_actor(ray_local, photo):
    """The FRM scorer in a Ray actor, as the driver hosts it: several image and video calls, one load per model."""
    from personavlog.actors.base import ModelHost
    from personavlog.engine.config import load_config
    from omegaconf import OmegaConf

    ray = ray_local
    conf = OmegaConf.to_container(load_config([]).scorers, resolve=True)
    actor = ray.remote(ModelHost).options(num_cpus=0).remote("scorer", conf)
    frames = np.zeros((9, 128, 128, 3), np.uint8)
    refs = [actor.call.remote(image=photo, reference=photo, text="a kid on a beach") for _ in range(3)]
    refs += [actor.call.remote(frames=frames, fps=16.0) for _ in range(2)]
    results = [r for r, _ in ray.get(refs, timeout=300)]
    assert all(r["m_i2i"] == pytest.approx(1.0, abs=1e-5) for r in results[:3])
    assert results[3]["subject_consistency"] == pytest.approx(1.0, abs=1e-5)
    info = ray.get(actor.info.remote())
    assert info["calls"] == 5 and set(info["loads"].values()) == {1}
