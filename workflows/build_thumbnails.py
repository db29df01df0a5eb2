"""Draws the template browser's thumbnails, ``workflows/<name>.jpg`` beside each UI workflow, from real output.

ComfyUI's template browser shows ``<pack>/workflows/<name>.jpg`` on the card of ``<name>.json`` (a 256x256 box,
image scaled to fit). The pictures are what each workflow computes, run through segdrop's Python API on held-out
toy-world scenes with the shipped default model (the same methods as the nodes; the same scenes and seed as
``python -m segdrop demo``):

* foreground_mask: input | object-name cross-attention (concept distillation, t0 = 40) | GMM-binarised mask;
* zero_shot_segmentation: input | DiffSeg segments (KL merge of self-attention at t = 300) | segments over input.
  The toy model's attention is flatter than Stable Diffusion's, so tau = 0.1 (the demo's choice on validation
  scenes) stands in for the paper's 1.1.

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
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path, path.stat().st_size, "bytes")
