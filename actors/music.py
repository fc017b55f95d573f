"""Background music: Stable Audio Open (diffusers, PyPI) or the paper's AudioX (its own Python environment).

Both make at most one model window per call (Stable Audio Open ~47 s, AudioX ~10 s). A longer request returns one full
window instead of failing: the assembler loops music to the vlog's length, and the returned `Audio.seconds` says how
much was made.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from personavlog.actors.base import resolve_device, torch_dtype
from personavlog.actors.media import Audio
from personavlog.actors.calls import check_float, check_int, check_params, check_seed, check_string, check_text, pick
from personavlog.engine.config import ModelConf
from personavlog.engine.errors import ConfigError, InputError

PARAM_CHECKS = {
    "steps": lambda f, v: check_int(f, v, minimum=1),
    "guidance": lambda f, v: check_float(f, v, minimum=0.0),
    "seconds": lambda f, v: check_float(f, v, minimum=0.0, exclusive_minimum=True),
    "negative_prompt": check_string,
}


def _check_seconds(value: Any) -> float:
    return check_float("seconds", value, minimum=0.0, exclusive_minimum=True)


class StableAudioMusic:
    """diffusers' StableAudioPipeline (Stable Audio Open), loaded once; one call makes one stereo clip."""

    def __init__(self, conf: ModelConf):
        import torch
        from diffusers import StableAudioPipeline

        self.conf = conf
        self.params = check_params("music", dict(conf.params), PARAM_CHECKS)
        self.device = resolve_device(conf.device)
        if conf.source == "tiny":
            from personavlog.actors.toy import stable_audio_components

            pipe = StableAudioPipeline(**stable_audio_components())
        else:
            pipe = StableAudioPipeline.from_pretrained(conf.source, revision=conf.revision,
                                                       torch_dtype=torch_dtype(conf.dtype))
        self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.sample_rate = int(self.pipe.vae.config.sampling_rate)
        window = float(self.pipe.transformer.config.sample_size) * self.pipe.vae.hop_length / self.sample_rate
        # The duration conditioning is clamped to the projection model's range; beyond it the model cannot be told
        # the length, so that range bounds a call too.
        self.max_seconds = min(window, float(self.pipe.projection_model.config.max_value))
        self._torch = torch
        self.loads = 1

    def __call__(self, *, prompt: str, seconds: float | None = None, seed: int, steps: int | None = None,
                 guidance: float | None = None) -> Audio:
        prompt = check_text("prompt", prompt)
        seconds = _check_seconds(pick(seconds, self.params, "seconds", 10.0))
        seed = check_seed(seed)
        steps = check_int("steps", pick(steps, self.params, "steps", 100), minimum=1)
        guidance = check_float("guidance", pick(guidance, self.params, "guidance", 7.0), minimum=0.0)
        seconds = min(seconds, self.max_seconds)

        generator = self._torch.Generator(self.device).manual_seed(seed)
        with warnings.catch_warnings():
            # torchsde's Brownian tree warns on every call that the final sigma (0) lies below its interval; that is
            # how Stable Audio's scheduler is set up, not a problem with this call.
            warnings.filterwarnings("ignore", message="Should have", module="torchsde")
            result = self.pipe(
                prompt=prompt,
                negative_prompt=self.params.get("negative_prompt"),
                audio_start_in_s=0.0,
                audio_end_in_s=seconds,
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generator,
                output_type="pt",
            )
        samples = result.audios[0].detach().to("cpu", self._torch.float32).numpy()  # (channels, samples)
        return Audio(samples=samples, sample_rate=self.sample_rate)


# What README "Paper models" says about setting AudioX up; repeated in the error so the fix is one read away.
_AUDIOX_INSTALL = (
    "models.music.kind=audiox needs AudioX (module stable_audio_tools), which is not on PyPI and pins torch 2.4: "
    "build its own Python (README 'Paper models': python3.8 -m venv /opt/audiox && /opt/audiox/bin/pip install "
    "git+https://github.com/ZeyueT/AudioX.git plus this package) and point models.music.runtime_env.py_executable at "
    "it, or use models=open (Stable Audio Open)"
)


