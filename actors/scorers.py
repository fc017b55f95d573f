"""Quality scorers for the Feedback & Rollback Mechanism (paper eqs. 7–11).

`QualityScorer` hosts every model the FRM measures with and is meant to run as one Ray actor (small enough to share
a GPU through fractional `num_gpus`):

- `image_scores` -> m_i2i (CLIP cosine keyframe vs stylized reference) and m_i2t (CLIP cosine keyframe vs its
  storyboard text), negative cosines clipped to 0 so every score lies in [0, 1];
- `video_scores` -> the six VBench scores, each on [0, 1]: subject_consistency (DINO), background_consistency (CLIP),
  motion_smoothness (flow-based frame interpolation), dynamic_degree (RAFT; 0.0 or 1.0 per video),
  aesthetic_quality (CLIP ViT-L/14 + LAION linear head / 10), imaging_quality (MUSIQ / 100).

Scores follow the published VBench definitions but are NOT comparable in absolute value to VBench's: motion
smoothness uses our RAFT-based midpoint interpolator instead of VBench's AMT-S (not packaged), consistency crops and
resizes may differ, and the toy sizes use random weights. The FRM only compares a clip with its own regeneration
under the same scorer, where relative values are what matters.

Weights are read once, at construction, and only from LOCAL paths named in `ScorerConf`; nothing is downloaded.
A sub-model whose weights path is null gets random weights (seeded), which is allowed only when
`allow_random_weights` is true: the toy config, and benchmarks (compute cost does not depend on weight values).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from personavlog.engine.config import ResourcesConf
from personavlog.engine.errors import ConfigError, InputError, StageError
from personavlog.engine.frm_rule import IMAGE_SCORE_KEYS, VIDEO_SCORE_KEYS

# Toy architectures: the same model classes as the real ones at a size that runs in milliseconds on a CPU.
# vocab_size stays at CLIP's 49408 because the tokenizer is open_clip's bundled BPE vocabulary.
TOY_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TOY_DINO: dict[str, Any] = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "intermediate_size": 64, "image_size": 32, "patch_size": 8}
TOY_IMAGING: dict[str, Any] = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


@dataclass
class ClipConf:
    arch: str = "custom"  # open_clip model name (e.g. ViT-B-32, ViT-L-14-quickgelu), or custom = built from `config`
    weights: Optional[str] = None  # local open_clip checkpoint file or local-dir folder; null = random init
    config: Optional[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(TOY_CLIP))  # arch custom only


@dataclass
class AestheticHeadConf:
    weights: Optional[str] = None  # LAION aesthetic predictor linear head (state dict: weight, bias); null = random


@dataclass
class DinoConf:
    weights: Optional[str] = None  # local folder of a transformers ViTModel (e.g. a copy of facebook/dino-vitb16)
    config: Optional[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(TOY_DINO))  # ViTConfig kwargs,
    # used only when weights is null (null = ViTConfig defaults = the ViT-B/16 architecture)


@dataclass
class RaftConf:
    arch: str = "raft_small"  # raft_small | raft_large (torchvision)
    weights: Optional[str] = None  # torchvision RAFT state dict file (e.g. raft_large_C_T_SKHT_V2-ff5fadd5.pth)
    num_flow_updates: int = 2  # RAFT refinement iterations (torchvision default 12)
    min_side: int = 128  # RAFT needs inputs of at least 128 px; smaller frames are upscaled
    max_side: Optional[int] = None  # frames whose longer side exceeds this are downscaled for flow; null = never
    zero_flow_head: bool = True  # random-init only: zero the flow head's output so the toy predicts no motion
    batch_size: int = 8  # frame pairs per RAFT forward (its correlation volume grows with the square of the area)


@dataclass
class ImagingConf:
    arch: str = "toy_vit"  # musiq (pyiqa's MUSIQ architecture; extra `scorers`) | toy_vit (ToyImagingQuality, not MUSIQ)
    weights: Optional[str] = None  # MUSIQ checkpoint (pyiqa's musiq_spaq_ckpt-358bb6af.pth); null = random
    max_side: Optional[int] = 512  # longer side scaled down to this before scoring (VBench: 512)
    config: Optional[dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(TOY_IMAGING))  # architecture
    # kwargs (MUSIQ or timm VisionTransformer); null = MUSIQ's published defaults


@dataclass
class ScorerConf:
    """Which models the quality scorer loads, from where, and how it runs. Defaults = the toy (tiny) scorer."""

    device: str = "auto"  # auto = cuda when available, else cpu
    dtype: str = "float32"  # CLIP and DINO; RAFT, MUSIQ and the aesthetic head always run in float32
    seed: int = 0  # random init of every sub-model whose weights are null
    batch_size: int = 16  # frames per forward pass
    allow_random_weights: bool = True  # false = every weights path must be set (production)
    weights_root: Optional[str] = None  # relative weights paths are resolved against this folder
    dynamic_fps: float = 8.0  # frame rate the dynamic degree subsamples to (VBench: ~8 fps)
    clip: ClipConf = field(default_factory=ClipConf)  # m_i2i / m_i2t
    background_clip: ClipConf = field(default_factory=ClipConf)  # background consistency (VBench: ViT-B/32)
    aesthetic_clip: ClipConf = field(default_factory=ClipConf)  # aesthetic features (VBench: ViT-L/14)
    aesthetic_head: AestheticHeadConf = field(default_factory=AestheticHeadConf)
    dino: DinoConf = field(default_factory=DinoConf)  # subject consistency
    raft: RaftConf = field(default_factory=RaftConf)  # dynamic degree and motion smoothness
    imaging: ImagingConf = field(default_factory=ImagingConf)  # imaging quality
    resources: ResourcesConf = field(default_factory=ResourcesConf)  # Ray actor options (fractional GPUs welcome)


CONF_DIR = Path(__file__).resolve().parent.parent / "conf" / "scorers"


def as_scorer_conf(conf: Any = None) -> ScorerConf:
    """A validated `ScorerConf` from a ScorerConf, a mapping, an OmegaConf node, or None (= the toy defaults)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(conf, ScorerConf):
        return conf
    if conf is None:
        return ScorerConf()
    try:
        node = conf if OmegaConf.is_config(conf) else OmegaConf.create(dict(conf))
        node = OmegaConf.masked_copy(node, [k for k in node if k != "defaults"]) if "defaults" in node else node
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ScorerConf), node))  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise ConfigError(f"scorers: {exc}") from exc


