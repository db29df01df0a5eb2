"""Make a toy inpainting model the way SD-inpainting was made: widen a text-to-image model's input, train on
random masks.

    python -m segdrop.training inpaint --config training/configs/toy_inpaint.toml --output_dir out/toy_inpaint
    python -m segdrop.training inpaint --base models/default --generate 2000 --steps 1500 --output_dir out/inp

The toy world has no inpainting base, so this recipe builds one: start from any SegDrop bundle (default
``models/default``), widen ``conv_in`` to the concat layout ``[noisy latent, mask, masked-image latent]`` with
zero-initialised extra channels (``conditioned_unet.py``: the widened model starts out as the text-to-image model
exactly), and train the whole UNet with the epsilon loss on toy-world images + captions (``--data_dir`` a toy-world
folder or ``--generate N``; images are resized bicubically to the base's size as in ``scratch``). The text encoder
stays frozen (prompt states are computed once).

Masks (``random_masks``, drawn from the step generator): with probability ``full_mask_prob`` the whole image
(SD-inpainting masks everything 25 % of the time, which keeps text-to-image ability), else 1..``max_shapes``
shapes, each a rectangle, an ellipse or a stroke (a thick segment) with uniform random centre, size 10-70 % of the
side (strokes: 3-12 % wide); the mask is their union. The masked region of the conditioning image is set to 0.5
grey in [0, 1] pixel space before encoding (SD-inpainting's masked image; ComfyUI's ``InpaintModelConditioning``).
Captions are the prompts, replaced by the empty prompt with probability ``caption_dropout``.

Outputs in ``output_dir``: ``config.toml``, ``loss.jsonl``, ``checkpoints/``, ``data/`` (with ``--generate``) and
``model/``: a SegDrop bundle whose UNet takes 2C+1 channels and whose ``segdrop_model.json`` records
``conditioning="inpaint"``, ``in_layout="noise+mask+masked_image"``, ``gray_masked=true``, ``base``, ``steps``...
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from .conditioned_unet import gray_out, make_inpaint_unet
from .loop import ConfigError, cli_main, prepare_run_dir
from .settings import recipe_parser, resolve_config
from .train_conditioned import (
    Batch,
    CommonConfig,
    Recipe,
    base_info,
    export_single_file,
    load_base,
    run_cli,
    save_derived_bundle,
    setup_threads_and_accelerator,
    train_loop,
    validate_common,
)

logger = logging.getLogger("segdrop.training.inpaint")
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class InpaintConfig(CommonConfig):
    data_dir: str | None = None  # toy-world dataset folder (metadata.jsonl with image + caption)
    generate: int = 0  # >0: render this many toy-world scenes into <output_dir>/data first
    split: str = "train"
    output_dir: str = "out/inpaint"
    caption_dropout: float = 0.1
    full_mask_prob: float = 0.25  # probability of masking the whole image (SD-inpainting's 25 %)
    max_shapes: int = 3  # random masks: union of 1..max_shapes rectangles / ellipses / strokes


HELPS = {
    "base": "text-to-image model to widen (SegDrop bundle or diffusers SD1.x folder)",
    "data_dir": "toy-world dataset folder", "generate": "render N toy-world scenes into <output_dir>/data",
}


def resolve_base(base: str) -> str:
    """``base`` as given, or relative to the package root when it does not exist from here (``models/default``)."""
    path = Path(base).expanduser()
    if not path.exists() and not path.is_absolute() and (PACKAGE_ROOT / path).exists():
        return str(PACKAGE_ROOT / path)
    return str(path)


def validate(c: InpaintConfig) -> None:
    validate_common(c)
    if not c.data_dir and c.generate <= 0:
        raise ConfigError("no training data: give --data_dir <toy-world dataset folder> or --generate N")
    if c.data_dir and c.generate > 0:
        raise ConfigError("give either --data_dir or --generate, not both")
    if c.data_dir and not (Path(c.data_dir) / "metadata.jsonl").is_file():
        raise ConfigError(f"data_dir {c.data_dir} has no metadata.jsonl (expected a toy-world dataset folder)"
                          if Path(c.data_dir).exists() else f"data_dir {c.data_dir} does not exist")
    if not 0 <= c.caption_dropout <= 1:
        raise ConfigError("caption_dropout must be in [0, 1]")
    if not 0 <= c.full_mask_prob <= 1:
        raise ConfigError("full_mask_prob must be in [0, 1]")
    if c.max_shapes < 1:
        raise ConfigError("max_shapes must be >= 1")


def random_masks(g: torch.Generator, n: int, size: int, max_shapes: int = 3, full_mask_prob: float = 0.25) -> torch.Tensor:
    """Bool (n, 1, size, size) random inpainting masks, every draw from ``g`` (see the module docstring)."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32) + 0.5, torch.arange(size, dtype=torch.float32) + 0.5,
                            indexing="ij")
    full = torch.rand(n, generator=g) < full_mask_prob
    count = torch.randint(1, max_shapes + 1, (n,), generator=g)
    mask = torch.zeros(n, size, size, dtype=torch.bool)
    for k in range(max_shapes):
        kind = torch.randint(0, 3, (n,), generator=g)
        centre = torch.rand(n, 2, generator=g) * size
        half = (0.05 + 0.3 * torch.rand(n, 2, generator=g)) * size
        angle = torch.rand(n, generator=g) * math.pi
        width = (0.03 + 0.09 * torch.rand(n, generator=g)) * size
        cx, cy = centre[:, 0, None, None], centre[:, 1, None, None]
        hx, hy = half[:, 0, None, None], half[:, 1, None, None]
        dx, dy = xs[None] - cx, ys[None] - cy
        rect = (dx.abs() <= hx) & (dy.abs() <= hy)
        ellipse = (dx / hx) ** 2 + (dy / hy) ** 2 <= 1
        # stroke: segment through the centre, direction `angle`, half-length hx, half-width width/2
        ux, uy = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
        along = (dx * ux + dy * uy).clamp(-hx, hx)
        stroke = (dx - along * ux) ** 2 + (dy - along * uy) ** 2 <= (width[:, None, None] / 2) ** 2
        shape = torch.where((kind == 0)[:, None, None], rect, torch.where((kind == 1)[:, None, None], ellipse, stroke))
        mask |= shape & (k < count)[:, None, None]
    mask |= full[:, None, None]
    return mask[:, None]


