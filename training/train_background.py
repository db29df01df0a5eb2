"""Concept distillation's fine-tuning m -> m' (Dombrowski et al., ICCV 2023, §3.3): teach a text-to-image model to
paint BACKGROUND under a background prompt, from images and their preliminary masks M_pre.

    python -m segdrop.training background --config training/configs/toy_background.toml --data_dir out/<mask folder>
    python -m segdrop.training background --config training/configs/toy_background_lora.toml --data_dir out/<mask folder>
    python -m segdrop.training background --base path/to/sd15 --data_dir birds/ --object_name bird --ema_decay 0.9999

Base: a plain text-to-image model (``in_channels`` == latent channels; the paper fine-tunes SD 1.4, not an
inpainting model): a SegDrop bundle (default ``models/default``) or a diffusers SD1.x folder. The UNet sees the
full noised latent and no mask channel; the mask only selects which outputs are supervised.

Data (``--data_dir``): a mask folder (``distill/dataset.py``; ``python -m segdrop.training prelim-masks`` writes
one): ``metadata.jsonl`` with one record per image, ``{"id", "image", "caption", "prelim", ...}``; ``prelim`` is
M_pre at the model's LATENT grid (L mode, 255 = object). Square images are resized to the model size (bicubic) and
masks to the latent grid (box area > 0.5); non-square ones are an error (crop first).

Each sample (every draw from the step generator, see below) flips a coin:

* with probability ``whole_image_prob`` (paper 0.5): the whole image, the foreground prompt y_f
  (``foreground_prompt``, default ``"a photo of a {object}"`` with ``--object_name``; ``"{caption}"`` uses each
  record's caption) and a loss mask of ones: ordinary fine-tuning, which keeps the model's text-to-image ability;
* otherwise: the background prompt y_b (``background_prompt``, default ``"a photo of a background"``) and a loss
  mask = a random rectangle of M_pre's background AND that background (``distill/rectangles.py``: the paper's box
  rules, scaled from SD's 64x64 latent to the model's grid).

Loss: ``mean over ALL latent elements of mask * (pred - target)^2`` (:func:`masked_loss`; target = the noise, or
the velocity for a v-prediction base), NOT renormalised by the mask area, so rectangle samples weigh less, as in
the reference code. Augmentation: a random horizontal flip of image and mask together (the toy captions carry no
left/right words); no caption dropout. Optimiser: AdamW at ``lr`` 1e-4, constant (``warmup_steps`` 0).
``max_grad_norm`` and ``snr_gamma`` are SegDrop's common settings, not the paper's (``snr_gamma`` 0 = off).

Modes: full fine-tune (default, the paper) or ``--lora_rank R``: a peft LoRA on ``lora_targets`` (a DEVIATION from
the paper, which trains the whole UNet). ``--ema_decay D`` (> 0; the paper 0.9999, off by default because a toy
run is far too short for it) keeps an exponential moving average of the trained parameters with LitEma's warm-up
(decay_n = min(D, (1 + n) / (10 + n))); it is checkpointed, and the exported model carries the EMA weights, which
is what the paper's inference uses.

Determinism and processes as in every recipe (``training/loop.py``): each step draws its GLOBAL batch (examples,
coins, flips, rectangles, noise, timesteps) from ``torch.Generator().manual_seed(seed * 1_000_003 + step)`` and
process k trains on slice k, so a killed and resumed run reproduces the uninterrupted one exactly.

Outputs in ``output_dir``: ``config.toml``, ``loss.jsonl``, ``checkpoints/``, ``model/`` (a SegDrop bundle; with
LoRA the adapter merged in) whose card records ``recipe="background"``, ``foreground_prompt``,
``background_prompt``, ``whole_image_prob``, ``rectangle_bounds``, ``lora``, ``ema``; with LoRA also ``lora/``
(kohya + diffusers files via ``training/export.py`` for SD-layout UNets, so ComfyUI's LoraLoader loads it; the peft
adapter for the toy layout, see ``lora_adapter.load_lora_fallback``); a full fine-tune of an SD-layout UNet also
writes ``unet_ldm.safetensors`` (ComfyUI's UNETLoader).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..distill.rectangles import RectangleBounds, sample_background_rectangle
from .loop import (
    ConfigError,
    StepRunner,
    cli_main,
    finite_or_none,
    launch_command,
    list_checkpoints,
    load_extra_state,
    min_snr_weights,
    prepare_run_dir,
    start_or_resume,
)
from .lora_adapter import DEFAULT_LORA_TARGETS, add_lora, export_fine_tune
from .settings import config_header, dump_toml, recipe_parser, resolve_config
from .train_conditioned import (
    CommonConfig,
    base_info,
    load_base,
    parameter_groups,
    run_cli,
    set_prediction_type,
    setup_threads_and_accelerator,
    training_objective,
    validate_common,
)
from .train_inpaint import encode_prompts, resolve_base

logger = logging.getLogger("segdrop.training.background")
PLACEHOLDERS = ("{object}", "{caption}")


@dataclass
class BackgroundConfig(CommonConfig):
    data_dir: str = ""  # mask folder: metadata.jsonl with image, caption, prelim (M_pre at the latent grid)
    output_dir: str = "out/background"
    object_name: str = ""  # fills {object} in foreground_prompt
    foreground_prompt: str = "a photo of a {object}"  # y_f; "{caption}" = each record's caption
    background_prompt: str = "a photo of a background"  # y_b
    whole_image_prob: float = 0.5  # the paper's entire_image_synthesis_probability
    hflip: bool = True  # random horizontal flip of image + mask together
    warmup_steps: int = 0  # the paper's rate is constant
    lora_rank: int = 0  # 0: full fine-tune (the paper)
    lora_alpha: float = 0.0  # 0: = lora_rank (scale 1)
    lora_targets: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))
    ema_decay: float = 0.0  # >0: export EMA weights (paper 0.9999); 0: off


HELPS = {
    "base": "text-to-image model: a SegDrop bundle (models/default) or a diffusers SD1.x folder",
    "data_dir": "mask folder (metadata.jsonl with image, caption, prelim = M_pre at the latent grid)",
    "foreground_prompt": "y_f for whole-image samples; {object} = --object_name, {caption} = the record's caption",
    "background_prompt": "y_b for background-rectangle samples ('' for toy models, whose vocabulary has no 'background')",
    "whole_image_prob": "probability of a whole-image sample (y_f, full loss mask); else a background rectangle",
    "lora_rank": "LoRA rank (0 = full fine-tune, the paper; LoRA is a deviation)",
    "ema_decay": "EMA decay of the trained weights, exported instead of the raw ones (0 = off; paper 0.9999)",
}


def validate(c: BackgroundConfig) -> None:
    validate_common(c)
    if not c.data_dir:
        raise ConfigError("no training data: give --data_dir <mask folder> (metadata.jsonl with image, caption and "
                          "prelim = M_pre per record)")
    if not Path(c.data_dir).is_dir():
        raise ConfigError(f"data_dir {c.data_dir} does not exist")
    for name in ("foreground_prompt", "background_prompt"):
        unknown = [p for p in re.findall(r"\{[^{}]*\}", getattr(c, name)) if p not in PLACEHOLDERS]
        if unknown:
            raise ConfigError(f"{name} {getattr(c, name)!r} has unknown placeholder(s) {', '.join(unknown)}; "
                              f"only {' and '.join(PLACEHOLDERS)} are filled")
    if "{object}" in c.foreground_prompt and not c.object_name.strip():
        raise ConfigError(f"foreground_prompt {c.foreground_prompt!r} needs --object_name (e.g. bird), or use "
                          "--foreground_prompt '{caption}' to train on each record's caption")
    if any(p in c.background_prompt for p in PLACEHOLDERS):
        raise ConfigError("background_prompt is one fixed prompt (y_b); it takes no {object} or {caption}")
    checks = [
        (0.0 <= c.whole_image_prob <= 1.0, "whole_image_prob must be in [0, 1]"),
        (0.0 <= c.ema_decay < 1.0, "ema_decay must be in [0, 1) (0 = off)"),
        (c.lora_rank >= 0 and c.lora_alpha >= 0, "lora_rank and lora_alpha must be >= 0"),
        (not c.lora_rank or bool(c.lora_targets), "lora_targets is empty: name the UNet modules to adapt, e.g. "
                                                  "to_q to_k to_v to_out.0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def text_to_image_problem(bundle) -> str | None:
    """Why ``bundle``'s UNet cannot be fine-tuned here (it must be a plain text-to-image UNet), or None."""
    c, c_in = bundle.codec.latent_channels, int(bundle.unet.config.in_channels)
    if c_in == c and int(bundle.unet.config.out_channels) == c:
        return None
    return (f"its UNet takes {c_in} input channels but its latents have {c}: it is not a plain text-to-image model "
            "(an inpainting / concat-conditioned one?). Background distillation fine-tunes the text-to-image model "
            "itself: give the model it was made from, e.g. models/default or an SD1.x (not inpainting) folder")


