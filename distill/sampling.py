"""The two samplers of concept distillation, on a text-to-image model bundle (paper notes §1.5, §1.6).

* :func:`background_inpaint`: the fine-tuned m′ repaints the preliminary mask M_pre with the background prompt
  y_b. The model is a plain text-to-image UNet (no mask channels): RePaint-style latent blending keeps the
  background, re-noised from the image's latent z0 with fresh noise before every DDIM step, and generates the
  M_pre region. The output is the full decode, with nothing pasted back: the refinement compares it with the
  image, and codec error in the background is left for the difference GMM to absorb.
* :func:`distillation_sample`: synthetic images from m′ with concept-distillation guidance
  ε̂ = ε(y_b) + s·(ε(y_f) − ε(y_b)): the counter-prompt y_b replaces the empty prompt of classifier-free guidance.
  s = 1 is plain conditional sampling (one UNet pass per step); s < 0 steers away from the object.

Both use DDIM (``DDIMScheduler`` from the bundle's scheduler config, ``clip_sample=False``,
``set_alpha_to_one=False``, the config's ``prediction_type``: the model output is guided, then
``scheduler.step`` turns epsilon or v into the next latent). Paper defaults: 50 steps, eta 0, CFG 1.

Randomness (the documented draw order, which the tests rely on): ``seed`` is an int (one ``torch.Generator``
for the batch) or one int per image (one generator each, so an image does not depend on its batch). Each
generator draws on the CPU, in float32: first x_T ``(B, C, h, w)``; then, in ``background_inpaint`` only, one
fresh noise of the same shape before every step (for the blend); with eta > 0 the scheduler draws its own
step noise from the same generators after that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..segment.refine import _binary

Progress = Callable[[int, int], None]
"""``progress(done, total)``: called after every denoising step."""


def ddim_scheduler(bundle, steps: int):
    """The bundle's noise schedule as a DDIM sampler with ``steps`` steps (the paper's sampler settings)."""
    from diffusers import DDIMScheduler

    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    scheduler = DDIMScheduler.from_config(bundle.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(int(steps))
    return scheduler


def check_text_to_image(bundle) -> None:
    """Refuse models these samplers cannot drive: inpainting layouts and UNets that need added conditions."""
    unet, channels = bundle.unet, bundle.codec.latent_channels
    if unet.config.in_channels != channels:
        raise ValueError(
            f"This UNet takes {unet.config.in_channels} input channels but the codec's latents have {channels}: it is "
            "an inpainting-layout (concat-conditioned) model. Concept distillation inpaints with a plain text-to-image "
            "model by latent blending; give the fine-tuned text-to-image model m′ instead.")
    if getattr(unet.config, "addition_embed_type", None):
        raise ValueError("This UNet needs added conditions (SDXL-style); only SD1.x/2.x-style text-to-image UNets "
                         "are supported.")


def generators(seed: int | Sequence[int], count: int) -> torch.Generator | list[torch.Generator]:
    """One CPU generator for the batch (int seed) or one per image (a sequence of ``count`` seeds)."""
    if isinstance(seed, (int, np.integer)):
        return torch.Generator().manual_seed(int(seed))
    seeds = [int(s) for s in seed]
    if len(seeds) != count:
        raise ValueError(f"Give one seed or one seed per image: got {len(seeds)} seeds for {count} images.")
    return [torch.Generator().manual_seed(s) for s in seeds]


def randn(shape: Sequence[int], generator: torch.Generator | list[torch.Generator]) -> torch.Tensor:
    """Standard normal float32 on the CPU, per image when ``generator`` is a list (as diffusers' randn_tensor)."""
    if isinstance(generator, list):
        return torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator])
    return torch.randn(tuple(shape), generator=generator)


