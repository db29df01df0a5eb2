"""Channel-concatenation conditioning (the Stable-Diffusion-inpainting layout) and its sampler.

UNet input, along channels::

    cat([noisy latent (C), mask (1, latent grid), conditioning image latent (C)])  ->  2C + 1 channels

the order SD-inpainting checkpoints and ComfyUI (noise, ``concat_mask``, ``concat_latent_image``) use: 9 channels
for SD's 4-channel VAE, 25 for the toy pixel-unshuffle codec's 12. ``out_channels`` stays C (epsilon).

* ``widen_conv_in`` turns a text-to-image UNet into such a model with ZERO-initialised extra input channels, so the
  widened model computes exactly what the text-to-image model did whatever mask and conditioning it is given
  (training then learns to use them, as SD-inpainting was made from SD 1.2/1.5).
* ``latent_mask`` maps a pixel mask to the latent grid by max-pooling over each ``factor x factor`` cell: a cell
  counts as masked when ANY of its pixels is (area > 0), so a thin object (1 px line) still marks its cells.
  (diffusers' SD inpaint pipeline uses nearest-neighbour, which can drop thin objects entirely.)
* ``gray_out``: the inpainting convention blanks the masked pixels to 0.5 grey (in [0, 1] pixel space) before
  encoding: diffusers' ``image * (mask < 0.5)`` on [-1, 1] images and ComfyUI's ``InpaintModelConditioning`` both
  give 0.5 grey. ObjectDrop does NOT gray out: the factual image is encoded as it is.
* ``conditioned_sample``: DDIM (eta 0) with that conditioning; ``gray_masked=True`` is the inpainting baseline,
  ``False`` is ObjectDrop removal. SDXL bundles also get their ``added_cond_kwargs`` (pooled prompt, time ids).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

GRAY = 0.5  # the masked-pixel value of the inpainting convention, in [0, 1] pixel space


def inpaint_in_channels(latent_channels: int) -> int:
    """2C + 1: noisy latent, mask, conditioning latent."""
    return 2 * int(latent_channels) + 1


def is_inpaint_unet(unet: Any, latent_channels: int) -> bool:
    """True when ``unet`` takes the concat layout for a ``latent_channels`` codec and predicts C channels."""
    return (int(unet.config.in_channels) == inpaint_in_channels(latent_channels)
            and int(unet.config.out_channels) == int(latent_channels))


@torch.no_grad()
def widen_conv_in(unet: Any, extra_channels: int) -> Any:
    """Append ``extra_channels`` zero-initialised input channels to ``unet.conv_in`` (in place, returned).

    Zero weights on the new channels make the widened UNet's output equal the original's for any values there.
    ``unet.config.in_channels`` is updated with ``register_to_config`` so ``save_pretrained`` records the new width;
    ``out_channels`` is untouched.
    """
    if extra_channels < 1:
        raise ValueError(f"extra_channels must be >= 1, got {extra_channels}")
    old = unet.conv_in
    if not isinstance(old, torch.nn.Conv2d):
        raise TypeError(f"unet.conv_in is {type(old).__name__}, expected torch.nn.Conv2d (is a LoRA adapter attached?)")
    new = torch.nn.Conv2d(old.in_channels + extra_channels, old.out_channels, kernel_size=old.kernel_size,
                          stride=old.stride, padding=old.padding, dilation=old.dilation, groups=old.groups,
                          bias=old.bias is not None, padding_mode=old.padding_mode,
                          device=old.weight.device, dtype=old.weight.dtype)
    new.weight.zero_()
    new.weight[:, : old.in_channels] = old.weight
    if old.bias is not None:
        new.bias.copy_(old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(old.bias.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra_channels)
    return unet


def make_inpaint_unet(unet: Any, latent_channels: int) -> Any:
    """Widen a text-to-image UNet (``in_channels == C``) to the 2C+1 inpainting layout; refuse anything else."""
    c_in, c = int(unet.config.in_channels), int(latent_channels)
    if c_in == inpaint_in_channels(c):
        raise ValueError(f"the base UNet already takes {c_in} = 2x{c}+1 input channels (an inpainting model); "
                         "give the text-to-image model it was made from, or train `removal` on it directly")
    if c_in != c:
        raise ValueError(f"the base UNet takes {c_in} input channels but its codec makes {c}-channel latents; "
                         "expected a text-to-image model with in_channels == latent channels")
    return widen_conv_in(unet, c + 1)


def latent_mask(mask: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel mask (B, 1, H, W) or (B, H, W), bool or {0,1} -> float (B, 1, H/f, W/f): 1 where ANY pixel of the
    f x f cell is masked (max-pool), so thin objects keep their cells."""
    if mask.ndim == 3:
        mask = mask[:, None]
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected a mask of shape (B, 1, H, W) or (B, H, W), got {tuple(mask.shape)}")
    mask = mask.float()
    if factor == 1:
        return mask
    if mask.shape[-1] % factor or mask.shape[-2] % factor:
        raise ValueError(f"mask size {tuple(mask.shape[-2:])} is not divisible by the codec factor {factor}")
    return F.max_pool2d(mask, kernel_size=factor, stride=factor)


