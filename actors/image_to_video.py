"""Image-to-video with Wan2.1 I2V: one keyframe + one prompt -> one clip."""

from __future__ import annotations

from PIL import Image

from personavlog.actors.base import resolve_device, torch_dtype
from personavlog.actors.media import VideoClip
from personavlog.actors.calls import (check_float, check_image, check_int, check_params, check_seed, check_size,
                                      check_string, check_text, pick)
from personavlog.engine.config import ModelConf
from personavlog.engine.errors import ConfigError, InputError


# Call defaults models.image_to_video.params may set. Sizes and the frame count are checked against the pipeline's
# multiples per call.
PARAM_CHECKS = {
    "steps": lambda f, v: check_int(f, v, minimum=1),
    "guidance": lambda f, v: check_float(f, v, minimum=0.0),
    "height": lambda f, v: check_int(f, v, minimum=1),
    "width": lambda f, v: check_int(f, v, minimum=1),
    "num_frames": lambda f, v: check_int(f, v, minimum=1),
    "fps": lambda f, v: check_float(f, v, minimum=0.0, exclusive_minimum=True),
    "negative_prompt": check_string,
}


class WanImageToVideo:
    """diffusers' WanImageToVideoPipeline, loaded once; one call animates one image."""

    def __init__(self, conf: ModelConf):
        import torch
        from diffusers import WanImageToVideoPipeline

        self.conf = conf
        self.params = check_params("image_to_video", dict(conf.params), PARAM_CHECKS)
        self.device = resolve_device(conf.device)
        self.fps = float(self.params.get("fps") or 16.0)
        if conf.source == "tiny":
            from personavlog.actors.toy import wan_i2v_components

            pipe = WanImageToVideoPipeline(**wan_i2v_components())
        else:
            from diffusers import AutoencoderKLWan
            from transformers import CLIPVisionModel

            # Loaded as diffusers' documentation for this pipeline loads Wan2.1 I2V: the CLIP image encoder and the
            # VAE in float32 (a small share of the compute), the transformer and text encoder in the configured dtype.
            image_encoder = CLIPVisionModel.from_pretrained(conf.source, subfolder="image_encoder",
                                                            revision=conf.revision, torch_dtype=torch.float32)
            vae = AutoencoderKLWan.from_pretrained(conf.source, subfolder="vae", revision=conf.revision,
                                                   torch_dtype=torch.float32)
            pipe = WanImageToVideoPipeline.from_pretrained(conf.source, revision=conf.revision, vae=vae,
                                                           image_encoder=image_encoder,
                                                           torch_dtype=torch_dtype(conf.dtype))
        self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        transformer = self.pipe.transformer if self.pipe.transformer is not None else self.pipe.transformer_2
        if transformer is None:
            raise ConfigError(f"models.image_to_video.source: {conf.source!r} has no transformer")
        self.frame_step = int(self.pipe.vae_scale_factor_temporal)
        # Frames are patchified after the VAE's spatial downsampling; the pipeline also demands multiples of 16.
        spatial = int(self.pipe.vae_scale_factor_spatial) * int(transformer.config.patch_size[1])
        self.size_multiple = max(16, spatial)
        self.max_sequence_length = int(conf.extra.get("max_sequence_length", 512))
        self._torch = torch
        self.loads = 1

    def __call__(self, *, image: Image.Image, prompt: str, seed: int, negative_prompt: str | None = None,
                 steps: int | None = None, guidance: float | None = None, num_frames: int | None = None,
                 height: int | None = None, width: int | None = None) -> VideoClip:
        image = check_image("image", image)
        prompt = check_text("prompt", prompt)
        seed = check_seed(seed)
        negative_prompt = pick(negative_prompt, self.params, "negative_prompt")
        if negative_prompt is not None:
            negative_prompt = check_string("negative_prompt", negative_prompt)
        steps = check_int("steps", pick(steps, self.params, "steps", 50), minimum=1)
        guidance = check_float("guidance", pick(guidance, self.params, "guidance", 5.0), minimum=0.0)
        num_frames = check_int("num_frames", pick(num_frames, self.params, "num_frames", 81), minimum=1)
        if (num_frames - 1) % self.frame_step:
            # The VAE compresses time 4:1 after the first frame; diffusers would silently round, changing clip length.
            lower = (num_frames - 1) // self.frame_step * self.frame_step + 1
            raise InputError("num_frames", f"must be {self.frame_step}k+1 (e.g. {lower} or {lower + self.frame_step}), "
                                           f"got {num_frames}")
        height = check_size("height", pick(height, self.params, "height", 480), self.size_multiple)
        width = check_size("width", pick(width, self.params, "width", 832), self.size_multiple)

        generator = self._torch.Generator(self.device).manual_seed(seed)
        result = self.pipe(
            image=_cover(image, width, height),
            prompt=prompt,
            negative_prompt=negative_prompt,
            height=height,
            width=width,
            num_frames=num_frames,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            max_sequence_length=self.max_sequence_length,
            output_type="np",
        )
        frames = result.frames[0]  # (T, H, W, 3) float in [0, 1]
        return VideoClip(frames=frames, fps=self.fps)


def _cover(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale and centre-crop to exactly width x height, so the first frame is not stretched to the clip's aspect."""
    w, h = image.size
    if (w, h) == (width, height):
        return image
    scale = max(width / w, height / h)
    rw, rh = max(width, round(w * scale)), max(height, round(h * scale))
    resized = image.resize((rw, rh), Image.Resampling.LANCZOS)
    left, top = (rw - width) // 2, (rh - height) // 2
    return resized.crop((left, top, left + width, top + height))
