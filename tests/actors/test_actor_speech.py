"""VitsSpeech at toy size (transformers' VitsModel, random weights) and the numpy audio helpers the speech adapters
share with the paper models' environments."""

from __future__ import annotations

import wave

import numpy as np
import pytest

from personavlog.actors.media import Audio
from personavlog.engine.errors import ConfigError, InputError

LONG_TEXT = ("Today I walked along the old harbour, watched the boats come in and talked with a fisherman about the "
             "weather, the tides and the best place to eat grilled sardines before the sun went down. ") * 2


@pytest.fixture(scope="module")
def model(tiny_conf):
    from personavlog.actors.speech import VitsSpeech

    return VitsSpeech(tiny_conf("speech"))


def test_speech_is_mono_float_audio(model):
    out = model(text="Hello there, this is my vlog.", seed=0)
    assert isinstance(out, Audio)
    assert out.sample_rate == 16_000
    assert out.samples.dtype == np.float32
    assert out.samples.ndim == 2 and out.samples.shape[0] == 1
    assert out.samples.shape[1] > 1000
    assert np.isfinite(out.samples).all() and np.abs(out.samples).max() <= 1.0


def test_output_is_capped_at_max_seconds(model):
    out = model(text=LONG_TEXT, seed=0)
    assert out.seconds == pytest.approx(3.0)  # tiny.yaml: max_seconds 3.0; the uncapped speech is longer


@pytest.mark.parametrize("text", [",", "}", ":{", "篍", "􅊐", "Family personCJourneyMom TiltWFramMy Black sky篍M"])
def test_toy_speaks_whatever_the_toy_mllm_writes(model, text):
    # Strings the random toy MLLM really wrote as monologues (a lone comma, a CJK character, ...): the embedded default
    # must not fail a job because its toy voice lacks a character.
    out = model(text=text, seed=0)
    assert out.samples.shape[1] > 0 and np.isfinite(out.samples).all()


def test_text_with_nothing_a_real_checkpoint_can_spell_names_the_field(tiny_conf):
    # Real MMS-TTS tokenizers normalize: lower-case, then drop every character missing from the vocabulary. Text with
    # nothing left must fail with the reason, not crash inside VITS on an empty sequence.
    from personavlog.actors.speech import VitsSpeech

    speech = VitsSpeech(tiny_conf("speech"))
    speech.tokenizer.normalize = True
    speech.tokenizer.encoder = {k: v for k, v in speech.tokenizer.encoder.items() if not k.isupper()}
    assert speech(text="Still speakable.", seed=0).samples.shape[1] > 0
    with pytest.raises(InputError, match="text: has no characters this speech model can pronounce"):
        speech(text="篍􅊐", seed=0)


def test_same_seed_same_speech_other_seed_other_speech(model):
    a = model(text="The sea was calm.", seed=5).samples
    b = model(text="The sea was calm.", seed=5).samples
    c = model(text="The sea was calm.", seed=6).samples
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)


def test_seeding_leaves_the_callers_random_state_alone(model):
    import torch

    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    model(text="Hi.", seed=99)
    assert torch.equal(torch.rand(3), expected)


def test_voice_sample_is_ignored_and_declared(model):
    from personavlog.actors.speech import VitsSpeech

    assert VitsSpeech.clones_voice is False
    voice = Audio(samples=np.sin(np.linspace(0, 300, 16_000)).astype(np.float32), sample_rate=16_000)
    with_voice = model(text="Same words.", seed=3, voice=voice, voice_text="hm")
    without = model(text="Same words.", seed=3)
    assert np.array_equal(with_voice.samples, without.samples)


def test_loaded_once_across_calls(model):
    inner = model.model
    for seed in range(3):
        model(text="Again.", seed=seed)
    assert model.loads == 1 and model.model is inner


@pytest.mark.parametrize("kwargs, field", [
    ({"text": ""}, "text"),
    ({"text": "   \n"}, "text"),
    ({"text": 42}, "text"),
    ({"seed": -5}, "seed"),
    ({"language": ""}, "language"),
    ({"voice": b"RIFF"}, "voice"),
])
def test_bad_arguments_name_their_field(model, kwargs, field):
    with pytest.raises(InputError) as err:
        model(**{"text": "hello", "seed": 0, **kwargs})
    assert err.value.field == field


def test_languages_param_rejects_other_languages(tiny_conf):
    from personavlog.actors.speech import VitsSpeech

    english_only = VitsSpeech(tiny_conf("speech", params={"max_seconds": 3.0, "languages": ["en"]}))
    assert english_only(text="fine", seed=0, language="en").samples.size > 0
    with pytest.raises(InputError, match="language: this speech model speaks en, not 'fr'"):
        english_only(text="bonjour", seed=0, language="fr")


@pytest.mark.parametrize("params, needle", [
    ({"max_seconds": 0}, r"models\.speech\.params\.max_seconds"),
    ({"languages": "en"}, r"models\.speech\.params\.languages"),
    ({"max_secs": 3}, "max_secs"),
])
def test_bad_config_params_fail_at_load(tiny_conf, params, needle):
    from personavlog.actors.speech import VitsSpeech

    with pytest.raises(ConfigError, match=needle):
        VitsSpeech(tiny_conf("speech", params=params))


# --- resampling and wav writing (used to hand CosyVoice its 16 kHz prompt) -------------------------------------------


def _tone(freq: float, rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _dominant_freq(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


@pytest.mark.parametrize("src, dst", [(48_000, 16_000), (44_100, 16_000), (8_000, 16_000), (22_050, 24_000)])
def test_resample_keeps_length_pitch_and_level(src, dst):
    from personavlog.actors.speech import resample

    out = resample(_tone(440.0, src), src, dst)
    assert out.dtype == np.float32
    assert out.size == round(src * 1.0 * dst / src)
    assert _dominant_freq(out, dst) == pytest.approx(440.0, abs=2.0)
    middle = out[dst // 10: -dst // 10]  # away from the zero-padded edges
    assert np.abs(middle).max() == pytest.approx(0.5, abs=0.02)


def test_resample_removes_content_above_the_new_nyquist():
    from personavlog.actors.speech import resample

    kept = resample(_tone(6_000.0, 48_000), 48_000, 16_000)
    removed = resample(_tone(11_000.0, 48_000), 48_000, 16_000)  # would alias to 5 kHz
    assert np.sqrt(np.mean(kept[1600:-1600] ** 2)) > 0.3
    assert np.sqrt(np.mean(removed[1600:-1600] ** 2)) < 0.02


def test_resample_identity_and_bad_rates():
    from personavlog.actors.speech import resample

    x = _tone(100.0, 16_000, 0.1)
    assert np.array_equal(resample(x, 16_000, 16_000), x)
    with pytest.raises(ValueError):
        resample(x, 0, 16_000)


def test_write_wav16_is_16bit_mono_pcm(tmp_path):
    from personavlog.actors.speech import write_wav16

    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 2.0], dtype=np.float32)
    path = tmp_path / "p.wav"
    write_wav16(str(path), x, 16_000)
    with wave.open(str(path), "rb") as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate(), f.getnframes()) == (1, 2, 16_000, 6)
        pcm = np.frombuffer(f.readframes(6), dtype="<i2")
    assert pcm.tolist() == [0, 16384, -16384, 32767, -32767, 32767]  # clipped, not wrapped
