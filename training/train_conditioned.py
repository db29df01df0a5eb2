"""Shared machinery of the concat-conditioned recipes (``inpaint`` and ``removal``): the common settings, the
flat-TOML/flag config handling for any recipe dataclass, and one training loop that only asks the recipe for its
UNet and its per-step batches.

Settings precedence is scratch's: dataclass defaults < ``--config`` TOML (flat keys, or a ``[<recipe>]`` table) <
CLI flags. Determinism is scratch's too: every random draw of a step (examples, masks, augmentation, caption
dropout, noise, timesteps) comes from ``torch.Generator().manual_seed(seed * 1_000_003 + step)`` for the GLOBAL
batch, and process k trains on slice k, so a resumed run reproduces the uninterrupted one exactly. Checkpoints,
resume, the loss log and the process-count check are ``training/loop.py``'s.

The text encoder is frozen in both recipes, so the prompt states are computed once (``Batch.hidden_index`` picks
a row of the recipe's table of encoded prompts) and only the UNet trains.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from .conditioned_unet import latent_mask, unet_input
from .loop import (
    ConfigError,
    StepRunner,
    dumps_strict,
    finite_or_none,
    launch_command,
    make_accelerator,
    start_or_resume,
)
from .settings import config_header, dump_toml

logger = logging.getLogger("segdrop.training.conditioned")


@dataclass
class CommonConfig:
    """Settings shared by ``inpaint`` and ``removal`` (the recipes add data and model fields)."""

    base: str = "models/default"  # model to start from (a SegDrop bundle or a diffusers folder)
    output_dir: str = "out/conditioned"
    steps: int = 1000
    batch_size: int = 16  # per process
    lr: float = 1e-4
    conv_in_lr_scale: float = 1.0  # conv_in's rate = lr x this: its zero-initialised conditioning channels start far
    # from useful values and, at the body's rate, take many thousands of steps to grow (SD-inpainting trained 440k)
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    snr_gamma: float = 0.0  # >0: Min-SNR loss weighting, e.g. 5.0
    prediction_type: str = "keep"  # keep (the base's) | epsilon | v_prediction: what the trained UNet predicts
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)
    num_threads: int = 0  # >0: torch.set_num_threads
    max_train_minutes: float = 0.0  # >0: stop (checkpoint + export) once this much wall time is used
    checkpointing_steps: int = 250
    checkpoints_total_limit: int = 2
    resume: bool = False
    log_every: int = 10
    save_dtype: str = "auto"  # auto (float32 if the UNet + text encoder stay <= 20 MB, else float16) | float32 | float16


def validate_common(c: CommonConfig) -> None:
    checks = [
        (bool(c.base), "base is empty: give --base <model folder>"),
        (c.steps >= 1, "steps must be >= 1"),
        (c.batch_size >= 1, "batch_size must be >= 1"),
        (c.lr > 0, "lr must be > 0"),
        (c.conv_in_lr_scale > 0, "conv_in_lr_scale must be > 0"),
        (c.warmup_steps >= 0, "warmup_steps must be >= 0"),
        (c.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision must be no, fp16 or bf16"),
        (c.prediction_type in PREDICTION_TYPES, f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}"),
        (c.save_dtype in ("auto", "float32", "float16"), "save_dtype must be auto, float32 or float16"),
        (c.checkpointing_steps >= 1, "checkpointing_steps must be >= 1"),
        (c.checkpoints_total_limit >= 1, "checkpoints_total_limit must be >= 1"),
        (c.log_every >= 1, "log_every must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


PREDICTION_TYPES = ("keep", "epsilon", "v_prediction")


def set_prediction_type(bundle, prediction_type: str) -> str:
    """Switch ``bundle``'s noise scheduler (which the derived bundle saves) to ``prediction_type`` unless it is
    "keep"; returns the type the recipe trains. A base ε-model fine-tuned to predict v (SD 2 was made that way)
    gets an x0-like objective at high noise, where ε-prediction leaves x0 almost unconstrained: the small toy models
    then copy the conditioning image from the very first sampling step instead of locking in colour casts."""
    if prediction_type not in ("keep", bundle.scheduler.config.prediction_type):
        bundle.scheduler.register_to_config(prediction_type=prediction_type)
    kind = bundle.scheduler.config.prediction_type
    if kind not in ("epsilon", "v_prediction"):
        raise ConfigError(f"the base's scheduler predicts {kind!r}; the recipes train epsilon or v_prediction models: "
                          "pass --prediction_type epsilon or v_prediction")
    return kind


def training_objective(noise_scheduler, latents, noise, timesteps):
    """What the UNet learns to output: the noise (ε-prediction) or the velocity (v-prediction)."""
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    return noise


def load_base(path: str, allow_sdxl: bool = False, config: str | None = None):
    """The base bundle in float32 (training precision); a missing or unloadable folder is a ``ConfigError``.
    UNets with added conditioning are refused unless ``allow_sdxl`` (the removal recipe) and the bundle is an SDXL
    one whose ``added_cond_kwargs`` fit the UNet (``ModelBundle.added_cond_problem``). ``path`` may be a single-file
    SD1.x ``.safetensors`` checkpoint, with ``config`` the diffusers folder of its configs and tokenizer
    (``bundle.load_single_file_bundle``)."""
    from .bundle import BundleError, load_bundle

    try:
        bundle = load_bundle(path, config=config)
    except BundleError as error:
        raise ConfigError(f"--base {path}: {error}") from None
    kind = getattr(bundle.unet.config, "addition_embed_type", None)
    if kind and not allow_sdxl:
        raise ConfigError(f"--base {path}: the UNet needs added conditioning ({kind!r}, an SDXL-style model); this "
                          "recipe supports SD1.x-style and SegDrop bundles only (`removal` also takes SDXL inpainting)")
    problem = bundle.added_cond_problem()
    if problem is not None:
        raise ConfigError(f"--base {path}: {problem}")
    return bundle.to(torch.float32)


# ----------------------------------------------------------------------------------------------- training loop


@dataclass
class Batch:
    """One step's GLOBAL batch in pixel space, on CPU: ``target`` and ``cond`` float (B, 3, H, W) in [0, 1] (cond
    already grayed where the recipe wants it), ``mask`` bool (B, 1, H, W), ``hidden_index`` long (B,) into the
    recipe's encoded-prompt table."""

    target: torch.Tensor
    cond: torch.Tensor
    mask: torch.Tensor
    hidden_index: torch.Tensor

    def slice(self, part: slice) -> "Batch":
        return Batch(self.target[part], self.cond[part], self.mask[part], self.hidden_index[part])


