"""Text-to-image samples from a model bundle, to look at what a trained model draws."""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def sample(bundle, prompts: list[str], steps: int = 30, guidance: float = 3.0, seed: int = 0) -> np.ndarray:
    """DDIM samples with classifier-free guidance (the empty prompt is the unconditional branch): (N, H, W, 3)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(bundle.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    cond, uncond = bundle.encode_prompt(prompts), bundle.encode_prompt([""] * len(prompts))
    side = bundle.image_size // bundle.codec.factor
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), bundle.unet.config.in_channels, side, side, generator=generator)
    for t in scheduler.timesteps:
        eps = bundle.unet(torch.cat([x, x]), t, torch.cat([cond, uncond])).sample
        eps_c, eps_u = eps.chunk(2)
        x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return bundle.codec.decode(x).clamp(0, 1).permute(0, 2, 3, 1).numpy()


SAMPLE_PROMPTS = [
    "a photo of a red circle", "a photo of a blue square", "a photo of a green triangle",
    "a photo of a yellow cross", "a photo of a purple diamond", "a photo of a white circle and a red square",
]


def sample_grid(bundle, prompts: list[str] = SAMPLE_PROMPTS, seed: int = 0) -> np.ndarray:
    """One uint8 row of samples, side by side."""
    images = sample(bundle, prompts, seed=seed)
    return (np.concatenate(list(images), axis=1) * 255).round().astype(np.uint8)
