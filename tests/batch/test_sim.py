"""The calibrated simulation (models=sim, mllm=sim): profiles compose, stand-ins take the profile's time x time_scale,
produce tiny real outputs, keep no torch, and the sim MLLM writes schema-valid JSON for every agent, per seed."""

import json
import subprocess
import sys
import time

import pytest
from PIL import Image

from personavlog.actors.media import Audio, VideoClip
from personavlog.actors.registry import coerce_conf
from personavlog.engine.config import fingerprint, load_config
from personavlog.engine.errors import ConfigError, UnusableOutputError


def _model(cfg, role):
    from omegaconf import OmegaConf

    from personavlog.actors.registry import build_model

    return build_model(role, coerce_conf(role, OmegaConf.to_container(cfg.models[role], resolve=True)))


@pytest.fixture(scope="module")
def sim_cfg():
    return load_config(["models=sim", "mllm=sim", "sim.time_scale=0.0001", "sim.jitter=0"])


def test_profiles_hold_the_real_models_resources_and_cite_sources():
    from pathlib import Path

    for gpu in ("h200", "h20"):
        cfg = load_config(["models=sim", "mllm=sim", f"sim={gpu}"])
        assert cfg.sim.gpu.lower() == gpu
        paper = load_config(["models=paper"])
        for role in ("image_edit", "image_to_video", "music", "speech"):
            assert cfg.models[role].kind == "sim"
            assert cfg.models[role].resources.num_gpus == paper.models[role].resources.num_gpus
            assert cfg.models[role].resources.num_cpus == paper.models[role].resources.num_cpus
            assert cfg.models[role].resources.num_gpus == cfg.sim[role].num_gpus
        text = (Path(__file__).resolve().parents[2] / "conf" / "sim" / f"{gpu}.yaml").read_text()
        assert "[Q]" in text and "Wan2.1" in text and "time_scale" in text
    h20, h200 = load_config(["models=sim", "sim=h20"]), load_config(["models=sim", "sim=h200"])
    assert h20.sim.image_to_video.seconds_per_call > h200.sim.image_to_video.seconds_per_call


def test_fingerprint_ignores_the_simulation_profile():
    a = fingerprint(load_config(["models=sim", "mllm=sim"]))
    assert a == fingerprint(load_config(["models=sim", "mllm=sim", "sim=h20", "sim.time_scale=0.5"]))
    assert a != fingerprint(load_config(["models=sim", "mllm=sim", "models.image_edit.params.height=64"]))


def test_stand_ins_return_tiny_real_outputs(sim_cfg):
    img = Image.new("RGB", (40, 30), (200, 100, 50))
    edited = _model(sim_cfg, "image_edit")(image=img, prompt="make it watercolor", seed=1)
    assert isinstance(edited, Image.Image) and edited.size == (32, 32)
    again = _model(sim_cfg, "image_edit")(image=img, prompt="make it watercolor", seed=1)
    assert edited.tobytes() == again.tobytes()
    other = _model(sim_cfg, "image_edit")(image=img, prompt="make it watercolor", seed=2)
    assert edited.tobytes() != other.tobytes()
    clip = _model(sim_cfg, "image_to_video")(image=edited, prompt="a slow pan", seed=3)
    assert isinstance(clip, VideoClip) and clip.frames.shape == (5, 32, 32, 3) and clip.fps == 16
    music = _model(sim_cfg, "music")(prompt="calm piano", seconds=1.0, seed=4)
    assert isinstance(music, Audio) and abs(music.seconds - 1.0) < 1e-3
    speech = _model(sim_cfg, "speech")(text="I love this little harbour town", seed=5)
    assert isinstance(speech, Audio) and 0 < speech.seconds <= 0.25 + 1e-3


def test_stand_ins_take_the_profiles_time_times_time_scale():
    cfg = load_config(["models=sim", "sim.time_scale=0.001", "sim.jitter=0"])
    wan = _model(cfg, "image_to_video")
    img = Image.new("RGB", (16, 16))
    t0 = time.perf_counter()
    wan(image=img, prompt="p", seed=0)
    took = time.perf_counter() - t0
    expected = cfg.sim.image_to_video.seconds_per_call * 0.001  # 0.366 s on H200
    assert expected * 0.95 <= took <= expected + 0.25, (took, expected)
    # speech follows the monologue's length (real-time factor)
    speech = _model(cfg, "speech")
    t0 = time.perf_counter()
    speech(text=" ".join(["word"] * 250), seed=0)
    took = time.perf_counter() - t0
    spoken = 250 / cfg.sim.words_per_second + 0.3
    expected = (cfg.sim.speech.seconds_per_call + cfg.sim.speech.seconds_per_output_second * spoken) * 0.001
    assert expected * 0.95 <= took <= expected + 0.25, (took, expected)


