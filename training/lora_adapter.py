"""LoRA adapters shared by the fine-tuning recipes (removal, background, insertion): attach, merge, save and load
the plain peft adapter the toy layouts ship, and the one export step every recipe ends with.

SD-layout UNets are exported with kohya + diffusers keys by ``training/export.py`` (core LoraLoader loads them);
the toy UNet has no LDM/kohya names, so its LoRA stays a peft adapter (``adapter_model.safetensors`` +
``adapter_config.json``) that :func:`load_lora_fallback` merges over its base.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from .bundle import replace_dir
from .loop import ConfigError
from .train_conditioned import export_single_file, save_derived_bundle, sd_layout_problem

logger = logging.getLogger("segdrop.training.lora")
DEFAULT_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
"""The attention projections peft attaches LoRA layers to unless a recipe's ``lora_targets`` says otherwise."""


def add_lora(unet, rank: int, alpha: float, targets: list[str]):
    """Freeze ``unet`` and attach a peft LoRA adapter (gaussian-initialised A, zero B: starts as the base model)."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=list(targets))
    try:
        unet.add_adapter(config)
    except ValueError as error:
        raise ConfigError(f"lora_targets {targets} do not match modules of this UNet ({error}); attention projections "
                          "are named to_q, to_k, to_v, to_out.0") from None
    return unet


def merge_lora(unet):
    """Fold every LoRA layer into its base weight and remove the adapter, leaving a plain UNet2DConditionModel."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent_name) if parent_name else unet, child, module.get_base_layer())
    for attr in ("peft_config",):
        if hasattr(unet, attr):
            delattr(unet, attr)
    unet._hf_peft_config_loaded = False
    return unet


def save_lora_fallback(unet, folder: Path, metadata: dict) -> dict[str, Path]:
    """The peft adapter as ``adapter_model.safetensors`` + ``adapter_config.json`` in ``folder``, atomically."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(unet).items()}
    cfg = unet.peft_config["default"].to_dict()
    cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in cfg.items()}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        save_file(state, str(tmp / "adapter_model.safetensors"), metadata={"segdrop": json.dumps(metadata, default=str)})
        (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=1, default=str) + "\n")
        replace_dir(tmp, folder)  # an existing adapter is swapped out whole, never left half-written
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"peft": folder / "adapter_model.safetensors"}


def load_lora_fallback(bundle, folder: str | os.PathLike):
    """Apply a peft adapter written by :func:`save_lora_fallback` to ``bundle``'s UNet and merge it, in place:
    the toy LoRAs ship as small adapters over their base (removal: the toy inpainting model; background: the
    default model). Returns the bundle."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    weights, config_file = folder / "adapter_model.safetensors", folder / "adapter_config.json"
    if not weights.is_file() or not config_file.is_file():
        raise ConfigError(f"{folder} holds no peft adapter (adapter_model.safetensors + adapter_config.json); "
                          "train one with `python -m segdrop.training removal --lora_rank R` (or `background --lora_rank R`)")
    config = json.loads(config_file.read_text())
    known = set(LoraConfig.__dataclass_fields__)
    bundle.unet.add_adapter(LoraConfig(**{k: v for k, v in config.items() if k in known}))
    result = set_peft_model_state_dict(bundle.unet, load_file(str(weights)))
    if getattr(result, "unexpected_keys", None):
        raise ConfigError(f"the adapter in {folder} does not fit this UNet: unexpected keys "
                          f"{result.unexpected_keys[:3]}; load it over the base it was trained on")
    merge_lora(bundle.unet)
    return bundle


def export_fine_tune(bundle, trained, info: dict, out: Path, *, lora: bool, save_dtype: str) -> Path:
    """The recipes' outputs: ``lora/`` (kohya + diffusers for SD layouts, else the peft adapter) then the merged
    ``model/`` bundle, or for a full fine-tune ``unet_ldm.safetensors`` (SD layouts) and ``model/``. Records the
    written files in ``info`` (the model card) and returns the bundle folder."""
    if lora:
        problem = sd_layout_problem(trained)
        if problem is None:
            from .export import save_lora

            files = save_lora(trained, out / "lora", info)
        else:  # toy layouts have no kohya/LDM names: keep the plain peft adapter
            files = save_lora_fallback(trained, out / "lora", info)
            logger.info("LoRA written as a peft adapter %s (%s)", files["peft"], problem)
        info["lora_files"] = {k: str(v) for k, v in files.items()}
        trained = merge_lora(trained)
    else:
        info["export_files"] = export_single_file(trained, out, info)
    path = save_derived_bundle(bundle, trained, info, out / "model", save_dtype)
    logger.info("wrote %s (%d steps, last loss %s)", path, info["steps"], info["final_loss"])
    return path