def encode_prompts(bundle, prompts: list[str], chunk: int = 256) -> torch.Tensor:
    """Frozen text-encoder states (P, L, D) of ``prompts``; an unknown word is a ``ConfigError`` naming it."""
    rows = []
    try:
        for i in range(0, len(prompts), chunk):
            rows.append(bundle.encode_prompt(prompts[i:i + chunk]).float().cpu())
    except ValueError as error:
        raise ConfigError(f"a caption does not fit the base model's tokenizer: {error}") from None
    return torch.cat(rows)


def train(config: InpaintConfig, command: str) -> dict:
    """Widen ``config.base`` and train it as an inpainting model; returns steps, wall time, final loss, output."""
    from .train_scratch import generate_dataset, load_images, read_records

    started = time.time()
    accelerator = setup_threads_and_accelerator(config)
    out = Path(config.output_dir)
    bundle = load_base(config.base)  # checked before the run folder is touched
    c = bundle.codec.latent_channels
    try:
        unet = make_inpaint_unet(bundle.unet, c)
    except ValueError as error:
        raise ConfigError(f"--base {config.base}: {error}") from None
    bundle.text_encoder.requires_grad_(False)
    prepare_run_dir(accelerator, out, config.resume)

    if config.generate > 0:
        spec = SimpleNamespace(generate=config.generate, split=config.split, image_size=bundle.image_size, seed=config.seed)
        data_dir = generate_dataset(spec, out) if accelerator.is_main_process else out / "data"
        accelerator.wait_for_everyone()
    else:
        data_dir = Path(config.data_dir)
    records = read_records(data_dir, config.split)
    images = load_images(data_dir, records, bundle.image_size)
    captions = [str(r["caption"]) for r in records]
    unique = sorted(set(captions))
    row = {cap: i for i, cap in enumerate(unique)}
    caption_row = torch.tensor([row[cap] for cap in captions])
    hidden = encode_prompts(bundle, unique + [""])
    empty_row = len(unique)
    n, size = len(records), bundle.image_size
    logger.info("inpaint: %d images (%d captions) from %s, base %s, UNet in_channels %d -> %d", n, len(unique),
                data_dir, config.base, c, unet.config.in_channels)

    def draw(g: torch.Generator, b: int) -> Batch:
        index = torch.randint(0, n, (b,), generator=g)
        mask = random_masks(g, b, size, config.max_shapes, config.full_mask_prob)
        drop = torch.rand(b, generator=g) < config.caption_dropout
        target = images[index].float() / 255.0
        return Batch(target, gray_out(target, mask), mask, torch.where(drop, empty_row, caption_row[index]))

    def export(trained, run_info: dict) -> None:
        info = {**base_info(bundle), **run_info, "conditioning": "inpaint", "in_layout": "noise+mask+masked_image",
                "gray_masked": True, "mask_downsample": "max_pool", "base_recipe": bundle.info.get("recipe"),
                "train_images": n}
        info["export_files"] = export_single_file(trained, out, info)
        path = save_derived_bundle(bundle, trained, info, out / "model", config.save_dtype)
        logger.info("wrote %s (%d steps, last loss %s)", path, run_info["steps"], run_info["final_loss"])

    unet.requires_grad_(True)
    recipe = Recipe("inpaint", unet, [p for p in unet.parameters() if p.requires_grad], hidden, draw, export)
    return train_loop(config, command, accelerator, bundle, recipe, started)


def resolve(args: argparse.Namespace) -> InpaintConfig:
    config = resolve_config(InpaintConfig, args, "inpaint")
    config.base = resolve_base(config.base)
    validate(config)
    return config


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return recipe_parser("inpaint", InpaintConfig, __doc__, HELPS, parser)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    return run_cli(train, resolve, args, argv, "inpaint")


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