# ----------------------------------------------------------------------------------------------- data


@dataclass
class MaskData:
    """A loaded mask folder: ``images`` uint8 (N, 3, S, S), ``background`` bool (N, s, s) = not M_pre."""

    ids: list[str]
    captions: list[str]
    images: torch.Tensor
    background: torch.Tensor


def _square(array: np.ndarray, size: int, resample, what: str) -> np.ndarray:
    """``array`` (H, W[, 3]) resized to ``size`` x ``size``; non-square is a ``ConfigError`` (crop first)."""
    from PIL import Image

    h, w = array.shape[:2]
    if h != w:
        raise ConfigError(f"{what} is {w}x{h}, not square; the model trains at square sizes: crop the image and its "
                          "mask to a square first")
    if h == size:
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), resample))


def load_mask_folder(root: Path, image_size: int, latent_size: int, need_caption: bool = True) -> MaskData:
    """Every record of the mask folder ``root`` (``distill/dataset.py``): images at ``image_size`` (bicubic) and
    backgrounds (= not M_pre) at ``latent_size`` (box area > 0.5, the paper's mean-pool and round)."""
    from PIL import Image

    from ..distill.dataset import load_image, load_mask, read_mask_folder

    records = read_mask_folder(root, require=("prelim", "image") + (("caption",) if need_caption else ()))
    ids, captions, images, backgrounds = [], [], [], []
    for rec in records:
        rgb = _square(load_image(rec["image"]), image_size, Image.BICUBIC, f"image {rec['image']}")
        prelim = load_mask(rec["prelim"]).astype(np.uint8) * 255
        prelim = _square(prelim, latent_size, Image.BOX, f"prelim {rec['prelim']}") > 127
        ids.append(rec["id"])
        captions.append(str(rec.get("caption", "")))
        images.append(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1))
        backgrounds.append(torch.from_numpy(~prelim))
    return MaskData(ids, captions, torch.stack(images), torch.stack(backgrounds))


