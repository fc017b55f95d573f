"""Contract tests for the adapters of the paper models that cannot be installed here (AudioX, CosyVoice2).

Each fake implements exactly the functions the adapter uses, with the signatures of the real code (AudioX's
stable_audio_tools as in ZeyueT/AudioX; CosyVoice's cosyvoice.cli.cosyvoice.CosyVoice2 in its current and its older
API), records every call, and returns tensors shaped like the real ones. The tests assert the adapter calls them as the
projects document and turns the results into our media types correctly.
"""

from __future__ import annotations

import sys
import textwrap
import types

import numpy as np
import pytest
import torch

from personavlog.actors.media import Audio
from personavlog.engine.config import ModelConf
from personavlog.engine.errors import ConfigError, InputError

# --------------------------------------------------------------------------------------------------------------------
# AudioX (module stable_audio_tools)

AUDIOX_RATE = 8_000
AUDIOX_SAMPLE_SIZE = 8_000 * 10  # a 10 s window, as AudioX's released config (485100 samples at 44.1 kHz ~ 11 s)


class FakeAudioXModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))


@pytest.fixture
def audiox(monkeypatch):
    """A fake `stable_audio_tools` package in sys.modules; returns the call log."""
    log: dict = {"get_pretrained_model": [], "generate_diffusion_cond": []}

    def get_pretrained_model(name: str):
        log["get_pretrained_model"].append(name)
        model_config = {"sample_rate": AUDIOX_RATE, "sample_size": AUDIOX_SAMPLE_SIZE, "video_fps": 5,
                        "model_type": "diffusion_cond"}
        return FakeAudioXModel(), model_config

    def generate_diffusion_cond(model, steps: int = 250, cfg_scale=6, conditioning: dict | None = None,
                                conditioning_tensors=None, negative_conditioning: dict | None = None,
                                negative_conditioning_tensors=None, batch_size: int = 1, sample_size: int = 2097152,
                                sample_rate: int = 48000, seed: int = -1, device: str = "cuda", init_audio=None,
                                init_noise_level: float = 1.0, mask_args: dict | None = None, return_latents=False,
                                **sampler_kwargs):
        log["generate_diffusion_cond"].append({
            "model": model, "steps": steps, "cfg_scale": cfg_scale, "conditioning": conditioning,
            "negative_conditioning": negative_conditioning, "batch_size": batch_size, "sample_size": sample_size,
            "seed": seed, "device": device, "init_audio": init_audio, "sampler_kwargs": sampler_kwargs})
        # Like the real function: seeded from `seed`, (batch, channels, samples), level not bounded to [-1, 1].
        generator = torch.Generator().manual_seed(seed)
        return 3.0 * torch.randn((batch_size, 2, sample_size), generator=generator)

    root = types.ModuleType("stable_audio_tools")
    root.get_pretrained_model = get_pretrained_model  # type: ignore[attr-defined]
    inference = types.ModuleType("stable_audio_tools.inference")
    generation = types.ModuleType("stable_audio_tools.inference.generation")
    generation.generate_diffusion_cond = generate_diffusion_cond  # type: ignore[attr-defined]
    root.inference = inference  # type: ignore[attr-defined]
    inference.generation = generation  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "stable_audio_tools", root)
    monkeypatch.setitem(sys.modules, "stable_audio_tools.inference", inference)
    monkeypatch.setitem(sys.modules, "stable_audio_tools.inference.generation", generation)
    return log


def audiox_conf(**params) -> ModelConf:
    return ModelConf(kind="audiox", source="HKUSTAudio/AudioX", device="cpu",
                     params={"steps": 250, "guidance": 7.0, "seconds": 60.0, **params})


def test_audiox_loads_once_with_the_pretrained_loader(audiox):
    from personavlog.actors.music import AudioXMusic

    model = AudioXMusic(audiox_conf())
    model(prompt="piano", seconds=2.0, seed=1)
    model(prompt="violin", seconds=2.0, seed=2)
    assert audiox["get_pretrained_model"] == ["HKUSTAudio/AudioX"]
    assert model.loads == 1
    assert len(audiox["generate_diffusion_cond"]) == 2
    assert model.max_seconds == pytest.approx(10.0)
    assert not model.model.training and not model.model.weight.requires_grad


