"""A tiny random-weight SD1.5-format checkpoint that ComfyUI loads as ``comfy.supported_models.SD15``.

Integration tests need a real checkpoint file to go through ``CheckpointLoaderSimple``, model detection, CLIP
and VAE, but not real weights: ``sd15_tiny.safetensors`` (fp16, ~340 MB) is a 2-level 320-channel UNet (~44 M
parameters, 7 attention blocks at two grids: H/8 and H/16), the full CLIP-L text encoder (123 M, fixed by
ComfyUI's config) and a TAESD VAE, built from ComfyUI's own module classes and cached. ComfyUI is imported
only inside functions: this module imports without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TINY_CHECKPOINT = "sd15_tiny.safetensors"
TINY_INPAINT_CHECKPOINT = "sd15_inpaint_tiny.safetensors"  # the same recipe with 9 UNet input channels
TINY_CHECKPOINT_VERSION = "2"  # bump when the checkpoint recipe below changes

# The tiny UNet: SD1.5's detection keys (320 channels, context 768, conv proj_in, no label_emb) with two levels,
# one res block each and one transformer per block (2 input + 1 middle + 4 output = 7 attention blocks).
# Attention resolutions for an H x W image: (H/8, W/8) (level 0) and (H/16, W/16) (level 1 and middle).
TINY_UNET_CONFIG: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 1],  # 320 channels at both levels: ~44 M UNet parameters
    "transformer_depth": [1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1],
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
    "adm_in_channels": None,
    "use_checkpoint": False,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
TINY_UNET_DOWNSAMPLES = (8, 16)  # pixel-to-attention-grid factors of the attention blocks
# Attention blocks per grid: level 0 = input 1 + output 2, 3; level 1 = input 3 + middle + output 0, 1.
TINY_UNET_LAYERS = {8: 3, 16: 4}


def _init_(tensor, name: str, generator) -> None:
    import torch

    if tensor.ndim == 0:
        tensor.fill_(1.0 if name.endswith("scale") else 0.0)
    elif name.endswith("bias") or name.endswith("vae_shift"):
        tensor.zero_()
    elif tensor.ndim == 1:  # norm weights
        tensor.fill_(1.0)
    elif "embedding" in name:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    else:
        bound = 1.0 / max(1, tensor[0].numel()) ** 0.5
        tensor.copy_((torch.rand(tensor.shape, generator=generator) * 2 - 1) * bound)


def _random_state_dict(module, prefix: str, generator, dtype) -> dict:
    """Fresh random values for every floating tensor of ``module`` (built on the meta device: shapes only)."""
    import torch

    out = {}
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            raise RuntimeError(f"unexpected non-float tensor {prefix}{name} ({tensor.dtype})")
        value = torch.empty(tensor.shape, dtype=torch.float32)
        _init_(value, name, generator)
        out[prefix + name] = value.to(dtype).contiguous()
    return out


def build_tiny_checkpoint(path: Path, in_channels: int = 4) -> None:
    """Random-weight SD1.5-format checkpoint built from ComfyUI's own module classes (``in_channels=9``: an
    SD1.5-inpainting-format checkpoint: latent + mask + masked-image latent)."""
    import comfy.clip_model
    import comfy.ops
    import comfy.taesd.taesd
    import safetensors.torch
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    generator = torch.Generator().manual_seed(0)
    dtype = torch.float16
    state: dict[str, torch.Tensor] = {}
    with torch.device("meta"):
        unet = UNetModel(**{**TINY_UNET_CONFIG, "in_channels": in_channels}, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    state.update(_random_state_dict(unet, "model.diffusion_model.", generator, dtype))
    del unet

    config_path = Path(comfy.clip_model.__file__).with_name("sd1_clip_config.json")
    clip_config = json.loads(config_path.read_text())
    with torch.device("meta"):
        clip = comfy.clip_model.CLIPTextModel(
            clip_config, torch.float32, "meta", comfy.ops.disable_weight_init
        )
    state.update(_random_state_dict(clip, "cond_stage_model.transformer.", generator, dtype))
    del clip

    with torch.device("meta"):
        taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    state.update(_random_state_dict(taesd, "first_stage_model.", generator, dtype))
    del taesd

    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RuntimeError(f"non-finite values in {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    safetensors.torch.save_file(
        state, str(partial), metadata={"segdrop_tiny_version": TINY_CHECKPOINT_VERSION, "format": "pt"}
    )
    os.replace(partial, path)


def checkpoint_is_current(path: Path) -> bool:
    """True when ``path`` is a tiny checkpoint of this recipe version (an older or partial file is rebuilt)."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("segdrop_tiny_version") == TINY_CHECKPOINT_VERSION
    except Exception:
        return False


