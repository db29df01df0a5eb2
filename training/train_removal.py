"""ObjectDrop removal: counterfactual fine-tuning of an inpainting model (Winter et al., ECCV 2024, §4).

    python -m segdrop.training removal --config training/configs/toy_removal.toml --base out/toy_inpaint/model
    python -m segdrop.training removal --config training/configs/toy_removal_lora.toml --base out/toy_inpaint/model
    python -m segdrop.training removal --base path/to/sd15-inpainting --data_dir photos/ --lora_rank 16
    python -m segdrop.training removal --base ComfyUI/models/checkpoints/sd-v1-5-inpainting.safetensors \
        --base_config path/to/sd15-inpainting-configs --data_dir photos/ --lora_rank 16

Base: a concat-conditioned model with 2C+1 input channels: a toy one from ``python -m segdrop.training inpaint``,
a diffusers SD1.x inpainting folder (``model_index.json``, 9-channel UNet + VAE) or a diffusers SDXL inpainting
folder (the ``StableDiffusionXLInpaintPipeline`` layout: 9-channel ``text_time`` UNet, ``text_encoder`` +
``text_encoder_2``, ``tokenizer`` + ``tokenizer_2``, VAE with its own ``scaling_factor``, e.g. 0.13025). For SDXL
the constant empty-prompt conditioning is computed once as diffusers' SDXL pipelines do: both encoders' penultimate
hidden states concatenated, encoder 2's pooled ``text_embeds``, and ``time_ids`` = (original size, crop (0, 0),
target size) at the training resolution; the UNet gets them as ``added_cond_kwargs`` (``ModelBundle.
added_cond_kwargs``), in training and in ``conditioned_sample``. Single-file ``.safetensors`` checkpoints
(``from_single_file``) are supported for SD1.x inpainting: ``--base`` a ``.safetensors`` file in the original
LDM/CompVis layout (UNet ``model.diffusion_model.*`` with 9 input channels, VAE ``first_stage_model.*``, CLIP
``cond_stage_model.transformer.*``: e.g. ``sd-v1-5-inpainting.safetensors`` from ComfyUI's checkpoints folder) plus
``--base_config DIR``, a diffusers SD1.x inpainting folder that supplies what the single file lacks:
``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/`` ``config.json`` files, ``tokenizer/`` and ``scheduler/``
(weights not needed, e.g. the stable-diffusion-inpainting repo without its weight files). It loads offline through
diffusers' ``from_single_file(config=DIR, local_files_only=True)`` (``bundle.load_single_file_bundle``) into the same
bundle the diffusers folder gives. ``.ckpt``/``.pt`` files (pickles) are refused, as are SDXL/SD2 single files and
4-channel (text-to-image) checkpoints.

Data: counterfactual triplets read with ``training/counterfactual_data.py`` from ``--data_dir`` (a toy-world
dataset, a normalised ``counterfactual-data`` folder, or ``<name>_F/_G/_M`` photos; missing masks must be made
first with ``counterfactual-data --sam_checkpoint``) or ``--generate N`` toy-world scenes. Images whose size is
not the model's: square ones are resized (F and G bicubic, the mask by area > 0.5); non-square ones are an error
(crop them first).

Training example (as the paper): noisy latent of the COUNTERFACTUAL G, the OBJECT mask M (not its shadow), the
latent of the FACTUAL image F as it is (object not grayed), the EMPTY prompt; epsilon loss. Mask augmentation (on
by default, ``--no-mask_augment`` turns it off): each example's mask is dilated or eroded by r pixels, r uniform in
[-mask_augment_px, mask_augment_px] from the step generator (erosion that would empty the mask keeps the original),
so the model tolerates loose and tight user masks. ``--gray_object`` is the ablation that grays the object in F
(the inpainting convention; the benchmark's ``objectdrop_grayed`` row).

Modes: full fine-tune (default) or ``--lora_rank R``: peft LoRA on ``lora_targets`` (default the attention
projections to_q, to_k, to_v, to_out.0) with ``lora_alpha`` (default = rank); everything else, conv_in included,
stays frozen. Paper settings (SDXL-like internal model): lr 1e-5, batch 128, 50k steps, 512x512; the toy configs
in ``training/configs/`` scale these to the 1.7 M-parameter toy UNet on CPU.

Outputs: ``model/`` (a SegDrop bundle; with LoRA the adapter is merged into it) whose info records
``conditioning="removal"``, ``in_layout="noise+mask+image"``, ``gray_masked`` (= gray_object), ``base``, ``steps``,
``lora``. With LoRA also ``lora/``: ``training/export.py``'s ``save_lora`` (kohya + diffusers files) for SD-layout
UNets, else (the toy layout, which has no LDM/kohya names) the peft adapter as ``adapter_model.safetensors`` +
``adapter_config.json``. A full fine-tune of an SD-layout UNet also writes ``unet_ldm.safetensors``
(``save_unet_single_file``, for ComfyUI's UNETLoader).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from .conditioned_unet import gray_out, inpaint_layout_problem
from .loop import ConfigError, cli_main, prepare_run_dir
from .lora_adapter import DEFAULT_LORA_TARGETS, add_lora, export_fine_tune
from .settings import recipe_parser, resolve_config
from .train_conditioned import (
    Batch,
    CommonConfig,
    Recipe,
    base_info,
    load_base,
    run_cli,
    setup_threads_and_accelerator,
    train_loop,
    validate_common,
)
from .train_inpaint import resolve_base

logger = logging.getLogger("segdrop.training.removal")


@dataclass
class RemovalConfig(CommonConfig):
    base: str = ""  # an inpainting model (2C+1 input channels): a folder or a single-file SD1.x .safetensors
    base_config: str | None = None  # with a single-file --base: the diffusers folder of its configs + tokenizer
    data_dir: str | None = None  # triplets: toy-world, normalised counterfactual-data folder, or name_F/_G/_M photos
    generate: int = 0  # >0: render this many toy-world scenes into <output_dir>/data first
    split: str = "train"  # (with --generate: the split name the scenes are rendered under)
    output_dir: str = "out/removal"
    lr: float = 1e-5  # the paper's
    mask_augment: bool = True
    mask_augment_px: int = 2  # dilation/erosion radius drawn from [-px, px]
    gray_object: bool = False  # ablation: gray the object in the conditioning image (inpainting convention)
    lora_rank: int = 0  # 0: full fine-tune
    lora_alpha: float = 0.0  # 0: = lora_rank (scale 1)
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


HELPS = {
    "base": "inpainting model: `python -m segdrop.training inpaint` output or a diffusers SD1.x/SDXL inpainting folder",
    "base_config": "with a single-file .safetensors --base: a diffusers SD1.x inpainting folder giving its configs "
                   "(model_index.json, unet/vae/text_encoder config.json) and tokenizer/ + scheduler/",
    "data_dir": "counterfactual triplets (toy-world / counterfactual-data folder / name_F,_G,_M photos)",
    "gray_object": "ablation: gray out the object in the conditioning image",
    "lora_rank": "LoRA rank (0 = full fine-tune)",
}


def validate(c: RemovalConfig) -> None:
    if not c.base:
        raise ConfigError("no base model: give --base <inpainting model>, e.g. the `model/` folder written by "
                          "`python -m segdrop.training inpaint`, or a diffusers SD inpainting folder")
    validate_common(c)
    suffix = Path(c.base).suffix.lower()
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        raise ConfigError(f"--base {c.base} is a {suffix} (pickle) checkpoint, which is not loaded (unpickling can run "
                          "code): use the .safetensors version of the model (or convert it to .safetensors first)")
    if suffix == ".safetensors" and not c.base_config:
        raise ConfigError(f"--base {c.base} is a single-file checkpoint: it holds weights only, so also give "
                          "--base_config DIR, a diffusers SD1.x inpainting folder with model_index.json, "
                          "unet/config.json, vae/config.json, text_encoder/config.json, tokenizer/ and scheduler/ "
                          "(weights not needed)")
    if c.base_config and not Path(c.base).is_file():
        raise ConfigError(f"--base_config is only for a single-file .safetensors --base; {c.base} is not a file "
                          "(a model folder has its own configs: drop --base_config)")
    if c.base_config and not Path(c.base_config).is_dir():
        raise ConfigError(f"--base_config {c.base_config} does not exist (expected a diffusers SD1.x inpainting folder)")
    if not c.data_dir and c.generate <= 0:
        raise ConfigError("no training data: give --data_dir <triplet folder> or --generate N (toy-world scenes)")
    if c.data_dir and c.generate > 0:
        raise ConfigError("give either --data_dir or --generate, not both")
    if c.data_dir and not Path(c.data_dir).is_dir():
        raise ConfigError(f"data_dir {c.data_dir} does not exist")
    if c.mask_augment_px < 0:
        raise ConfigError("mask_augment_px must be >= 0")
    if c.lora_rank < 0 or c.lora_alpha < 0:
        raise ConfigError("lora_rank and lora_alpha must be >= 0")
    if c.lora_rank and not c.lora_targets:
        raise ConfigError("lora_targets is empty: name the UNet modules to adapt, e.g. to_q to_k to_v to_out.0")


# ----------------------------------------------------------------------------------------------- data


def _resize_square(triplet, size: int):
    """Resize a square triplet to ``size`` (F, G bicubic; mask by area > 0.5); non-square is a ``ConfigError``."""
    from PIL import Image

    h, w = triplet.mask.shape
    if (h, w) == (size, size):
        return triplet.factual, triplet.counterfactual, triplet.mask
    if h != w:
        raise ConfigError(f"triplet {triplet.id!r} is {w}x{h}, not square; the model trains at {size}x{size}: crop the "
                          "images (and mask) to a square first")
    def rgb(a: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(a).resize((size, size), Image.BICUBIC))
    area = np.asarray(Image.fromarray(triplet.mask.astype(np.uint8) * 255).resize((size, size), Image.BOX))
    return rgb(triplet.factual), rgb(triplet.counterfactual), area > 127


def load_triplet_tensors(folder: Path, size: int) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, F and G uint8 (N, 3, S, S), M bool (N, 1, S, S) of every triplet in ``folder``."""
    from .counterfactual_data import list_triplets, load_triplet, require_masker

    sources = list_triplets(folder)
    require_masker(sources, None)
    ids, fs, gs, ms = [], [], [], []
    for source in sources:
        f, g, m = _resize_square(load_triplet(source), size)
        if not m.any():
            raise ConfigError(f"triplet {source.id!r} in {folder} has an empty mask after resizing to {size}")
        ids.append(source.id)
        fs.append(torch.from_numpy(np.ascontiguousarray(f)).permute(2, 0, 1))
        gs.append(torch.from_numpy(np.ascontiguousarray(g)).permute(2, 0, 1))
        ms.append(torch.from_numpy(np.ascontiguousarray(m))[None])
    return ids, torch.stack(fs), torch.stack(gs), torch.stack(ms)