def test_jitter_is_bounded_and_fixed_by_the_call():
    from personavlog.actors.sim import SimConf, SimModelTiming, scaled_seconds

    sim = SimConf(time_scale=1.0, jitter=0.05)
    t = SimModelTiming(seconds_per_call=100.0)
    values = [scaled_seconds(sim, t, seed=s, salt=("p",)) for s in range(200)]
    assert all(95.0 <= v <= 105.0 for v in values) and max(values) - min(values) > 5
    assert values == [scaled_seconds(sim, t, seed=s, salt=("p",)) for s in range(200)]


def test_bad_profile_values_name_the_key():
    from personavlog.actors.sim import as_sim_conf

    with pytest.raises(ConfigError, match="sim.time_scale"):
        as_sim_conf({"time_scale": 0})
    with pytest.raises(ConfigError, match="sim.jitter"):
        as_sim_conf({"jitter": 1.5})
    with pytest.raises(ConfigError):
        load_config(["models=sim", "sim.image_edit.seconds_per_cal=3"])


def test_sim_host_keeps_a_call_log(sim_cfg):
    from omegaconf import OmegaConf

    from personavlog.actors.sim import SimModelHost

    host = SimModelHost("image_edit", OmegaConf.to_container(sim_cfg.models.image_edit, resolve=True))
    t0 = time.time()
    img, ran_on = host.call(image=Image.new("RGB", (16, 16)), prompt="p", seed=0)
    log = host.call_log()
    assert log["num_gpus"] == 1.0 and len(log["calls"]) == 1
    start, end = log["calls"][0]
    assert t0 <= start <= end <= time.time() and ran_on.actor.startswith("image_edit:sim@")


def test_stand_ins_and_sim_mllm_import_no_torch():
    code = ("import sys; import personavlog.actors.sim, personavlog.engine.mllm.sim; "
            "print('torch' in sys.modules or 'diffusers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_sim_mllm_plans_a_vlog_with_valid_json_deterministically(sim_cfg):
    from personavlog.engine.agents.macf import plan_vlog
    from personavlog.engine.mllm.factory import make_client, needs_actor

    assert not needs_actor(sim_cfg.mllm)
    client = make_client(sim_cfg.mllm)
    image = Image.new("RGB", (16, 16))
    plan = plan_vlog(client, theme="A day by the sea", style="watercolor", stylized_image=image, k=5,
                     language="en", seed=7, max_rounds=2)
    assert len(plan["storyboards"]) == len(plan["monologues"]) == len(plan["video_descriptions"]) == 5
    assert all(m.strip() for m in plan["monologues"]) and plan["music"]["instruments"]
    assert plan["usage"]["calls"] >= 10 and plan["usage"]["completion_tokens"] > 0
    again = plan_vlog(client, theme="A day by the sea", style="watercolor", stylized_image=image, k=5,
                      language="en", seed=7, max_rounds=2)
    assert json.dumps(again, sort_keys=True) == json.dumps(plan, sort_keys=True)
    other = plan_vlog(client, theme="A day by the sea", style="watercolor", stylized_image=image, k=5,
                      language="en", seed=8, max_rounds=2)
    assert other["monologues"] != plan["monologues"]


def test_sim_mllm_walks_frm_schemas_and_enums(sim_cfg):
    from personavlog.engine.agents import schemas
    from personavlog.engine.mllm.factory import make_client

    client = make_client(sim_cfg.mllm)
    msgs = [{"role": "user", "content": [{"type": "text", "text": "review"}]}]
    seen = set()
    for seed in range(12):
        v = client.chat(msgs, schemas.ImageQualityVerdict, seed=seed).data
        seen.add(v["verdict"])
        assert set(v["problems"]) <= set(schemas.ImageQualityVerdict.model_fields["problems"].annotation.__args__[0]
                                         .__args__)
    assert seen == {"pass", "fail"}


def test_sim_mllm_output_beyond_max_tokens_is_unusable(sim_cfg):
    from personavlog.engine.agents import schemas
    from personavlog.engine.mllm.factory import make_client

    conf = load_config(["models=sim", "mllm=sim", "sim.time_scale=0.0001", "mllm.max_tokens=8"]).mllm
    client = make_client(conf, parse_retries=1)
    with pytest.raises(UnusableOutputError, match="max_tokens=8"):
        client.chat([{"role": "user", "content": "x"}], schemas.StoryDraft, seed=0)


def test_sim_mllm_latency_follows_the_profile():
    from personavlog.engine.agents import schemas
    from personavlog.engine.mllm.factory import make_client

    cfg = load_config(["mllm=sim", "sim.time_scale=0.01"])
    client = make_client(cfg.mllm, parse_retries=0)
    t0 = time.perf_counter()
    res = client.chat([{"role": "user", "content": "x"}], schemas.StoryDraft, seed=0)
    took = time.perf_counter() - t0
    m = cfg.sim.mllm
    expected = (m.seconds_per_call + m.seconds_per_output_token * res.usage.completion_tokens) * 0.01
    assert res.usage.completion_tokens >= 2 * m.tokens_per_string
    assert expected * 0.95 <= took <= expected + 0.25, (took, expected)