def fill_prompt(template: str, object_name: str, caption: str) -> str:
    return template.replace("{object}", object_name).replace("{caption}", caption)


# ----------------------------------------------------------------------------------------------- batches and loss


@dataclass
class BackgroundBatch:
    """One step's GLOBAL batch on CPU: ``images`` float (B, 3, H, W) in [0, 1], ``loss_mask`` float (B, 1, h, w)
    at the latent grid, ``hidden_index`` long (B,) into the prompt table, ``whole`` bool (B,) (whole-image sample)."""

    images: torch.Tensor
    loss_mask: torch.Tensor
    hidden_index: torch.Tensor
    whole: torch.Tensor

    def slice(self, part: slice) -> "BackgroundBatch":
        return BackgroundBatch(self.images[part], self.loss_mask[part], self.hidden_index[part], self.whole[part])


@dataclass
class DistillationSampler:
    """Draws batches by the paper's rules (module docstring): ``prompt_row`` (N,) is each image's y_f row in the
    prompt table, ``background_row`` the row of y_b."""

    images: torch.Tensor  # uint8 (N, 3, S, S)
    background: torch.Tensor  # bool (N, s, s)
    prompt_row: torch.Tensor  # long (N,)
    background_row: int
    bounds: RectangleBounds
    whole_image_prob: float = 0.5
    hflip: bool = True

    def __call__(self, g: torch.Generator, b: int) -> BackgroundBatch:
        n = self.images.shape[0]
        index = torch.randint(0, n, (b,), generator=g)
        whole = torch.rand(b, generator=g) < self.whole_image_prob
        images, background = self.images[index].float() / 255.0, self.background[index]
        if self.hflip:
            flip = torch.rand(b, generator=g) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            background = torch.where(flip[:, None, None], background.flip(-1), background)
        mask = torch.ones(b, 1, *background.shape[-2:])
        for i in torch.nonzero(~whole).flatten().tolist():
            mask[i, 0] = sample_background_rectangle(background[i], g, self.bounds).float()
        rows = torch.where(whole, self.prompt_row[index], torch.full_like(index, self.background_row))
        return BackgroundBatch(images, mask, rows, whole)


