"""Image <-> latent codecs with one interface.

``PixelUnshuffleCodec`` is the fixed, lossless "latent space" of the from-scratch toy models: a space-to-depth
rearrangement of the image in [-1, 1] (64x64x3 -> 12x32x32 for ``factor=2``). Nothing is learned, decoding is
exact, and the latent grid plays the role SD's VAE latent grid plays (one UNet "pixel" per ``factor``² image
pixels). ``AutoencoderKLCodec`` wraps a diffusers ``AutoencoderKL`` so user SD models share the interface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class PixelUnshuffleCodec:
    """``encode``: images (B,3,H,W) in [0,1] -> latents (B,3*f*f,H/f,W/f); ``decode`` inverts it exactly."""

    type = "pixel_unshuffle"

    def __init__(self, factor: int = 2):
        if int(factor) < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        self.factor = int(factor)
        self.latent_channels = 3 * self.factor * self.factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B,3,H,W), got {tuple(images.shape)}")
        if images.shape[-1] % self.factor or images.shape[-2] % self.factor:
            raise ValueError(f"image size {tuple(images.shape[-2:])} is not divisible by factor {self.factor}")
        return F.pixel_unshuffle(images * 2 - 1, self.factor)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (F.pixel_shuffle(latents, self.factor) + 1) / 2

    def config(self) -> dict:
        return {"type": self.type, "factor": self.factor}

    def to(self, *args, **kwargs) -> "PixelUnshuffleCodec":
        return self

    def __repr__(self) -> str:
        return f"PixelUnshuffleCodec(factor={self.factor})"


class AutoencoderKLCodec:
    """A diffusers ``AutoencoderKL``: latents = posterior mean * ``scaling_factor``; ``decode`` divides first."""

    type = "autoencoder_kl"

    def __init__(self, vae, scaling_factor: float | None = None):
        self.vae = vae
        if scaling_factor is None:
            scaling_factor = getattr(vae.config, "scaling_factor", 0.18215)
        self.scaling_factor = float(scaling_factor)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_channels = vae.config.latent_channels

    def _dtype_device(self):
        p = next(self.vae.parameters())
        return p.dtype, p.device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        dtype, device = self._dtype_device()
        posterior = self.vae.encode((images * 2 - 1).to(device, dtype)).latent_dist
        return posterior.mean * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        dtype, device = self._dtype_device()
        images = self.vae.decode(latents.to(device, dtype) / self.scaling_factor).sample
        return ((images + 1) / 2).clamp(0, 1)

    def config(self) -> dict:
        return {"type": self.type, "scaling_factor": self.scaling_factor}

    def to(self, *args, **kwargs) -> "AutoencoderKLCodec":
        self.vae.to(*args, **kwargs)
        return self

    def __repr__(self) -> str:
        return f"AutoencoderKLCodec(scaling_factor={self.scaling_factor})"


def codec_from_config(config: dict) -> PixelUnshuffleCodec:
    kind = config.get("type")
    if kind == PixelUnshuffleCodec.type:
        return PixelUnshuffleCodec(config.get("factor", 2))
    raise ValueError(f"unknown codec type {kind!r} (known: {PixelUnshuffleCodec.type!r})")
