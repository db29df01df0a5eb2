"""Attention capture inside ComfyUI: attn1/attn2 replace patches on a clone of the MODEL.

The transformer blocks are discovered by walking the UNet's input/middle/output blocks, so SD1.x, SD2.x and
SDXL all work. State lives in closures (``ModelPatcher.clone`` deep-copies callable objects, not closures). Only
the conditional rows (``cond_or_uncond == 0``) are captured. Every patch first checks ComfyUI's interrupt flag,
so Cancel takes effect within one attention layer. ComfyUI modules are imported inside functions, so this module
imports without ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .capture_loop import Interrupt, run_timestep_groups
from .core import attention_with_capture
from .store import CROSS, SELF, AttentionStore

BlockKey = tuple[str, int, int]
SUBLAYER = {SELF: "attn1", CROSS: "attn2"}


def block_name(key: BlockKey) -> str:
    return "{}_{}_{}".format(*key)


def layer_name(kind: str, key: BlockKey) -> str:
    """``input_1_0.attn1`` / ``input_1_0.attn2``: each patch is counted on its own, so a silent one is caught."""
    return f"{block_name(key)}.{SUBLAYER[kind]}"


def discover_transformer_blocks(diffusion_model: Any) -> list[BlockKey]:
    """``(block, id, index)`` keys of every transformer block, as ComfyUI's replace-patch lookup names them."""
    groups = [getattr(diffusion_model, name, None) for name in ("input_blocks", "middle_block", "output_blocks")]
    if groups[0] is None or groups[2] is None:
        raise ValueError(
            f"AttentionCapture needs an SD1.x, SD2.x or SDXL UNet; this MODEL's diffusion model is "
            f"{type(diffusion_model).__name__}, which has no input/output blocks. Load a Stable Diffusion checkpoint."
        )
    keys: list[BlockKey] = []
    for name, blocks in (("input", groups[0]), ("middle", [groups[1]] if groups[1] is not None else []), ("output", groups[2])):
        for number, block in enumerate(blocks):
            for layer in block if isinstance(block, torch.nn.Sequential) else [block]:
                inner = getattr(layer, "transformer_blocks", None)
                if inner is not None:
                    keys.extend((name, number, index) for index in range(len(inner)))
    if not keys:
        raise ValueError("This UNet has no transformer blocks, so there is no attention to capture.")
    return keys


def cond_rows(extra_options: dict, batch: int) -> slice:
    """The rows of the conditional chunk, found through ``cond_or_uncond`` (never by batch position)."""
    order = list(extra_options.get("cond_or_uncond", [0]))
    if 0 not in order:
        return slice(0, 0)
    chunk = batch // len(order)
    start = order.index(0) * chunk
    return slice(start, start + chunk)


