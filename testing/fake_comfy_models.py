"""Stand-ins for ComfyUI's VAE, CLIP and MODEL objects, for testing node glue without ComfyUI: just enough of
their interfaces for the pack's nodes, with arithmetic simple enough to predict in a test."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F


class FakeVAE:
    """encode: 8x8 average of RGB plus a constant channel -> (B, 4, H/8, W/8); decode: nearest upsampling.
    Every encoded batch is kept in ``encoded`` (what the node fed the VAE)."""

    downscale_ratio = 8

    def __init__(self):
        self.encoded = []

    def encode(self, pixels):
        self.encoded.append(pixels.clone())
        rgb = F.avg_pool2d(pixels[..., :3].movedim(-1, 1), 8)
        return torch.cat([rgb, torch.ones_like(rgb[:, :1])], 1)

    def decode(self, latent):
        return F.interpolate(latent[:, :3], scale_factor=8, mode="nearest").movedim(1, -1)


class FakeCLIP:
    """Records every tokenized prompt in ``prompts``; encodes to zeros shaped like SD1.5's conditioning."""

    def __init__(self):
        self.prompts = []

    def tokenize(self, text):
        self.prompts.append(text)
        return text

    def encode_from_tokens_scheduled(self, tokens):
        return [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]]


def fake_model(in_channels: int = 4):
    """A MODEL whose only readable fact is its UNet's number of input channels (4: text-to-image, 9: inpainting)."""
    return SimpleNamespace(model=SimpleNamespace(model_config=SimpleNamespace(unet_config={"in_channels": in_channels})))