def masked_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean over all elements of mask * (pred - target)^2``: ``mask`` (B, 1, h, w) broadcasts over channels and
    the mean runs over every latent element, not the masked ones only (the reference code's loss). ``weights``
    (B,), e.g. Min-SNR, scale each sample's mean before the batch mean."""
    per_sample = (mask.float() * (pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.device)
    return per_sample.mean()


class ParameterEma:
    """Exponential moving average of ``params`` with LitEma's warm-up: decay_n = min(decay, (1 + n) / (10 + n)) at
    the n-th update. ``state_dict`` is a flat tensor dict, saved as safetensors with every checkpoint (exact
    resume, no pickle)."""

    def __init__(self, params: list, decay: float) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = [p.detach().float().clone() for p in params]

    @torch.no_grad()
    def update(self, params: list) -> None:
        self.num_updates += 1
        decay = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))
        for shadow, p in zip(self.shadow, params):
            shadow.lerp_(p.detach().float(), 1.0 - decay)

    @torch.no_grad()
    def copy_to(self, params: list) -> None:
        for shadow, p in zip(self.shadow, params):
            p.copy_(shadow.to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"ema.num_updates": (1,) int64, "ema.shadow.<i>": the i-th average}``."""
        return {"ema.num_updates": torch.tensor([self.num_updates], dtype=torch.int64),
                **{f"ema.shadow.{i}": s.cpu() for i, s in enumerate(self.shadow)}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        saved = sum(1 for name in state if name.startswith("ema.shadow."))
        if saved != len(self.shadow) or "ema.num_updates" not in state:
            raise ValueError(f"EMA state holds {saved} tensors, this run trains {len(self.shadow)}")
        self.num_updates = int(state["ema.num_updates"][0])
        for i, shadow in enumerate(self.shadow):
            shadow.copy_(state[f"ema.shadow.{i}"])


def check_resume_settings(out: Path, config: BackgroundConfig) -> None:
    """Refuse a resume whose EMA / LoRA settings differ from the checkpoint's: its state would not load."""
    found = list_checkpoints(out)
    if not config.resume or not found:
        return
    path = found[-1][1]
    try:
        state = json.loads((path / "training_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # load_latest_checkpoint reports broken checkpoints
    for key, was, now, same in (("ema_decay", state.get("ema_decay"), config.ema_decay, lambda a, b: bool(a) == bool(b)),
                                ("lora_rank", state.get("lora_rank"), config.lora_rank, lambda a, b: a == b)):
        if was is not None and not same(was, now):
            raise ConfigError(f"checkpoint {path} was written with {key}={was}, this launch has {key}={now}; resume "
                              f"with the run's settings (see {out / 'config.toml'}) or start a new output_dir")


# ----------------------------------------------------------------------------------------------- training


def train(config: BackgroundConfig, command: str) -> dict:
    """Fine-tune ``config.base`` into a background painter (module docstring); returns steps, loss, output."""
    from diffusers.optimization import get_constant_schedule_with_warmup

    started = time.time()
    accelerator = setup_threads_and_accelerator(config)
    out = Path(config.output_dir)
    bundle = load_base(config.base)  # base, data and prompts are checked before the run folder is touched
    problem = text_to_image_problem(bundle)
    if problem is not None:
        raise ConfigError(f"--base {config.base} cannot be distilled: {problem}")
    codec, scheduler = bundle.codec, bundle.scheduler
    latent = bundle.image_size // codec.factor
    data = load_mask_folder(Path(config.data_dir), bundle.image_size, latent,
                            need_caption="{caption}" in config.foreground_prompt)
    n = len(data.ids)
    foreground = [fill_prompt(config.foreground_prompt, config.object_name, c) for c in data.captions]
    unique = sorted(set(foreground))
    row = {p: i for i, p in enumerate(unique)}
    bundle.text_encoder.requires_grad_(False)
    hidden = encode_prompts(bundle, unique)
    try:
        hidden_bg = bundle.encode_prompt([config.background_prompt]).float().cpu()
    except ValueError as error:
        raise ConfigError(f"background_prompt {config.background_prompt!r} does not fit the base model's tokenizer: "
                          f"{error} (toy models have no word 'background': use --background_prompt '')") from None
    hidden = torch.cat([hidden, hidden_bg])
    bounds = RectangleBounds().for_latent(latent, latent)
    sampler = DistillationSampler(data.images, data.background, torch.tensor([row[p] for p in foreground]),
                                  len(unique), bounds, config.whole_image_prob, config.hflip)
    set_prediction_type(bundle, config.prediction_type)
    prepare_run_dir(accelerator, out, config.resume)
    check_resume_settings(out, config)
    logger.info("background: %d images from %s, base %s, %s%s, y_f %r, y_b %r, whole-image p %.2f", n,
                config.data_dir, config.base, f"LoRA rank {config.lora_rank}" if config.lora_rank else "full fine-tune",
                f", EMA {config.ema_decay}" if config.ema_decay else "", config.foreground_prompt,
                config.background_prompt, config.whole_image_prob)

    unet = bundle.unet
    if config.lora_rank:
        unet = add_lora(unet, config.lora_rank, config.lora_alpha, config.lora_targets)
    else:
        unet.requires_grad_(True)
    params = [p for p in unet.parameters() if p.requires_grad]
    is_main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    command = launch_command(command, world)
    global_batch = config.batch_size * world
    codec = codec.to(accelerator.device)
    optimizer = torch.optim.AdamW(parameter_groups(unet, params, config.lr, config.conv_in_lr_scale), lr=config.lr,
                                  weight_decay=config.weight_decay)
    lr_scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=config.warmup_steps)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    ema = ParameterEma(params, config.ema_decay) if config.ema_decay > 0 else None

    header = config_header(world, config.batch_size, command)
    step, wall_before, log, resumed = start_or_resume(accelerator, out, config.resume, lr_scheduler,
                                                      header + dump_toml(config))
    if ema is not None and resumed is not None:
        ema.load_state_dict(load_extra_state(resumed))
    runner = StepRunner(accelerator, out, config, log, optimizer, lr_scheduler, scheduler, command, started, wall_before,
                        name="background", state_extra={"recipe": "background", "ema_decay": config.ema_decay,
                                                        "lora_rank": config.lora_rank},
                        extra_tensors=ema.state_dict if ema is not None else None)
    device = accelerator.device
    hidden_table = hidden.to(device)
    unet.train()
    if is_main:
        log.open()
    stopped_early = False
    try:
        while step < config.steps:
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            batch = sampler(g, global_batch)
            noise = torch.randn(global_batch, codec.latent_channels, latent, latent, generator=g)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (global_batch,), generator=g)
            part = slice(rank * config.batch_size, (rank + 1) * config.batch_size)
            batch, noise, timesteps = batch.slice(part), noise[part], timesteps[part]

            with torch.no_grad():
                latents = codec.encode(batch.images.to(device)).float().cpu()
            noisy = scheduler.add_noise(latents, noise, timesteps)
            with accelerator.autocast():
                pred = unet(noisy.to(device), timesteps.to(device), hidden_table[batch.hidden_index.to(device)]).sample
            objective = training_objective(scheduler, latents, noise, timesteps)
            weights = min_snr_weights(scheduler, timesteps, config.snr_gamma) if config.snr_gamma > 0 else None
            runner.update(masked_loss(pred, objective.to(device), batch.loss_mask.to(device), weights), params)
            if ema is not None:
                ema.update(params)
            step += 1
            if runner.after(step):
                stopped_early = True
                break
    finally:
        log.close()

    accelerator.wait_for_everyone()
    wall = wall_before + time.time() - started
    final_loss = runner.final_loss(step, resumed)
    losses = [r["loss"] for r in log.rows() if isinstance(r.get("loss"), (int, float))]
    tail = losses[-100:]
    run_info = finite_or_none({
        "recipe": "background", "train_command": command, "config": dataclasses.asdict(config),
        "base": config.base, "steps": step, "stopped_early": stopped_early, "wall_time_s": round(wall, 1),
        "num_processes": world, "global_batch_size": global_batch,
        "first_loss": losses[0] if losses else None, "final_loss": final_loss,
        "final_loss_mean_last_100": sum(tail) / len(tail) if tail else None, "torch": torch.__version__,
    })
    if is_main:
        trained = accelerator.unwrap_model(unet).eval()
        if ema is not None:
            ema.copy_to(params)  # the exported model is the EMA one (what the paper samples with)
        export(config, bundle, trained, run_info, n, bounds, ema)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"steps": step, "wall_time_s": round(wall, 1), "final_loss": final_loss, "num_processes": world,
            "global_batch_size": global_batch, "output": str(out / "model")}