class AudioXMusic:
    """The paper's music model, AudioX (HKUSTAudio/AudioX), used through its own Python API.

    Text-to-music only: AudioX's conditioner always expects video and audio prompts, so this passes the same all-zero
    tensors AudioX's own helpers return when no video or audio file is given.
    """

    def __init__(self, conf: ModelConf):
        try:
            from stable_audio_tools import get_pretrained_model
            from stable_audio_tools.inference.generation import generate_diffusion_cond
        except ImportError as exc:
            raise ConfigError(f"{_AUDIOX_INSTALL} ({exc})") from None
        import torch

        if conf.source == "tiny":
            raise ConfigError("models.music.source: AudioX has no toy build; use models.music.kind=stable_audio with "
                              "source=tiny")
        if conf.revision not in (None, "main"):
            # get_pretrained_model downloads config.json and the checkpoint from the hub's main branch only.
            raise ConfigError(f"models.music.revision: AudioX's get_pretrained_model always loads the hub's main "
                              f"branch, so revision {conf.revision!r} cannot be honoured; remove it or set it to main")
        self.conf = conf
        self.params = check_params("music", dict(conf.params), PARAM_CHECKS)
        self.device = resolve_device(conf.device)
        model, model_config = get_pretrained_model(conf.source)
        self.model_config = dict(model_config)
        try:
            self.sample_rate = int(self.model_config["sample_rate"])
            self.sample_size = int(self.model_config["sample_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"models.music.source: {conf.source!r} model_config lacks sample_rate/sample_size "
                              f"({exc})") from None
        # AudioX's read_video samples the video prompt at this rate; its released configs set it, 5 otherwise.
        self.video_fps = float(self.model_config.get("video_fps", 5))
        self.max_seconds = self.sample_size / self.sample_rate
        self.dtype = torch_dtype(conf.dtype)
        self.model = model.to(self.device).eval().requires_grad_(False)
        if self.dtype != torch.float32:
            self.model = self.model.to(self.dtype)
        self._generate = generate_diffusion_cond
        self._torch = torch
        self.loads = 1

    def __call__(self, *, prompt: str, seconds: float | None = None, seed: int, steps: int | None = None,
                 guidance: float | None = None) -> Audio:
        prompt = check_text("prompt", prompt)
        seconds = _check_seconds(pick(seconds, self.params, "seconds", 10.0))
        seed = check_seed(seed)
        if seed > 2**32 - 1:
            raise InputError("seed", f"AudioX takes a 32-bit seed (0..{2**32 - 1}), got {seed}")
        steps = check_int("steps", pick(steps, self.params, "steps", 250), minimum=1)
        guidance = check_float("guidance", pick(guidance, self.params, "guidance", 7.0), minimum=0.0)
        seconds = min(seconds, self.max_seconds)

        torch = self._torch
        # The same tensors AudioX's read_video(None, ...) and load_and_process_audio(None, ...) return: no video
        # frames (T, 3, 224, 224) and silent stereo audio, each with a batch axis added as in AudioX's README.
        # Cast like AudioX's Gradio app does, so a half-precision model gets half-precision prompts.
        video = torch.zeros((int(seconds * self.video_fps), 3, 224, 224), device=self.device, dtype=self.dtype)
        audio_prompt = torch.zeros((2, int(self.sample_rate * seconds)), device=self.device, dtype=self.dtype)
        conditioning = [{
            "video_prompt": [video.unsqueeze(0)],
            "text_prompt": prompt,
            "audio_prompt": audio_prompt.unsqueeze(0),
            "seconds_start": 0,
            "seconds_total": seconds,
        }]
        negative = self.params.get("negative_prompt")
        negative_conditioning = None
        if negative:
            negative_conditioning = [{**conditioning[0], "text_prompt": negative}]
        output = self._generate(
            self.model,
            steps=steps,
            cfg_scale=guidance,
            conditioning=conditioning,
            negative_conditioning=negative_conditioning,
            sample_size=self.sample_size,
            sigma_min=0.3,
            sigma_max=500,
            sampler_type="dpmpp-3m-sde",
            device=self.device,
            seed=seed,
        )
        return _audiox_to_audio(output, self.sample_rate, round(seconds * self.sample_rate))


def _audiox_to_audio(output: Any, sample_rate: int, length: int) -> Audio:
    """AudioX's (batch, channels, samples) output -> the first item, cut to `length`, peak-normalised as AudioX's
    README does before saving (its latent decoder does not bound the level)."""
    samples = output[0].detach().to("cpu").float().numpy()[:, :length]
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    if peak > 0.0:
        samples = samples / peak
    return Audio(samples=samples.astype(np.float32), sample_rate=sample_rate)
