"""Torch side of the FRM quality scorers: the sub-models and the score arithmetic.

Implemented from the published metric definitions (VBench paper; summary in
/work/shared/reference/vbench-metrics.md), not from VBench's code. `personavlog.actors.scorers` holds the config
and the host class; this module is imported only when a scorer is built, so config code never pays for torch.

Pure helpers (`consistency_from_features`, `dynamic_from_peaks`, `interpolate_midpoint`, ...) are separate from the
networks so their arithmetic can be tested with known answers, independently of any weights.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from personavlog.engine.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINO was trained with ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------------------------
# tensors in, tensors out


def frames_to_tensor(frames: np.ndarray, device: str) -> torch.Tensor:
    """(T,H,W,3) uint8 -> (T,3,H,W) float32 in [0,1] on `device`."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).to(device)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def resize(x: torch.Tensor, height: int, width: int, mode: str = "bicubic") -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x
    antialias = mode in ("bilinear", "bicubic")
    out = F.interpolate(x, size=(height, width), mode=mode, align_corners=False, antialias=antialias)
    return out.clamp_(0.0, 1.0) if mode == "bicubic" else out  # bicubic overshoots outside [0,1]


def resize_shorter_side(x: torch.Tensor, size: int, multiple: int = 1) -> torch.Tensor:
    """Scale so the shorter side is `size`, aspect kept, the longer side rounded to a multiple of `multiple`."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = (round(h * scale), round(w * scale))
    nh, nw = max(multiple, round(nh / multiple) * multiple), max(multiple, round(nw / multiple) * multiple)
    return resize(x, nh, nw)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# ----------------------------------------------------------------------------------------------------------------
# score arithmetic (no networks)


def consistency_from_features(features: torch.Tensor) -> float:
    """VBench subject/background consistency from per-frame features (T, D).

    s_i = ½[max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))] for i >= 1, averaged over i.
    """
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features: expected (T>=2, D), got {tuple(features.shape)}")
    f = F.normalize(features.float(), dim=-1)  # again in float32: half-precision features drift from unit length
    to_prev = (f[1:] * f[:-1]).sum(-1).clamp(min=0.0)
    to_first = (f[1:] * f[:1]).sum(-1).clamp(min=0.0)
    return float(((to_prev + to_first) / 2).mean().clamp(0.0, 1.0))


def top_fraction_mean(magnitudes: torch.Tensor, fraction: float = 0.05) -> torch.Tensor:
    """Per sample, the mean of the largest `fraction` of values. (N, ...) -> (N,)."""
    flat = magnitudes.reshape(magnitudes.shape[0], -1)
    k = max(1, int(flat.shape[1] * fraction))
    return flat.topk(k, dim=1).values.mean(dim=1)


def dynamic_from_peaks(peaks: Sequence[float], height: int, width: int) -> float:
    """VBench dynamic degree of one video from its per-pair peak flow magnitudes (pixels, at `height` x `width`).

    A pair moves if its peak exceeds 6·min(H,W)/256; the video is dynamic (1.0) if at least round(4n/16) of its n
    pairs move. We require at least one moving pair: for n <= 2 the published count round(4n/16) is 0, which would
    call a perfectly still 2- or 3-frame clip dynamic.
    """
    n = len(peaks)
    if n == 0:
        raise ValueError("peaks: at least one frame pair is needed")
    threshold = 6.0 * min(height, width) / 256.0
    moving = sum(1 for p in peaks if p > threshold)
    needed = max(1, round(4 * n / 16))
    return 1.0 if moving >= needed else 0.0


def dynamic_subsample_step(fps: float, num_frames: int, target_fps: float = 8.0) -> int:
    """Stride that brings the clip to about `target_fps`, while keeping at least two frames."""
    step = max(1, round(fps / target_fps))
    return max(1, min(step, num_frames - 1))


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """out(x) = image(x + flow(x)), bilinear, borders repeated. image (N,C,H,W), flow (N,2,H,W) in pixels (dx, dy)."""
    _, _, h, w = image.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=image.device, dtype=flow.dtype),
                            torch.arange(w, device=image.device, dtype=flow.dtype), indexing="ij")
    x = xs.unsqueeze(0) + flow[:, 0]
    y = ys.unsqueeze(0) + flow[:, 1]
    # align_corners=True maps -1/+1 to the centres of the corner pixels, i.e. pixel index 0 and size-1
    gx = 2.0 * x / max(w - 1, 1) - 1.0
    gy = 2.0 * y / max(h - 1, 1) - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


def interpolate_midpoint(a: torch.Tensor, b: torch.Tensor, flow_ab: torch.Tensor, flow_ba: torch.Tensor
                         ) -> torch.Tensor:
    """Frame halfway between `a` and `b` from their bidirectional flows (linear-motion assumption).

    Flows from the unknown midpoint t=½ back to each end are approximated from the end-to-end flows
    (F_t→a ≈ ¼(F_b→a − F_a→b), F_t→b ≈ −F_t→a), both ends are backward-warped to t, and the two are averaged.
    """
    flow_ta = 0.25 * (flow_ba - flow_ab)
    flow_tb = -flow_ta
    return 0.5 * (backward_warp(a, flow_ta) + backward_warp(b, flow_tb))


def smoothness_from_errors(mean_abs_errors_255: Sequence[float]) -> float:
    """(255 − mean |original − reconstruction|) / 255 over the reconstructed frames, errors on the 0–255 scale."""
    if len(mean_abs_errors_255) == 0:
        raise ValueError("errors: at least one reconstructed frame is needed")
    err = float(np.mean(mean_abs_errors_255))
    return min(1.0, max(0.0, (255.0 - err) / 255.0))


# ----------------------------------------------------------------------------------------------------------------
# weight files


def load_state_dict(path: str, field: str) -> dict[str, torch.Tensor]:
    """A plain tensor state dict from a local file. `weights_only=True`: a checkpoint must never run code."""
    if not os.path.isfile(path):
        raise ConfigError(f"{field}: weight file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path, device="cpu")
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing to the user
            raise ConfigError(f"{field}: cannot read {path} as a tensor state dict ({exc})") from exc
    for wrapper in ("state_dict", "params", "model"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ConfigError(f"{field}: {path} holds a {type(state).__name__}, not a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def load_into(module: nn.Module, path: str, field: str) -> None:
    state = load_state_dict(path, field)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"{field}: {path} does not fit {type(module).__name__}: {exc}") from exc


class _Seeded:
    """Random init under a fixed seed without disturbing the caller's global RNG."""

    def __init__(self, seed: int):
        self.seed = seed
        self._fork = None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