def test_audiox_call_matches_the_documented_text_to_music_call(audiox):
    from personavlog.actors.music import AudioXMusic

    out = AudioXMusic(audiox_conf())(prompt="A music with piano and violin", seconds=4.0, seed=42, steps=30,
                                     guidance=5.5)
    call = audiox["generate_diffusion_cond"][0]
    assert call["steps"] == 30 and call["cfg_scale"] == 5.5
    assert call["sample_size"] == AUDIOX_SAMPLE_SIZE  # always the model's window; the output is cut afterwards
    assert call["sampler_kwargs"] == {"sigma_min": 0.3, "sigma_max": 500, "sampler_type": "dpmpp-3m-sde"}
    assert call["device"] == "cpu" and call["seed"] == 42
    assert call["negative_conditioning"] is None and call["init_audio"] is None

    (cond,) = call["conditioning"]
    assert set(cond) == {"video_prompt", "text_prompt", "audio_prompt", "seconds_start", "seconds_total"}
    assert cond["text_prompt"] == "A music with piano and violin"
    assert cond["seconds_start"] == 0 and cond["seconds_total"] == 4.0
    # No video and no audio prompt: the all-zero tensors AudioX's read_video / load_and_process_audio return for
    # None, with a batch axis.
    (video,) = cond["video_prompt"]
    assert video.shape == (1, 4 * 5, 3, 224, 224) and not video.any()
    assert cond["audio_prompt"].shape == (1, 2, 4 * AUDIOX_RATE) and not cond["audio_prompt"].any()

    assert isinstance(out, Audio)
    assert out.sample_rate == AUDIOX_RATE
    assert out.samples.shape == (2, 4 * AUDIOX_RATE)
    assert np.abs(out.samples).max() == pytest.approx(1.0)  # peak-normalised as AudioX's README saves it
    generated = 3.0 * torch.randn((1, 2, AUDIOX_SAMPLE_SIZE), generator=torch.Generator().manual_seed(42))
    expected = generated[0, :, : 4 * AUDIOX_RATE].numpy()
    np.testing.assert_allclose(out.samples, expected / np.abs(expected).max(), rtol=1e-5, atol=1e-6)


def test_audiox_defaults_from_params_and_one_window_max(audiox):
    from personavlog.actors.music import AudioXMusic

    out = AudioXMusic(audiox_conf(negative_prompt="low quality"))(prompt="ambient", seed=0)  # params: 60 s
    call = audiox["generate_diffusion_cond"][0]
    assert call["steps"] == 250 and call["cfg_scale"] == 7.0
    assert call["conditioning"][0]["seconds_total"] == pytest.approx(10.0)  # capped to the window
    assert out.samples.shape == (2, AUDIOX_SAMPLE_SIZE)
    negative = call["negative_conditioning"][0]
    assert negative["text_prompt"] == "low quality" and negative["seconds_total"] == pytest.approx(10.0)


