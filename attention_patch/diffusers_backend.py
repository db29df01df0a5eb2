"""Attention capture for diffusers ``UNet2DConditionModel``: processors that feed an :class:`AttentionStore`.

:func:`capture_attention` is the researcher's entry point: latents and text embeddings in, ``AttentionMaps`` out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from .capture_loop import CaptureInterrupted, Interrupt, draw_noise, run_timestep_groups, stop_check
from .core import attention_with_capture, sdpa_attention
from .maps import AttentionMaps
from .store import CROSS, SELF, AttentionStore, resolution_of


class CaptureProcessor:
    """Computes what diffusers' ``AttnProcessor2_0`` computes, and records probabilities of kept layers.

    ``interrupt`` runs first in every call, so a cancel takes effect within one layer, not one batched UNet call.
    """

    def __init__(self, name: str, store: AttentionStore, original, interrupt: Interrupt | None = None):
        self.name = name
        self.store = store
        self.original = original
        self.interrupt = interrupt

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if self.interrupt is not None:
            self.interrupt()
        kind = SELF if encoder_hidden_states is None else CROSS
        store = self.store
        store.hit(self.name)
        if attention_mask is not None or getattr(attn, "norm_q", None) is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        hw = resolution_of(hidden_states.shape[1], store.latent_hw)
        if not store.wants(kind, self.name, hw):
            return self.original(attn, residual, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        query = attn.to_q(hidden_states)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        sink = store.sink(kind, hw, query.shape[0], key.shape[1], query.device)
        hidden_states = attention_with_capture(query, key, value, attn.heads, sink, scale=attn.scale)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def attention_layers(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every attention module of the UNet by name (``...attn1`` self, ``...attn2`` cross)."""
    from diffusers.models.attention_processor import Attention

    layers = {name: module for name, module in unet.named_modules() if isinstance(module, Attention)}
    if not layers:
        raise ValueError(
            f"{type(unet).__name__} has no diffusers Attention layers: attention capture needs a Stable Diffusion "
            "UNet (UNet2DConditionModel)."
        )
    return layers


@contextlib.contextmanager
def patched(
    unet: torch.nn.Module, store: AttentionStore, interrupt: Interrupt | None = None
) -> Iterator[AttentionStore]:
    """Install capture processors for the duration of the block, then restore the originals (also on a raise)."""
    layers = attention_layers(unet)
    originals = {name: module.processor for name, module in layers.items()}
    store.register(layers)
    try:
        for name, module in layers.items():
            module.set_processor(CaptureProcessor(name, store, originals[name], interrupt))
        yield store
    finally:
        for name, module in layers.items():
            module.set_processor(originals[name])


def noisy_latents(
    latents: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """q(z_t | z_0) with fresh noise per timestep, drawn in timestep order: ``(T * B, C, h, w)``."""
    return add_noise_to(latents, timesteps, alphas_cumprod, draw_noise(latents.shape, timesteps, generator))


def add_noise_to(
    latents: torch.Tensor, timesteps: Sequence[int], alphas_cumprod: torch.Tensor, noise: torch.Tensor
) -> torch.Tensor:
    """q(z_t | z_0) for each timestep, given its standard noise ``noise[i * B : (i + 1) * B]``."""
    images = latents.shape[0]
    out = []
    for i, t in enumerate(timesteps):
        a = alphas_cumprod[t].to(latents)
        out.append(a.sqrt() * latents + (1 - a).sqrt() * noise[i * images : (i + 1) * images].to(latents))
    return torch.cat(out)


def capture_attention(
    unet: torch.nn.Module,
    latents: torch.Tensor,
    text_embeddings: torch.Tensor,
    timesteps: Sequence[int],
    *,
    add_noise: bool,
    alphas_cumprod: torch.Tensor | None = None,
    seed: int = 0,
    tokens: Sequence[str] = (),
    image_size: tuple[int, int] | None = None,
    keep_self: bool = True,
    keep_cross: bool = True,
    max_batch: int = 8,
    added_cond_kwargs: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    store: AttentionStore | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> AttentionMaps:
    """Average attention of ``unet`` on ``latents`` over ``timesteps``; one conditional pass per timestep.

    ``latents``: ``(B, C, h, w)`` clean latents (already scaled as the UNet expects). ``text_embeddings``:
    ``(1 or B, T, D)``. Without noise the UNet sees the clean latent labelled with each timestep (DiffSeg).
    Several timesteps run as one batch of up to ``max_batch`` rows. ``should_stop`` is polled before every
    batched call and in every attention layer; once it returns True the capture raises
    :class:`CaptureInterrupted` (a cancel waits for one layer, not for a whole batched UNet call).
    """
    if latents.ndim != 4:
        raise ValueError(f"Latents must be (B, C, h, w); got shape {tuple(latents.shape)}.")
    expected = getattr(getattr(unet, "config", None), "in_channels", latents.shape[1])
    if latents.shape[1] != expected:
        raise ValueError(
            f"The latent has {latents.shape[1]} channels but this UNet takes {expected}: encode the image with the "
            "model's own VAE/codec."
        )
    if add_noise and alphas_cumprod is None:
        raise ValueError("Noising needs the scheduler's alphas_cumprod.")
    images = latents.shape[0]
    store = store or AttentionStore(keep_self=keep_self, keep_cross=keep_cross)
    store.images, store.latent_hw = images, (latents.shape[2], latents.shape[3])
    context = text_embeddings.expand(images, -1, -1) if text_embeddings.shape[0] == 1 else text_embeddings
    timesteps = list(timesteps)

    def run_group(group: list[int], noise: torch.Tensor | None) -> None:
        sample = latents.repeat(len(group), 1, 1, 1) if noise is None else add_noise_to(latents, group, alphas_cumprod, noise)
        t = torch.tensor(group, device=latents.device).repeat_interleave(images)
        kwargs = {}
        if added_cond_kwargs:
            kwargs["added_cond_kwargs"] = {k: v.repeat(len(group), *[1] * (v.ndim - 1)) for k, v in added_cond_kwargs.items()}
        unet(sample, t, context.repeat(len(group), 1, 1), **kwargs)

    interrupt = stop_check(should_stop)
    with torch.no_grad(), patched(unet, store, interrupt):
        run_timestep_groups(
            timesteps, run_group, store=store, images=images, max_batch=max_batch,
            noise_shape=latents.shape if add_noise else None, seed=seed, progress=progress, interrupt=interrupt,
        )
    size = image_size or (latents.shape[2] * 8, latents.shape[3] * 8)
    meta = {"backend": "diffusers", "timesteps": timesteps, "add_noise": add_noise, "seed": seed}
    return store.to_maps(list(tokens), size, meta)


__all__ = [
    "CaptureInterrupted", "CaptureProcessor", "add_noise_to", "attention_layers", "capture_attention", "noisy_latents",
    "patched", "sdpa_attention",
]