def export(config: BackgroundConfig, bundle, trained, run_info: dict, n: int, bounds: RectangleBounds,
           ema: ParameterEma | None) -> None:
    """``model/`` (+ ``lora/`` or ``unet_ldm.safetensors``) with the card described in the module docstring."""
    out = Path(config.output_dir)
    lora = ({"rank": config.lora_rank, "alpha": config.lora_alpha or config.lora_rank,
             "targets": list(config.lora_targets), "note": "deviation: the paper fine-tunes the whole UNet"}
            if config.lora_rank else None)
    info = {**base_info(bundle), **run_info, "foreground_prompt": config.foreground_prompt,
            "object_name": config.object_name, "background_prompt": config.background_prompt,
            "whole_image_prob": config.whole_image_prob, "hflip": config.hflip,
            "rectangle_bounds": bounds.to_dict(), "loss": "mean over all latent elements of mask * (pred - target)^2",
            "lora": lora, "ema": ({"decay": config.ema_decay, "updates": ema.num_updates, "weights": "ema"}
                                  if ema is not None else None),
            "base_recipe": bundle.info.get("recipe"), "train_images": n}
    export_fine_tune(bundle, trained, info, out, lora=bool(config.lora_rank), save_dtype=config.save_dtype)


def resolve(args: argparse.Namespace) -> BackgroundConfig:
    config = resolve_config(BackgroundConfig, args, "background")
    config.base = resolve_base(config.base)
    validate(config)
    return config


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return recipe_parser("background", BackgroundConfig, __doc__, HELPS, parser)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    return run_cli(train, resolve, args, argv, "background")


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
