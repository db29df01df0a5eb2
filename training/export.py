"""Export trained UNets for other tools: LoRAs for ComfyUI's core LoraLoader (and A1111/Forge/kohya), full
fine-tunes for ComfyUI's core "Load Diffusion Model" (UNETLoader), and diffusers' own LoRA format.

* :func:`save_lora` — a diffusers ``UNet2DConditionModel`` carrying a peft LoRA adapter (``unet.add_adapter(
  LoraConfig(...))`` or ``get_peft_model``) is written twice, atomically:

  - ``<out_dir>/lora_kohya.safetensors``: kohya/A1111 layout with the ORIGINAL SD (LDM) module names,
    ``lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight`` / ``.lora_up.weight`` /
    ``.alpha`` (scale = alpha / rank, as kohya writes it), plus ``ss_network_dim`` / ``ss_network_alpha`` and the
    caller's metadata as safetensors metadata. ComfyUI's ``model_lora_keys_unet`` maps
    ``lora_unet_<ldm key with _>`` for every UNet weight, so every key loads (none is "not loaded").
  - ``<out_dir>/pytorch_lora_weights.safetensors``: diffusers' format (``unet.<peft key>.lora_A/B.weight`` and
    the adapter config as ``lora_adapter_metadata``), written by ``StableDiffusionPipeline.save_lora_weights``
    itself, read by ``pipeline.load_lora_weights(out_dir)`` / ``unet.load_lora_adapter``.

* :func:`save_unet_single_file` — the full UNet as one safetensors file in the LDM layout
  (``input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight`` ...), which ComfyUI's UNETLoader detects
  (SD1.x/SD2.x/SDXL; 9 input channels = inpainting) and which other single-file tools expect.

The diffusers -> LDM module mapping (:func:`diffusers_to_ldm_map`) is built from the UNet's config; it covers
SD-family UNets only (CrossAttnDownBlock2D/DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D/UpBlock2D,
4 output channels). No ComfyUI import here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

KOHYA_FILE = "lora_kohya.safetensors"
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"

_DOWN_TYPES = {"CrossAttnDownBlock2D", "DownBlock2D"}
_UP_TYPES = {"CrossAttnUpBlock2D", "UpBlock2D"}
_MID_TYPES = {"UNetMidBlock2DCrossAttn"}
_RESNET = {  # diffusers ResnetBlock2D submodule -> LDM ResBlock submodule
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_BASIC = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
NOT_SD_LAYOUT = (
    "{why}: only SD-family UNet layouts (SD1.x/SD2.x/SDXL: 4, 8 or 9 input channels, 4 output channels, "
    "CrossAttn/plain Down/Up blocks, UNetMidBlock2DCrossAttn) have a single-file/LDM form that ComfyUI loads. "
    "SegDrop's toy models (12-channel pixel-unshuffle UNets with custom widths) are diffusers folders only: "
    "save them with save_pretrained / training.bundle, not as a single file or kohya LoRA."
)


def _config(unet: Any) -> dict:
    config = getattr(unet, "config", None)
    if config is None:
        raise TypeError(f"expected a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    return dict(config)


def check_sd_layout(config: dict) -> None:
    """Raise ValueError (with :data:`NOT_SD_LAYOUT`) unless ``config`` is an SD-family UNet layout."""
    reasons = []
    if config.get("in_channels") not in (4, 8, 9):
        reasons.append(f"in_channels={config.get('in_channels')}")
    if config.get("out_channels") != 4:
        reasons.append(f"out_channels={config.get('out_channels')}")
    bad_down = [t for t in config.get("down_block_types", ()) if t not in _DOWN_TYPES]
    bad_up = [t for t in config.get("up_block_types", ()) if t not in _UP_TYPES]
    if bad_down or bad_up:
        reasons.append(f"block types {bad_down + bad_up}")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") not in _MID_TYPES:
        reasons.append(f"mid_block_type={config.get('mid_block_type')}")
    if reasons:
        raise ValueError(NOT_SD_LAYOUT.format(why="not an SD-family UNet (" + ", ".join(reasons) + ")"))


def diffusers_to_ldm_map(config: dict) -> dict[str, str]:
    """``{diffusers module path: LDM module path}`` for every parameterised module of an SD-family UNet
    (attention blocks map as a whole: ``down_blocks.0.attentions.0`` -> ``input_blocks.1.1``)."""
    check_sd_layout(config)
    down_types = list(config["down_block_types"])
    levels = len(down_types)
    layers = config.get("layers_per_block", 2)
    layers = [layers] * levels if isinstance(layers, int) else list(layers)
    out: dict[str, str] = dict(_BASIC)

    def resnet(src: str, dst: str) -> None:
        for a, b in _RESNET.items():
            out[f"{src}.{a}"] = f"{dst}.{b}"

    n = 1
    for x, kind in enumerate(down_types):
        for i in range(layers[x]):
            resnet(f"down_blocks.{x}.resnets.{i}", f"input_blocks.{n}.0")
            if kind.startswith("CrossAttn"):
                out[f"down_blocks.{x}.attentions.{i}"] = f"input_blocks.{n}.1"
            n += 1
        if x < levels - 1:
            out[f"down_blocks.{x}.downsamplers.0.conv"] = f"input_blocks.{n}.0.op"
            n += 1

    resnet("mid_block.resnets.0", "middle_block.0")
    out["mid_block.attentions.0"] = "middle_block.1"
    resnet("mid_block.resnets.1", "middle_block.2")

    up_types = list(config["up_block_types"])
    up_layers = list(reversed(layers))
    n = 0
    for x, kind in enumerate(up_types):
        count = up_layers[x] + 1
        attention = kind.startswith("CrossAttn")
        for i in range(count):
            resnet(f"up_blocks.{x}.resnets.{i}", f"output_blocks.{n}.0")
            if attention:
                out[f"up_blocks.{x}.attentions.{i}"] = f"output_blocks.{n}.1"
            if i == count - 1 and x < len(up_types) - 1:
                out[f"up_blocks.{x}.upsamplers.0.conv"] = f"output_blocks.{n}.{2 if attention else 1}.conv"
            n += 1
    return out


def _ldm_name(name: str, mapping: dict[str, str]) -> str:
    """LDM path of a diffusers module or parameter path (longest mapped prefix, rest unchanged)."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return ".".join([mapping[prefix], *parts[cut:]])
    raise KeyError(name)