def unit_images(images) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` (or float in [0, 1]) -> float32 ``(B, 3, H, W)`` in [0, 1], the codecs' input."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"images must be a (B, H, W, 3) RGB batch; got shape {array.shape}.")
    if array.dtype == np.uint8:
        pixels = array.astype(np.float32) / 255.0
    elif np.issubdtype(array.dtype, np.floating) and array.size and 0.0 <= array.min() and array.max() <= 1.0:
        pixels = array.astype(np.float32)
    else:
        raise ValueError(f"images must be uint8 or float in [0, 1]; got dtype {array.dtype}.")
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """Decoded ``(B, 3, H, W)`` in [0, 1] -> uint8 ``(B, H, W, 3)``."""
    return np.rint(pixels.float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0).astype(np.uint8)


def latent_prelim(prelim, batch: int, image_hw: tuple[int, int], latent_hw: tuple[int, int],
                  factor: int) -> torch.Tensor:
    """M_pre as float ``(B, 1, h, w)`` at the latent grid.

    The paper blends with the latent-grid mask. A mask at the image size is accepted for convenience and
    max-pooled (a latent cell is generated when any of its pixels is foreground: M_pre may over-cover, never
    under-cover, since a missed object pixel would be copied into the "background").
    """
    from ..training.conditioned_unet import latent_mask

    mask = _binary(prelim, "prelim")
    if mask.ndim != 3 or mask.shape[0] != batch:
        raise ValueError(f"prelim must be (B, h, w) with B = {batch} images; got shape {mask.shape}.")
    tensor = torch.from_numpy(mask)
    if tuple(mask.shape[1:]) == tuple(latent_hw):
        return tensor[:, None].float()
    if tuple(mask.shape[1:]) == tuple(image_hw):
        return latent_mask(tensor, factor)
    raise ValueError(f"prelim is {mask.shape[2]}x{mask.shape[1]} but must be at the latent grid "
                     f"{latent_hw[1]}x{latent_hw[0]} (or the image size {image_hw[1]}x{image_hw[0]}).")


def _model_device(bundle) -> tuple[torch.device, torch.dtype]:
    parameter = next(bundle.unet.parameters())
    return parameter.device, parameter.dtype


def _prompt_states(bundle, prompts: Sequence[str], device, dtype) -> torch.Tensor:
    return bundle.encode_prompt(list(prompts)).to(device, dtype)


@torch.no_grad()
def background_inpaint(bundle, images, prelim, *, prompt: str, steps: int = 50, eta: float = 0.0,
                       seed: int | Sequence[int] = 0, progress: Progress | None = None) -> np.ndarray:
    """Repaint M_pre with ``prompt`` (y_b) by latent blending: uint8 ``(B, H, W, 3)``.

    ``images``: uint8 ``(B, H, W, 3)``; ``prelim``: bool ``(B, h, w)`` at the latent grid (an image-size mask is
    max-pooled to it). Before every DDIM step x_t <- q_sample(z0, t, fresh noise)·(1 − M) + x_t·M; the final
    latent is decoded whole (no paste-back).

    Edge cases: an empty M_pre gives the image back up to the last step's noise level and the codec's error
    (the background was re-noised to the last DDIM timestep, then denoised by one step). A full M_pre is plain
    text-to-image sampling: with eta 0 it equals ``distillation_sample([prompt] * B, guidance=1)`` for the same
    seed (x_T is the first draw of both).
    """
    check_text_to_image(bundle)
    pixels = unit_images(images)
    batch, image_hw = pixels.shape[0], tuple(pixels.shape[-2:])
    device, dtype = _model_device(bundle)
    z0 = bundle.codec.encode(pixels.to(device)).to(device, dtype)
    mask = latent_prelim(prelim, batch, image_hw, tuple(z0.shape[-2:]), bundle.codec.factor).to(device, dtype)
    scheduler = ddim_scheduler(bundle, steps)
    hidden = _prompt_states(bundle, [prompt] * batch, device, dtype)
    gen = generators(seed, batch)
    x = randn(z0.shape, gen).to(device, dtype) * scheduler.init_noise_sigma
    total = len(scheduler.timesteps)
    for index, t in enumerate(scheduler.timesteps):
        known = scheduler.add_noise(z0, randn(z0.shape, gen).to(device, dtype), t)
        x = known * (1 - mask) + x * mask
        output = bundle.unet(scheduler.scale_model_input(x, t), t, encoder_hidden_states=hidden).sample
        x = scheduler.step(output, t, x, eta=float(eta), generator=gen).prev_sample
        if progress is not None:
            progress(index + 1, total)
    return to_uint8(bundle.codec.decode(x))


@torch.no_grad()
def distillation_sample(bundle, prompts: Sequence[str], *, negative_prompt: str, guidance: float = 1.0,
                        steps: int = 50, eta: float = 0.0, seed: int | Sequence[int] = 0,
                        size: tuple[int, int] | None = None, progress: Progress | None = None) -> np.ndarray:
    """Text-to-image samples with concept-distillation guidance: uint8 ``(N, H, W, 3)``.

    ε̂ = ε(y_b) + s·(ε(y_f) − ε(y_b)) with y_f = ``prompts[i]``, y_b = ``negative_prompt``, s = ``guidance``
    (applied to the model output, epsilon or v). s = 1 runs the conditional branch only (y_b is not even
    encoded). ``size``: image ``(H, W)``, default the bundle's square ``image_size``.
    """
    check_text_to_image(bundle)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("No prompts given: nothing to sample.")
    device, dtype = _model_device(bundle)
    height, width = size or (bundle.image_size, bundle.image_size)
    factor = bundle.codec.factor
    if height % factor or width % factor:
        raise ValueError(f"Image size {width}x{height} is not divisible by the codec factor {factor}.")
    scheduler = ddim_scheduler(bundle, steps)
    count = len(prompts)
    guided = float(guidance) != 1.0
    hidden = _prompt_states(bundle, prompts, device, dtype)
    if guided:
        hidden = torch.cat([hidden, _prompt_states(bundle, [negative_prompt] * count, device, dtype)])
    gen = generators(seed, count)
    shape = (count, bundle.codec.latent_channels, height // factor, width // factor)
    x = randn(shape, gen).to(device, dtype) * scheduler.init_noise_sigma
    total = len(scheduler.timesteps)
    for index, t in enumerate(scheduler.timesteps):
        model_in = scheduler.scale_model_input(x, t)
        if guided:
            both = bundle.unet(torch.cat([model_in, model_in]), t, encoder_hidden_states=hidden).sample
            out_f, out_b = both.chunk(2)
            output = out_b + float(guidance) * (out_f - out_b)
        else:
            output = bundle.unet(model_in, t, encoder_hidden_states=hidden).sample
        x = scheduler.step(output, t, x, eta=float(eta), generator=gen).prev_sample
        if progress is not None:
            progress(index + 1, total)
    return to_uint8(bundle.codec.decode(x))


__all__ = ["background_inpaint", "check_text_to_image", "ddim_scheduler", "distillation_sample", "generators",
           "latent_prelim", "randn", "unit_images"]