def make_replace_patch(
    kind: str, key: BlockKey, store: AttentionStore, fallback: Callable, interrupt: Interrupt | None = None
) -> Callable:
    """The attn1 (``SELF``) or attn2 (``CROSS``) replace patch of one transformer block.

    ``interrupt`` runs first in every call (ComfyUI's cancel check), so a cancel stops the capture within one
    attention layer instead of after a whole batched UNet call.
    """
    name = layer_name(kind, key)

    def replace(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        if interrupt is not None:
            interrupt()
        store.hit(name)
        heads = extra_options["n_heads"]
        shape = extra_options.get("activations_shape")
        hw = (int(shape[-2]), int(shape[-1])) if shape is not None else None
        rows = cond_rows(extra_options, q.shape[0])
        if hw is None or rows.stop <= rows.start or not store.wants(kind, name, hw):
            return fallback(q, k, v, heads)
        sink = store.sink(kind, hw, rows.stop - rows.start, k.shape[1], q.device)
        return attention_with_capture(q, k, v, heads, sink, rows=rows, fallback=fallback, scale=extra_options["dim_head"] ** -0.5)

    return replace


def comfy_attention() -> Callable:
    """ComfyUI's own attention function, as the unpatched blocks use it."""
    from comfy.ldm.modules.attention import optimized_attention

    def attend(q, k, v, heads):
        return optimized_attention(q, k, v, heads)

    return attend


def comfy_interrupt() -> Interrupt:
    """ComfyUI's cancel check: raises ``InterruptProcessingException`` once the user pressed Cancel."""
    from comfy.model_management import throw_exception_if_processing_interrupted

    return throw_exception_if_processing_interrupted


def patch_model(
    model: Any, store: AttentionStore, fallback: Callable | None = None, interrupt: Interrupt | None = None
) -> Any:
    """A clone of ``model`` (a ComfyUI ModelPatcher) whose every attention op records into ``store``.

    ``fallback`` (ComfyUI's attention) and ``interrupt`` (ComfyUI's cancel check) are looked up once here when
    not given, not in every layer call.
    """
    clone = model.clone()
    keys = discover_transformer_blocks(clone.get_model_object("diffusion_model"))
    fallback = fallback or comfy_attention()
    interrupt = interrupt or comfy_interrupt()
    store.register(layer_name(kind, key) for key in keys for kind in (SELF, CROSS))
    for key in keys:
        clone.set_model_attn1_replace(make_replace_patch(SELF, key, store, fallback, interrupt), *key)
        clone.set_model_attn2_replace(make_replace_patch(CROSS, key, store, fallback, interrupt), *key)
    return clone


def tokenizer_strings(clip: Any, prompt: str) -> list[str]:
    """BPE strings of every context position of ``prompt``, through ComfyUI's tokenizer (weights syntax removed)."""
    tokens = clip.tokenize(prompt)
    key = "l" if "l" in tokens else next(iter(tokens))
    tokenizer = clip.tokenizer
    inner = getattr(tokenizer, f"clip_{key}", None) or getattr(tokenizer, getattr(tokenizer, "clip", ""), None) or tokenizer
    inv_vocab = getattr(inner, "inv_vocab", None)
    strings: list[str] = []
    for chunk in tokens[key]:
        for item in chunk:
            token = item[0]
            if isinstance(token, int) and inv_vocab is not None:
                strings.append(inv_vocab.get(token, "<|endoftext|>"))
            else:
                strings.append("<embedding>")
    return strings


def run_capture(
    model: Any,
    positive: list,
    latent: dict,
    timesteps: Sequence[int],
    *,
    add_noise: bool,
    seed: int,
    store: AttentionStore,
    max_batch: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """One conditional UNet pass per timestep (no CFG) through ComfyUI's sampler, filling ``store``.

    Going through ``sample_custom`` lets ComfyUI load the model, apply LoRA weight patches, and build every
    conditioning (SDXL's size embeddings, ControlNets, inpaint concat). The sampler function below replaces the
    usual noising: each row gets its own sigma, and without noise the UNet input is the clean latent itself.
    """
    import comfy.model_management
    import comfy.sample
    import comfy.samplers

    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    latent_format = model.get_model_object("latent_format")
    if samples.ndim != 4 or samples.shape[1] != latent_format.latent_channels:
        raise ValueError(
            f"The LATENT has shape {tuple(samples.shape)} but this model takes {latent_format.latent_channels} "
            "latent channels: encode the image with VAEEncode using this model's VAE."
        )
    images = samples.shape[0]
    store.images, store.latent_hw = images, (samples.shape[2], samples.shape[3])
    interrupt = comfy.model_management.throw_exception_if_processing_interrupted
    patched = patch_model(model, store, interrupt=interrupt)
    sampling = patched.get_model_object("model_sampling")

    def run_group(group: list[int], noise: torch.Tensor | None) -> None:
        sigma = sampling.sigma(torch.tensor(group, dtype=torch.float32)).repeat_interleave(images)
        batch = samples.repeat(len(group), 1, 1, 1)

        def one_pass(model_k, x, sigmas, extra_args=None, callback=None, disable=None):
            sig = sigma.to(x.device, x.dtype)
            clean = model_k.latent_image
            if add_noise:
                x_in = sampling.noise_scaling(sig, model_k.noise, clean)
            else:  # the UNet sees x / sqrt(sigma^2 + 1): scale up so it sees the clean latent
                x_in = clean * (sig**2 + 1).sqrt().view(-1, 1, 1, 1)
            model_k(x_in, sig, **(extra_args or {}))
            return x

        comfy.sample.sample_custom(
            patched,
            noise if noise is not None else torch.zeros(batch.shape),  # unused without noise; the sampler wants one
            1.0,
            comfy.samplers.KSAMPLER(one_pass),
            torch.stack([sigma.max(), torch.zeros(())]),
            positive,
            positive,
            batch,
            seed=seed,
            disable_pbar=True,
        )

    run_timestep_groups(
        timesteps, run_group, store=store, images=images, max_batch=max_batch,
        noise_shape=samples.shape if add_noise else None, seed=seed, progress=progress, interrupt=interrupt,
    )
