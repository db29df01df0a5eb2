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


def merged_twin(twin, diffusers_file, scale: float = 1.0):
    """A copy of ``twin`` with a trained LoRA (diffusers/peft-format file) merged, ``W += scale * B @ A``
    (``scale`` = alpha / rank, 1 for the recipes' default alpha = rank); returns ``(unet, modules merged)``."""
    import copy

    import torch
    from safetensors.torch import load_file

    state = load_file(str(diffusers_file))
    unet = copy.deepcopy(twin)
    merged = 0
    with torch.no_grad():
        for key, down in state.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[: -len(".lora_A.weight")]
            up = state[module + ".lora_B.weight"]
            name = module[len("unet."):] if module.startswith("unet.") else module
            weight = unet.get_submodule(name).weight
            weight.add_((scale * up.float() @ down.float()).reshape(weight.shape))
            merged += 1
    return unet.eval(), merged


def kohya_contents(kohya) -> tuple[list[str], dict, list[str]]:
    """``(keys, metadata, LoRA module names)`` of a kohya LoRA file written by a recipe; checks that training moved
    every up-weight away from peft's zero start."""
    from safetensors import safe_open

    with safe_open(str(kohya), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata() or {}
        ups = [handle.get_tensor(k) for k in keys if k.endswith(".lora_up.weight")]
    assert all(u.abs().max().item() > 0 for u in ups), "the training steps left a LoRA up-weight at zero"
    modules = sorted(k[: -len(".lora_down.weight")] for k in keys if k.endswith(".lora_down.weight"))
    return keys, metadata, modules


def check_lora_in_comfy(comfyui, run_prompt, twin, lora_dir, checkpoint: str, channels: int, label: str) -> dict:
    """Load a recipe's kohya LoRA (``lora_dir/lora_kohya.safetensors``) with the core LoraLoader over ``checkpoint``
    through the executor and check it as a user would see it: no "lora key not loaded" warning, one weight patch
    per LoRA module, and ComfyUI's patched UNet equal to ``twin`` with the diffusers-format LoRA merged (the
    unpatched one equal to ``twin``). Returns the patched ModelPatcher and the measured deltas."""
    import shutil
    import uuid

    from ..training.export import DIFFUSERS_FILE, KOHYA_FILE

    kohya = lora_dir / KOHYA_FILE
    keys, metadata, modules = kohya_contents(kohya)
    folder = comfyui.cache / "loras"
    sub = f"segdrop_{label}_{uuid.uuid4().hex[:8]}"
    (folder / sub).mkdir(parents=True)
    shutil.copy2(kohya, folder / sub / KOHYA_FILE)
    comfyui.folder_paths.add_model_folder_path("loras", str(folder))
    lora_name = f"{sub}/{KOHYA_FILE}"
    assert comfyui.folder_paths.get_full_path("loras", lora_name) is not None
    try:
        with captured_warnings() as warnings:
            result = run_prompt(lora_loader_graph(checkpoint, lora_name), fresh_cache=True)
    finally:
        shutil.rmtree(folder / sub, ignore_errors=True)
    assert [w for w in warnings if "lora key not loaded" in w or "NOT LOADED" in w] == []
    base, patched = result["1"][0], result["2"][0]
    assert len(base.patches) == 0
    assert len(patched.patches) == len(modules)  # every LoRA module of the file patches one UNet weight

    want_lora_unet, merged = merged_twin(twin, lora_dir / DIFFUSERS_FILE)
    assert merged == len(modules)
    x, t, ctx = sample_inputs(channels)
    got_base, got_lora = comfy_unet_forward(base, x, t, ctx), comfy_unet_forward(patched, x, t, ctx)
    base_delta = (got_base - twin_forward(twin, x, t, ctx)).abs().max().item()
    lora_delta = (got_lora - twin_forward(want_lora_unet, x, t, ctx)).abs().max().item()
    lora_effect = (got_lora - got_base).abs().max().item()
    assert base_delta <= 1e-3
    assert lora_delta <= 1e-3
    assert lora_effect > 10 * max(lora_delta, 1e-5)
    return {"patched": patched, "keys": keys, "metadata": metadata, "modules": modules,
            "base_delta": base_delta, "lora_delta": lora_delta, "lora_effect": lora_effect}


def write_zero_lora(comfyui_session, checkpoint: str, name: str) -> str:
    """A kohya-format LoRA ``name`` with zero up-weights (so it changes nothing) on ``checkpoint``'s UNet attention
    projections (to_q, to_k, to_v), in the session's ``loras`` folder; written once. Returns its LoraLoader name."""
    with comfyui_session.activated():
        import comfy.lora
        import safetensors.torch
        import torch

        folder = comfyui_session.cache / "loras"
        path = folder / name
        if not path.is_file():
            model, _, _ = comfyui_session.load_checkpoint(checkpoint)
            weights = model.model.state_dict()
            state = {}
            for lora_key, model_key in comfy.lora.model_lora_keys_unet(model.model, {}).items():
                if not lora_key.startswith("lora_unet_") or not any(p in lora_key for p in ("to_q", "to_k", "to_v")):
                    continue
                out_features, in_features = weights[model_key].shape[:2]
                state[f"{lora_key}.lora_down.weight"] = torch.randn(4, in_features, dtype=torch.float16) * 0.01
                state[f"{lora_key}.lora_up.weight"] = torch.zeros(out_features, 4, dtype=torch.float16)
                state[f"{lora_key}.alpha"] = torch.tensor(4.0)
            assert state, "no kohya LoRA keys found for the tiny UNet"
            folder.mkdir(parents=True, exist_ok=True)
            safetensors.torch.save_file(state, str(path))
        if comfyui_session.folder_paths.get_full_path("loras", name) is None:
            comfyui_session.folder_paths.add_model_folder_path("loras", str(folder), is_default=True)
    return name
