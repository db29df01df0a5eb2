"""Scoring concept distillation's stages on labelled images: M_pre -> refined M -> segmenters.

Rows (the paper's Table 2 ablation, on any list of :class:`~segdrop.demo.data.LabelledImage`):

* ``prelim``: M_pre, the GMM mask of the object words' cross-attention (latent grid, nearest-upsampled);
* ``refined``: M = up(M_pre) AND g(|x - x̂|), x̂ = the background inpainting of M_pre by the fine-tuned m′;
* ``segmenter_*``: a segmentation U-Net trained on synthetic images D′ (``segmenter_synthetic``), on real images
  with their refined masks (``segmenter_real``) and on real images with true masks (``segmenter_truth``, the upper
  bound), applied to the whole image (threshold 0.5, closing, hole filling).

Scores against the union of object masks: ``iou_pooled`` (foreground IoU over every pixel of every image, the
paper's metric) and ``iou_mean`` (mean of per-image foreground IoU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..segment import resize_mask
from ..segment.metrics import mean_image_iou, pooled_iou
from .data import LabelledImage

SEGMENTER_ROWS = {"segmenter_synthetic": "toy_segmenter_synthetic.safetensors",
                  "segmenter_real": "toy_segmenter_real.safetensors",
                  "segmenter_truth": "toy_segmenter_truth.safetensors"}
"""Row name -> committed toy segmenter file in the models folder."""
M_PRIME_BASE = "default"
M_PRIME_LORA = "toy_background_lora"
"""The demo's m′: the committed background LoRA (a peft adapter folder) merged over the default model (a bundle
folder), both in the models folder. Chosen over the full fine-tune ``toy_background`` on 100 validation scenes
(split ``refinement_val``): refined IoU 0.519 vs 0.495 pooled."""
TOY_BACKGROUND_PROMPT = ""
"""y_b on the toy world: its vocabulary has no "background"; the empty prompt is what m′ learnt it as."""


def stage_scores(masks: Sequence[np.ndarray], items: Sequence[LabelledImage]) -> dict[str, float]:
    """Pooled and per-image-mean foreground IoU of bool ``(H, W)`` masks against the items' object union."""
    truths = [item.foreground for item in items]
    return {"iou_pooled": pooled_iou(masks, truths)["iou_fg"], "iou_mean": mean_image_iou(masks, truths)}


def missing_models(models: Path) -> list[str]:
    """The committed toy files the refinement table needs that ``models`` lacks."""
    names = [M_PRIME_BASE, M_PRIME_LORA, *SEGMENTER_ROWS.values()]
    return [name for name in names if not (models / name).exists()]


def load_m_prime(models: Path):
    """The demo's m′ bundle: ``models/toy_background_lora`` merged over ``models/default``."""
    from ..training.bundle import load_bundle
    from ..training.lora_adapter import load_lora_fallback

    return load_lora_fallback(load_bundle(models / M_PRIME_BASE), models / M_PRIME_LORA)


def evaluate_refinement(capture_bundle, items: Sequence[LabelledImage], models: Path, *, steps: int = 50,
                        seed: int = 0, t0: int = 40, batch: int = 10,
                        progress: Callable[[int], None] | None = None) -> tuple[dict[str, dict], dict[str, list]]:
    """The stage table on ``items`` with the toy models in ``models``; returns (scores by row, pictures by name).

    M_pre comes from ``capture_bundle`` (the pack's default model, as the paper captures with the pretrained SD),
    the inpainting from m′ with the empty background prompt, DDIM ``steps`` (paper: 50), eta 0, one seed per image.
    """
    from dataclasses import replace

    from ..distill.pipeline import preliminary_masks, refine
    from ..segment.segmenter import load_segmenter, predict_masks
    from .protocol import EvalSettings

    missing = missing_models(models)
    if missing:
        raise FileNotFoundError(f"No toy refinement models {missing} in {models}: train them with the commands in "
                                "the README (concept distillation section) or pass --refinement-models.")
    m_prime = load_m_prime(models)
    settings = EvalSettings(t0=t0, seed=seed)
    size = items[0].size
    pictures: dict[str, list] = {"prelim": [], "inpainted": [], "difference": [], "refined": []}
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = np.stack([np.rint(item.rgb * 255).astype(np.uint8) for item in chunk])
        seeds = [seed + start + i for i in range(len(chunk))]
        prelim = preliminary_masks(capture_bundle, images, [item.caption for item in chunk],
                                   settings=replace(settings, seed=seed + start))
        refined, inpainted, difference = refine(m_prime, images, prelim, prompt=TOY_BACKGROUND_PROMPT, steps=steps,
                                                seed=seeds)
        pictures["prelim"] += list(resize_mask(torch.from_numpy(prelim), size).numpy())
        pictures["inpainted"] += list(inpainted)
        pictures["difference"] += list(difference)
        pictures["refined"] += list(refined)
        if progress is not None:
            progress(len(chunk))
    images = np.stack([np.rint(item.rgb * 255).astype(np.uint8) for item in items])
    for row, file in SEGMENTER_ROWS.items():
        pictures[row] = list(predict_masks(load_segmenter(models / file), images).numpy())
    table = {row: stage_scores(pictures[row], items) for row in ("prelim", "refined", *SEGMENTER_ROWS)}
    return table, pictures


__all__ = ["M_PRIME_BASE", "M_PRIME_LORA", "SEGMENTER_ROWS", "TOY_BACKGROUND_PROMPT", "evaluate_refinement",
           "load_m_prime", "missing_models", "stage_scores"]
