"""Calibrated stand-ins for the heavy models (`models=sim`), for running the engine at cluster size on one machine.

A stand-in holds what the real model's actor holds in Ray (GPUs and CPU slots per replica, from the GPU profile in
conf/sim/<gpu>.yaml) and takes the real model's time per call on that GPU, multiplied by the profile's uniform
`time_scale`. Its outputs are tiny but real (a 32x32 image, a few 32x32 frames at the clip's fps, a short tone), so
every stage, the run store and the ffmpeg assembly run unchanged on them.

Stand-ins stay lean on purpose: no torch, no diffusers. A 128-GPU simulation starts ~130 of these actors on one box,
and each one that imported torch would cost hundreds of MB more.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from personavlog.actors.base import ModelHost
from personavlog.actors.media import Audio, VideoClip
from personavlog.actors.calls import check_float, check_image, check_int, check_params, check_seed, check_text, pick
from personavlog.engine.config import ModelConf
from personavlog.engine.errors import ConfigError


# --------------------------------------------------------------------------------------------------------------------
# the GPU profile (conf/sim/*.yaml); schema registered as the `sim` config group


@dataclass
class SimModelTiming:
    """One model's cost on the profile's GPU, in real (uncompressed) seconds."""

    seconds_per_call: float = 0.0  # fixed time of one call
    seconds_per_output_second: float = 0.0  # added per second of produced audio (speech real-time factor)
    num_gpus: float = 0.0  # GPUs one replica holds on this GPU type
    num_cpus: float = 0.0  # CPU slots one replica holds


@dataclass
class SimMLLMTiming:
    """The MLLM endpoint's latency: a fixed part plus decoding time per output token."""

    seconds_per_call: float = 0.0
    seconds_per_output_token: float = 0.0
    tokens_per_string: int = 40  # output tokens a real model spends on one free-text field
    prompt_tokens_per_image: int = 765  # what one input image costs in prompt tokens


@dataclass
class SimConf:
    gpu: str = "H200"  # the GPU type the timings are for
    time_scale: float = 1.0  # simulated seconds = real seconds x time_scale, for every model and the MLLM alike
    jitter: float = 0.0  # per-call deviation, uniform in [-jitter, +jitter] of the call's time, fixed by the call seed
    words_per_second: float = 2.5  # speaking rate that turns a monologue into seconds of speech
    image_edit: SimModelTiming = field(default_factory=SimModelTiming)
    image_to_video: SimModelTiming = field(default_factory=SimModelTiming)
    music: SimModelTiming = field(default_factory=SimModelTiming)
    speech: SimModelTiming = field(default_factory=SimModelTiming)
    mllm: SimMLLMTiming = field(default_factory=SimMLLMTiming)


def as_sim_conf(node: Any) -> SimConf:
    """A SimConf from a mapping or an OmegaConf node (what an actor receives), checked."""
    from omegaconf import OmegaConf

    if isinstance(node, SimConf):
        conf = node
    else:
        if node is None:
            raise ConfigError("sim: missing; models=sim needs a GPU profile (sim=h200 or sim=h20)")
        # Resolve against the composed config first: the profile arrives as interpolations into the `sim` group.
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
        src = OmegaConf.create(plain)
        try:
            conf = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(SimConf), src))
        except Exception as exc:  # noqa: BLE001 - a bad key or type in the profile
            raise ConfigError(f"sim: {str(exc).splitlines()[0]}") from None
    if not conf.time_scale > 0:
        raise ConfigError(f"sim.time_scale: must be > 0, got {conf.time_scale}")
    if not 0 <= conf.jitter < 1:
        raise ConfigError(f"sim.jitter: must be in [0, 1), got {conf.jitter}")
    if not conf.words_per_second > 0:
        raise ConfigError(f"sim.words_per_second: must be > 0, got {conf.words_per_second}")
    return conf


def call_unit(seed: int, *salt: Any) -> float:
    """A number in [-1, 1] fixed by the call's seed and inputs: the same call always takes the same time."""
    h = hashlib.sha256(repr((int(seed),) + salt).encode()).digest()
    return int.from_bytes(h[:8], "big") / float(2**64 - 1) * 2.0 - 1.0


