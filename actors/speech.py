"""Monologue speech: MMS-TTS (VITS, transformers, PyPI) or the paper's CosyVoice2 (its own Python environment).

Both take the same call. `clones_voice` says whether a given voice sample shapes the output, so the speech stage can
record in the manifest when it did not.
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import wave
from typing import Any

import numpy as np

from personavlog.actors.base import resolve_device, torch_dtype
from personavlog.actors.media import Audio
from personavlog.actors.calls import check_float, check_params, check_seed, check_string, check_text, seeded
from personavlog.engine.config import ModelConf
from personavlog.engine.errors import ConfigError, InputError


def _check_languages(field: str, value: Any) -> list[str]:
    if isinstance(value, str) or not all(isinstance(v, str) and v for v in value):
        raise InputError(field, f"must be a list of language codes, got {value!r}")
    return list(value)


PARAM_CHECKS = {
    # Longest monologue one call returns; longer speech is cut (a shot's monologue is a sentence or two).
    "max_seconds": lambda f, v: check_float(f, v, minimum=0.0, exclusive_minimum=True),
    # Language codes the model speaks; a call in another language fails instead of producing garbled speech.
    # Unset = no check (the model's tokenizer then drops what it cannot spell).
    "languages": _check_languages,
    # CosyVoice2 only: a speaker id registered in the model's spk2info.pt, used when no voice sample is given.
    "speaker": check_string,
}


def _check_call(text: Any, seed: Any, language: Any, voice: Any, voice_text: Any,
                languages: list[str] | None) -> tuple[str, int, str]:
    text = check_text("text", text)
    seed = check_seed(seed)
    if not isinstance(language, str) or not language:
        raise InputError("language", f"must be a language code such as 'en', got {language!r}")
    if languages is not None and language not in languages:
        raise InputError("language", f"this speech model speaks {', '.join(languages)}, not {language!r}")
    if voice is not None and not isinstance(voice, Audio):
        raise InputError("voice", f"must be an Audio sample, got {type(voice).__name__}")
    if voice_text is not None and not isinstance(voice_text, str):
        raise InputError("voice_text", f"must be a string, got {type(voice_text).__name__}")
    return text, seed, language


def _cap(samples: np.ndarray, sample_rate: int, max_seconds: float | None) -> np.ndarray:
    if max_seconds is None:
        return samples
    return samples[..., : int(max_seconds * sample_rate)]


class VitsSpeech:
    """transformers' VitsModel (MMS-TTS), loaded once; one call speaks one text in the model's single voice."""

    clones_voice = False  # VITS has one fixed speaker; a voice sample is accepted and ignored

    def __init__(self, conf: ModelConf):
        import torch

        self.conf = conf
        self.params = check_params("speech", dict(conf.params), PARAM_CHECKS)
        self.device = resolve_device(conf.device)
        if conf.source == "tiny":
            from personavlog.actors.toy import vits_model

            model, tokenizer = vits_model()
        else:
            from transformers import VitsModel, VitsTokenizer

            tokenizer = VitsTokenizer.from_pretrained(conf.source, revision=conf.revision)
            model = VitsModel.from_pretrained(conf.source, revision=conf.revision, torch_dtype=torch_dtype(conf.dtype))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.sample_rate = int(self.model.config.sampling_rate)
        self._torch = torch
        self.loads = 1

    def __call__(self, *, text: str, seed: int, language: str = "en", voice: Audio | None = None,
                 voice_text: str | None = None) -> Audio:
        text, seed, language = _check_call(text, seed, language, voice, voice_text, self.params.get("languages"))
        inputs = self.tokenizer(text, return_tensors="pt")
        ids = inputs["input_ids"]
        # With add_blank the tokenizer returns one pad id even when every character was dropped as unspeakable.
        if ids.numel() == 0 or bool((ids == self.tokenizer.pad_token_id).all()):
            raise InputError("text", "has no characters this speech model can pronounce")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        # VITS draws its durations and prior noise from torch's global generator; a forked, seeded one makes the
        # call reproducible without touching anyone else's random state.
        with seeded(seed, self.device), self._torch.inference_mode():
            waveform = self.model(**inputs).waveform[0]
        samples = waveform.detach().to("cpu", self._torch.float32).numpy()
        return Audio(samples=_cap(samples, self.sample_rate, self.params.get("max_seconds")),
                     sample_rate=self.sample_rate)


# What README "Paper models" says about setting CosyVoice2 up; repeated in the error so the fix is one read away.
_COSYVOICE_INSTALL = (
    "models.speech.kind=cosyvoice2 needs CosyVoice, which is not on PyPI and pins torch 2.3: clone "
    "https://github.com/FunAudioLLM/CosyVoice with --recursive (for third_party/Matcha-TTS), build its own Python "
    "from its requirements.txt plus this package (README 'Paper models'), then set models.speech.extra.repo_dir to the "
    "checkout and models.speech.runtime_env.py_executable to that Python"
)

PROMPT_RATE = 16_000  # CosyVoice's frontend reads prompt speech at 16 kHz (and resamples to 24 kHz itself)


class CosyVoice2Speech:
    """The paper's TTS, CosyVoice2 (FunAudioLLM/CosyVoice2-0.5B), used through CosyVoice's Python API.

    With a voice sample it clones that voice: zero-shot mode when the sample's transcript (`voice_text`) is known,
    cross-lingual mode otherwise (speaker timbre from the sample, no prompt text). Without one it speaks as
    `params.speaker`, a speaker id saved into the model's spk2info.pt (CosyVoice2-0.5B ships none; CosyVoice's
    `add_zero_shot_spk` + `save_spkinfo` create one).
    """

    clones_voice = True

    def __init__(self, conf: ModelConf):
        self.conf = conf
        self.params = check_params("speech", dict(conf.params), PARAM_CHECKS)
        repo_dir = conf.extra.get("repo_dir")
        if repo_dir:
            # CosyVoice is run from a checkout: its package and the Matcha-TTS submodule it imports are not installed.
            for path in (os.path.join(repo_dir, "third_party", "Matcha-TTS"), repo_dir):
                if path not in sys.path:
                    sys.path.insert(0, path)
        try:
            from cosyvoice.cli.cosyvoice import CosyVoice2
        except ImportError as exc:
            raise ConfigError(f"{_COSYVOICE_INSTALL} ({exc})") from None
        import torch

        if conf.source == "tiny":
            raise ConfigError("models.speech.source: CosyVoice2 has no toy build; use models.speech.kind=vits with "
                              "source=tiny")
        model_dir = conf.source
        if not os.path.isdir(model_dir):
            # CosyVoice2 itself would fetch a missing model_dir from ModelScope, ignoring the hub revision we pin.
            from huggingface_hub import snapshot_download

            model_dir = snapshot_download(conf.source, revision=conf.revision)
        fp16 = torch_dtype(conf.dtype) == torch.float16
        self.model = CosyVoice2(model_dir, load_jit=bool(conf.extra.get("load_jit", False)),
                                load_trt=bool(conf.extra.get("load_trt", False)), fp16=fp16)
        self.sample_rate = int(self.model.sample_rate)
        # CosyVoice changed how prompt speech is passed: older releases take a 16 kHz tensor (`prompt_speech_16k`),
        # current ones a path to a wav file (`prompt_wav`) that they load and resample themselves.
        import inspect

        zero_shot = inspect.signature(self.model.inference_zero_shot).parameters
        self.prompt_as_path = "prompt_wav" in zero_shot
        self.saved_speakers = "zero_shot_spk_id" in zero_shot
        self.speaker = self.params.get("speaker") or None
        if self.speaker is not None:
            available = list(self.model.list_available_spks())
            if self.speaker not in available:
                raise ConfigError(f"models.speech.params.speaker: {self.speaker!r} is not in the model's spk2info.pt "
                                  f"(available: {', '.join(available) or 'none'})")
        self._torch = torch
        self.loads = 1

    def __call__(self, *, text: str, seed: int, language: str = "en", voice: Audio | None = None,
                 voice_text: str | None = None) -> Audio:
        text, seed, language = _check_call(text, seed, language, voice, voice_text, self.params.get("languages"))
        if voice is None and self.speaker is None:
            raise InputError("voice", "CosyVoice2 needs a voice sample (the model ships no built-in speakers); give "
                                      "one, or set models.speech.params.speaker to a saved speaker id")
        if voice is not None and voice.samples.shape[1] == 0:
            raise InputError("voice", "is empty")
        self._seed(seed)
        with tempfile.TemporaryDirectory(prefix="cosyvoice-prompt-") as tmp:
            chunks = list(self._synthesize(text, voice, voice_text, tmp))
        if not chunks:
            raise InputError("text", "produced no speech (nothing left after CosyVoice's text normalisation)")
        samples = np.concatenate([_speech_array(c["tts_speech"]) for c in chunks], axis=-1)
        return Audio(samples=_cap(samples, self.sample_rate, self.params.get("max_seconds")),
                     sample_rate=self.sample_rate)

    def _synthesize(self, text: str, voice: Audio | None, voice_text: str | None, tmp: str) -> Any:
        if voice is None:
            if self.saved_speakers:
                # CosyVoice's own example for CosyVoice2: a saved zero-shot speaker replaces prompt text and audio.
                return self.model.inference_zero_shot(text, "", "", zero_shot_spk_id=self.speaker, stream=False)
            return self.model.inference_sft(text, self.speaker, stream=False)
        mono16k = resample(voice.samples.mean(axis=0), voice.sample_rate, PROMPT_RATE)
        if self.prompt_as_path:
            prompt: Any = os.path.join(tmp, "prompt.wav")
            write_wav16(prompt, mono16k, PROMPT_RATE)
        else:
            prompt = self._torch.from_numpy(mono16k.astype(np.float32))[None, :]
        if voice_text and voice_text.strip():
            return self.model.inference_zero_shot(text, voice_text, prompt, stream=False)
        return self.model.inference_cross_lingual(text, prompt, stream=False)

    def _seed(self, seed: int) -> None:
        # CosyVoice samples speech tokens from its LLM with Python's, numpy's and torch's generators (its web demo
        # seeds all three the same way before each call).
        random.seed(seed)
        np.random.seed(seed % 2**32)
        self._torch.manual_seed(seed)
        if self._torch.cuda.is_available():
            self._torch.cuda.manual_seed_all(seed)


def _speech_array(tensor: Any) -> np.ndarray:
    array = tensor.detach().to("cpu").float().numpy()
    return array.reshape(1, -1) if array.ndim != 2 else array[:1]


# --------------------------------------------------------------------------------------------------------------------
# audio plumbing that must also work in the paper models' environments (numpy only: no torchaudio, no scipy)


def resample(samples: np.ndarray, src_rate: int, dst_rate: int, half_width: int = 16) -> np.ndarray:
    """Band-limited resampling of a 1-D signal by windowed-sinc interpolation.

    Each output sample is a Hann-windowed sinc sum over the `2 * half_width` nearest inputs; when downsampling the
    sinc is widened to the output rate so content above the new Nyquist frequency is removed instead of aliased.
    """
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if src_rate <= 0 or dst_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {src_rate} -> {dst_rate}")
    if src_rate == dst_rate or x.size == 0:
        return x.astype(np.float32)
    n_out = round(x.size * dst_rate / src_rate)
    cutoff = min(1.0, dst_rate / src_rate)  # as a fraction of the input Nyquist frequency
    reach = half_width / cutoff  # taps span `half_width` zero crossings of the (possibly widened) sinc
    taps = int(np.ceil(reach))
    out = np.empty(n_out, dtype=np.float64)
    # Blocks bound the (block, 2 * taps) work matrix for long inputs.
    block = max(1, 65536 // (2 * taps + 1))
    offsets = np.arange(-taps + 1, taps + 1)
    padded = np.concatenate([np.zeros(taps), x, np.zeros(taps + 1)])
    for start in range(0, n_out, block):
        t = np.arange(start, min(n_out, start + block)) * (src_rate / dst_rate)
        base = np.floor(t).astype(np.int64)
        idx = base[:, None] + offsets[None, :]
        dist = t[:, None] - idx
        window = np.where(np.abs(dist) < reach, 0.5 + 0.5 * np.cos(np.pi * dist / reach), 0.0)
        kernel = cutoff * np.sinc(cutoff * dist) * window
        out[start:start + len(t)] = np.sum(padded[idx + taps] * kernel, axis=1)
    return out.astype(np.float32)


def write_wav16(path: str, samples: np.ndarray, sample_rate: int) -> None:
    """Mono 16-bit PCM WAV with the standard library's `wave` (the paper models' environments may lack soundfile)."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float64).reshape(-1), -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(path, "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
