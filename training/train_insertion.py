"""ObjectDrop insertion: train a text-to-image model to insert a pasted object WITH its effects (shadow,
reflection) (Winter et al., ECCV 2024, §5 "bootstrap supervision").

    python -m segdrop.training insertion --config training/configs/toy_insertion.toml                   # stage 1
    python -m segdrop.training insertion --config training/configs/toy_insertion.toml --stage 2 \\
        --base out/toy_insertion/model --data_dir real_pairs/ --lr_schedule cosine --output_dir out/toy_insertion2
    python -m segdrop.training insertion --base path/to/sd15 --data_dir bootstrap/ --stage 1 --lr 5e-5

Model: as the paper, the insertion model starts from a TEXT-TO-IMAGE model (not an inpainting one): its
``conv_in`` is widened to the concat layout ``[noisy latent, mask, composite latent]`` (2C+1 channels: 9 for SD's
VAE, 25 for the toy codec) with the new channels initialised to ZERO (``conditioned_unet.make_inpaint_unet``), so
it starts out exactly as the text-to-image model. The input layout is SD-inpainting's, so a widened SD1.5 UNet's
``unet_ldm.safetensors`` loads in ComfyUI's UNETLoader as an inpainting-layout model. The base may instead be an
insertion model this recipe wrote (its card says ``recipe = "insertion"``): it is NOT widened again and training
continues (stage 2). Any other inpainting-layout base (SD inpainting, a ``removal`` or ``inpaint`` model) is
refused: insertion starts from the text-to-image model.

Training example: noisy latent of the target x (the real photo with the object and its shadow/reflection), the
object mask M, the latent of the composite y = M·x + (1-M)·background (the object pasted on the background
WITHOUT its effects; not grayed), the EMPTY prompt; epsilon or v loss (``prediction_type``).

Data (``--data_dir``; ``--data_kind`` auto|bootstrap|pairs, auto tries bootstrap first):

* bootstrap pairs (stage 1): a folder read by ``training/bootstrap_data.read_bootstrap`` (factual x, composite y,
  mask M, background), made by running a removal model over single photos (paper: 350k pairs).
* real pairs (stage 2): counterfactual triplets (factual F = target, counterfactual G = background, mask M) in
  any layout ``training/counterfactual_data.py`` reads (toy-world dataset, normalised ``counterfactual-data``
  folder, ``<name>_F/_G/_M`` photos); the composite is built as M·F + (1-M)·G.
* ``--generate N``: N toy-world one-object pairs (``toyworld.write_object_pairs``: a scene, one object's mask, the
  scene without that object and its effects, the other objects staying) rendered into ``<output_dir>/data``, used
  as real pairs.

Square images of another size are resized (bicubic, masks by area > 0.5); non-square ones are an error.

``--crop_context C`` (default 0: whole images) trains on square crops around the object instead, side (1 + C) x the
object's long side, resized to the model's size (``object_crops``), and records C in the model card: ObjectDrop
Insert samples a crop around the placement, and the toy benchmark (``demo.insertion.model_inserter``) samples the
crops the card names. On the 64-px toy world it zooms in about 2x, so the object's shadow rim is no longer 1-2
latent cells wide.

Stages (paper: stage 1 on bootstrap pairs, 100k steps, batch 512, lr 5e-5; stage 2 on the 2.5k real pairs, 40k
steps, batch 128, decaying lr): ``--stage 1|2`` is recorded in the model card; stage 2 is ``--base <stage-1
model>`` with ``--lr_schedule cosine`` (cosine decay to 0 over ``steps`` after ``warmup_steps``; default
constant).

Modes: full fine-tune (default) or ``--lora_rank R`` (peft LoRA on the attention projections, as ``removal``).
LoRA needs an insertion-model base (stage 2): a freshly widened UNet's zero conditioning channels sit in
``conv_in``, which a LoRA leaves frozen, so stage 1 from a text-to-image model is a full fine-tune.

Outputs: ``model/`` (SegDrop bundle; card ``recipe="insertion"``, ``conditioning="insertion"``,
``in_layout="noise+mask+composite"``, ``gray_masked=false``, ``prompt=""``, ``stage``, ``widened``,
``base_recipe``, ``base_stage``, ``data_kind``, ``train_pairs``, ``lr_schedule``, ``lora``), ``lora/`` with LoRA,
``unet_ldm.safetensors`` for a full fine-tune of an SD-layout UNet; ``config.toml``, ``loss.jsonl``,
``checkpoints/`` (exact ``--resume``).
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

from .conditioned_unet import inpaint_in_channels, make_inpaint_unet
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
from .train_removal import _resize_square, load_triplet_tensors

logger = logging.getLogger("segdrop.training.insertion")
RECIPE = "insertion"
DATA_KINDS = ("auto", "bootstrap", "pairs")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class InsertionConfig(CommonConfig):
    base: str = "models/default"  # a text-to-image model (stage 1) or an insertion model of this recipe (stage 2)
    data_dir: str | None = None  # bootstrap folder or counterfactual triplets (real pairs)
    data_kind: str = "auto"  # auto | bootstrap | pairs
    generate: int = 0  # >0: render this many toy-world one-object pairs into <output_dir>/data first (real pairs)
    split: str = "train"  # (with --generate: the split name the scenes are rendered under)
    output_dir: str = "out/insertion"
    stage: int = 1  # 1: bootstrap pairs, 2: real pairs (recorded in the model card)
    lr: float = 5e-5  # the paper's stage-1 rate
    lr_schedule: str = "constant"  # constant | cosine (decay to 0 over steps; the paper's stage 2 decays)
    lora_rank: int = 0  # 0: full fine-tune
    lora_alpha: float = 0.0  # 0: = lora_rank (scale 1)
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    crop_context: float = 0.0  # > 0: square crops around the object (removal.crop.square_box) at the model's size


HELPS = {
    "base": "text-to-image model to widen (stage 1) or an insertion model written by this recipe (stage 2)",
    "data_dir": "bootstrap pairs folder (bootstrap_data.py) or counterfactual triplets (real pairs)",
    "data_kind": "auto (bootstrap if readable as one, else triplets) | bootstrap | pairs",
    "stage": "1 (bootstrap pairs) or 2 (real pairs), recorded in the model card",
    "lr_schedule": "constant or cosine (decay to 0 over steps)",
    "lora_rank": "LoRA rank (0 = full fine-tune); needs an insertion-model base",
    "crop_context": "0: whole images; > 0: square crops around the object, side (1 + context) x its long side, "
                    "resized to the model's size, as the insertion node and the toy benchmark crop at inference",
}


def validate(c: InsertionConfig) -> None:
    validate_common(c)
    if Path(c.base).suffix.lower() in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
        raise ConfigError(f"--base {c.base} is a single file; insertion starts from a model folder (a SegDrop bundle "
                          "or a diffusers SD1.x text-to-image folder)")
    if not c.data_dir and c.generate <= 0:
        raise ConfigError("no training data: give --data_dir <bootstrap or triplet folder> or --generate N (toy-world)")
    if c.data_dir and c.generate > 0:
        raise ConfigError("give either --data_dir or --generate, not both")
    if c.data_dir and not Path(c.data_dir).is_dir():
        raise ConfigError(f"data_dir {c.data_dir} does not exist")
    if c.data_kind not in DATA_KINDS:
        raise ConfigError(f"data_kind must be one of {', '.join(DATA_KINDS)}")
    if c.generate > 0 and c.data_kind == "bootstrap":
        raise ConfigError("--generate renders real pairs; --data_kind bootstrap needs --data_dir")
    if c.stage not in (1, 2):
        raise ConfigError("stage must be 1 or 2")
    if c.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
    if c.lora_rank < 0 or c.lora_alpha < 0:
        raise ConfigError("lora_rank and lora_alpha must be >= 0")
    if c.crop_context < 0:
        raise ConfigError("crop_context must be >= 0 (0: whole images)")
    if c.lora_rank and not c.lora_targets:
        raise ConfigError("lora_targets is empty: name the UNet modules to adapt, e.g. to_q to_k to_v to_out.0")


# ----------------------------------------------------------------------------------------------- model


def is_insertion_model(bundle) -> bool:
    return bundle.info.get("recipe") == RECIPE or bundle.info.get("conditioning") == RECIPE


def insertion_unet(bundle, base: str = "base"):
    """``(unet, widened)``: a text-to-image UNet widened to 2C+1 channels (zero-initialised extra channels, so it
    starts as the text-to-image model), or an insertion model's UNet as it is. Anything else is a ``ConfigError``."""
    c = bundle.codec.latent_channels
    c_in = int(bundle.unet.config.in_channels)
    if c_in == inpaint_in_channels(c):
        if is_insertion_model(bundle):
            return bundle.unet, False
        what = bundle.info.get("recipe") or bundle.info.get("conditioning") or "an SD inpainting model"
        raise ConfigError(f"--base {base}: its UNet already takes {c_in} = 2x{c}+1 input channels and it is not an "
                          f"insertion model (recipe {what!r}): insertion starts from the TEXT-TO-IMAGE model (the "
                          "paper's T2I init), e.g. the model an inpainting/removal model was made from; continue from "
                          "an insertion model (stage 2) with the `model/` folder this recipe wrote")
    try:
        return make_inpaint_unet(bundle.unet, c), True
    except ValueError as error:
        raise ConfigError(f"--base {base}: {error}") from None