def unet_state_dict_to_ldm(state_dict: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict with LDM (``input_blocks...``) keys; every key must map."""
    mapping = diffusers_to_ldm_map(config)
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state_dict.items():
        try:
            new = _ldm_name(key, mapping)
        except KeyError:
            unmapped.append(key)
            continue
        if new in out:
            raise ValueError(f"two diffusers keys map to {new}")
        out[new] = value
    if unmapped:
        raise ValueError(NOT_SD_LAYOUT.format(why=f"{len(unmapped)} keys have no LDM name (e.g. {unmapped[:3]})"))
    return out


# --------------------------------------------------------------------------------------------------------------


def _string_metadata(metadata: dict | None) -> dict[str, str]:
    return {
        str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items() if v is not None
    }


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        safetensors.torch.save_file(
            {k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(partial), metadata=metadata
        )
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _lora_modules(unet: Any, adapter: str | None):
    """``(adapter name, [(diffusers module path, peft LoraLayer)])`` of the UNet's active LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    found = []
    for name, module in unet.named_modules():
        if isinstance(module, LoraLayer):
            found.append((name, module))
    if not found:
        raise ValueError("the UNet carries no peft LoRA layers (add one with unet.add_adapter(LoraConfig(...)))")
    if adapter is None:
        names = {n for _, m in found for n in m.lora_A.keys()}
        active = getattr(found[0][1], "active_adapters", None) or sorted(names)
        if len(names) > 1 and len(active) != 1:
            raise ValueError(f"several LoRA adapters {sorted(names)}: pass adapter=")
        adapter = active[0] if len(names) > 1 else next(iter(names))
    out = []
    for name, module in found:
        if adapter not in module.lora_A:
            continue
        for prefix in ("base_model.model.",):  # get_peft_model wraps the UNet
            if name.startswith(prefix):
                name = name[len(prefix):]
        if getattr(module, "use_dora", {}).get(adapter, False):
            raise ValueError(f"{name}: DoRA adapters are not exported (kohya LoRA has no DoRA magnitude)")
        if getattr(module, "lora_bias", {}).get(adapter, False):
            raise ValueError(f"{name}: LoRA with lora_bias=True is not exported")
        out.append((name, module))
    return adapter, out


def lora_to_kohya(unet: Any, adapter: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Kohya-format tensors with LDM names (``lora_unet_<ldm path with _>``) and info (rank, alpha, modules)."""
    base = unet.get_base_model() if hasattr(unet, "get_base_model") else unet
    config = _config(base)
    mapping = diffusers_to_ldm_map(config)
    adapter, modules = _lora_modules(unet, adapter)
    tensors: dict[str, torch.Tensor] = {}
    ranks, alphas = set(), set()
    for name, module in modules:
        ldm = _ldm_name(name, mapping)
        key = "lora_unet_" + ldm.replace(".", "_")
        down = module.lora_A[adapter].weight.detach().float()
        up = module.lora_B[adapter].weight.detach().float()
        rank = down.shape[0]
        alpha = float(module.scaling[adapter]) * rank  # kohya: scale = alpha / rank (covers rslora, patterns)
        if key + ".lora_down.weight" in tensors:
            raise ValueError(f"two LoRA modules map to {key}")
        tensors[key + ".lora_down.weight"] = down
        tensors[key + ".lora_up.weight"] = up
        tensors[key + ".alpha"] = torch.tensor(alpha, dtype=torch.float32)
        ranks.add(rank)
        alphas.add(alpha)
    info = {
        "adapter": adapter,
        "modules": len(modules),
        "rank": max(ranks),
        "alpha": next(iter(alphas)) if len(alphas) == 1 else max(alphas),
    }
    return tensors, info


def save_lora(unet: Any, out_dir: str | os.PathLike, metadata: dict | None = None, *,
              adapter: str | None = None) -> dict[str, Path]:
    """Write the UNet's peft LoRA as ``{"kohya": lora_kohya.safetensors, "diffusers":
    pytorch_lora_weights.safetensors}`` in ``out_dir`` (both atomically). ``metadata`` (base, steps, dataset,
    recipe, ...) becomes string safetensors metadata of the kohya file, with ss_network_dim/alpha/module."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors, info = lora_to_kohya(unet, adapter)
    rank, alpha = info["rank"], info["alpha"]
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": f"{alpha:g}",
        "ss_v2": "False",
        "rank": str(rank),
        "alpha": f"{alpha:g}",
        "modules": str(info["modules"]),
        "format": "pt",
        "segdrop_naming": "ldm",
    }
    user = _string_metadata(metadata)
    meta.update({k: v for k, v in user.items() if k not in ("format",)})
    if "base" in user:
        meta.setdefault("ss_sd_model_name", user["base"])
    if "steps" in user:
        meta.setdefault("ss_steps", user["steps"])
    paths = {"kohya": out_dir / KOHYA_FILE, "diffusers": out_dir / DIFFUSERS_FILE}
    _atomic_save(tensors, paths["kohya"], meta)

    # diffusers format, written by diffusers itself into a scratch folder, then moved into place atomically
    peft_sd = get_peft_model_state_dict(unet, adapter_name=info["adapter"])
    peft_sd = {k[len("base_model.model."):] if k.startswith("base_model.model.") else k: v
               for k, v in peft_sd.items()}
    config = unet.peft_config[info["adapter"]]
    adapter_meta = config.to_dict() if hasattr(config, "to_dict") else dict(vars(config))
    adapter_meta = json.loads(json.dumps(adapter_meta, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".lora_tmp_") as scratch:
        StableDiffusionPipeline.save_lora_weights(
            scratch,
            unet_lora_layers={k: v.detach().cpu().contiguous() for k, v in peft_sd.items()},
            unet_lora_adapter_metadata=adapter_meta,
            weight_name=DIFFUSERS_FILE,
            safe_serialization=True,
        )
        os.replace(Path(scratch) / DIFFUSERS_FILE, paths["diffusers"])
    return paths


def save_unet_single_file(unet: Any, path: str | os.PathLike, metadata: dict | None = None, *,
                          dtype: torch.dtype | None = None) -> Path:
    """The full UNet as one safetensors file with LDM keys (``input_blocks.…``), loadable by ComfyUI's
    UNETLoader ("Load Diffusion Model") for SD1.x/SD2.x/SDXL layouts. A peft-wrapped UNet is saved merged
    only if already merged: pass the plain fine-tuned UNet. Raises ValueError for non-SD layouts."""
    base = unet.get_base_model() if hasattr(unet, "get_base_model") else unet
    config = _config(base)
    check_sd_layout(config)
    state = base.state_dict()
    if any(".lora_" in k or ".base_layer." in k for k in state):
        raise ValueError("the UNet carries LoRA layers: merge them first (unet.fuse_lora / merge_and_unload) "
                         "or export them with save_lora")
    ldm = unet_state_dict_to_ldm(state, config)
    if dtype is not None:
        ldm = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ldm.items()}
    meta = {"format": "pt", "segdrop_layout": "ldm", "in_channels": str(config["in_channels"])}
    meta.update({k: v for k, v in _string_metadata(metadata).items() if k != "format"})
    path = Path(path)
    _atomic_save(ldm, path, meta)
    return path


def kohya_delta(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """The weight delta ``up @ down * alpha / rank`` of one kohya module (conv kernels handled)."""
    down = tensors[key + ".lora_down.weight"].float()
    up = tensors[key + ".lora_up.weight"].float()
    rank = down.shape[0]
    scale = tensors[key + ".alpha"].item() / rank if key + ".alpha" in tensors else 1.0
    delta = up.flatten(1) @ down.flatten(1)
    if down.ndim == 4:
        delta = delta.reshape(up.shape[0], *down.shape[1:])
    return delta * scale
