"""Draws the template browser's thumbnails, ``workflows/<name>.jpg`` beside each UI workflow, from real output.

ComfyUI's template browser shows ``<pack>/workflows/<name>.jpg`` on the card of ``<name>.json`` (a 256x256 box,
image scaled to fit). The pictures are what each workflow computes, run through segdrop's Python API on held-out
toy-world scenes (the same scenes and seed as ``python -m segdrop demo``) with the shipped default model and the
committed toy models (m′ = the LoRA ``models/toy_background_lora`` over the default model, as in the demo, or the
full ``models/toy_background``; ``models/toy_removal``), the same methods as the nodes:

* foreground_mask: input | object-name cross-attention (concept distillation, t0 = 40) | GMM-binarised mask;
* zero_shot_segmentation: input | DiffSeg segments (KL merge of self-attention at t = 300) | segments over input.
  The toy model's attention is flatter than Stable Diffusion's, so tau = 0.1 (the demo's choice on validation
  scenes) stands in for the paper's 1.1.
* foreground_refine: input | M_pre (the default model's attention, GMM, nearest-upsampled) | the background m′
  paints into M_pre (y_b = "", 50 DDIM steps) | refined mask (M_pre AND the pixels that changed);
* distillation_guidance: two samples of the full m′ from the same seed with y_f = the first held-out test caption
  ("a photo of a purple circle") and y_b = "": guidance s = 3 (towards the object) and s = -1 (towards the
  background);
* object_removal: input | object mask | the toy ObjectDrop model's removal (50 DDIM steps, pasted inside the
  effect-aware mask) | the toy world's true counterfactual, on the first held-out removal scene with both a
  shadow and a reflection.
* object_insertion: background | the object pasted naively (what ObjectDrop Insert conditions on) | the toy
  insertion model's result (50 DDIM steps, pasted inside the effect-aware mask) | the toy world's true scene with
  the object's shadow and reflection, on the first held-out one-object insertion pair with a shadow.

The toy models are small and trained briefly, so their samples are rough (grainy, stray blobs, faint leftovers);
the cards show them as they are. Run ``python workflows/build_thumbnails.py [NAME ...]`` (all cards: a few
minutes on a CPU; names pick cards). Tests check each file exists, is a JPEG and stays under 50 KB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SEED = 2024  # the demo's
SCENES = {"foreground_mask": (0, 3), "zero_shot_segmentation": (0, 1)}  # held-out test scenes shown on each card
GUIDANCE_SCENE = 0  # the held-out test scene whose caption is y_f on distillation_guidance (the first)
GUIDANCE_SCALES = (3.0, -1.0)  # s: towards the object, towards the background
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
                              (f"s = {GUIDANCE_SCALES[0]:g}: object", f"s = {GUIDANCE_SCALES[1]:g}: background")),
    "object_removal": ("Object removal", "ObjectDrop: object + shadow out",
                       ("image", "mask", "removed", "truth")),
    "object_insertion": ("Object insertion", "ObjectDrop: object + shadow in", ("background", "pasted", "inserted", "truth")),
}
SIDE_BY_SIDE = {"distillation_guidance": {1}, "object_removal": {3}, "object_insertion": {3}}
"""Columns that are a comparison, not the next step (drawn without the arrow before them)."""
CARDS = (*SCENES, "foreground_refine", "distillation_guidance", "object_removal", "object_insertion")


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


def refine_tiles(bundle, m_prime, items) -> list[list[np.ndarray]]:
    """foreground_refine: input | M_pre | m′'s background | refined M, computed as the pipeline computes them.

    M_pre is ``distill.pipeline.preliminary_masks`` with the capture model ``bundle`` (the shipped default model;
    the caption's object words summed, T0 = 40, GMM) at its latent grid, nearest-upsampled for display. The
    background is ``distill.pipeline.refine``'s inpainting of M_pre by m′ (``demo.refinement.load_m_prime``) with
    y_b = "" (the toy vocabulary has no "background"), 50 DDIM steps, eta 0, seed ``SEED + row``; the refined mask is
    up(M_pre) AND the pixels that changed (``segment.refine.refine_mask``), as Background Inpaint Refine computes
    it."""
    from segdrop.demo.protocol import EvalSettings
    from segdrop.demo.refinement import TOY_BACKGROUND_PROMPT
    from segdrop.demo.report import grey_tile
    from segdrop.distill.pipeline import preliminary_masks, refine
    from segdrop.segment import resize_mask

    images = np.stack([_uint8(item.rgb) for item in items])
    prelim = preliminary_masks(bundle, images, [item.caption for item in items], settings=EvalSettings(seed=SEED))
    refined, background, _ = refine(m_prime, images, prelim, prompt=TOY_BACKGROUND_PROMPT, steps=50,
                                     seed=[SEED + k for k in range(len(items))])
    shown = resize_mask(torch.from_numpy(prelim), tuple(images.shape[1:3])).numpy()
    return [[image / 255, grey_tile(mask), pixels / 255, grey_tile(mask_refined)]
            for image, mask, pixels, mask_refined in zip(images.astype(np.float32), shown,
                                                          background.astype(np.float32), refined)]


def guidance_tiles(m_prime, caption: str) -> list[list[np.ndarray]]:
    """distillation_guidance, one row (two columns fill the card's width): two samples of the full m′
    (``models/toy_background``: at s = 3 the LoRA m′'s epsilon samples are grain, and D′ takes it at s = 20) by
    ``distill.sampling.distillation_sample`` with y_f = ``caption``, y_b = "", 50 DDIM steps, eta 0 and the same
    seed (``SEED``, so the same x_T): s = 3 pulls towards the object, s = -1 towards the background."""
    from segdrop.distill.sampling import distillation_sample

    return [[distillation_sample(m_prime, [caption], negative_prompt="", guidance=s, steps=50, seed=SEED)[0]
             .astype(np.float32) / 255 for s in GUIDANCE_SCALES]]


def removal_scene(count: int = 16):
    """The object_removal card's scene: the first held-out "removal" scene (seed ``SEED``, 64 px) with both a
    shadow and a reflection."""
    from segdrop.demo.job import toyworld_scenes

    for item in toyworld_scenes("removal", count, SEED, 64):
        if all(mask is not None and mask.any() for mask in (item.shadow_mask, item.reflection_mask)):
            return item
    raise RuntimeError(f"None of the first {count} removal scenes has both a shadow and a reflection.")


def removal_tiles(item) -> list[list[np.ndarray]]:
    """object_removal: input | object mask (all objects' visible pixels, as a user draws it) | ObjectDrop's
    removal | the toy world's true counterfactual.

    The removal is the committed toy ObjectDrop model (``models/toy_removal``, concat-conditioned) through
    ``demo.removal.sampled_remover``: 50 DDIM steps, seed ``SEED``, the image unmasked in the conditioning, the
    output pasted back inside the effect-aware mask (object ∪ changed region, grown, feathered) as ObjectDropRemove
    does, with the demo's 64-px effect options (``TOY_EFFECT_OPTIONS``)."""
    from segdrop.demo.job import DEFAULT_MODEL
    from segdrop.demo.removal import TOY_EFFECT_OPTIONS, sampled_remover
    from segdrop.demo.report import grey_tile
    from segdrop.training.bundle import load_bundle

    remover = sampled_remover(load_bundle(DEFAULT_MODEL.parent / "toy_removal"), gray_masked=False,
                              composite="effects", effect_options=TOY_EFFECT_OPTIONS, steps=50, seed=SEED)
    image = _uint8(item.rgb)
    removed = remover(image[None], item.foreground[None])[0]
    truth = _uint8(item.counterfactual)
    return [[image / 255, grey_tile(item.foreground), removed.astype(np.float32) / 255, truth / 255]]


def insertion_pair(count: int = 16):
    """The object_insertion card's pair: the first held-out one-object "insertion" pair (``demo.insertion``, seed
    ``SEED``, 64 px) whose object casts a shadow of at least 12 px."""
    from segdrop.demo.insertion import insertion_pairs

    for pair in insertion_pairs("insertion", count, SEED, 64):
        if pair.shadow.sum() >= 12:
            return pair
    raise RuntimeError(f"None of the first {count} insertion pairs has a visible shadow.")


def insertion_tiles(pair) -> list[list[np.ndarray]]:
    """object_insertion: background (the scene without the object and its effects; other objects stay) | the
    naive paste ``M·x + (1 - M)·background`` (the composite ObjectDrop Insert conditions on) | the committed toy
    insertion model's result (``models/toy_insertion``, bootstrap stage 1 + real-pair stage 2: 50 DDIM steps, seed
    ``SEED``, on the crop it was trained on, pasted through the effect-aware mask with the demo's 64-px options,
    as ObjectDrop Insert does) | the true scene with the object's shadow and reflection."""
    from segdrop.demo.insertion import TOY_INSERTION_MODELS, model_inserter
    from segdrop.demo.job import DEFAULT_MODEL
    from segdrop.demo.removal import TOY_EFFECT_OPTIONS
    from segdrop.training.bundle import load_bundle

    model = load_bundle(DEFAULT_MODEL.parent / TOY_INSERTION_MODELS["bootstrap"])
    inserter = model_inserter(model, steps=50, seed=SEED, effect_options=TOY_EFFECT_OPTIONS)
    inserted = inserter(pair.composite[None], pair.mask[None])[0]
    return [[pair.background / 255, pair.composite / 255, inserted.astype(np.float32) / 255, pair.factual / 255]]


def _uint8(picture) -> np.ndarray:
    picture = np.asarray(picture)
    return picture if picture.dtype == np.uint8 else np.rint(np.asarray(picture, np.float32) * 255).astype(np.uint8)


def _save(card, folder: Path, name: str) -> Path:
    path = folder / f"{name}.jpg"
    card.save(path, quality=85, optimize=True, progressive=True)
    return path


def write_concept_distillation(folder: Path = HERE, bundle=None,
                               names: tuple[str, ...] = ("foreground_refine", "distillation_guidance")) -> list[Path]:
    """``foreground_refine.jpg`` and ``distillation_guidance.jpg`` (see refine_tiles and guidance_tiles)."""
    from segdrop.demo.job import DEFAULT_MODEL, toyworld_scenes
    from segdrop.demo.refinement import load_m_prime
    from segdrop.training.bundle import load_bundle

    bundle = bundle or load_bundle(DEFAULT_MODEL)
    scenes = toyworld_scenes("test", 1 + max(SCENES["foreground_mask"]), SEED, int(bundle.image_size))
    written = []
    if "foreground_refine" in names:
        torch.manual_seed(SEED)
        rows = refine_tiles(bundle, load_m_prime(DEFAULT_MODEL.parent), [scenes[i] for i in SCENES["foreground_mask"]])
        written.append(_save(draw_card("foreground_refine", rows), folder, "foreground_refine"))
    if "distillation_guidance" in names:
        caption = scenes[GUIDANCE_SCENE].caption
        m_prime_full = load_bundle(DEFAULT_MODEL.parent / "toy_background")
        card = draw_card("distillation_guidance", guidance_tiles(m_prime_full, caption),
                         subtitle=f'y_f "{caption}", y_b ""')
        written.append(_save(card, folder, "distillation_guidance"))
    return written


def write_object_removal(folder: Path = HERE) -> Path:
    """``object_removal.jpg`` (see removal_tiles and removal_scene)."""
    torch.manual_seed(SEED)
    return _save(draw_card("object_removal", removal_tiles(removal_scene())), folder, "object_removal")


def write_object_insertion(folder: Path = HERE) -> Path:
    """``object_insertion.jpg`` (see insertion_tiles and insertion_pair)."""
    torch.manual_seed(SEED)
    return _save(draw_card("object_insertion", insertion_tiles(insertion_pair())), folder, "object_insertion")


def draw_card(name: str, rows: list[list[np.ndarray]], subtitle: str | None = None):
    """A square picture: title, subtitle (default ``TITLES[name]``'s), column labels, then the rows of tiles
    (nearest-neighbour upscaled)."""
    from PIL import Image, ImageDraw, ImageFont

    title, default_subtitle, labels = TITLES[name]
    subtitle = default_subtitle if subtitle is None else subtitle
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
        if c and c not in SIDE_BY_SIDE.get(name, ()):  # an arrow between steps (the default font has no arrow glyph)
            ax, ay = x - tile // 2 - GAP // 2, top - 15
            draw.polygon([(ax - 5, ay - 6), (ax + 5, ay), (ax - 5, ay + 6)], fill=MUTED)
    for r, row in enumerate(rows):
        for c, picture in enumerate(row):
            pixels = (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)
            image = Image.fromarray(pixels).resize((tile, tile), Image.NEAREST)
            card.paste(image, (left + c * (tile + GAP), top + r * (tile + GAP)))
    return card


def write_all(folder: Path = HERE, names: tuple[str, ...] = CARDS) -> list[Path]:
    """Draw the cards in ``names`` (default: all) into ``folder``."""
    from segdrop.demo.job import DEFAULT_MODEL, toyworld_scenes
    from segdrop.training.bundle import load_bundle

    unknown = sorted(set(names) - set(CARDS))
    if unknown:
        raise ValueError(f"No thumbnail {unknown}; the cards are {list(CARDS)}.")
    torch.manual_seed(SEED)
    bundle = load_bundle(DEFAULT_MODEL)
    size = int(bundle.image_size)
    scenes = toyworld_scenes("test", 1 + max(max(v) for v in SCENES.values()), SEED, size)
    written = []
    for name, picked in SCENES.items():
        if name not in names:
            continue
        torch.manual_seed(SEED)
        card = draw_card(name, _tiles(name, bundle, [scenes[i] for i in picked]))
        written.append(_save(card, folder, name))
    distillation = tuple(n for n in ("foreground_refine", "distillation_guidance") if n in names)
    if distillation:
        written += write_concept_distillation(folder, bundle, distillation)
    if "object_removal" in names:
        written.append(write_object_removal(folder))
    if "object_insertion" in names:
        written.append(write_object_insertion(folder))
    return written


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Draw the template browser's thumbnails (workflows/<name>.jpg).")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"cards to draw (default: all): {', '.join(CARDS)}")
    for path in write_all(names=tuple(parser.parse_args().names) or CARDS):
        print(path, path.stat().st_size, "bytes")