def ensure_tiny_checkpoint(harness: Any, inpainting: bool = False) -> str:
    """Build (once, cached in ``<cache>/checkpoints``) and register the tiny checkpoint with ``harness``, a
    :class:`segdrop.testing.comfy_harness.ComfyUI`; verify it loads as SD15; return its ``ckpt_name``.

    ``inpainting=True``: ``sd15_inpaint_tiny.safetensors``, the same recipe with a 9-channel UNet input, which
    ComfyUI detects as SD15 with ``in_channels`` 9 and an inpaint model type (``model.model.model_config.inpaint_model()``, ``model.model.blank_inpaint_image_like``).
    """
    name = TINY_INPAINT_CHECKPOINT if inpainting else TINY_CHECKPOINT
    in_channels = 9 if inpainting else 4
    path = harness.cache / "checkpoints" / name
    with harness.activated():
        if not checkpoint_is_current(path):
            build_tiny_checkpoint(path, in_channels=in_channels)
        if harness.folder_paths.get_full_path("checkpoints", name) is None:
            harness.folder_paths.add_model_folder_path("checkpoints", str(path.parent), is_default=True)
        found = harness.folder_paths.get_full_path("checkpoints", name)
        if not found or Path(found).resolve() != path:
            raise RuntimeError(
                f"ComfyUI resolves {name} to {found}, not {path}: another checkpoints folder holds a "
                "file of that name; remove it or set SEGDROP_TEST_CACHE to another folder."
            )
        import comfy.supported_models

        model, clip, vae = harness.load_checkpoint(name)
        detected = type(model.model.model_config)
        channels = model.model.model_config.unet_config.get("in_channels")
        if (detected is not comfy.supported_models.SD15 or clip is None or vae is None or channels != in_channels
                or model.model.model_config.inpaint_model() != inpainting
                or hasattr(model.model, "blank_inpaint_image_like") != inpainting):
            raise RuntimeError(
                f"{path} loads as {detected.__name__} (CLIP: {clip is not None}, VAE: {vae is not None}), not as "
                f"SD15 ({in_channels} input channels) with CLIP and VAE: delete it (or bump TINY_CHECKPOINT_VERSION) "
                "to rebuild it."
            )
    return name


def tiny_diffusers_twin(harness: Any, inpainting: bool = True):
    """A diffusers ``UNet2DConditionModel`` (float32, eval) with exactly the weights of the tiny checkpoint's
    UNet (``inpainting=True``: the 9-channel one), so a LoRA or fine-tune made on the twin with diffusers/peft
    can be checked in ComfyUI. The weights are converted with ComfyUI's own ``comfy.utils.unet_to_diffusers``
    map (independent of ``segdrop.training.export``'s). Builds/registers the checkpoint if needed."""
    import comfy.utils
    import safetensors.torch
    import torch
    from diffusers import UNet2DConditionModel

    name = ensure_tiny_checkpoint(harness, inpainting=inpainting)
    path = harness.cache / "checkpoints" / name
    prefix = "model.diffusion_model."
    ldm = {k[len(prefix):]: v.float() for k, v in safetensors.torch.load_file(str(path)).items()
           if k.startswith(prefix)}
    config = {**TINY_UNET_CONFIG, "in_channels": 9 if inpainting else 4}
    mapping = comfy.utils.unet_to_diffusers(config)  # {diffusers key: ldm key}
    state = {d: ldm[k] for d, k in mapping.items() if k in ldm}
    torch.manual_seed(0)
    twin = UNet2DConditionModel(
        sample_size=TINY_UNET_CONFIG["image_size"],
        in_channels=config["in_channels"],
        out_channels=4,
        block_out_channels=(320, 320),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=TINY_UNET_CONFIG["num_heads"],  # diffusers' SD1.x naming: heads, not head dim
        cross_attention_dim=TINY_UNET_CONFIG["context_dim"],
        use_linear_projection=False,
    )
    missing, unexpected = twin.load_state_dict(state, strict=False)
    unused = set(ldm) - set(mapping.values())
    if missing or unexpected or unused:
        raise RuntimeError(f"diffusers twin does not match {name}: missing {missing[:5]}, unexpected "
                           f"{unexpected[:5]}, unused checkpoint keys {sorted(unused)[:5]}")
    return twin.eval()


def tiny_attention_resolutions(height: int, width: int) -> set[tuple[int, int]]:
    """The (h, w) grids of the tiny UNet's attention layers for an image of height x width pixels."""
    return {(height // factor, width // factor) for factor in TINY_UNET_DOWNSAMPLES}


def tiny_attention_layers(height: int, width: int) -> dict[tuple[int, int], int]:
    """How many attn1 (and attn2) layers of the tiny UNet run at each grid for a height x width image."""
    return {(height // factor, width // factor): TINY_UNET_LAYERS[factor] for factor in TINY_UNET_DOWNSAMPLES}


def diffusers_text_to_image_folder(folder: Path, twin, words: Sequence[str], image_size: int,
                                   pipeline: str = "StableDiffusionPipeline") -> Path:
    """A diffusers SD1.x folder whose UNet is ``twin`` (the diffusers twin of the tiny checkpoint,
    ``tiny_diffusers_twin``): a small 4-latent-channel AutoencoderKL (factor 2), a tiny CLIPTextModel as wide as the
    twin's cross-attention with a word tokenizer over ``words``, the training scheduler and model_index.json naming
    ``pipeline`` (``StableDiffusionInpaintPipeline`` around a 9-channel twin): a base the training recipes accept
    as an SD1.x folder."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from ..training.tokenizer import write_word_tokenizer
    from ..training.train_scratch import make_scheduler

    folder.mkdir(parents=True)
    write_word_tokenizer(list(words), folder / "tokenizer", max_length=8)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=twin.config.cross_attention_dim, intermediate_size=32,
        num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=8, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=image_size)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    twin.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    make_scheduler().save_pretrained(folder / "scheduler")
    return folder