@dataclass
class Recipe:
    """What a conditioned recipe supplies to ``train_loop``."""

    name: str
    unet: Any  # the UNet to train (widened / with adapters), float32
    params: list  # the parameters that train
    hidden: torch.Tensor  # (P, L, D) encoded prompts, from the frozen text encoder
    draw: Callable[[torch.Generator, int], Batch]  # (step generator, global batch size) -> global batch
    export: Callable[[Any, dict], None]  # (trained unwrapped unet, run info) -> writes the outputs (main process)
    added: dict[str, torch.Tensor] | None = None  # SDXL added_cond_kwargs tables, rows parallel to ``hidden``


def parameter_groups(unet, params: list, lr: float, conv_in_lr_scale: float) -> list[dict]:
    """AdamW groups: ``conv_in`` (when trained) at ``lr * conv_in_lr_scale``, everything else at ``lr``."""
    conv_in = {id(p) for p in unet.conv_in.parameters()} if hasattr(unet, "conv_in") else set()
    fast = [p for p in params if id(p) in conv_in]
    rest = [p for p in params if id(p) not in conv_in]
    if conv_in_lr_scale == 1.0 or not fast:
        return [{"params": params}]
    return [{"params": rest}, {"params": fast, "lr": lr * conv_in_lr_scale}]


def train_loop(config: CommonConfig, command: str, accelerator, bundle, recipe: Recipe, started: float) -> dict:
    """Train ``recipe.unet`` on ``recipe.draw`` batches (ε or v objective, the scheduler's); checkpoints, exact resume and the loss
    log via ``loop.py``; then ``recipe.export`` on the main process. Returns steps, wall time and final loss."""
    from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    out = Path(config.output_dir)
    is_main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    command = launch_command(command, world)  # the accelerate launch line when several processes run
    global_batch = config.batch_size * world
    scheduler, codec = bundle.scheduler, bundle.codec.to(accelerator.device)  # SD VAEs encode on the GPU too
    set_prediction_type(bundle, config.prediction_type)
    unet = recipe.unet
    optimizer = torch.optim.AdamW(parameter_groups(unet, recipe.params, config.lr, config.conv_in_lr_scale),
                                  lr=config.lr, weight_decay=config.weight_decay)
    # an optional recipe field (``insertion`` has it): constant (default) or cosine decay to 0 at ``steps``
    lr_schedule = getattr(config, "lr_schedule", "constant")
    if lr_schedule == "cosine":
        lr_scheduler = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=config.warmup_steps,
                                                       num_training_steps=config.steps)
    elif lr_schedule == "constant":
        lr_scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=config.warmup_steps)
    else:
        raise ConfigError(f"lr_schedule must be constant or cosine, got {lr_schedule!r}")
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    step, wall_before, log, resumed = start_or_resume(
        accelerator, out, config.resume, lr_scheduler, config_header(world, config.batch_size, command) + dump_toml(config))
    runner = StepRunner(accelerator, out, config, log, optimizer, lr_scheduler, scheduler, command, started, wall_before,
                        name=recipe.name, state_extra={"recipe": recipe.name})

    device = accelerator.device
    hidden_table = recipe.hidden.to(device)
    added_table = None if recipe.added is None else {k: v.to(device) for k, v in recipe.added.items()}
    unet.train()
    if is_main:
        log.open()
    stopped_early = False
    try:
        while step < config.steps:
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            batch = recipe.draw(g, global_batch)
            side = batch.target.shape[-1] // codec.factor
            noise = torch.randn(global_batch, codec.latent_channels, side, side, generator=g)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (global_batch,), generator=g)
            part = slice(rank * config.batch_size, (rank + 1) * config.batch_size)
            batch, noise, timesteps = batch.slice(part), noise[part], timesteps[part]

            with torch.no_grad():
                target = codec.encode(batch.target.to(device)).float().cpu()
                cond = codec.encode(batch.cond.to(device)).float().cpu()
            noisy = scheduler.add_noise(target, noise, timesteps)
            inp = unet_input(noisy, latent_mask(batch.mask, codec.factor), cond).to(device)
            rows = batch.hidden_index.to(device)
            extra = {} if added_table is None else {"added_cond_kwargs": {k: v[rows] for k, v in added_table.items()}}
            with accelerator.autocast():
                pred = unet(inp, timesteps.to(device), hidden_table[rows], **extra).sample
            objective = training_objective(scheduler, target, noise, timesteps)
            runner.update(runner.loss(pred, objective.to(device), timesteps), recipe.params)
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
        "recipe": recipe.name, "train_command": command, "config": dataclasses.asdict(config),
        "base": config.base, "steps": step, "stopped_early": stopped_early, "wall_time_s": round(wall, 1),
        "num_processes": world, "global_batch_size": global_batch,
        "first_loss": losses[0] if losses else None, "final_loss": final_loss,
        "final_loss_mean_last_100": sum(tail) / len(tail) if tail else None, "torch": torch.__version__,
    })
    if is_main:
        recipe.export(accelerator.unwrap_model(unet).eval(), run_info)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"steps": step, "wall_time_s": round(wall, 1), "final_loss": final_loss, "num_processes": world,
            "global_batch_size": global_batch, "output": str(out / "model")}