def load_scorer_conf(name: str = "tiny", overrides: Optional[Mapping[str, Any] | list[str]] = None) -> ScorerConf:
    """Read conf/scorers/<name>.yaml (or a YAML path) and apply overrides (a mapping or dotlist 'a.b=c')."""
    from omegaconf import OmegaConf

    path = Path(name) if name.endswith((".yaml", ".yml")) else CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"scorers: no scorer config {name!r} (looked for {path})")
    node = OmegaConf.load(path)
    if overrides:
        extra = OmegaConf.from_dotlist(list(overrides)) if isinstance(overrides, list) else OmegaConf.create(
            dict(overrides))
        node = OmegaConf.merge(node, extra)
    return as_scorer_conf(node)


class QualityScorer:
    """Hosts the FRM's scoring models; loads each once, at construction."""

    def __init__(self, conf: Any = None):
        from personavlog.actors import scorer_models as sm
        from personavlog.actors.base import resolve_device, torch_dtype

        self.conf = conf = as_scorer_conf(conf)
        if conf.batch_size < 1:
            raise ConfigError("scorers.batch_size: must be >= 1")
        if not (conf.dynamic_fps > 0):
            raise ConfigError("scorers.dynamic_fps: must be > 0")
        self.device = resolve_device(conf.device)
        try:
            dtype = torch_dtype(conf.dtype)
        except ValueError as exc:
            raise ConfigError(f"scorers.{exc}") from exc
        if conf.raft.batch_size < 1:
            raise ConfigError("scorers.raft.batch_size: must be >= 1")
        self._sm = sm
        # every path is checked before any model is built: a typo must not cost a minute of loading first
        weights = {role: self._weights(role, getattr(conf, role).weights) for role in
                   ("clip", "background_clip", "aesthetic_clip", "aesthetic_head", "dino", "raft", "imaging")}
        if weights["raft"] and conf.raft.zero_flow_head:
            raise ConfigError("scorers.raft.zero_flow_head: only for random-init RAFT; set it false with weights")
        t0 = time.perf_counter()

        clips: dict[str, Any] = {}  # identical CLIP entries share one instance (the toy config uses one for all)

        def clip(role: str) -> Any:
            c: ClipConf = getattr(conf, role)
            key = repr((c.arch, weights[role], c.config))
            if key not in clips:
                clips[key] = sm.ClipEncoder(arch=c.arch, weights=weights[role], config=dict(c.config or {}),
                                            device=self.device, dtype=dtype, seed=conf.seed, field=f"scorers.{role}")
            return clips[key]

        self.clip = clip("clip")
        self.background_clip = clip("background_clip")
        self.aesthetic_clip = clip("aesthetic_clip")
        self.aesthetic_head = sm.AestheticHead.build(
            in_features=self.aesthetic_clip.image_embed_dim, weights=weights["aesthetic_head"], device=self.device,
            seed=conf.seed, field="scorers.aesthetic_head")
        self.dino = sm.DinoEncoder(weights=weights["dino"], config=dict(conf.dino.config or {}), device=self.device,
                                   dtype=dtype, seed=conf.seed, field="scorers.dino")
        self.raft = sm.FlowEstimator(arch=conf.raft.arch, weights=weights["raft"],
                                     num_flow_updates=conf.raft.num_flow_updates, min_side=conf.raft.min_side,
                                     max_side=conf.raft.max_side, zero_flow_head=conf.raft.zero_flow_head,
                                     device=self.device, seed=conf.seed, field="scorers.raft")
        self.imaging = sm.ImagingQualityModel(arch=conf.imaging.arch, weights=weights["imaging"],
                                              config=dict(conf.imaging.config or {}), max_side=conf.imaging.max_side,
                                              device=self.device, seed=conf.seed, field="scorers.imaging")
        self.load_seconds = time.perf_counter() - t0
        self.calls = 0

    def _weights(self, role: str, path: Optional[str]) -> Optional[str]:
        if path is None:
            if not self.conf.allow_random_weights:
                raise ConfigError(f"scorers.{role}.weights: required (allow_random_weights is false)")
            return None
        path = os.path.expanduser(path)
        if not os.path.isabs(path) and self.conf.weights_root:
            path = os.path.join(os.path.expanduser(self.conf.weights_root), path)
        if not os.path.exists(path):
            raise ConfigError(f"scorers.{role}.weights: no such local file or folder: {path}")
        return path

    # -- bookkeeping ------------------------------------------------------------------------------------------

    @property
    def loads(self) -> dict[str, int]:
        """How many times each sub-model's weights were loaded (1 per instance; shared CLIPs count once)."""
        return {"clip": self.clip.loads, "background_clip": self.background_clip.loads,
                "aesthetic_clip": self.aesthetic_clip.loads, "aesthetic_head": self.aesthetic_head.loads,
                "dino": self.dino.loads, "raft": self.raft.loads, "imaging": self.imaging.loads}

    def info(self) -> dict[str, Any]:
        return {"device": self.device, "load_seconds": round(self.load_seconds, 3), "calls": self.calls,
                "loads": self.loads, "imaging_arch": self.conf.imaging.arch, "raft_arch": self.conf.raft.arch}

    def check_health(self) -> bool:
        """Raise `StageError` when the scorer cannot score (used by Ray / Serve health checks)."""
        if self.device.startswith("cuda"):
            import torch

            try:
                torch.cuda.synchronize()
            except RuntimeError as exc:  # a sticky CUDA error poisons every later call on this actor
                raise StageError(f"quality scorer: CUDA device unusable: {exc}") from exc
        return True

    def __call__(self, **kwargs: Any) -> dict[str, float]:
        """One entry point for ModelHost-style callers: frames=... -> video scores, image=... -> image scores."""
        if "frames" in kwargs and "image" in kwargs:
            raise InputError("frames", "pass either frames (video scores) or image (image scores), not both")
        if "frames" in kwargs:
            return self.video_scores(**kwargs)
        if "image" in kwargs:
            return self.image_scores(**kwargs)
        raise InputError("frames", "nothing to score: pass frames=... or image=...")

    # -- image scores ------------------------------------------------------------------------------------------

    def image_scores(self, *, image: Any, reference: Any, text: str) -> dict[str, float]:
        """{"m_i2i": CLIP cos(keyframe, stylized reference), "m_i2t": CLIP cos(keyframe, storyboard text)}."""
        a = _image_tensor(image, "image")
        b = _image_tensor(reference, "reference")
        if not isinstance(text, str) or not text.strip():
            raise InputError("text", "storyboard text must be a non-empty string")
        import torch

        # encoded one at a time: keyframe and reference may differ in size
        feats = torch.cat([self.clip.encode_images(x, self.conf.batch_size) for x in (a, b)])
        text_feat = self.clip.encode_texts([text])
        self.calls += 1
        out = {"m_i2i": _unit(float((feats[0] * feats[1]).sum())),
               "m_i2t": _unit(float((feats[0] * text_feat[0]).sum()))}
        assert tuple(out) == IMAGE_SCORE_KEYS
        return out

    # -- video scores ------------------------------------------------------------------------------------------

    def video_scores(self, *, frames: np.ndarray, fps: float) -> dict[str, float]:
        """The six VBench scores of one clip, each in [0, 1]."""
        x = self._frames(frames, fps)
        self.calls += 1
        out = {
            "subject_consistency": self._subject(x),
            "background_consistency": self._background(x),
            "motion_smoothness": self._smoothness(x),
            "dynamic_degree": self._dynamic(x, float(fps)),
            "aesthetic_quality": self._aesthetic(x),
            "imaging_quality": self._imaging(x),
        }
        assert tuple(out) == VIDEO_SCORE_KEYS
        return out

    # Each score alone (benchmarks time them separately; the FRM calls video_scores).
    def subject_consistency(self, *, frames: np.ndarray, fps: float) -> float:
        return self._subject(self._frames(frames, fps))

    def background_consistency(self, *, frames: np.ndarray, fps: float) -> float:
        return self._background(self._frames(frames, fps))

    def motion_smoothness(self, *, frames: np.ndarray, fps: float) -> float:
        return self._smoothness(self._frames(frames, fps))

    def dynamic_degree(self, *, frames: np.ndarray, fps: float) -> float:
        return self._dynamic(self._frames(frames, fps), float(fps))

    def aesthetic_quality(self, *, frames: np.ndarray, fps: float) -> float:
        return self._aesthetic(self._frames(frames, fps))

    def imaging_quality(self, *, frames: np.ndarray, fps: float) -> float:
        return self._imaging(self._frames(frames, fps))

    def _frames(self, frames: Any, fps: Any):
        if not isinstance(frames, np.ndarray):
            raise InputError("frames", f"expected a numpy array, got {type(frames).__name__}")
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise InputError("frames", f"expected (T,H,W,3) uint8, got {frames.shape} {frames.dtype}")
        if frames.shape[0] < 3:
            raise InputError("frames", f"need at least 3 frames (motion smoothness drops every other), got "
                                       f"{frames.shape[0]}")
        if min(frames.shape[1:3]) < 32:
            raise InputError("frames", f"frames must be at least 32x32, got {frames.shape[2]}x{frames.shape[1]}")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise InputError("fps", f"expected a positive frame rate, got {fps!r}")
        # frames stay on the host; each model moves one batch at a time so long clips fit next to the weights
        return self._sm.frames_to_tensor(frames, "cpu")

    def _subject(self, x) -> float:
        return self._sm.consistency_from_features(self.dino.encode_images(x, self.conf.batch_size))

    def _background(self, x) -> float:
        return self._sm.consistency_from_features(self.background_clip.encode_images(x, self.conf.batch_size))

    def _smoothness(self, x) -> float:
        sm = self._sm
        import torch

        # Drop the odd frames and rebuild each one from its two even neighbours.
        odd = torch.arange(1, x.shape[0] - 1, 2)
        errors: list[float] = []
        for sl in sm.batches(len(odd), self.conf.batch_size):
            idx = odd[sl]
            before, after, truth = x[idx - 1], x[idx + 1], x[idx]
            pair_a = torch.cat([before, after])
            pair_b = torch.cat([after, before])
            flows = self.raft.flow(pair_a, pair_b, self.conf.raft.batch_size, out_size=tuple(x.shape[-2:]))
            n = len(idx)
            with torch.inference_mode():
                mid = sm.interpolate_midpoint(before.to(self.device), after.to(self.device), flows[:n], flows[n:])
                # compare on the 0–255 grid, as if the reconstruction had been written out as 8-bit frames
                err = ((mid * 255).round() - (truth.to(self.device) * 255).round()).abs().mean(dim=(1, 2, 3))
            errors.extend(err.cpu().tolist())
        return sm.smoothness_from_errors(errors)

    def _dynamic(self, x, fps: float) -> float:
        sm = self._sm
        step = sm.dynamic_subsample_step(fps, x.shape[0], self.conf.dynamic_fps)
        sub = x[::step]
        flows = self.raft.flow(sub[:-1], sub[1:], self.conf.raft.batch_size)
        peaks = sm.top_fraction_mean(flows.norm(dim=1), 0.05).cpu().tolist()
        h, w = flows.shape[-2:]  # threshold scales with the size the flow was measured at
        return sm.dynamic_from_peaks(peaks, h, w)

    def _aesthetic(self, x) -> float:
        import torch

        feats = self.aesthetic_clip.encode_images(x, self.conf.batch_size)
        with torch.inference_mode():
            per_frame = self.aesthetic_head(feats.to(self.device)) / 10.0
        return _unit(float(per_frame.mean()))

    def _imaging(self, x) -> float:
        return _unit(float(self.imaging.score_frames(x, self.conf.batch_size).mean()))


def _image_tensor(image: Any, field_name: str):
    from PIL import Image

    import torch

    if not isinstance(image, Image.Image):
        raise InputError(field_name, f"expected a PIL image, got {type(image).__name__}")
    if min(image.size) < 1:
        raise InputError(field_name, f"empty image {image.size}")
    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def _unit(value: float) -> float:
    """Clip a score onto [0, 1]; NaN stays NaN so the FRM rule sees an unjudged output and rolls back."""
    if math.isnan(value):
        return value
    return min(1.0, max(0.0, value))
