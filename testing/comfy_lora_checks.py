"""Helpers for testing LoRAs and UNets inside a real ComfyUI: capture its warnings (it logs unloaded LoRA keys),
make a graph's loaders run, and compare ComfyUI's UNet with its diffusers twin on the same input."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """Messages of every WARNING (and above) logged while the block runs, e.g. ComfyUI's "lora key not loaded"."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def with_sampler(graph: dict, model: list, clip: list, vae: list) -> dict:
    """Add a 1-step KSampler -> VAEDecode -> PreviewImage (an output node) so the executor runs the loaders."""
    return {
        **graph,
        "s1": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "a room"}},
        "s2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "s3": {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["s1", 0], "negative": ["s1", 0], "latent_image": ["s2", 0],
            "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "s4": {"class_type": "VAEDecode", "inputs": {"samples": ["s3", 0], "vae": vae}},
        "s5": {"class_type": "PreviewImage", "inputs": {"images": ["s4", 0]}},
    }


def sample_inputs(channels: int):
    """A fixed UNet input ``(x (1, C, 16, 16), t, context (1, 7, 768))`` for forward comparisons."""
    import torch

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, channels, 16, 16, generator=generator)
    t = torch.tensor([400.0])
    ctx = torch.randn(1, 7, 768, generator=generator)
    return x, t, ctx


def comfy_unet_forward(patcher, x, t, ctx):
    """ComfyUI's diffusion model (with its weight patches applied) on one input, as float32."""
    import comfy.model_management
    import torch

    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    unet = patcher.model.diffusion_model
    dtype = next(unet.parameters()).dtype
    with torch.inference_mode():
        return unet(x.to(dtype), timesteps=t, context=ctx.to(dtype)).float()


def twin_forward(unet, x, t, ctx):
    """The diffusers twin on the same input, as float32."""
    import torch

    with torch.no_grad():
        return unet(x, t, ctx).sample.float()


def lora_loader_graph(checkpoint: str, lora_name: str) -> dict:
    """CheckpointLoaderSimple -> LoraLoader (strength 1) with a sampler tail, so the executor loads the LoRA."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {
            "class_type": "LoraLoader",
            "inputs": {"model": ["1", 0], "clip": ["1", 1], "lora_name": lora_name,
                       "strength_model": 1.0, "strength_clip": 1.0},
        },
    }
    return with_sampler(graph, ["2", 0], ["2", 1], ["1", 2])
