"""Plain, picklable media containers passed between actors and stages (no torch inside)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Audio:
    """Mono or multi-channel float32 audio in [-1, 1], shape (channels, samples)."""

    samples: np.ndarray
    sample_rate: int

    def __post_init__(self) -> None:
        s = np.asarray(self.samples, dtype=np.float32)
        if s.ndim == 1:
            s = s[None, :]
        if s.ndim != 2:
            raise ValueError(f"audio samples must be 1-D or (channels, samples), got shape {s.shape}")
        self.samples = np.clip(np.nan_to_num(s), -1.0, 1.0)

    @property
    def seconds(self) -> float:
        return self.samples.shape[1] / float(self.sample_rate)


@dataclass
class VideoClip:
    """uint8 RGB frames, shape (frames, height, width, 3), played at `fps`."""

    frames: np.ndarray
    fps: float

    def __post_init__(self) -> None:
        f = np.asarray(self.frames)
        if f.ndim != 4 or f.shape[-1] != 3:
            raise ValueError(f"video frames must be (T, H, W, 3), got shape {f.shape}")
        if f.dtype != np.uint8:
            f = (np.clip(np.nan_to_num(f.astype(np.float32)), 0.0, 1.0) * 255).round().astype(np.uint8)
        self.frames = f

    @property
    def seconds(self) -> float:
        return self.frames.shape[0] / float(self.fps)