def gray_out(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] with the masked pixels set to 0.5 grey (the SD-inpainting masked image)."""
    if mask.ndim == 3:
        mask = mask[:, None]
    return torch.where(mask.bool(), torch.full_like(images, GRAY), images)


def unet_input(noisy: torch.Tensor, mask_latent: torch.Tensor, cond_latent: torch.Tensor) -> torch.Tensor:
    """The concat layout: noise, then mask, then conditioning latent (ComfyUI's order)."""
    return torch.cat([noisy, mask_latent.to(noisy.dtype), cond_latent.to(noisy.dtype)], dim=1)


def inpaint_layout_problem(bundle) -> str | None:
    """Why ``bundle``'s UNet is not a concat-conditioned (inpainting-layout) model, or None when it is."""
    c = bundle.codec.latent_channels
    if is_inpaint_unet(bundle.unet, c):
        return None
    return (f"its UNet takes {bundle.unet.config.in_channels} input channels, not {inpaint_in_channels(c)} "
            f"(= 2x{c} latent + 1 mask): it is not an inpainting model (not a concat-conditioned model); train one with "
            "`python -m segdrop.training inpaint` or give an SD inpainting folder")


def _check_inputs(bundle, images: np.ndarray, masks: np.ndarray) -> None:
    problem = inpaint_layout_problem(bundle)
    if problem is not None:
        raise ValueError(f"This model cannot sample with a mask and an image: {problem}.")
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
    if masks.shape != images.shape[:3]:
        raise ValueError(f"masks must be (B, H, W) = {images.shape[:3]}, got {masks.shape}")
    size = int(bundle.image_size)
    if images.shape[1:3] != (size, size):
        raise ValueError(f"images are {images.shape[1]}x{images.shape[2]} but this model works at {size}x{size}; "
                         "resize (or crop) images and masks to the model size first")


@torch.no_grad()
def conditioned_sample(bundle, images: np.ndarray, masks: np.ndarray, *, prompt: str = "", steps: int = 50,
                       guidance: float = 1.0, seed: int = 0, gray_masked: bool) -> np.ndarray:
    """Concat-conditioned DDIM (eta 0) samples: uint8 (B, H, W, 3) from uint8 images (B, H, W, 3) + bool masks.

    ``gray_masked=True``: the masked pixels are set to grey before encoding (inpainting baseline); ``False``:
    the image is encoded as it is (ObjectDrop). ``guidance`` != 1 applies classifier-free guidance with the empty
    prompt as the unconditional branch (no effect when ``prompt`` is empty). The whole image is generated; nothing
    outside the mask is pasted back, because removal must be free to change shadows and reflections there.
    The initial noise comes from ``torch.Generator().manual_seed(seed)``, so a seed gives the same output.
    """
    from diffusers import DDIMScheduler

    images, masks = np.asarray(images), np.asarray(masks).astype(bool)
    _check_inputs(bundle, images, masks)
    unet, codec = bundle.unet, bundle.codec
    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    scheduler = DDIMScheduler.from_config(bundle.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(int(steps))
    b = images.shape[0]
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mask_px = torch.from_numpy(masks)[:, None]
    if gray_masked:
        pixels = gray_out(pixels, mask_px)
    cond = codec.encode(pixels).to(device, dtype)
    m = latent_mask(mask_px, codec.factor).to(device, dtype)
    hidden = bundle.encode_prompt([prompt] * b).to(device, dtype)
    added = bundle.added_cond_kwargs([prompt] * b)  # SDXL: pooled text + time ids; None otherwise
    use_cfg = float(guidance) != 1.0
    if use_cfg:
        hidden = torch.cat([hidden, bundle.encode_prompt([""] * b).to(device, dtype)])
        if added is not None:
            added = {k: torch.cat([v, bundle.added_cond_kwargs([""] * b)[k]]) for k, v in added.items()}
    extra = {} if added is None else {"added_cond_kwargs": {k: v.to(device, dtype) for k, v in added.items()}}
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.randn(b, codec.latent_channels, *cond.shape[-2:], generator=generator).to(device, dtype)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        inp = unet_input(scheduler.scale_model_input(x, t), m, cond)
        if use_cfg:
            eps_c, eps_u = unet(torch.cat([inp, inp]), t, hidden, **extra).sample.chunk(2)
            eps = eps_u + float(guidance) * (eps_c - eps_u)
        else:
            eps = unet(inp, t, hidden, **extra).sample
        x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    out = codec.decode(x.float()).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return np.rint(out * 255.0).astype(np.uint8)


__all__ = ["GRAY", "conditioned_sample", "gray_out", "inpaint_in_channels", "is_inpaint_unet", "latent_mask",
           "inpaint_layout_problem", "make_inpaint_unet", "unet_input", "widen_conv_in"]
