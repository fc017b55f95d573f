"""Instruction-guided image editing with FLUX.1 Kontext (stylization, keyframes, FRM re-edits)."""

from __future__ import annotations

from PIL import Image

from personavlog.actors.base import resolve_device, torch_dtype
from personavlog.actors.calls import (check_float, check_image, check_int, check_params, check_seed, check_size,
                                      check_text, pick)
from personavlog.engine.config import ModelConf

# Call defaults models.image_edit.params may set. Sizes are checked against the pipeline's size multiple per call.
PARAM_CHECKS = {
    "steps": lambda f, v: check_int(f, v, minimum=1),
    "guidance": lambda f, v: check_float(f, v, minimum=0.0),
    "height": lambda f, v: check_int(f, v, minimum=1),
    "width": lambda f, v: check_int(f, v, minimum=1),
}


class FluxKontextImageEdit:
    """diffusers' FluxKontextPipeline, loaded once; one call edits one image under one instruction."""

    def __init__(self, conf: ModelConf):
        import torch
        from diffusers import FluxKontextPipeline

        self.conf = conf
        self.params = check_params("image_edit", dict(conf.params), PARAM_CHECKS)
        self.device = resolve_device(conf.device)
        if conf.source == "tiny":
            from personavlog.actors.toy import flux_kontext_components

            pipe = FluxKontextPipeline(**flux_kontext_components())
        else:
            pipe = FluxKontextPipeline.from_pretrained(conf.source, revision=conf.revision,
                                                       torch_dtype=torch_dtype(conf.dtype))
        self.pipe = pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        # Latents are packed in 2x2 patches, so sizes go in steps of twice the VAE's downsampling.
        self.size_multiple = int(self.pipe.vae_scale_factor) * 2
        # Kontext snaps the reference image to one of its training resolutions (~1 MP); a toy model has none of those,
        # so there the reference is only fitted into the output's area.
        self.auto_resize = bool(conf.extra.get("auto_resize", conf.source != "tiny"))
        self.max_sequence_length = int(conf.extra.get("max_sequence_length", 512))
        self._torch = torch
        self.loads = 1

    def __call__(self, *, image: Image.Image, prompt: str, seed: int, steps: int | None = None,
                 guidance: float | None = None, height: int | None = None,
                 width: int | None = None) -> Image.Image:
        image = check_image("image", image)
        prompt = check_text("prompt", prompt)
        seed = check_seed(seed)
        steps = check_int("steps", pick(steps, self.params, "steps", 28), minimum=1)
        guidance = check_float("guidance", pick(guidance, self.params, "guidance", 3.5), minimum=0.0)
        height = check_size("height", pick(height, self.params, "height", 1024), self.size_multiple)
        width = check_size("width", pick(width, self.params, "width", 1024), self.size_multiple)

        if not self.auto_resize:
            image = _fit_area(image, height * width, min_side=self.size_multiple)
        generator = self._torch.Generator(self.device).manual_seed(seed)
        result = self.pipe(
            image=image,
            prompt=prompt,
            height=height,
            width=width,
            # The pipeline rescales (height, width) to this area keeping the aspect ratio; the requested area keeps
            # the requested size.
            max_area=height * width,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generator,
            max_sequence_length=self.max_sequence_length,
            output_type="pil",
            _auto_resize=self.auto_resize,
        )
        out = result.images[0].convert("RGB")
        if out.size != (width, height):  # never expected: sizes were checked against the pipeline's multiple above
            raise RuntimeError(f"FluxKontext returned {out.size[0]}x{out.size[1]}, asked for {width}x{height}")
        return out


def _fit_area(image: Image.Image, area: int, min_side: int) -> Image.Image:
    """Downscale (never upscale) so the image holds at most `area` pixels, keeping its aspect ratio.

    Each side stays at least `min_side`: the pipeline floors the reference to its size multiple, and a zero-width
    reference (a very thin strip) would crash it.
    """
    w, h = image.size
    scale = min(1.0, (area / float(w * h)) ** 0.5)
    new = (max(min_side, round(w * scale)), max(min_side, round(h * scale)))
    return image if new == (w, h) else image.resize(new, Image.Resampling.LANCZOS)
