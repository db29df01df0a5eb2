"""DDIM with RePaint-style background re-noising, in k-diffusion form (no ComfyUI import).

Concept distillation inpaints the preliminary foreground M_pre with a *text-to-image* model (no mask channel): before
every DDIM step the known background is replaced by the original latent noised afresh to the step's level,

    x_t <- q_sample(z0, t) * (1 - M_pre) + x_t * M_pre,

with new noise at every step (the official ``p_sample_ddim`` calls ``q_sample(x0, ts)`` with ``torch.randn_like``).
ComfyUI's own ``noise_mask`` path reuses one noise tensor for all steps, which is why this is a sampler of its own.

k-diffusion form (what ComfyUI's ``KSAMPLER`` hands a sampler function): ``x = x0 + sigma * noise`` and the model
returns the denoised ``x0``. In that form q_sample(z0, t) is ``z0 + sigma_t * eps`` (the VP latent divided by
sqrt(alpha_bar_t)), and a DDIM step with eta is the ancestral Euler step

    sigma_up   = min(sigma_next, eta * sqrt(sigma_next^2 * (sigma^2 - sigma_next^2) / sigma^2))
    sigma_down = sqrt(sigma_next^2 - sigma_up^2)
    x_next     = x0 + sigma_down * (x - x0) / sigma + sigma_up * z,

which is DDIM's sigma_t(eta) = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev) rewritten with
a = 1 / (1 + sigma^2); eta = 0 is deterministic DDIM, ``x0 + sigma_next * (x - x0) / sigma``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoise(x, sigma) -> x0``: the model's clean-latent prediction for ``x`` at noise level ``sigma`` (0-dim)."""


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of a DDIM(eta) step from ``sigma`` to ``sigma_next`` (k-diffusion's formula)."""
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    return (sigma_next**2 - up**2) ** 0.5, up


def fresh_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of ``like``'s shape drawn on the CPU (same numbers on every device), then moved."""
    return torch.randn(like.shape, generator=generator, dtype=torch.float32, device="cpu").to(like)


@torch.no_grad()
def ddim_renoise(
    denoise: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    known: torch.Tensor,
    known_mask: torch.Tensor,
    generator: torch.Generator,
    eta: float = 0.0,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> torch.Tensor:
    """Sample ``x`` down the ``sigmas`` schedule (decreasing, usually ending in 0), keeping the known region.

    ``known`` is the clean latent ``z0`` (model space); ``known_mask`` is 1 where it is kept (the background,
    1 - M_pre) and 0 where the model generates; it broadcasts against ``x`` (e.g. ``(B, 1, h, w)``). Before each
    step the known region becomes ``known + sigma * eps`` with ``eps`` drawn fresh from ``generator``; DDIM(eta)'s
    ancestral noise comes from the same generator, so one seed reproduces the result. The returned latent is the
    last step's output (``x0`` when the schedule ends in 0): nothing is pasted back afterwards.
    ``callback`` gets k-diffusion's dict ``{"i", "x", "sigma", "sigma_hat", "denoised"}`` after every model call.
    """
    known = known.to(x)
    keep = known_mask.to(x)
    generate = 1.0 - keep
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x = (known + sigma * fresh_noise(known, generator)) * keep + x * generate
        denoised = denoise(x, sigma)
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        down, up = ancestral_step(float(sigma), float(sigma_next), eta)
        if down == 0:
            x = denoised
        else:
            x = denoised + (x - denoised) * (down / float(sigma))
        if up > 0:
            x = x + fresh_noise(x, generator) * up
    return x