def augment_masks(g: torch.Generator, masks: torch.Tensor, max_px: int) -> torch.Tensor:
    """Dilate (r > 0) or erode (r < 0) each mask (B, 1, H, W) by |r| px, r uniform in [-max_px, max_px] from ``g``
    (square structuring element); an erosion that empties a mask keeps the original."""
    from ..removal.crop import dilate

    radii = torch.randint(-max_px, max_px + 1, (masks.shape[0],), generator=g)
    out = masks.clone()
    for i, r in enumerate(radii.tolist()):
        m = masks[i, 0].bool()
        if r > 0:
            out[i, 0] = dilate(m, r)
        elif r < 0:
            eroded = ~dilate(~m, -r)
            if eroded.any():
                out[i, 0] = eroded
    return out


# ----------------------------------------------------------------------------------------------- training


def train(config: RemovalConfig, command: str) -> dict:
    """Fine-tune ``config.base`` on counterfactual triplets (module docstring); returns steps, loss, output."""
    from .train_scratch import generate_dataset

    started = time.time()
    accelerator = setup_threads_and_accelerator(config)
    out = Path(config.output_dir)
    # checked before the run folder is touched
    bundle = load_base(config.base, allow_sdxl=True, config=config.base_config)
    problem = inpaint_layout_problem(bundle)
    if problem is not None:
        raise ConfigError(f"--base {config.base} cannot be fine-tuned for removal: {problem}")
    bundle.text_encoder.requires_grad_(False)
    if bundle.text_encoder_2 is not None:
        bundle.text_encoder_2.requires_grad_(False)
    prepare_run_dir(accelerator, out, config.resume)

    if config.generate > 0:
        spec = SimpleNamespace(generate=config.generate, split=config.split, image_size=bundle.image_size, seed=config.seed)
        data_dir = generate_dataset(spec, out) if accelerator.is_main_process else out / "data"
        accelerator.wait_for_everyone()
    else:
        data_dir = Path(config.data_dir)
    ids, factual, counterfactual, masks = load_triplet_tensors(data_dir, bundle.image_size)
    n = len(ids)
    hidden = bundle.encode_prompt([""]).float().cpu()  # the empty prompt, always
    added = bundle.added_cond_kwargs([""])  # SDXL: its pooled embedding + time ids (None for SD1.x / toy bases)
    added = None if added is None else {k: v.float().cpu() for k, v in added.items()}
    logger.info("removal: %d triplets from %s, base %s, %s", n, data_dir, config.base,
                f"LoRA rank {config.lora_rank}" if config.lora_rank else "full fine-tune")

    unet = bundle.unet
    if config.lora_rank:
        unet = add_lora(unet, config.lora_rank, config.lora_alpha, config.lora_targets)
    else:
        unet.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad]

    def draw(g: torch.Generator, b: int) -> Batch:
        index = torch.randint(0, n, (b,), generator=g)
        mask = masks[index]
        if config.mask_augment and config.mask_augment_px > 0:
            mask = augment_masks(g, mask, config.mask_augment_px)
        cond = factual[index].float() / 255.0
        if config.gray_object:
            cond = gray_out(cond, mask)
        return Batch(counterfactual[index].float() / 255.0, cond, mask, torch.zeros(b, dtype=torch.long))

    def export(trained, run_info: dict) -> None:
        lora = ({"rank": config.lora_rank, "alpha": config.lora_alpha or config.lora_rank,
                 "targets": list(config.lora_targets)} if config.lora_rank else None)
        info = {**base_info(bundle), **run_info, "conditioning": "removal", "in_layout": "noise+mask+image",
                "gray_masked": bool(config.gray_object), "mask_downsample": "max_pool", "prompt": "",
                "mask_augment_px": config.mask_augment_px if config.mask_augment else 0, "lora": lora,
                "base_recipe": bundle.info.get("recipe"), "train_triplets": n}
        export_fine_tune(bundle, trained, info, out, lora=bool(config.lora_rank), save_dtype=config.save_dtype)

    recipe = Recipe("removal", unet, params, hidden, draw, export, added)
    return train_loop(config, command, accelerator, bundle, recipe, started)


def resolve(args: argparse.Namespace) -> RemovalConfig:
    config = resolve_config(RemovalConfig, args, "removal")
    if config.base:
        config.base = resolve_base(config.base)
    if config.base_config:
        config.base_config = str(Path(config.base_config).expanduser())
    validate(config)
    return config


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return recipe_parser("removal", RemovalConfig, __doc__, HELPS, parser)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    return run_cli(train, resolve, args, argv, "removal")


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