def scaled_seconds(sim: SimConf, timing: SimModelTiming, *, output_seconds: float = 0.0, seed: int = 0,
                   salt: tuple = ()) -> float:
    real = timing.seconds_per_call + timing.seconds_per_output_second * output_seconds
    return max(0.0, real * (1.0 + sim.jitter * call_unit(seed, *salt)) * sim.time_scale)


# --------------------------------------------------------------------------------------------------------------------
# the stand-in models


class _SimModel:
    role = ""
    PARAM_CHECKS: dict[str, Any] = {}

    def __init__(self, conf: ModelConf):
        self.conf = conf
        self.params = check_params(self.role, dict(conf.params), self.PARAM_CHECKS)
        extra = dict(conf.extra or {})
        if "sim" not in extra:
            raise ConfigError(f"models.{self.role}.extra.sim: missing; the sim kind needs the GPU profile "
                              "(conf/models/sim.yaml sets it from the `sim` group)")
        self.sim = as_sim_conf(extra["sim"])
        self.timing: SimModelTiming = getattr(self.sim, self.role)
        self.loads = 1

    def _spend(self, seconds: float) -> None:
        # Sleeping holds the actor (and so its GPUs) exactly as long as the real call would.
        if seconds > 0:
            time.sleep(seconds)


_SIZE_CHECKS = {
    "height": lambda f, v: check_int(f, v, minimum=1, maximum=256),
    "width": lambda f, v: check_int(f, v, minimum=1, maximum=256),
    "steps": lambda f, v: check_int(f, v, minimum=1),
    "guidance": lambda f, v: check_float(f, v, minimum=0.0),
}


def _tinted(image: Any, width: int, height: int, seed: int, prompt: str) -> np.ndarray:
    """The input shrunk to the output size, tinted by seed and prompt: outputs depend on inputs like the real ones."""
    from PIL import Image

    base = np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    u = [call_unit(seed, prompt, c) for c in range(3)]
    tint = np.array([127.5 + 127.5 * x for x in u], dtype=np.float32)
    return np.clip(0.7 * base + 0.3 * tint, 0, 255).astype(np.uint8)


class SimImageEdit(_SimModel):
    """Stands in for Flux-Kontext: same call, a small image back after the real call's time."""

    role = "image_edit"
    PARAM_CHECKS = _SIZE_CHECKS

    def __call__(self, *, image: Any, prompt: str, seed: int, steps: Optional[int] = None,
                 guidance: Optional[float] = None, height: Optional[int] = None, width: Optional[int] = None) -> Any:
        from PIL import Image

        image = check_image("image", image)
        prompt = check_text("prompt", prompt)
        seed = check_seed(seed)
        h = check_int("height", pick(height, self.params, "height", 16), minimum=1, maximum=256)
        w = check_int("width", pick(width, self.params, "width", 16), minimum=1, maximum=256)
        self._spend(scaled_seconds(self.sim, self.timing, seed=seed, salt=(prompt,)))
        return Image.fromarray(_tinted(image, w, h, seed, prompt))


class SimImageToVideo(_SimModel):
    """Stands in for Wan2.1 I2V: a few frames drifting over the keyframe, at the clip's fps."""

    role = "image_to_video"
    PARAM_CHECKS = {**_SIZE_CHECKS,
                    "num_frames": lambda f, v: check_int(f, v, minimum=1, maximum=64),
                    "fps": lambda f, v: check_float(f, v, minimum=1.0),
                    "negative_prompt": lambda f, v: check_text(f, v)}

    def __call__(self, *, image: Any, prompt: str, seed: int, negative_prompt: Optional[str] = None,
                 steps: Optional[int] = None, guidance: Optional[float] = None, num_frames: Optional[int] = None,
                 height: Optional[int] = None, width: Optional[int] = None) -> VideoClip:
        image = check_image("image", image)
        prompt = check_text("prompt", prompt)
        seed = check_seed(seed)
        h = check_int("height", pick(height, self.params, "height", 16), minimum=1, maximum=256)
        w = check_int("width", pick(width, self.params, "width", 16), minimum=1, maximum=256)
        n = check_int("num_frames", pick(num_frames, self.params, "num_frames", 5), minimum=1, maximum=64)
        fps = check_float("fps", self.params.get("fps", 16.0), minimum=1.0)
        self._spend(scaled_seconds(self.sim, self.timing, seed=seed, salt=(prompt,)))
        first = _tinted(image, w, h, seed, prompt)
        frames = np.stack([np.roll(first, t, axis=1) for t in range(n)])
        return VideoClip(frames=frames, fps=fps)


