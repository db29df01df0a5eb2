"""Train a small text-conditioned latent-diffusion model from scratch on a toy-world dataset.

    python -m segdrop.training scratch --config training/configs/default_model.toml
    python -m segdrop.training scratch --generate 2000 --output_dir out/toy --steps 3000
    accelerate launch -m segdrop.training scratch --config cfg.toml      # one or many GPUs

Model: ``diffusers.UNet2DConditionModel`` (self- and cross-attention at every level) on a fixed, lossless
pixel-unshuffle latent (64x64x3 -> 12x32x32), a small ``transformers.CLIPTextModel`` trained jointly, a word-level
CLIP tokenizer over the dataset vocabulary, and SD's DDPM schedule (scaled_linear 0.00085 -> 0.012, 1000 steps,
epsilon prediction), so timesteps mean what they mean for SD.

Precedence of settings: dataclass defaults < ``--config`` TOML (flat keys, same names as the flags) < CLI flags.

Determinism: each step draws its batch indices, caption dropout, noise and timesteps from its own generator
``torch.Generator().manual_seed(seed * 1_000_003 + step)``, so a run killed and resumed from a checkpoint
reproduces the uninterrupted run's losses and weights exactly (same hardware and thread count).

Processes: ``batch_size`` is per process; with N processes each step draws one global batch of batch_size x N from
the step's generator and process k trains on slice k, so the loss curve depends on the global batch. The learning
rate is not scaled with N, and the LR schedule advances once per optimisation step whatever N (see
``training/loop.py``). The process count is recorded (checkpoint state, model card, ``config.toml`` header) and a
resume with another count is refused.

Outputs in ``output_dir``: ``config.toml`` (effective config), ``tokenizer/``, ``loss.jsonl`` (one line per step),
``checkpoints/step_N/`` (``accelerator.save_state`` + ``training_state.json``; written to ``step_N.tmp`` and
renamed, last ``checkpoints_total_limit`` kept), ``model/`` (the final bundle, see ``training/bundle.py``), and
``data/`` when ``--generate`` is used. Checkpoint listing, saving, pruning, resume and the loss log live in
``training/loop.py`` for reuse by other recipes.

No horizontal-flip augmentation: captions carry no left/right words today, but a flip would have to keep
any future spatial words consistent, so the recipe simply does not flip.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import settings
from .loop import (
    CHECKPOINT_PREFIX,
    STATE_FILE,
    ConfigError,
    StepRunner,
    cli_main,
    dumps_strict,
    finite_or_none,
    launch_command,
    list_checkpoints,
    make_accelerator,
    prepare_run_dir,
    start_or_resume,
)
from .settings import config_header, dump_toml

logger = logging.getLogger("segdrop.training.scratch")

# the checkpoint names and ConfigError stay importable from here, as before the move to loop.py
__all__ = ["CHECKPOINT_PREFIX", "STATE_FILE", "ConfigError", "ScratchConfig", "list_checkpoints", "main", "train"]


@dataclass
class ScratchConfig:
    # data
    data_dir: str | None = None  # toy-world dataset folder (metadata.jsonl with image + caption per record)
    generate: int = 0  # >0: render this many toy-world scenes into <output_dir>/data first (needs segdrop.toyworld)
    split: str = "train"  # records of this split are used when records carry a "split" field ("" = all)
    output_dir: str = "out/scratch"
    image_size: int = 64
    max_length: int = 16  # tokenizer context (toy captions: <= 14 words + start/end tokens)
    caption_dropout: float = 0.1  # probability of training on the empty prompt (CFG, DiffSeg's empty pass)
    object_prompt: str = "a photo of a {}"
    # model
    codec_factor: int = 2
    unet_widths: list[int] = field(default_factory=lambda: [32, 64, 64])
    unet_heads: list[int] = field(default_factory=lambda: [1, 2, 4])  # attention heads per level
    unet_attention: list[int] = field(default_factory=lambda: [1, 1, 1])  # 1: self+cross attention at that level
    unet_layers_per_block: int = 1
    norm_num_groups: int = 16
    text_hidden_size: int = 64
    text_layers: int = 2
    text_heads: int = 2
    # optimisation
    steps: int = 1000
    batch_size: int = 16  # per process
    lr: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    snr_gamma: float = 0.0  # >0: Min-SNR loss weighting (Hang et al. 2023), e.g. 5.0
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)
    num_threads: int = 0  # >0: torch.set_num_threads
    max_train_minutes: float = 0.0  # >0: stop (checkpoint + export) once this much wall time is used
    # checkpoints / logging / export
    checkpointing_steps: int = 500
    checkpoints_total_limit: int = 2
    resume: bool = False  # continue from the latest checkpoint in output_dir
    log_every: int = 10
    save_dtype: str = "auto"  # auto (float32 if the bundle stays <= 20 MB, else float16) | float32 | float16


def add_arguments(parser: argparse.ArgumentParser) -> None:
    settings.add_arguments(ScratchConfig, parser)


def resolve_config(args: argparse.Namespace) -> ScratchConfig:
    config = settings.resolve_config(ScratchConfig, args, "scratch")
    validate(config)
    return config


def validate(c: ScratchConfig) -> None:
    if not c.data_dir and c.generate <= 0:
        raise ConfigError("no training data: give --data_dir <toy-world dataset folder> or --generate N")
    if c.data_dir and c.generate > 0:
        raise ConfigError("give either --data_dir or --generate, not both")
    if c.data_dir and not (Path(c.data_dir) / "metadata.jsonl").is_file():
        if not Path(c.data_dir).exists():
            raise ConfigError(f"data_dir {c.data_dir} does not exist")
        raise ConfigError(f"data_dir {c.data_dir} has no metadata.jsonl (expected a toy-world dataset folder)")
    checks = [
        (c.steps >= 1, "steps must be >= 1"),
        (c.batch_size >= 1, "batch_size must be >= 1"),
        (c.lr > 0, "lr must be > 0"),
        (0 <= c.caption_dropout <= 1, "caption_dropout must be in [0, 1]"),
        (c.image_size % c.codec_factor == 0, "image_size must be divisible by codec_factor"),
        (len(c.unet_widths) == len(c.unet_heads) >= 1, "unet_widths and unet_heads need the same length"),
        (len(c.unet_attention) == len(c.unet_widths), "unet_attention needs one 0/1 entry per level"),
        (any(c.unet_attention), "unet_attention: at least one level needs attention"),
        (all(w % c.norm_num_groups == 0 for w in c.unet_widths), "unet_widths must be multiples of norm_num_groups"),
        (c.text_hidden_size % c.text_heads == 0, "text_hidden_size must be divisible by text_heads"),
        (c.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision must be no, fp16 or bf16"),
        (c.save_dtype in ("auto", "float32", "float16"), "save_dtype must be auto, float32 or float16"),
        (c.checkpoints_total_limit >= 1, "checkpoints_total_limit must be >= 1"),
        (c.max_length >= 3, "max_length must be >= 3"),
        ("{}" in c.object_prompt, "object_prompt needs a {} placeholder"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# ----------------------------------------------------------------------------------------------- data


def read_records(root: Path, split: str) -> list[dict]:
    meta = root / "metadata.jsonl"
    records = []
    with open(meta, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{meta}:{n}: not JSON ({error})") from None
            if "image" not in rec or "caption" not in rec:
                raise ConfigError(f"{meta}:{n}: a record needs 'image' and 'caption'")
            records.append(rec)
    if split and any("split" in r for r in records):
        records = [r for r in records if r.get("split") == split]
    if not records:
        raise ConfigError(f"{meta} has no records" + (f" of split {split!r}" if split else ""))
    return records


def load_images(root: Path, records: list[dict], size: int) -> torch.Tensor:
    """All images as one uint8 tensor (N, 3, size, size)."""
    from PIL import Image

    out = torch.empty(len(records), 3, size, size, dtype=torch.uint8)
    for i, rec in enumerate(records):
        path = Path(rec["image"])
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise ConfigError(f"image {path} (record {rec.get('id', i)}) does not exist")
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            out[i] = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)
    return out


def caption_words(captions: list[str]) -> list[str]:
    """Every word piece of the captions, split as the tokenizer and the vocabulary check split them."""
    from .tokenizer import prompt_words

    return sorted({w for c in captions for w in prompt_words(c)})


def build_vocabulary(captions: list[str], object_prompt: str) -> list[str]:
    words = set(caption_words(captions)) | set(caption_words([object_prompt.replace("{}", " ")]))
    try:
        from ..toyworld import vocabulary

        words |= {w.lower() for w in vocabulary()}
    except ImportError:
        pass
    return sorted(words)


def tokenize(tokenizer, captions: list[str], max_length: int) -> torch.Tensor:
    full = tokenizer(captions, padding=False, truncation=False).input_ids
    too_long = [c for c, ids in zip(captions, full) if len(ids) > max_length]
    if too_long:
        logger.warning("%d caption(s) longer than max_length=%d are truncated, e.g. %r", len(too_long), max_length, too_long[0])
    return tokenizer(captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids


def generate_dataset(config, out: Path, writer: str = "write_dataset", kind: str = "scenes") -> Path:
    """``--generate N``: N toy-world scenes of ``config.split`` rendered once into ``<out>/data`` (atomically: a
    temp folder, then a rename) by ``toyworld.<writer>`` (``write_dataset``; ``write_object_pairs`` for one-object
    pairs). A resumed run reuses them; a folder rendered for another N is an error."""
    data = out / "data"
    if (data / "metadata.jsonl").is_file():
        have = rendered_scenes(read_records(data, config.split))
        if have != config.generate:
            raise ConfigError(f"{data} already holds {have} generated {kind}, not {config.generate}; use another output_dir")
        return data
    try:
        from .. import toyworld
    except ImportError as error:
        raise ConfigError(f"--generate needs segdrop.toyworld ({error}); give --data_dir instead") from None
    tmp = out / f"data.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("rendering %d toy-world %s into %s", config.generate, kind, data)
    getattr(toyworld, writer)(tmp, config.generate, size=config.image_size, seed=config.seed,
                              split=config.split or "train")
    os.replace(tmp, data)
    return data


def rendered_scenes(records: list[dict]) -> int:
    """How many scenes a toy split rendered: one-object pairs number them (``index``; a scene without objects
    uses its number up and writes no record), full scenes are one record each."""
    return max((int(r["index"]) + 1 for r in records if "index" in r), default=len(records))


# ----------------------------------------------------------------------------------------------- models


def make_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", clip_sample=False, steps_offset=1,
    )


def make_unet(config: ScratchConfig, cross_attention_dim: int):
    from diffusers import UNet2DConditionModel

    channels = 3 * config.codec_factor**2
    return UNet2DConditionModel(
        sample_size=config.image_size // config.codec_factor,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(config.unet_widths),
        layers_per_block=config.unet_layers_per_block,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.unet_attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.unet_attention)),
        attention_head_dim=tuple(config.unet_heads),  # diffusers' legacy name: the number of heads per level
        norm_num_groups=config.norm_num_groups,
        cross_attention_dim=config.text_hidden_size,
    )


def make_text_encoder(config: ScratchConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    te_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.text_hidden_size,
        intermediate_size=config.text_hidden_size * 4,
        num_hidden_layers=config.text_layers,
        num_attention_heads=config.text_heads,
        max_position_embeddings=config.max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(te_config)


def bundle_megabytes(modules, bytes_per_param: int) -> float:
    return sum(p.numel() for m in modules for p in m.parameters()) * bytes_per_param / 1e6


# ----------------------------------------------------------------------------------------------- training


def train(config: ScratchConfig, command: str) -> dict:
    """Train (or resume) the run described by ``config``; ``command`` is the single-process command line
    (``python -m segdrop.training scratch ...``), recorded as the equivalent ``accelerate launch`` one when several
    processes run. Returns steps, wall time, final loss (``None`` if unknown) and the model folder."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_constant_schedule_with_warmup
    from transformers import CLIPTokenizer

    from .bundle import ModelBundle, save_bundle
    from .codec import PixelUnshuffleCodec
    from .tokenizer import write_word_tokenizer

    started = time.time()
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
    accelerator = make_accelerator(mixed_precision=config.mixed_precision)
    is_main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    command = launch_command(command, world)
    global_batch = config.batch_size * world
    prepare_run_dir(accelerator, out, config.resume)

    # data ------------------------------------------------------------------------------------------
    if config.generate > 0:
        data_dir = generate_dataset(config, out) if is_main else out / "data"
        accelerator.wait_for_everyone()
    else:
        data_dir = Path(config.data_dir)
    records = read_records(data_dir, config.split)
    captions = [str(r["caption"]) for r in records]
    images = load_images(data_dir, records, config.image_size)
    codec = PixelUnshuffleCodec(config.codec_factor)

    tok_dir = out / "tokenizer"
    if is_main and not (tok_dir / "vocab.json").is_file():
        tmp = out / f"tokenizer.tmp-{os.getpid()}"
        write_word_tokenizer(build_vocabulary(captions, config.object_prompt), tmp, max_length=config.max_length)
        os.replace(tmp, tok_dir)
    accelerator.wait_for_everyone()
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    ids = tokenize(tokenizer, captions, config.max_length)
    empty_ids = tokenize(tokenizer, [""], config.max_length)[0]

    # models ----------------------------------------------------------------------------------------
    set_seed(config.seed)
    torch.manual_seed(config.seed)
    text_encoder = make_text_encoder(config, tokenizer)
    unet = make_unet(config, config.text_hidden_size)
    scheduler = make_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    lr_scheduler = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=config.warmup_steps)
    # make_accelerator: the prepared scheduler steps once per optimisation step, not once per process
    unet, text_encoder, optimizer, lr_scheduler = accelerator.prepare(unet, text_encoder, optimizer, lr_scheduler)

    step, wall_before, log, resumed = start_or_resume(
        accelerator, out, config.resume, lr_scheduler, config_header(world, config.batch_size, command) + dump_toml(config))
    runner = StepRunner(accelerator, out, config, log, optimizer, lr_scheduler, scheduler, command, started, wall_before)

    device = accelerator.device
    n = len(records)
    unet.train()
    text_encoder.train()
    if is_main:
        log.open()
    stopped_early = False
    try:
        while step < config.steps:
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            index = torch.randint(0, n, (global_batch,), generator=g)
            drop = torch.rand(global_batch, generator=g) < config.caption_dropout
            noise = torch.randn(global_batch, codec.latent_channels, config.image_size // codec.factor,
                                config.image_size // codec.factor, generator=g)
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (global_batch,), generator=g)
            part = slice(rank * config.batch_size, (rank + 1) * config.batch_size)
            index, drop, noise, timesteps = index[part], drop[part], noise[part], timesteps[part]

            latents = codec.encode(images[index].float() / 255.0)
            input_ids = torch.where(drop[:, None], empty_ids[None], ids[index])
            noisy = scheduler.add_noise(latents, noise, timesteps)
            noise, noisy = noise.to(device), noisy.to(device)
            with accelerator.autocast():
                hidden = text_encoder(input_ids.to(device))[0]
                pred = unet(noisy, timesteps.to(device), hidden).sample
            runner.update(runner.loss(pred, noise, timesteps), params)
            step += 1
            if runner.after(step):
                stopped_early = True
                break
    finally:
        log.close()

    # export ----------------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    wall = wall_before + time.time() - started
    rows = log.rows()
    final_loss = runner.final_loss(step, resumed)
    result = {"steps": step, "wall_time_s": round(wall, 1), "final_loss": final_loss,
              "num_processes": world, "global_batch_size": global_batch, "output": str(out / "model")}
    if is_main:
        unet_m = accelerator.unwrap_model(unet).eval()
        te_m = accelerator.unwrap_model(text_encoder).eval()
        dtype = config.save_dtype
        if dtype == "auto":
            dtype = "float32" if bundle_megabytes([unet_m, te_m], 4) <= 20 else "float16"
        if dtype == "float16":
            unet_m, te_m = unet_m.to(torch.float16), te_m.to(torch.float16)
        losses = [r["loss"] for r in rows if isinstance(r.get("loss"), (int, float))]
        tail = losses[-100:]
        info = finite_or_none({
            "object_prompt": config.object_prompt,
            "prediction_type": "epsilon",
            "max_length": config.max_length,
            "vocabulary": build_vocabulary(captions, config.object_prompt),
            "train_command": command,
            "recipe": "scratch",
            "config": dataclasses.asdict(config),
            "num_processes": world,
            "global_batch_size": global_batch,
            "steps": step,
            "stopped_early": stopped_early,
            "wall_time_s": round(wall, 1),
            "first_loss": losses[0] if losses else None,
            "final_loss": final_loss,
            "final_loss_mean_last_100": sum(tail) / len(tail) if tail else None,
            "train_scenes": len(records),
            "weights_dtype": dtype,
            "torch": torch.__version__,
        })
        dumps_strict(info, default=str)  # save_bundle writes it with json.dumps: guarantee valid JSON here
        bundle = ModelBundle(unet_m, te_m, tokenizer, scheduler, codec, config.image_size, info)
        save_bundle(bundle, out / "model")
        logger.info("wrote %s (%d steps, %d process(es), %.1f min, last loss %s)", out / "model", step, world,
                    wall / 60, "unknown" if final_loss is None else f"{final_loss:.4f}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m segdrop.training scratch", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        config = resolve_config(args)
        train(config, "python -m segdrop.training scratch " + shlex.join(argv))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
