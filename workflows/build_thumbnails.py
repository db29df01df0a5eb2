"""Draws the template browser's thumbnails, ``workflows/<name>.jpg`` beside each UI workflow, from real output.

ComfyUI's template browser shows ``<pack>/workflows/<name>.jpg`` on the card of ``<name>.json`` (a 256x256 box,
image scaled to fit). The pictures are what each workflow computes, run through segdrop's Python API on held-out
toy-world scenes with the shipped default model (the same methods as the nodes; the same scenes and seed as
``python -m segdrop demo``):

* foreground_mask: input | object-name cross-attention (concept distillation, t0 = 40) | GMM-binarised mask;
* zero_shot_segmentation: input | DiffSeg segments (KL merge of self-attention at t = 300) | segments over input.
  The toy model's attention is flatter than Stable Diffusion's, so tau = 0.1 (the demo's choice on validation
  scenes) stands in for the paper's 1.1.
* foreground_refine: input | M_pre (as foreground_mask) | background | refined mask (``segment.refine``). No
  background model m′ ships, so the background is the toy world's exact counterfactual (an ideal m′'s output).
* distillation_guidance: an illustration, not a model's output: a scene (y_f) and its background (y_b), the two
  concepts the guidance pulls between (it needs m′; the toy default model is no usable text-to-image generator).

Run ``python workflows/build_thumbnails.py`` (about a minute on a CPU). Tests check each file exists, is a JPEG
and stays under 50 KB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SEED = 2024  # the demo's
SCENES = {"foreground_mask": (0, 3), "zero_shot_segmentation": (0, 1)}  # held-out test scenes shown on each card
THUMBNAIL_TAU = 0.1
SIZE = 512
MARGIN, GAP = 14, 8
BACKGROUND, INK, MUTED = (24, 26, 31), (236, 238, 242), (160, 166, 178)
TITLES = {
    "foreground_mask": ("Foreground mask", "concept distillation: attention, GMM", ("image", "attention", "mask")),
    "zero_shot_segmentation": ("Zero-shot segmentation", "DiffSeg: self-attention, KL merge",
                               ("image", "segments", "overlay")),
    "foreground_refine": ("Refined mask", "concept distillation: M_pre AND changed",
                          ("image", "M_pre", "inpaint", "refined")),
    "distillation_guidance": ("Distillation guidance", "KSampler: + y_f, - y_b, cfg = s",
                              ("y_f: object", "y_b: background")),
}


def _tiles(name: str, bundle, items) -> list[list[np.ndarray]]:
    """Rows of three ``(H, W, 3)`` float pictures in [0, 1] for one card."""
    from segdrop import preview
    from segdrop.demo.protocol import (
        PANEL_CHOICE,
        EvalSettings,
        diffseg_aggregates,
        diffseg_labels,
        foreground_masks,
    )

    settings = EvalSettings(seed=SEED)
    size = items[0].size
    images = torch.stack([torch.as_tensor(np.asarray(i.rgb, np.float32)) for i in items])
    if name == "foreground_mask":
        masks, attention = foreground_masks(bundle, items, settings)[PANEL_CHOICE]
        heat = preview.heatmap(torch.as_tensor(np.asarray(attention)), size)
        shown = torch.as_tensor(np.asarray(masks)).float()[..., None].expand(-1, -1, -1, 3)
        return [[images[k].numpy(), heat[k].numpy(), shown[k].numpy()] for k in range(len(items))]
    labels = diffseg_labels(diffseg_aggregates(bundle, [i.image for i in items], settings), THUMBNAIL_TAU,
                            settings.grid, size)
    colours = preview.colorize_labels(torch.as_tensor(labels))
    blended = preview.overlay(images, colours, 0.6)
    return [[images[k].numpy(), colours[k].numpy(), blended[k].numpy()] for k in range(len(items))]


def refine_tiles(bundle, items) -> list[list[np.ndarray]]:
    """foreground_refine: input | M_pre (the toy model's attention, GMM) | background | refined M.

    No background model m′ ships with the pack, so the background column is the toy world's exact
    counterfactual (the scene without its objects and their effects): what an ideal m′ would paint. The refined
    mask is ``segment.refine.refine_mask`` on it, as Background Inpaint Refine computes it."""
    from segdrop.demo.protocol import PANEL_CHOICE, EvalSettings, foreground_masks
    from segdrop.segment.refine import refine_mask

    prelim, _ = foreground_masks(bundle, items, EvalSettings(seed=SEED))[PANEL_CHOICE]
    rows = []
    for item, mask in zip(items, prelim):
        image = np.asarray(item.rgb, np.float32)
        background = np.asarray(item.counterfactual, np.float32)
        refined = refine_mask(image, background, mask.astype(bool))
        rows.append([image, np.repeat(mask[..., None], 3, -1).astype(np.float32), background,
                     np.repeat(refined[..., None], 3, -1).astype(np.float32)])
    return rows


def guidance_tiles(items) -> list[list[np.ndarray]]:
    """distillation_guidance, one row (two columns fill the card's width): the two concepts the guidance pulls
    between, y_f (the scene with its object) and y_b (the same scene's background: the toy world's exact
    counterfactual). An illustration of what the workflow is for, not a model's output: it needs m′, and the toy
    default model is no usable text-to-image generator."""
    return [[np.asarray(item.rgb, np.float32), np.asarray(item.counterfactual, np.float32)] for item in items[:1]]


def write_concept_distillation(folder: Path = HERE, bundle=None) -> list[Path]:
    """``foreground_refine.jpg`` and ``distillation_guidance.jpg`` (see refine_tiles and guidance_tiles)."""
    from segdrop.demo.job import DEFAULT_MODEL, toyworld_scenes
    from segdrop.training.bundle import load_bundle

    bundle = bundle or load_bundle(DEFAULT_MODEL)
    picked = SCENES["foreground_mask"]
    scenes = toyworld_scenes("test", 1 + max(picked), SEED, int(bundle.image_size))
    items = [scenes[i] for i in picked]
    written = []
    for name, tiles in (("foreground_refine", lambda: refine_tiles(bundle, items)),
                        ("distillation_guidance", lambda: guidance_tiles(items))):
        torch.manual_seed(SEED)
        card = draw_card(name, tiles())
        path = folder / f"{name}.jpg"
        card.save(path, quality=85, optimize=True, progressive=True)
        written.append(path)
    return written


def draw_card(name: str, rows: list[list[np.ndarray]]):
    """A square picture: title, column labels, then the rows of tiles (nearest-neighbour upscaled)."""
    from PIL import Image, ImageDraw, ImageFont

    title, subtitle, labels = TITLES[name]
    columns = len(rows[0])
    tile = (SIZE - 2 * MARGIN - (columns - 1) * GAP) // columns
    title_font, label_font, small_font = (ImageFont.load_default(size=s) for s in (34, 20, 16))
    card = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(card)
    grid_height = len(rows) * tile + (len(rows) - 1) * GAP
    top = SIZE - MARGIN - grid_height
    draw.text((MARGIN, MARGIN), "SegDrop", font=small_font, fill=MUTED)
    draw.text((MARGIN, MARGIN + 22), title, font=title_font, fill=INK)
    draw.text((MARGIN, MARGIN + 66), subtitle, font=label_font, fill=MUTED)
    left = MARGIN + (SIZE - 2 * MARGIN - columns * tile - (columns - 1) * GAP) // 2
    for c, label in enumerate(labels):
        x = left + c * (tile + GAP) + tile // 2
        draw.text((x, top - 8), label, font=label_font, fill=MUTED, anchor="ms")
        if c:  # a small arrow between columns (the default font has no arrow glyph)
            ax, ay = x - tile // 2 - GAP // 2, top - 15
            draw.polygon([(ax - 5, ay - 6), (ax + 5, ay), (ax - 5, ay + 6)], fill=MUTED)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            pixels = (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)
            image = Image.fromarray(pixels).resize((tile, tile), Image.NEAREST)
            card.paste(image, (left + c * (tile + GAP), top + r * (tile + GAP)))
    return card


def write_all(folder: Path = HERE) -> list[Path]:
    from segdrop.demo.job import DEFAULT_MODEL, toyworld_scenes
    from segdrop.training.bundle import load_bundle

    torch.manual_seed(SEED)
    bundle = load_bundle(DEFAULT_MODEL)
    size = int(bundle.image_size)
    scenes = toyworld_scenes("test", 1 + max(max(v) for v in SCENES.values()), SEED, size)
    written = []
    for name, picked in SCENES.items():
        torch.manual_seed(SEED)
        card = draw_card(name, _tiles(name, bundle, [scenes[i] for i in picked]))
        path = folder / f"{name}.jpg"
        card.save(path, quality=85, optimize=True, progressive=True)
        written.append(path)
    written += write_concept_distillation(folder, bundle)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path, path.stat().st_size, "bytes")