def _tone(seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    n = max(1, int(round(seconds * sample_rate)))
    freq = 220.0 + 220.0 * (call_unit(seed, "tone") + 1.0)
    t = np.arange(n, dtype=np.float32) / float(sample_rate)
    return (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


class SimMusic(_SimModel):
    """Stands in for AudioX / Stable Audio: a tone of the requested length (capped by params.seconds)."""

    role = "music"
    PARAM_CHECKS = {"seconds": lambda f, v: check_float(f, v, minimum=0.1),
                    "sample_rate": lambda f, v: check_int(f, v, minimum=8000),
                    "steps": lambda f, v: check_int(f, v, minimum=1),
                    "guidance": lambda f, v: check_float(f, v, minimum=0.0)}

    def __call__(self, *, prompt: str, seed: int, seconds: Optional[float] = None, steps: Optional[int] = None,
                 guidance: Optional[float] = None) -> Audio:
        prompt = check_text("prompt", prompt)
        seed = check_seed(seed)
        cap = float(self.params.get("seconds", 2.0))
        length = min(check_float("seconds", pick(seconds, self.params, "seconds", cap), minimum=0.1), cap)
        sr = int(self.params.get("sample_rate", 16000))
        self._spend(scaled_seconds(self.sim, self.timing, seed=seed, salt=(prompt,)))
        return Audio(samples=_tone(length, sr, seed), sample_rate=sr)


class SimSpeech(_SimModel):
    """Stands in for CosyVoice2 / VITS. Time follows the monologue's spoken length (real-time factor); the audio
    returned is capped at params.max_seconds to keep files tiny."""

    role = "speech"
    clones_voice = False  # the voice sample is accepted and ignored: no stand-in pretends to clone a voice
    PARAM_CHECKS = {"max_seconds": lambda f, v: check_float(f, v, minimum=0.05),
                    "sample_rate": lambda f, v: check_int(f, v, minimum=8000),
                    "languages": lambda f, v: v}

    def __call__(self, *, text: str, seed: int, language: str = "en", voice: Optional[Audio] = None,
                 voice_text: Optional[str] = None) -> Audio:
        text = check_text("text", text)
        seed = check_seed(seed)
        spoken = len(text.split()) / self.sim.words_per_second + 0.3
        sr = int(self.params.get("sample_rate", 16000))
        length = min(spoken, float(self.params.get("max_seconds", 0.5)))
        self._spend(scaled_seconds(self.sim, self.timing, output_seconds=spoken, seed=seed, salt=(text,)))
        return Audio(samples=_tone(length, sr, seed), sample_rate=sr)


# --------------------------------------------------------------------------------------------------------------------
# the actor host: ModelHost plus the call log a utilization benchmark reads


class SimModelHost(ModelHost):
    """ModelHost that also keeps when each call ran (wall clock), so busy GPU-seconds come from the actors' own
    records rather than from what callers observed."""

    def __init__(self, role: str, conf: Any):
        super().__init__(role, conf)
        self._log: list[tuple[float, float]] = []
        self.num_gpus = float(getattr(getattr(self.conf, "resources", None), "num_gpus", 0.0) or 0.0)

    def call(self, **kwargs: Any) -> Any:
        t0 = time.time()
        try:
            return super().call(**kwargs)
        finally:
            self._log.append((t0, time.time()))

    __call__ = call

    def call_log(self) -> dict[str, Any]:
        return {"name": self.name, "pid": os.getpid(), "num_gpus": self.num_gpus, "calls": list(self._log)}
