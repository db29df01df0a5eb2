"""Concept distillation's last step: train a plain segmentation U-Net on images with pseudo masks.

    python -m segdrop.training segmenter --config training/configs/toy_segmenter.toml --data_dir out/real \
        --mask_key refined --output_dir out/seg_real
    python -m segdrop.training segmenter --data_dirs out/real:refined,out/synthetic:refined --output_dir out/seg_both
    python -m segdrop.training segmenter --data_dir toydata --mask_key mask --eval_dir toytest --eval_key mask

Data: one or more "mask folders": ``<root>/metadata.jsonl``, one JSON record per line with ``"image"`` (a path
relative to ``root``) and mask keys (paths relative to ``root``, 8-bit L, foreground > 127): ``"mask"`` (the given
or true mask; a toy-world dataset's union mask, the upper-bound row), ``"refined"`` (the refined mask M) and
``"prelim"`` (M_pre on the latent grid, upsampled nearest to the image size here). ``--mask_key`` picks the labels
of ``--data_dir``; ``--data_dirs a:key,b:key`` adds folders with their own keys (a folder without ``:key`` uses
``--mask_key``): the paper's D ∪ D′ row is ``--data_dirs real:refined,synthetic:refined``. Examples are drawn
uniformly from the union. Records carrying a ``"split"`` field are filtered by ``--split`` ("" = all).

Paper settings (Dombrowski et al. §1.7 of the notes), the defaults here: milesial U-Net 64 -> 1024 channels
(``base_width`` 64, ``depth`` 4), 128x128 inputs, BCE (with logits), Adam lr 2e-3, batch 32, 12k steps; training
augmentation Resize(shorter side ``input_size``) -> RandomCrop(``input_size``) -> HFlip. Labels are resized like the
images (bilinear, > 0.5). ``--label_postprocess`` closes and fills holes in the labels first (the paper's option).

Determinism: each step draws its examples, crops and flips from ``torch.Generator().manual_seed(seed * 1_000_003 +
step)``, so a resumed run reproduces the uninterrupted one exactly (same hardware and threads). Checkpoints, resume,
the loss log and the process-count check are ``training/loop.py``'s (batch norm statistics are per process and
not synchronised when several processes train).

Outputs in ``output_dir``: ``config.toml``, ``loss.jsonl``, ``checkpoints/``, ``segmenter.safetensors`` (written
atomically; ``segment/segmenter.py`` loads it, ComfyUI's SegDrop_SegmenterApply applies it) and, with
``--eval_dir``, ``eval.json``: pooled foreground IoU / mIoU / accuracy and the per-image mean IoU, both under the
paper's protocol (Resize + CenterCrop ``input_size``, threshold 0.5, closing, hole filling; truths resized the
same way) and on whole images at their own size (what the node does).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..segment.metrics import mean_image_iou, pooled_iou
from ..segment.segmenter import (
    SegmentationUNet,
    postprocess_mask,
    predict_masks,
    resize_images,
    save_segmenter,
    shorter_side_size,
)
from .loop import (
    ConfigError,
    StepRunner,
    cli_main,
    dumps_strict,
    finite_or_none,
    launch_command,
    make_accelerator,
    prepare_run_dir,
    start_or_resume,
    write_text_atomic,
)
from .settings import config_header, dump_toml, recipe_parser
from .train_conditioned import run_cli

logger = logging.getLogger("segdrop.training.segmenter")
OUTPUT_FILE = "segmenter.safetensors"
EVAL_FILE = "eval.json"


@dataclass
class SegmenterConfig:
    # data
    data_dir: str | None = None  # a mask folder (metadata.jsonl with "image" and mask keys)
    mask_key: str = "refined"  # which masks of data_dir are the labels: refined | prelim | mask | ...
    data_dirs: list[str] = field(default_factory=list)  # more folders, "folder[:key]" each (D ∪ D′)
    split: str = ""  # keep records of this split when records carry "split" ("" = all)
    label_postprocess: bool = False  # close + fill holes in the labels before training (the paper's option)
    output_dir: str = "out/segmenter"
    # model and augmentation
    input_size: int = 128  # Resize(shorter side) -> RandomCrop to this; the apply-time resize too
    base_width: int = 64  # channels of the first level (paper 64 -> 1024 with depth 4)
    depth: int = 4  # downsamplings
    hflip: bool = True
    # optimisation
    steps: int = 12000
    batch_size: int = 32  # per process
    lr: float = 2e-3
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # >0: clip (the paper does not)
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16 (accelerate)
    num_threads: int = 0  # >0: torch.set_num_threads
    max_train_minutes: float = 0.0  # >0: stop (checkpoint + export) once this much wall time is used
    checkpointing_steps: int = 1000
    checkpoints_total_limit: int = 2
    resume: bool = False
    log_every: int = 50
    # evaluation at the end
    eval_dir: str | None = None  # a mask folder with ground truth
    eval_key: str = "mask"
    eval_split: str = ""
    eval_threshold: float = 0.5


HELPS = {
    "data_dir": "mask folder: metadata.jsonl with 'image' and mask paths per record",
    "mask_key": "record key of the label masks in data_dir (refined, prelim, mask, ...)",
    "data_dirs": "more mask folders as folder[:key], comma- or space-separated (D ∪ D′)",
    "eval_dir": "mask folder with ground truth: writes eval.json (pooled IoU, mIoU, per-image IoU)",
}


def data_sources(c: SegmenterConfig) -> list[tuple[Path, str]]:
    """``(folder, mask key)`` of every training folder: ``data_dir`` with ``mask_key``, then ``data_dirs``."""
    sources = [(Path(c.data_dir), c.mask_key)] if c.data_dir else []
    for item in (part.strip() for entry in c.data_dirs for part in entry.split(",") if part.strip()):
        folder, sep, key = item.rpartition(":")
        if not sep or not key or "/" in key or "\\" in key or not folder:  # no ":key" (or a Windows drive colon)
            folder, key = item, c.mask_key
        sources.append((Path(folder), key))
    return sources


def validate(c: SegmenterConfig) -> None:
    sources = data_sources(c)
    if not sources:
        raise ConfigError("no training data: give --data_dir <mask folder> (with --mask_key) or --data_dirs "
                          "folder:key,folder:key")
    for folder, key in sources + ([(Path(c.eval_dir), c.eval_key)] if c.eval_dir else []):
        if not folder.is_dir():
            raise ConfigError(f"mask folder {folder} does not exist")
        if not (folder / "metadata.jsonl").is_file():
            raise ConfigError(f"mask folder {folder} has no metadata.jsonl (expected one JSON record per image with "
                              f"'image' and mask paths, e.g. {key!r})")
        if not key:
            raise ConfigError(f"empty mask key for {folder}")
    checks = [
        (c.input_size >= 2**c.depth, f"input_size must be >= 2**depth = {2**c.depth}"),
        (c.base_width >= 1 and c.depth >= 1, "base_width and depth must be >= 1"),
        (c.steps >= 1, "steps must be >= 1"),
        (c.batch_size >= 1, "batch_size must be >= 1"),
        (c.lr > 0, "lr must be > 0"),
        (c.weight_decay >= 0 and c.max_grad_norm >= 0, "weight_decay and max_grad_norm must be >= 0"),
        (c.mixed_precision in ("no", "fp16", "bf16"), "mixed_precision must be no, fp16 or bf16"),
        (c.checkpointing_steps >= 1, "checkpointing_steps must be >= 1"),
        (c.checkpoints_total_limit >= 1, "checkpoints_total_limit must be >= 1"),
        (c.log_every >= 1, "log_every must be >= 1"),
        (0 < c.eval_threshold < 1, "eval_threshold must be in (0, 1)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# ----------------------------------------------------------------------------------------------- data


def _read_mask_folder(root: Path, key: str, split: str = "") -> list[tuple[str, Path, Path]]:
    """``(id, image path, mask path)`` of every record of the mask folder ``root`` (``distill.dataset``'s reader;
    of ``split`` only when records carry one) that has an image and a ``key`` mask."""
    from ..distill.dataset import PATH_KEYS, MaskFolderError, read_jsonl, read_mask_folder

    try:
        records = read_mask_folder(root, require=("image", key))
    except MaskFolderError as error:
        if f"has no {key!r}" not in str(error):
            raise
        first = read_jsonl(Path(root) / "metadata.jsonl")[0]
        have = sorted(k for k in first if k in PATH_KEYS and k != "image") or ["none"]
        raise ConfigError(f"{error}; or pick other labels with --mask_key / --eval_key / folder:key in --data_dirs "
                          f"(mask keys of its first record: {', '.join(have)})") from None
    if split and any("split" in r for r in records):
        records = [r for r in records if r.get("split") == split]
        if not records:
            raise ConfigError(f"{root / 'metadata.jsonl'} has no records of split {split!r}")
    root = Path(root).expanduser().resolve()
    return [(r["id"], root / r["image"], root / r[key]) for r in records]  # absolute paths stay as they are


def load_pair(image_path: Path, mask_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) image and bool (H, W) mask at the image size; a mask on a coarser grid with the image's
    aspect ratio (M_pre on the latent grid) is upsampled nearest, any other size is an error."""
    from ..distill.dataset import load_image, load_mask

    image, mask = load_image(image_path), load_mask(mask_path)
    (h, w), (mh, mw) = image.shape[:2], mask.shape
    if (mh, mw) != (h, w):
        if mh <= h and mw <= w and h * mw == w * mh:
            rows = (np.arange(h) * mh // h)[:, None]
            cols = (np.arange(w) * mw // w)[None, :]
            mask = mask[rows, cols]
        else:
            raise ConfigError(f"mask {mask_path} is {mw}x{mh} but its image {image_path} is {w}x{h}; a mask must have "
                              "the image size (or be a coarser grid of the same aspect ratio, like a latent-grid M_pre)")
    return image, mask


def resize_pair(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (3, h, w) image and bool (1, h, w) mask resized to ``size`` (bilinear, antialiased; the mask > 0.5)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    x, m = resize_images(x, size), resize_images(m, size)
    return (x[0] * 255.0).round().clamp(0, 255).to(torch.uint8), m[0] > 0.5


@dataclass
class TrainingSet:
    """Every example resized so its shorter side is ``input_size`` (aspect kept), ready for random crops."""

    images: list[torch.Tensor]  # uint8 (3, h, w)
    masks: list[torch.Tensor]  # bool (1, h, w)
    counts: dict[str, int]  # examples per "folder:key"

    def __len__(self) -> int:
        return len(self.images)


def load_training_set(sources: list[tuple[Path, str]], split: str, input_size: int,
                      label_postprocess: bool = False) -> TrainingSet:
    images, masks, counts = [], [], {}
    for folder, key in sources:
        entries = _read_mask_folder(folder, key, split)
        for rid, image_path, mask_path in entries:
            image, mask = load_pair(image_path, mask_path)
            if label_postprocess:
                mask = postprocess_mask(mask)
            x, m = resize_pair(image, mask, shorter_side_size(*mask.shape, input_size))
            images.append(x)
            masks.append(m)
        counts[f"{folder}:{key}"] = len(entries)
    return TrainingSet(images, masks, counts)


def draw_batch(data: TrainingSet, g: torch.Generator, batch: int, size: int, hflip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One global batch from the step generator: float images (B, 3, S, S) in [0, 1] and float labels (B, 1, S, S),
    each a random ``size`` crop of a random example, flipped horizontally with probability 1/2 when ``hflip``."""
    index = torch.randint(0, len(data), (batch,), generator=g)
    u = torch.rand(batch, 3, generator=g)
    xs, ms = [], []
    for i, (top_u, left_u, flip_u) in zip(index.tolist(), u.tolist()):
        x, m = data.images[i], data.masks[i]
        h, w = x.shape[-2:]
        top, left = int(top_u * (h - size + 1)), int(left_u * (w - size + 1))
        x, m = x[:, top:top + size, left:left + size], m[:, top:top + size, left:left + size]
        if hflip and flip_u < 0.5:
            x, m = x.flip(-1), m.flip(-1)
        xs.append(x)
        ms.append(m)
    return torch.stack(xs).float() / 255.0, torch.stack(ms).float()


# ----------------------------------------------------------------------------------------------- evaluation


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))  # torchvision's CenterCrop
    return x[..., top:top + size, left:left + size]


def _scores(preds: list, truths: list) -> dict:
    return {**pooled_iou(preds, truths), "mean_image_iou": mean_image_iou(preds, truths)}


def evaluate_segmenter(model: SegmentationUNet, folder: str | Path, key: str = "mask", split: str = "", *,
                       threshold: float = 0.5, chunk: int = 32) -> dict:
    """Scores of ``model`` against the ``key`` masks of a mask folder, under the paper's protocol (Resize shorter
    side + CenterCrop ``input_size``, predictions and truths both at that crop, threshold, closing, hole filling)
    and on whole images at their own size (``predict_masks``, as the node applies it)."""
    folder, size = Path(folder), model.input_size
    entries = _read_mask_folder(folder, key, split)
    crops, crop_truths, full, full_truths = [], [], [], []
    pending: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = {}

    def flush(shape: tuple[int, int]) -> None:
        batch = pending.pop(shape)
        pred = predict_masks(model, np.stack([b[0] for b in batch]), threshold=threshold)
        full.extend(pred.numpy())
        full_truths.extend(b[1] for b in batch)

    for _, image_path, mask_path in entries:
        image, mask = load_pair(image_path, mask_path)
        x, m = resize_pair(image, mask, shorter_side_size(*mask.shape, size))
        crops.append(center_crop(x, size).permute(1, 2, 0).numpy())
        crop_truths.append(center_crop(m, size)[0].numpy())
        pending.setdefault(mask.shape, []).append((image, mask))
        if len(pending[mask.shape]) >= chunk:
            flush(mask.shape)
    for shape in list(pending):
        flush(shape)
    paper = [predict_masks(model, np.stack(crops[i:i + chunk]), threshold=threshold).numpy()
             for i in range(0, len(crops), chunk)]
    paper_preds = [p for batch in paper for p in batch]
    return finite_or_none({
        "folder": str(folder), "key": key, "split": split, "images": len(entries), "threshold": threshold,
        "input_size": size,
        "paper_center_crop": _scores(paper_preds, crop_truths),
        "full_image": _scores(full, full_truths),
    })


def format_scores(result: dict) -> str:
    lines = [f"segmenter evaluation on {result['images']} images of {result['folder']} (key {result['key']!r}):"]
    for name in ("paper_center_crop", "full_image"):
        s = result[name]
        lines.append(f"  {name:18s} IoU {100 * s['iou_fg']:.1f}  mIoU {100 * s['miou']:.1f}  ACC "
                     f"{100 * s['accuracy']:.1f}  per-image mean IoU {100 * s['mean_image_iou']:.1f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- training


def train(config: SegmenterConfig, command: str) -> dict:
    """Train (or resume) the segmenter of ``config``; returns steps, wall time, final loss, output and scores."""
    started = time.time()
    if config.num_threads > 0:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
    accelerator = make_accelerator(mixed_precision=config.mixed_precision)
    is_main = accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    command = launch_command(command, world)
    global_batch = config.batch_size * world
    sources = data_sources(config)
    data = load_training_set(sources, config.split, config.input_size, config.label_postprocess)  # before out/
    if config.eval_dir:
        _read_mask_folder(Path(config.eval_dir), config.eval_key, config.eval_split)  # fail now, not after training
    prepare_run_dir(accelerator, out, config.resume)
    logger.info("segmenter: %d examples (%s), input %d, U-Net base %d depth %d", len(data),
                ", ".join(f"{k} x{v}" for k, v in data.counts.items()), config.input_size, config.base_width, config.depth)

    torch.manual_seed(config.seed)
    model = SegmentationUNet(base_width=config.base_width, depth=config.depth, input_size=config.input_size)
    params = list(model.parameters())
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)  # constant: the paper's Adam
    model, optimizer, lr_scheduler = accelerator.prepare(model, optimizer, lr_scheduler)
    step, wall_before, log, resumed = start_or_resume(
        accelerator, out, config.resume, lr_scheduler, config_header(world, config.batch_size, command) + dump_toml(config))
    runner = StepRunner(accelerator, out, config, log, optimizer, lr_scheduler, None, command, started, wall_before,
                        name="segmenter", state_extra={"recipe": "segmenter"})

    device = accelerator.device
    model.train()
    if is_main:
        log.open()
    stopped_early = False
    try:
        while step < config.steps:
            g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            images, labels = draw_batch(data, g, global_batch, config.input_size, config.hflip)
            part = slice(rank * config.batch_size, (rank + 1) * config.batch_size)
            images, labels = images[part].to(device), labels[part].to(device)
            with accelerator.autocast():
                logits = model(images)
            loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
            runner.update(loss, params)
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
    result = {"steps": step, "wall_time_s": round(wall, 1), "final_loss": final_loss, "num_processes": world,
              "global_batch_size": global_batch, "output": str(out / OUTPUT_FILE)}
    if is_main:
        trained = accelerator.unwrap_model(model).eval()
        info = finite_or_none({
            "recipe": "segmenter", "train_command": command, "config": dataclasses.asdict(config),
            "data": data.counts, "steps": step, "stopped_early": stopped_early, "wall_time_s": round(wall, 1),
            "num_processes": world, "global_batch_size": global_batch,
            "first_loss": losses[0] if losses else None, "final_loss": final_loss,
            "final_loss_mean_last_100": sum(tail) / len(tail) if tail else None, "torch": torch.__version__,
        })
        save_segmenter(trained, out / OUTPUT_FILE, {"training": dumps_strict(info, default=str)})
        logger.info("wrote %s (%d steps, last loss %s)", out / OUTPUT_FILE, step, final_loss)
        if config.eval_dir:
            scores = evaluate_segmenter(trained, config.eval_dir, config.eval_key, config.eval_split,
                                        threshold=config.eval_threshold)
            scores["steps"] = step
            write_text_atomic(out / EVAL_FILE, dumps_strict(scores, indent=1) + "\n")
            print(format_scores(scores), flush=True)
            result["eval"] = scores
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def resolve(args: argparse.Namespace) -> SegmenterConfig:
    from .settings import resolve_config

    config = resolve_config(SegmenterConfig, args, "segmenter")
    validate(config)
    return config


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return recipe_parser("segmenter", SegmenterConfig, __doc__, HELPS, parser)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    return run_cli(train, resolve, args, argv, "segmenter")


def main(argv: list[str] | None = None) -> int:
    return cli_main(build_parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