# ----------------------------------------------------------------------------------------------- data


def _to_tensors(factual, composite, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    f = torch.from_numpy(np.ascontiguousarray(np.stack(factual))).permute(0, 3, 1, 2)
    y = torch.from_numpy(np.ascontiguousarray(np.stack(composite))).permute(0, 3, 1, 2)
    m = torch.from_numpy(np.ascontiguousarray(np.stack(mask)).astype(bool))[:, None]
    return f, y, m


def _bootstrap_arrays(result) -> tuple:
    """(factual, composite, mask) from ``read_bootstrap``'s result: an object or dict with those names, or a tuple
    (factual, composite, mask, background)."""
    if isinstance(result, dict):
        return result["factual"], result["composite"], result["mask"]
    if hasattr(result, "factual"):
        return result.factual, result.composite, result.mask
    return tuple(result)[:3]


def load_bootstrap_tensors(folder: Path, size: int):
    """factual x, composite y uint8 (N, 3, S, S) and mask M bool (N, 1, S, S) of a bootstrap folder."""
    try:
        from .bootstrap_data import read_bootstrap
    except ImportError as error:
        raise ConfigError(f"bootstrap pairs need training/bootstrap_data.py ({error}); give real pairs "
                          "(--data_kind pairs)") from None
    factual, composite, mask = (np.asarray(a) for a in _bootstrap_arrays(read_bootstrap(folder)))
    if factual.ndim == 3:  # one pair
        factual, composite, mask = factual[None], composite[None], mask[None]
    if mask.ndim == 4:
        mask = mask[..., 0] if mask.shape[-1] == 1 else mask[:, 0]
    if len(factual) == 0:
        raise ConfigError(f"{folder} holds no bootstrap pairs")
    fs, ys, ms = [], [], []
    for i in range(len(factual)):
        item = SimpleNamespace(id=str(i), factual=factual[i], counterfactual=composite[i], mask=mask[i].astype(bool))
        f, y, m = _resize_square(item, size)
        if not m.any():
            raise ConfigError(f"bootstrap pair {i} in {folder} has an empty mask after resizing to {size}")
        fs.append(f), ys.append(y), ms.append(m)
    return _to_tensors(fs, ys, ms)


def load_pair_tensors(folder: Path, size: int):
    """Real pairs from counterfactual triplets: target F, composite M·F + (1-M)·G, mask M."""
    _, factual, counterfactual, masks = load_triplet_tensors(folder, size)
    return factual, torch.where(masks, factual, counterfactual), masks


def load_data(folder: Path, kind: str, size: int):
    """(kind used, factual, composite, mask) of ``folder``; auto tries bootstrap then real pairs."""
    if kind == "bootstrap":
        return ("bootstrap", *load_bootstrap_tensors(folder, size))
    if kind == "pairs":
        return ("pairs", *load_pair_tensors(folder, size))
    try:
        from .bootstrap_data import read_bootstrap  # noqa: F401
    except ImportError:  # an install without bootstrap_data.py: triplets only
        return ("pairs", *load_pair_tensors(folder, size))
    try:
        return ("bootstrap", *load_bootstrap_tensors(folder, size))
    except ConfigError as bootstrap_error:  # not a bootstrap folder: try triplets, report both if that fails too
        try:
            return ("pairs", *load_pair_tensors(folder, size))
        except ConfigError as pairs_error:
            raise ConfigError(f"{folder} is neither a bootstrap folder ({bootstrap_error}) nor a triplet folder "
                              f"({pairs_error})") from None


def object_crops(factual: torch.Tensor, composite: torch.Tensor, masks: torch.Tensor, context: float
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair cut to ``removal.crop.square_box(mask, context)`` and resized back to the pairs' size (images
    bilinear, masks by area > 0.5): uint8 (N, 3, S, S) x2 and bool (N, 1, S, S), as the inputs are."""
    from ..removal.crop import crop, resize_image, square_box

    size = tuple(factual.shape[-2:])
    fs, ys, ms = [], [], []
    for f, y, m in zip(factual, composite, masks):
        box = square_box(m[0], context)
        hwc = torch.stack([f, y]).permute(0, 2, 3, 1).float()
        images = resize_image(crop(hwc, box), size).round().clamp(0, 255).to(torch.uint8).permute(0, 3, 1, 2)
        mask = resize_image(crop(m[0, ..., None].float(), box)[None], size)[0, ..., 0] > 0.5
        fs.append(images[0]), ys.append(images[1]), ms.append(mask[None])
    return torch.stack(fs), torch.stack(ys), torch.stack(ms)


# ----------------------------------------------------------------------------------------------- training


def train(config: InsertionConfig, command: str) -> dict:
    """Train an insertion model (module docstring); returns steps, wall time, final loss, output."""
    from .train_scratch import generate_dataset

    started = time.time()
    accelerator = setup_threads_and_accelerator(config)
    out = Path(config.output_dir)
    # checked before the run folder is touched
    bundle = load_base(config.base)
    unet, widened = insertion_unet(bundle, config.base)
    if config.lora_rank and widened:
        raise ConfigError(f"--lora_rank needs an insertion-model base (stage 2): {config.base} is a text-to-image model "
                          "whose new zero-initialised conditioning channels sit in conv_in, which a LoRA leaves "
                          "frozen; train stage 1 as a full fine-tune (drop --lora_rank)")
    bundle.text_encoder.requires_grad_(False)
    prepare_run_dir(accelerator, out, config.resume)

    if config.generate > 0:
        spec = SimpleNamespace(generate=config.generate, split=config.split, image_size=bundle.image_size, seed=config.seed)
        data_dir = (generate_dataset(spec, out, writer="write_object_pairs", kind="one-object pairs")
                    if accelerator.is_main_process else out / "data")
        accelerator.wait_for_everyone()
    else:
        data_dir = Path(config.data_dir)
    data_kind, factual, composite, masks = load_data(data_dir, config.data_kind, bundle.image_size)
    if config.crop_context > 0:
        factual, composite, masks = object_crops(factual, composite, masks, config.crop_context)
    n = len(factual)
    hidden = bundle.encode_prompt([""]).float().cpu()  # the empty prompt, always
    logger.info("insertion stage %d: %d %s pairs from %s, base %s (%s), %s", config.stage, n, data_kind, data_dir,
                config.base, "widened" if widened else "insertion model, not widened",
                f"LoRA rank {config.lora_rank}" if config.lora_rank else "full fine-tune")

    if config.lora_rank:
        unet = add_lora(unet, config.lora_rank, config.lora_alpha, config.lora_targets)
    else:
        unet.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad]

    def draw(g: torch.Generator, b: int) -> Batch:
        index = torch.randint(0, n, (b,), generator=g)
        return Batch(factual[index].float() / 255.0, composite[index].float() / 255.0, masks[index],
                     torch.zeros(b, dtype=torch.long))

    def export(trained, run_info: dict) -> None:
        lora = ({"rank": config.lora_rank, "alpha": config.lora_alpha or config.lora_rank,
                 "targets": list(config.lora_targets)} if config.lora_rank else None)
        info = {**base_info(bundle), **run_info, "conditioning": RECIPE, "in_layout": "noise+mask+composite",
                "gray_masked": False, "mask_downsample": "max_pool", "prompt": "", "stage": config.stage,
                "widened": widened, "base_recipe": bundle.info.get("recipe"), "base_stage": bundle.info.get("stage"),
                "data_kind": data_kind, "train_pairs": n, "lr_schedule": config.lr_schedule, "lora": lora,
                "crop_context": config.crop_context}
        export_fine_tune(bundle, trained, info, out, lora=bool(config.lora_rank), save_dtype=config.save_dtype)

    recipe = Recipe(RECIPE, unet, params, hidden, draw, export)
    return train_loop(config, command, accelerator, bundle, recipe, started)


def resolve(args: argparse.Namespace) -> InsertionConfig:
    config = resolve_config(InsertionConfig, args, RECIPE)
    if config.base:
        config.base = resolve_base(config.base)
    validate(config)
    return config


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return recipe_parser(RECIPE, InsertionConfig, __doc__, HELPS, parser)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    return run_cli(train, resolve, args, argv, RECIPE)


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