def test_audiox_same_seed_same_music(audiox):
    from personavlog.actors.music import AudioXMusic

    model = AudioXMusic(audiox_conf())
    a, b, c = (model(prompt="p", seconds=1.0, seed=s).samples for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_audiox_bad_inputs(audiox):
    from personavlog.actors.music import AudioXMusic

    model = AudioXMusic(audiox_conf())
    for kwargs, field in (({"seconds": 0}, "seconds"), ({"seed": 2**32}, "seed"), ({"prompt": " "}, "prompt"),
                          ({"steps": 0}, "steps")):
        with pytest.raises(InputError) as err:
            model(**{"prompt": "p", "seed": 0, "seconds": 1.0, **kwargs})
        assert err.value.field == field
    assert audiox["generate_diffusion_cond"] == []


def test_audiox_config_errors(audiox):
    from personavlog.actors.music import AudioXMusic

    with pytest.raises(ConfigError, match="revision"):
        AudioXMusic(ModelConf(kind="audiox", source="HKUSTAudio/AudioX", revision="v2", device="cpu"))
    with pytest.raises(ConfigError, match="no toy build"):
        AudioXMusic(ModelConf(kind="audiox", source="tiny", device="cpu"))
    assert audiox["get_pretrained_model"] == []


def test_audiox_missing_package_says_how_to_install(monkeypatch):
    from personavlog.actors.music import AudioXMusic

    monkeypatch.setitem(sys.modules, "stable_audio_tools", None)  # makes the import fail like an absent package
    with pytest.raises(ConfigError, match="README 'Paper models'") as err:
        AudioXMusic(audiox_conf())
    assert "runtime_env.py_executable" in str(err.value)


# --------------------------------------------------------------------------------------------------------------------
# CosyVoice2 (a checkout with cosyvoice/ and third_party/Matcha-TTS, imported through models.speech.extra.repo_dir)

COSY_RATE = 24_000

# The fake's CosyVoice2 has the current API: prompt speech as a wav path (`prompt_wav`), saved zero-shot speakers.
# Each inference yields the text in two chunks, like the real frontend's sentence split, with seeded noise speech.
_COSYVOICE_CURRENT = '''
import wave

import numpy as np
import torch

CALLS = []


def _read_prompt(path):
    with wave.open(path, "rb") as f:
        info = (f.getnchannels(), f.getsampwidth(), f.getframerate())
        pcm = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
    return info, pcm.astype(np.float32) / 32767.0


def _speech(text):
    n = 1200 * len(text)
    for half in (n // 2, n - n // 2):
        yield {"tts_speech": 0.1 * torch.randn(1, half)}


class CosyVoice2:
    def __init__(self, model_dir, load_jit=False, load_trt=False, load_vllm=False, fp16=False, trt_concurrent=1):
        CALLS.append(("init", dict(model_dir=model_dir, load_jit=load_jit, load_trt=load_trt, load_vllm=load_vllm,
                                   fp16=fp16)))
        self.sample_rate = 24000
        self.spk2info = {"my_zero_shot_spk": {}}

    def list_available_spks(self):
        return list(self.spk2info)

    def inference_sft(self, tts_text, spk_id, stream=False, speed=1.0, text_frontend=True):
        CALLS.append(("sft", dict(tts_text=tts_text, spk_id=spk_id, stream=stream)))
        yield from _speech(tts_text)

    def inference_zero_shot(self, tts_text, prompt_text, prompt_wav, zero_shot_spk_id="", stream=False, speed=1.0,
                            text_frontend=True):
        prompt = _read_prompt(prompt_wav) if prompt_wav else None
        CALLS.append(("zero_shot", dict(tts_text=tts_text, prompt_text=prompt_text, prompt=prompt,
                                        zero_shot_spk_id=zero_shot_spk_id, stream=stream)))
        yield from _speech(tts_text)

    def inference_cross_lingual(self, tts_text, prompt_wav, zero_shot_spk_id="", stream=False, speed=1.0,
                                text_frontend=True):
        CALLS.append(("cross_lingual", dict(tts_text=tts_text, prompt=_read_prompt(prompt_wav), stream=stream)))
        yield from _speech(tts_text)
'''

# The older API (before prompt speech became a path): a 16 kHz tensor `prompt_speech_16k`, no saved zero-shot
# speakers; a default voice goes through inference_sft.
_COSYVOICE_LEGACY = '''
import torch

CALLS = []


def _speech(text):
    yield {"tts_speech": 0.1 * torch.randn(1, 1200 * len(text))}


class CosyVoice2:
    def __init__(self, model_dir, load_jit=False, load_trt=False, fp16=False, use_flow_cache=False):
        CALLS.append(("init", dict(model_dir=model_dir, load_jit=load_jit, load_trt=load_trt, fp16=fp16)))
        self.sample_rate = 24000

    def list_available_spks(self):
        return ["narrator"]

    def inference_sft(self, tts_text, spk_id, stream=False, speed=1.0, text_frontend=True):
        CALLS.append(("sft", dict(tts_text=tts_text, spk_id=spk_id, stream=stream)))
        yield from _speech(tts_text)

    def inference_zero_shot(self, tts_text, prompt_text, prompt_speech_16k, stream=False, speed=1.0,
                            text_frontend=True):
        CALLS.append(("zero_shot", dict(tts_text=tts_text, prompt_text=prompt_text, prompt=prompt_speech_16k,
                                        stream=stream)))
        yield from _speech(tts_text)

    def inference_cross_lingual(self, tts_text, prompt_speech_16k, stream=False, speed=1.0, text_frontend=True):
        CALLS.append(("cross_lingual", dict(tts_text=tts_text, prompt=prompt_speech_16k, stream=stream)))
        yield from _speech(tts_text)
'''


def _write_checkout(root, cosyvoice_source: str) -> None:
    """A CosyVoice checkout layout: cosyvoice/cli/cosyvoice.py and a Matcha-TTS submodule (`matcha` package)."""
    cli = root / "cosyvoice" / "cli"
    cli.mkdir(parents=True)
    (root / "cosyvoice" / "__init__.py").write_text("")
    (cli / "__init__.py").write_text("")
    # The real module imports Matcha-TTS's package at import time, which only resolves via third_party/Matcha-TTS.
    (cli / "cosyvoice.py").write_text("import matcha  # noqa: F401\n" + textwrap.dedent(cosyvoice_source))
    matcha = root / "third_party" / "Matcha-TTS" / "matcha"
    matcha.mkdir(parents=True)
    (matcha / "__init__.py").write_text("")


@pytest.fixture
def cosyvoice_checkout(tmp_path, monkeypatch):
    """Factory: a fake checkout with the chosen API; sys.path and sys.modules are restored after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m.split(".")[0] in ("cosyvoice", "matcha")]:
        monkeypatch.delitem(sys.modules, name)

    def make(source: str = _COSYVOICE_CURRENT):
        repo = tmp_path / "CosyVoice"
        _write_checkout(repo, source)
        model_dir = tmp_path / "CosyVoice2-0.5B"
        model_dir.mkdir()
        return repo, model_dir

    yield make
    for name in [m for m in sys.modules if m.split(".")[0] in ("cosyvoice", "matcha")]:
        del sys.modules[name]


def cosy_conf(repo, model_dir, **params) -> ModelConf:
    return ModelConf(kind="cosyvoice2", source=str(model_dir), device="cpu", extra={"repo_dir": str(repo)},
                     params={"max_seconds": 30.0, **params})


def _calls():
    return sys.modules["cosyvoice.cli.cosyvoice"].CALLS


def _voice(rate: int = 44_100, seconds: float = 1.5) -> Audio:
    t = np.arange(int(rate * seconds)) / rate
    left = 0.4 * np.sin(2 * np.pi * 220.0 * t)
    return Audio(samples=np.stack([left, left]).astype(np.float32), sample_rate=rate)


def test_cosyvoice_loads_once_from_the_checkout(cosyvoice_checkout):
    from personavlog.actors.speech import CosyVoice2Speech

    repo, model_dir = cosyvoice_checkout()
    model = CosyVoice2Speech(cosy_conf(repo, model_dir))
    assert str(repo) in sys.path and str(repo / "third_party" / "Matcha-TTS") in sys.path
    for seed in range(3):
        model(text="Hello.", seed=seed, voice=_voice())
    inits = [c for c in _calls() if c[0] == "init"]
    assert inits == [("init", {"model_dir": str(model_dir), "load_jit": False, "load_trt": False,
                               "load_vllm": False, "fp16": False})]
    assert model.loads == 1 and CosyVoice2Speech.clones_voice is True


def test_cosyvoice_zero_shot_with_transcript_gets_a_16k_mono_wav(cosyvoice_checkout):
    from personavlog.actors.speech import CosyVoice2Speech, resample

    repo, model_dir = cosyvoice_checkout()
    voice = _voice()
    out = CosyVoice2Speech(cosy_conf(repo, model_dir))(text="We reached the summit.", seed=0, voice=voice,
                                                        voice_text="This is my voice.")
    (name, call), = [c for c in _calls() if c[0] != "init"]
    assert name == "zero_shot"
    assert call["tts_text"] == "We reached the summit." and call["prompt_text"] == "This is my voice."
    assert call["stream"] is False and call["zero_shot_spk_id"] == ""
    (channels, width, rate), pcm = call["prompt"]
    assert (channels, width, rate) == (1, 2, 16_000)
    expected = resample(voice.samples.mean(axis=0), voice.sample_rate, 16_000)
    assert pcm.size == expected.size == 24_000
    np.testing.assert_allclose(pcm, expected, atol=1e-4)

    assert out.sample_rate == COSY_RATE
    assert out.samples.shape == (1, 1200 * len("We reached the summit."))  # both chunks, in order


def test_cosyvoice_without_transcript_uses_cross_lingual(cosyvoice_checkout):
    from personavlog.actors.speech import CosyVoice2Speech

    repo, model_dir = cosyvoice_checkout()
    CosyVoice2Speech(cosy_conf(repo, model_dir))(text="Hi.", seed=0, voice=_voice(rate=16_000))
    (name, call), = [c for c in _calls() if c[0] != "init"]
    assert name == "cross_lingual" and call["stream"] is False
    assert call["prompt"][0] == (1, 2, 16_000) and call["prompt"][1].size == 24_000


def test_cosyvoice_default_speaker_is_a_saved_zero_shot_speaker(cosyvoice_checkout):
    from personavlog.actors.speech import CosyVoice2Speech

    repo, model_dir = cosyvoice_checkout()
    out = CosyVoice2Speech(cosy_conf(repo, model_dir, speaker="my_zero_shot_spk"))(text="No sample today.", seed=0)
    (name, call), = [c for c in _calls() if c[0] != "init"]
    assert name == "zero_shot"
    assert call == {"tts_text": "No sample today.", "prompt_text": "", "prompt": None,
                    "zero_shot_spk_id": "my_zero_shot_spk", "stream": False}
    assert out.samples.shape[1] > 0


def test_cosyvoice_legacy_api_gets_a_16k_tensor_and_sft(cosyvoice_checkout):
    from personavlog.actors.speech import CosyVoice2Speech

    repo, model_dir = cosyvoice_checkout(_COSYVOICE_LEGACY)
    model = CosyVoice2Speech(cosy_conf(repo, model_dir, speaker="narrator"))
    model(text="Old API.", seed=0, voice=_voice(rate=48_000, seconds=1.0), voice_text="Sample.")
    model(text="Default voice.", seed=0)
    (_, init), (zs_name, zero_shot), (sft_name, sft) = _calls()
    assert init == {"model_dir": str(model_dir), "load_jit": False, "load_trt": False, "fp16": False}
    assert zs_name == "zero_shot" and zero_shot["prompt_text"] == "Sample."
    prompt = zero_shot["prompt"]
    assert isinstance(prompt, torch.Tensor) and prompt.dtype == torch.float32 and prompt.shape == (1, 16_000)
    assert sft_name == "sft" and sft == {"tts_text": "Default voice.", "spk_id": "narrator", "stream": False}


def test_cosyvoice_seeded_and_capped(cosyvoice_checkout):
    from personavlog.actors.speech import CosyVoice2Speech

    repo, model_dir = cosyvoice_checkout()
    model = CosyVoice2Speech(cosy_conf(repo, model_dir, max_seconds=0.5))
    a, b, c = (model(text="Same text here.", seed=s, voice=_voice()).samples for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (1, 12_000)  # 0.5 s at 24 kHz out of 18 000 generated samples


def test_cosyvoice_input_errors(cosyvoice_checkout):
    from personavlog.actors.speech import CosyVoice2Speech

    repo, model_dir = cosyvoice_checkout()
    model = CosyVoice2Speech(cosy_conf(repo, model_dir))
    with pytest.raises(InputError, match="voice: CosyVoice2 needs a voice sample"):
        model(text="No voice, no speaker.", seed=0)
    with pytest.raises(InputError) as err:
        model(text="", seed=0, voice=_voice())
    assert err.value.field == "text"
    with pytest.raises(InputError) as err:
        model(text="x", seed=0, voice=_voice(), voice_text=5)
    assert err.value.field == "voice_text"
    assert [c for c in _calls() if c[0] != "init"] == []


def test_cosyvoice_config_errors(cosyvoice_checkout):
    from personavlog.actors.speech import CosyVoice2Speech

    repo, model_dir = cosyvoice_checkout()
    with pytest.raises(ConfigError, match="models.speech.params.speaker: 'nobody'.*available: my_zero_shot_spk"):
        CosyVoice2Speech(cosy_conf(repo, model_dir, speaker="nobody"))
    with pytest.raises(ConfigError, match="no toy build"):
        CosyVoice2Speech(ModelConf(kind="cosyvoice2", source="tiny", extra={"repo_dir": str(repo)}))


def test_cosyvoice_missing_package_says_how_to_install(tmp_path, monkeypatch):
    from personavlog.actors.speech import CosyVoice2Speech

    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setitem(sys.modules, "cosyvoice", None)
    with pytest.raises(ConfigError, match="README 'Paper models'") as err:
        CosyVoice2Speech(ModelConf(kind="cosyvoice2", source=str(tmp_path), extra={"repo_dir": str(tmp_path)}))
    assert "Matcha-TTS" in str(err.value)