def base_info(bundle) -> dict:
    """The base bundle's settings a derived bundle must keep (prompt template, vocabulary, tokenizer length)."""
    keep = ("object_prompt", "prediction_type", "max_length", "vocabulary")
    return {k: bundle.info[k] for k in keep if k in bundle.info}


def save_derived_bundle(bundle, unet, info: dict, folder: Path, save_dtype: str) -> Path:
    """``save_bundle`` of ``bundle`` with ``unet`` swapped in, in ``save_dtype`` (auto: float32 up to 20 MB)."""
    from .bundle import ModelBundle, save_bundle

    te, te2 = bundle.text_encoder, bundle.text_encoder_2
    if save_dtype == "auto":
        mb = sum(p.numel() for m in (unet, te, te2) if m is not None for p in m.parameters()) * 4 / 1e6
        save_dtype = "float32" if mb <= 20 else "float16"
    if save_dtype == "float16":  # copies: the caller's float32 UNet stays usable (e.g. for the single-file export)
        unet, te = copy.deepcopy(unet).to(torch.float16), copy.deepcopy(te).to(torch.float16)
        te2 = None if te2 is None else copy.deepcopy(te2).to(torch.float16)
    info = {**info, "weights_dtype": save_dtype, "prediction_type": bundle.scheduler.config.prediction_type}
    dumps_strict(info, default=str)  # refuse NaN/inf in the model card before anything is written
    derived = ModelBundle(unet, te, bundle.tokenizer, bundle.scheduler, bundle.codec, bundle.image_size, info,
                          te2, bundle.tokenizer_2)
    return save_bundle(derived, folder)


def sd_layout_problem(unet) -> str | None:
    """Why ``training/export.py`` cannot write ``unet`` in SD (LDM/kohya) form, or ``None`` when it can."""
    from .export import check_sd_layout

    try:
        check_sd_layout(dict(unet.config))
    except ValueError as error:
        return str(error).split(":")[0]
    return None


def export_single_file(unet, out: Path, metadata: dict) -> dict[str, str]:
    """SD-layout UNets (an SD inpainting base): also ``unet_ldm.safetensors`` via ``export.save_unet_single_file``
    (ComfyUI's UNETLoader). Toy layouts are diffusers-folder only: nothing extra, the reason is logged."""
    problem = sd_layout_problem(unet)
    if problem is not None:
        logger.info("no single-file UNet export (%s); the model/ bundle is the output", problem)
        return {}
    from .export import save_unet_single_file

    return {"single_file": str(save_unet_single_file(unet, out / "unet_ldm.safetensors", metadata))}


def setup_threads_and_accelerator(config: CommonConfig):
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    return make_accelerator(mixed_precision=config.mixed_precision)


def run_cli(train: Callable[[Any, str], dict], resolve: Callable[[argparse.Namespace], Any], args: argparse.Namespace,
            argv: list[str], recipe: str) -> int:
    """Resolve, train, and turn a ``ConfigError`` into ``error: ...`` on stderr and exit status 2."""
    import shlex

    try:
        config = resolve(args)
        train(config, f"python -m segdrop.training {recipe} " + shlex.join(argv))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = ["Batch", "CommonConfig", "Recipe", "base_info", "export_single_file", "load_base", "run_cli",
           "save_derived_bundle", "sd_layout_problem", "train_loop", "validate_common"]
