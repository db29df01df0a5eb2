"""SegDrop_BackgroundInpaintRefine: concept distillation's refined mask (Dombrowski et al., Eq. 5).

The background model m′ (a text-to-image model fine-tuned to paint background) repaints the preliminary mask
M_pre under the prompt y_b; what changed is the object: M = up(M_pre) AND GMM(|x - x̂|). The sampler is the paper's
DDIM (CFG 1, eta) with the background re-noised from the image afresh before every step
(``segdrop.distill.renoise_sampler``, ComfyUI-free); the refinement is ``segdrop.segment.refine``. This module is the
ComfyUI glue: masks to the latent grid, VAE, sampling through ComfyUI's ``KSAMPLER``, batches, warnings, errors.

Mask to latent grid: M_pre lives on the latent grid (64x64 for 512 px). A mask of exactly that size is used as is;
a mask of the image's size (GMM Binarize's output), or any size of the same aspect ratio, is resized to the image
and max-pooled over each latent cell: a cell is foreground when any of its pixels is. For GMM Binarize's mask (a
nearest upsampling of its latent-grid mask) this gives the latent-grid mask back exactly, and elsewhere it errs on
the side the paper wants (M_pre over-covers: a foreground pixel marked background makes the inpainter copy it).

Schedule: ComfyUI's ``ddim_uniform`` scheduler is CompVis DDIM's "uniform" grid, t = 1 + k * (1000 // steps)
(50 steps: 981, 961, ..., 1), then sigma 0 (the official sampler stops at alpha_bar_0, sigma 0.029; the last step
here returns the model's x0 instead). As in CompVis, a ``steps`` that does not divide 1000 can give a step or two
more. The ``normal`` scheduler spaces sigmas from sigma_max, not the DDIM timesteps, so it is not used.

eta: DDIM's eta as an ancestral step (``renoise_sampler.ancestral_step``), its noise from the same seeded generator
as the background's fresh noise; 0 (the paper) is deterministic DDIM. CFG is 1: only the conditional branch runs.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from comfy_api.latest import io

from ..distill.renoise_sampler import ddim_renoise
from ..segment.refine import difference_image, refine_mask
from .objectdrop import model_input_channels, progress_and_interrupt
from .types import CATEGORY

log = logging.getLogger("segdrop")
LATENT_SCALE = 8
"""Pixels per latent cell when the VAE does not say (SD1.x, SD2.x, SDXL)."""
SCHEDULER = "ddim_uniform"
DEFAULT_PROMPT = "a photo of a background"
ASPECT_TOLERANCE = 0.02
"""A mask whose height/width ratio is within 2% of the image's is taken as this image's mask at another size."""
NAME = "Background Inpaint Refine"


def check_text_to_image_model(model) -> None:
    """Refuse inpainting-layout UNets (extra mask/image input channels) and flow-matching models, naming the fix."""
    channels = model_input_channels(model)
    latent_format = model.get_model_object("latent_format") if hasattr(model, "get_model_object") else None
    latent_channels = int(getattr(latent_format, "latent_channels", 4))
    if channels is not None and channels > latent_channels:
        raise ValueError(
            f"{NAME} needs the text-to-image background model m′, but this model's UNet takes {channels} input "
            f"channels ({latent_channels} latent + mask/image inputs: an inpainting checkpoint). Load the "
            f"text-to-image checkpoint ({latent_channels} input channels) fine-tuned on backgrounds, or the base "
            "checkpoint with its background LoRA (Load Checkpoint -> LoraLoader -> model)."
        )
    sampling = model.get_model_object("model_sampling") if hasattr(model, "get_model_object") else None
    if sampling is not None and any(c.__name__ == "CONST" for c in type(sampling).__mro__):
        raise ValueError(
            f"{NAME} runs the paper's DDIM sampler, which needs an epsilon- or v-prediction model (SD1.x, SD2.x, "
            "SDXL); this is a flow-matching model (SD3, Flux, ...): load an SD1.x/SD2.x/SDXL checkpoint for m′."
        )


def vae_factor(vae) -> int:
    ratio = getattr(vae, "downscale_ratio", LATENT_SCALE)
    return ratio if isinstance(ratio, int) and ratio > 0 else LATENT_SCALE


def latent_grid(height: int, width: int, factor: int) -> tuple[int, int]:
    """The latent grid of an image padded up to multiples of ``factor``."""
    return -(-height // factor), -(-width // factor)


def preliminary_cells(image: torch.Tensor, mask: torch.Tensor, factor: int) -> torch.Tensor:
    """M_pre on the latent grid: bool ``(B, h, w)`` for ``(B, H, W, C)`` images (see the module docstring)."""
    mask = mask if mask.dim() == 3 else mask[None]
    batch, height, width = image.shape[:3]
    grid = latent_grid(height, width, factor)
    if mask.shape[0] not in (1, batch):
        raise ValueError(
            f"{mask.shape[0]} masks for {batch} images: give one preliminary mask for all images or one per image "
            "(the same batch size)."
        )
    size = tuple(mask.shape[-2:])
    if size == grid:
        cells = mask > 0.5
    else:
        if abs(size[0] / size[1] - height / width) > ASPECT_TOLERANCE * height / width:
            if not bool(mask.any()):
                # Load Image gives a 64x64 all-zero MASK for a picture without alpha: an empty mask, not a mistake.
                return torch.zeros(batch, *grid, dtype=torch.bool)
            raise ValueError(
                f"The preliminary mask is {size[1]}x{size[0]} (width x height) but the image is {width}x{height}: "
                "use this image's mask (GMM Binarize with this image connected to its image input), at the image's "
                f"size, at the latent grid ({grid[1]}x{grid[0]}) or at another size of the same aspect ratio, or "
                "resize it to the image with a mask resize/upscale node."
            )
        pixels = mask.float()[:, None]
        if size != (height, width):
            pixels = F.interpolate(pixels, size=(height, width), mode="nearest-exact")
        pixels = F.pad(pixels, (0, grid[1] * factor - width, 0, grid[0] * factor - height))
        cells = F.max_pool2d((pixels > 0.5).float(), factor)[:, 0] > 0.5
    return cells.expand(batch, -1, -1)


def pad_to_grid(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """``(B, H, W, C)`` padded at the bottom/right (edge replicated) to multiples of ``factor``: the VAE's grid.

    (The paper likewise places images top-left on its canvas; every output is cropped back to the image.)"""
    height, width = pixels.shape[1:3]
    h, w = latent_grid(height, width, factor)
    if (h * factor, w * factor) == (height, width):
        return pixels
    padded = F.pad(pixels.movedim(-1, 1), (0, w * factor - width, 0, h * factor - height), mode="replicate")
    return padded.movedim(1, -1)


def ddim_sigmas(model, steps: int) -> torch.Tensor:
    """The DDIM "uniform" sigma schedule of ``model`` (ends in 0)."""
    import comfy.samplers

    return comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), SCHEDULER, steps).cpu()


def renoise_seed(seed: int) -> int:
    """Seed of the fresh background noise: not the start noise's own seed (as ComfyUI's ddim offsets it by 1)."""
    return (seed + 1) % (1 << 64)


def inpaint_background(model, positive, latent: torch.Tensor, keep: torch.Tensor, sigmas: torch.Tensor, seed: int,
                       eta: float, callback) -> torch.Tensor:
    """Sample m′ on one image's VAE latent (raw, as VAE.encode gives it), keeping ``keep`` (1 = background cell,
    ``(1, 1, h, w)``) by fresh re-noising; returns the raw latent for VAE.decode.

    Through ComfyUI's own sampling (``sample_custom`` with a ``KSAMPLER``): model loading, LoRA patches, cond
    handling, cfg 1 (only the conditional branch runs). The start is pure noise (an all-zero latent: the generated
    region starts from x_T as in the paper's Eq. 6; ComfyUI scales it by sigma_0, CompVis by sqrt(1 + sigma_0^2) in
    these units, 0.3% apart at t = 981); the known latent is put in ComfyUI's model space with
    ``latent_format.process_in`` exactly as ``CFGGuider.inner_sample`` does for a latent it is given.
    """
    import comfy.sample
    import comfy.samplers
    import comfy.utils

    latent_format = model.get_model_object("latent_format")
    if latent.shape[1] != latent_format.latent_channels:
        raise ValueError(
            f"The VAE gives {latent.shape[1]}-channel latents but the model works on {latent_format.latent_channels}: "
            "connect the VAE of the model's checkpoint."
        )
    known = latent_format.process_in(latent.float())
    empty = torch.zeros_like(known)
    noise = comfy.sample.prepare_noise(empty, seed)
    generator = torch.Generator().manual_seed(renoise_seed(seed))

    def renoise_sampler(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
        extra_args = extra_args or {}
        s_in = x.new_ones([x.shape[0]])
        return ddim_renoise(lambda x_t, sigma: model_k(x_t, sigma * s_in, **extra_args), x, sigmas, known, keep,
                            generator, eta=eta, callback=callback)

    sampler = comfy.samplers.KSAMPLER(renoise_sampler)
    return comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, positive, positive, empty, noise_mask=None,
                                      callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)


def decode(vae, samples: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """VAE decode to ``(1, H, W, 3)`` in [0, 1] at ``size`` (the padded image size)."""
    decoded = vae.decode(samples)[..., :3].float().clamp(0, 1)
    if decoded.dim() == 5:  # video VAEs give (B, T, H, W, C)
        decoded = decoded.reshape(-1, *decoded.shape[-3:])
    if tuple(decoded.shape[1:3]) != tuple(size):
        decoded = F.interpolate(decoded.movedim(-1, 1), size=size, mode="bilinear").movedim(1, -1).clamp(0, 1)
    return decoded[:1]


class BackgroundInpaintRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SegDrop_BackgroundInpaintRefine",
            display_name="Background Inpaint Refine (concept distillation)",
            category=CATEGORY,
            description=(
                "Concept distillation's refined foreground mask (Dombrowski et al., Eq. 5): the background model m′ "
                "repaints the preliminary mask with 'a photo of a background' (DDIM, CFG 1, the background re-noised "
                "from the image with fresh noise before every step), and the refined mask keeps the preliminary "
                "pixels that changed: M = up(M_pre) AND GMM(|image - background|)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="m′: a text-to-image SD1.x/SD2.x/SDXL model fine-tuned to paint backgrounds "
                                                "(its checkpoint, or the base checkpoint through LoraLoader with its "
                                                "background LoRA). Not an inpainting (9-channel) model."),
                io.Clip.Input("clip", tooltip="The model's CLIP: encodes the background prompt y_b."),
                io.Vae.Input("vae", tooltip="The model's VAE: encodes the image and decodes the inpainting."),
                io.Image.Input("image", tooltip="The photo(s). A batch is processed image by image."),
                io.Mask.Input("mask", tooltip="The preliminary mask M_pre (1 = object; GMM Binarize's mask): one for all "
                                              "images or one per image, at the image size, the latent grid (image/8) or "
                                              "another size of the same aspect ratio. A latent cell is foreground when "
                                              "any of its pixels is."),
                io.String.Input("prompt", default=DEFAULT_PROMPT,
                                tooltip="The background prompt y_b m′ was fine-tuned with (the paper: 'a photo of a background')."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the start noise and of the fresh background noise: a seed reproduces the output. "
                                     "Every image of a batch uses it (an image's result does not depend on the others)."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps on the uniform grid t = 1 + k*(1000//steps) (the paper: 50)."),
                io.Float.Input("eta", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="DDIM eta: 0 (the paper) is deterministic DDIM; 1 adds DDPM-like noise at every step."),
                io.Boolean.Input("postprocess", default=False,
                                 tooltip="The paper's optional clean-up of the refined mask: binary closing (3x3 cross), then hole filling."),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="The refined foreground mask M at image size (1 = object)."),
                io.Image.Output(display_name="background", tooltip="m′'s inpainting: the whole VAE decode, nothing pasted back "
                                                                  "(the image itself where the preliminary mask is empty)."),
                io.Image.Output(display_name="difference", tooltip="D = mean over RGB of |image - background| as a grey image "
                                                                  "(unscaled: 1 = white); the GMM splits this."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, image, mask, prompt, seed, steps, eta, postprocess) -> io.NodeOutput:
        image = image if image.dim() == 4 else image[None]
        check_text_to_image_model(model)
        factor = vae_factor(vae)
        batch, height, width = image.shape[:3]
        cells = preliminary_cells(image, mask, factor)
        rgb = image[..., :3].float().clamp(0, 1)
        refined = torch.zeros(batch, height, width)
        backgrounds = rgb.clone()
        differences = torch.zeros(batch, height, width)
        todo = [k for k in range(batch) if bool(cells[k].any())]
        for k in range(batch):
            if k not in todo:
                log.warning("SegDrop %s: the preliminary mask of image %d is empty, so there is nothing to refine: its "
                            "refined mask is empty, its background is the image and its difference zero.", NAME, k)
            elif bool(cells[k].all()):
                log.warning("SegDrop %s: the preliminary mask of image %d covers the whole image, so there is no "
                            "background to keep: m′ paints a new picture and the refined mask is GMM(|image - "
                            "background|) over the whole image.", NAME, k)
        if todo:
            positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
            sigmas = ddim_sigmas(model, steps)
            n_steps = len(sigmas) - 1
            callback_for, check_interrupt = progress_and_interrupt(len(todo) * n_steps)
            for done, k in enumerate(todo):
                check_interrupt()
                pixels = pad_to_grid(rgb[k:k + 1], factor)
                latent = vae.encode(pixels)
                if tuple(latent.shape[-2:]) != tuple(cells.shape[-2:]):
                    raise ValueError(f"The VAE encoded a {pixels.shape[2]}x{pixels.shape[1]} image to a "
                                     f"{latent.shape[-1]}x{latent.shape[-2]} latent, not {cells.shape[-1]}x"
                                     f"{cells.shape[-2]}: connect the VAE of the model's checkpoint.")
                keep = (~cells[k]).float()[None, None]
                samples = inpaint_background(model, positive, latent, keep, sigmas, seed, eta,
                                             callback_for(done * n_steps))
                painted = decode(vae, samples, tuple(pixels.shape[1:3]))
                found = refine_mask(pixels[0].numpy(), painted[0].numpy(), cells[k].numpy(), postprocess=postprocess)
                backgrounds[k] = painted[0, :height, :width]
                refined[k] = torch.from_numpy(np.ascontiguousarray(found[:height, :width])).float()
                differences[k] = torch.from_numpy(difference_image(rgb[k].numpy(), backgrounds[k].numpy()))
            check_interrupt()
        return io.NodeOutput(refined, backgrounds, differences[..., None].expand(-1, -1, -1, 3).contiguous())