# ----------------------------------------------------------------------------------------------------------------
# networks


class ClipEncoder:
    """An open_clip model: L2-normalised image and text embeddings."""

    def __init__(self, *, arch: str, weights: Optional[str], config: dict[str, Any], device: str,
                 dtype: torch.dtype, seed: int, field: str):
        import open_clip

        self.loads = 0
        with _Seeded(seed):
            if arch == "custom":
                if not config:
                    raise ConfigError(f"{field}.config: arch 'custom' needs an open_clip model config")
                model = open_clip.model.CLIP(**config)
                if weights:
                    load_into(model, weights, f"{field}.weights")
                tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=model.context_length)
            elif weights and os.path.isdir(weights):
                model = open_clip.create_model(f"local-dir:{weights}", device="cpu")
                tokenizer = open_clip.get_tokenizer(f"local-dir:{weights}")
            else:
                if weights and not os.path.isfile(weights):
                    raise ConfigError(f"{field}.weights: not a local file or folder: {weights}")
                try:
                    model = open_clip.create_model(arch, pretrained=weights, device="cpu", require_pretrained=bool(weights))
                except RuntimeError as exc:
                    raise ConfigError(f"{field}: cannot build open_clip model {arch!r}: {exc}") from exc
                tokenizer = open_clip.get_tokenizer(arch)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.tokenizer = tokenizer
        self.device, self.dtype = device, dtype
        pre = open_clip.get_model_preprocess_cfg(self.model)
        size = pre.get("size") or self.model.visual.image_size
        self.size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.mean = tuple(pre.get("mean") or OPENAI_CLIP_MEAN)
        self.std = tuple(pre.get("std") or OPENAI_CLIP_STD)
        self.loads += 1

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(N,3,H,W) in [0,1] -> (N,D) unit vectors. CLIP preprocessing: shorter side to size, centre crop."""
        out = []
        for sl in batches(images.shape[0], batch_size):
            x = center_crop(resize_shorter_side(images[sl].to(self.device), self.size), self.size)
            x = normalize(x, self.mean, self.std).to(self.dtype)
            out.append(self.model.encode_image(x, normalize=True).float())
        return torch.cat(out)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float()

    @property
    def image_embed_dim(self) -> int:
        with torch.inference_mode():
            probe = torch.zeros(1, 3, self.size, self.size, device=self.device, dtype=self.dtype)
            return int(self.model.encode_image(probe).shape[-1])


class DinoEncoder:
    """DINO ViT (transformers ViTModel): the final-layer-normed CLS token per frame."""

    def __init__(self, *, weights: Optional[str], config: dict[str, Any], device: str, dtype: torch.dtype,
                 seed: int, field: str):
        from transformers import ViTConfig, ViTModel

        self.loads = 0
        if weights:
            if not os.path.isdir(weights):
                raise ConfigError(f"{field}.weights: not a local model folder (config.json + weights): {weights}")
            model = ViTModel.from_pretrained(weights, add_pooling_layer=False, local_files_only=True)
        else:
            with _Seeded(seed):
                model = ViTModel(ViTConfig(**config), add_pooling_layer=False)
        self.model = model.to(device=device, dtype=dtype).eval()
        self.size = int(self.model.config.image_size)
        self.patch = int(self.model.config.patch_size)
        self.device, self.dtype = device, dtype
        self.loads += 1

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        # Aspect kept (no crop, so a subject near the frame edge still counts); position embeddings interpolated.
        out = []
        for sl in batches(images.shape[0], batch_size):
            x = resize_shorter_side(images[sl].to(self.device), self.size, multiple=self.patch)
            x = normalize(x, IMAGENET_MEAN, IMAGENET_STD).to(self.dtype)
            hidden = self.model(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
            out.append(hidden[:, 0].float())
        return F.normalize(torch.cat(out), dim=-1)


class FlowEstimator:
    """torchvision RAFT. Inputs are resized to what RAFT accepts; flows come back in pixels of the requested size."""

    def __init__(self, *, arch: str, weights: Optional[str], num_flow_updates: int, min_side: int,
                 max_side: Optional[int], zero_flow_head: bool, device: str, seed: int, field: str):
        from torchvision.models import optical_flow

        builders = {"raft_small": optical_flow.raft_small, "raft_large": optical_flow.raft_large}
        if arch not in builders:
            raise ConfigError(f"{field}.arch: unknown RAFT variant {arch!r} (known: {', '.join(builders)})")
        self.loads = 0
        with _Seeded(seed):
            model = builders[arch](weights=None, progress=False)
        if weights:
            load_into(model, weights, f"{field}.weights")
        elif zero_flow_head:
            # A random RAFT reports several pixels of motion between identical frames; with the flow head's output
            # layer at zero the toy estimates "no motion" everywhere, which keeps still clips still.
            head = model.update_block.flow_head.conv2
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        # RAFT stays float32: its iterative refinement is not robust in half precision
        self.model = model.to(device).eval()
        self.num_flow_updates = int(num_flow_updates)
        self.min_side, self.max_side = int(min_side), (int(max_side) if max_side else None)
        self.device = device
        self.loads += 1

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """Size RAFT runs at: shorter side >= min_side, longer side <= max_side (if set), both multiples of 8."""
        scale = 1.0
        if min(height, width) < self.min_side:
            scale = self.min_side / min(height, width)
        if self.max_side and max(height, width) * scale > self.max_side:
            scale = self.max_side / max(height, width)
        return (max(8, math.ceil(height * scale / 8) * 8), max(8, math.ceil(width * scale / 8) * 8))

    @torch.inference_mode()
    def flow(self, a: torch.Tensor, b: torch.Tensor, batch_size: int, out_size: Optional[tuple[int, int]] = None
             ) -> torch.Tensor:
        """Flow from `a` to `b` ((N,3,H,W) in [0,1]) -> (N,2,h,w) pixels, (h,w) = out_size or RAFT's working size."""
        h, w = a.shape[-2:]
        wh, ww = self.working_size(h, w)
        flows = []
        for sl in batches(a.shape[0], batch_size):
            x1 = resize(a[sl].to(self.device), wh, ww, mode="bilinear") * 2 - 1  # RAFT expects [-1, 1]
            x2 = resize(b[sl].to(self.device), wh, ww, mode="bilinear") * 2 - 1
            flows.append(self.model(x1, x2, num_flow_updates=self.num_flow_updates)[-1])
        flow = torch.cat(flows)
        if out_size is not None and tuple(out_size) != (wh, ww):
            oh, ow = out_size
            flow = F.interpolate(flow, size=(oh, ow), mode="bilinear", align_corners=False)
            flow = flow * torch.tensor([ow / ww, oh / wh], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
        return flow


class AestheticHead(nn.Module):
    """LAION aesthetic predictor: one linear layer on L2-normalised CLIP image embeddings -> score on ~1–10."""

    def __init__(self, in_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(embeddings).squeeze(-1)

    @classmethod
    def build(cls, *, in_features: int, weights: Optional[str], device: str, seed: int, field: str) -> "AestheticHead":
        with _Seeded(seed):
            head = cls(in_features)
        if weights:
            # LAION releases the head as a bare nn.Linear state dict (keys weight, bias)
            load_into(head.linear, weights, f"{field}.weights")
        head.loads = 1
        return head.to(device).eval()


class ToyImagingQuality(nn.Module):
    """Stand-in imaging-quality regressor: a tiny timm ViT with one output squashed onto MUSIQ's 0–100 scale.

    Not MUSIQ; used only when the conf says `imaging.arch: toy_vit` (offline tests without pyiqa)."""

    def __init__(self, **vit_kwargs: Any):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.img_size = int(vit_kwargs.setdefault("img_size", 64))
        vit_kwargs["num_classes"] = 1
        self.vit = VisionTransformer(**vit_kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize(images, self.img_size, self.img_size)
        x = normalize(x, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        return torch.sigmoid(self.vit(x)) * 100.0


class ImagingQualityModel:
    """Per-frame technical quality on 0–1: MUSIQ (pyiqa's architecture, SPAQ weights) / 100, or the toy stand-in."""

    def __init__(self, *, arch: str, weights: Optional[str], config: dict[str, Any], max_side: Optional[int],
                 device: str, seed: int, field: str):
        self.loads = 0
        with _Seeded(seed):
            if arch == "musiq":
                try:
                    from pyiqa.archs.musiq_arch import MUSIQ
                except ImportError as exc:
                    raise ConfigError(f"{field}.arch: 'musiq' needs the pyiqa package ({exc}); install pyiqa or "
                                      "use arch: toy_vit") from exc
                # pretrained=False: pyiqa would otherwise download a checkpoint; we load ours below, safely
                model = MUSIQ(pretrained=False, pretrained_model_path=None, num_class=1, **config)
            elif arch == "toy_vit":
                model = ToyImagingQuality(**config)
            else:
                raise ConfigError(f"{field}.arch: unknown imaging model {arch!r} (known: musiq, toy_vit)")
        if weights:
            load_into(model, weights, f"{field}.weights")
        self.model = model.to(device).eval()
        self.max_side = int(max_side) if max_side else None
        self.device = device
        self.loads += 1

    @torch.inference_mode()
    def score_frames(self, frames: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(N,3,H,W) in [0,1] -> (N,) in [0,1]. Frames larger than max_side on their longer side are scaled down."""
        h, w = frames.shape[-2:]
        if self.max_side and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
        out = []
        for sl in batches(frames.shape[0], batch_size):
            x = resize(frames[sl].to(self.device), h, w)
            out.append(self.model(x).reshape(-1).float())
        return (torch.cat(out) / 100.0).clamp(0.0, 1.0)
