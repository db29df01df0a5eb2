"""What people look at: one picture panel per image and the results as Markdown."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import preview
from .data import LabelledImage, as_float_image
from .protocol import PANEL_CHOICE


def write_panels(
    out: Path,
    items: Sequence[LabelledImage],
    attention: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
) -> list[Path]:
    """One PNG per image: image | object-word heatmap | GMM mask | DiffSeg segments | ground truth."""
    from PIL import Image

    paths = []
    for index, item in enumerate(items):
        h, w = item.size
        image = torch.from_numpy(item.rgb)[None]
        tiles = [
            image,
            preview.heatmap(torch.from_numpy(np.asarray(attention[index]))[None], (h, w)),
            torch.from_numpy(np.asarray(masks[index])).float()[None, ..., None].expand(1, h, w, 3),
            preview.overlay(image, preview.colorize_labels(torch.from_numpy(labels[index])[None]), 0.6),
            preview.colorize_labels(torch.from_numpy(item.labels)[None]),
        ]
        gap = torch.ones(1, h, 2, 3)
        row = torch.cat([t for tile in tiles for t in (tile, gap)][:-1], dim=2)[0]
        scale = max(1, 256 // h)
        picture = (row.clamp(0, 1).numpy() * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
        paths.append(out / f"scene_{index:02d}.png")
        Image.fromarray(picture).save(paths[-1])
    return paths


def write_removal_panels(out: Path, items: Sequence[LabelledImage], outputs: dict[str, list],
                         effect_options: dict | None = None) -> list[Path]:
    """One PNG per scene: image | object mask | inpainting | ObjectDrop | its effect mask | true counterfactual.

    The effect mask is ``removal.effect_mask`` of the image and ObjectDrop's output with ``effect_options`` (the
    ones its composite used), computed again here: the composite mask ObjectDrop pasted through."""
    paths = []
    for index, item in enumerate(items):
        removed = outputs["objectdrop"][index] / 255.0
        tiles = [item.rgb, grey_tile(item.foreground), outputs["inpaint"][index] / 255.0, removed,
                 _effect_tile(item.rgb, removed, item.foreground, effect_options), as_float_image(item.counterfactual)]
        paths.append(_save_row(tiles, out / f"removal_{index:02d}.png"))
    return paths


def write_insertion_panels(out: Path, pairs: Sequence, inserted: Sequence[np.ndarray],
                           effect_options: dict | None = None) -> list[Path]:
    """One PNG per pair: background | naive paste | inserted (with bootstrap) | its effect mask | truth. The effect
    mask is ``removal.effect_mask`` of the paste and the output with ``effect_options``, as the composite used."""
    paths = []
    for index, (pair, output) in enumerate(zip(pairs, inserted)):
        paste = pair.composite / 255.0
        tiles = [pair.background / 255.0, paste, output / 255.0,
                 _effect_tile(paste, output / 255.0, pair.mask, effect_options), pair.factual / 255.0]
        paths.append(_save_row(tiles, out / f"insertion_{index:02d}.png"))
    return paths


def write_refinement_panels(out: Path, items: Sequence[LabelledImage], pictures: dict[str, list]) -> list[Path]:
    """One PNG per scene: image | M_pre | background inpainting | |x - x̂| | refined | segmenter (D′) | truth."""
    paths = []
    for index, item in enumerate(items):
        difference = np.asarray(pictures["difference"][index], np.float32)
        tiles = [item.rgb, grey_tile(pictures["prelim"][index]), pictures["inpainted"][index] / 255.0,
                 grey_tile(difference / max(float(difference.max()), 1e-6)), grey_tile(pictures["refined"][index]),
                 grey_tile(pictures["segmenter_synthetic"][index]), grey_tile(item.foreground)]
        paths.append(_save_row(tiles, out / f"refinement_{index:02d}.png"))
    return paths


def grey_tile(mask) -> np.ndarray:
    """A mask (or a [0, 1] map) as an (H, W, 3) grey float tile."""
    return np.repeat(np.asarray(mask, np.float32)[..., None], 3, axis=-1)


def _effect_tile(before, after, object_mask, effect_options: dict | None) -> np.ndarray:
    """``removal.effect_mask`` of ``before`` -> ``after`` (float (H, W, 3) images) around ``object_mask``, as a
    grey tile: the mask the effect-aware composite pasted through."""
    from ..removal.effect_mask import effect_mask

    effects = effect_mask(torch.from_numpy(np.asarray(before, np.float32)), torch.from_numpy(np.asarray(after, np.float32)),
                          torch.from_numpy(np.asarray(object_mask)).float(), **(effect_options or {}))
    return grey_tile(effects.numpy())


def _save_row(tiles: Sequence[np.ndarray], path: Path) -> Path:
    """Float (H, W, 3) tiles in [0, 1] side by side, 2-px white gaps, scaled up by whole pixels to about 256 px
    high; saved as PNG at ``path``."""
    from PIL import Image

    h = np.asarray(tiles[0]).shape[0]
    gap = np.ones((h, 2, 3), np.float32)
    row = np.concatenate([t for tile in tiles for t in (np.asarray(tile, np.float32), gap)][:-1], axis=1)
    scale = max(1, 256 // h)
    picture = (np.clip(row, 0, 1) * 255).round().astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
    Image.fromarray(picture).save(path)
    return path


def refinement_markdown(rows: dict | None, settings: dict) -> list[str]:
    if rows is None:
        return ["## Concept distillation stages", "", f"Skipped: {settings.get('skipped', 'not run')}.", ""]
    return [
        f"## Concept distillation stages ({settings['scenes']} held-out scenes, {settings['steps']} DDIM steps "
        "of background inpainting)",
        "",
        "Foreground IoU with the union of object masks: pooled over all pixels (the paper's metric) and the mean of "
        "per-image IoU.",
        "",
        "| row | IoU pooled | IoU per-image mean |",
        "| --- | --- | --- |",
        *[f"| {name} | {r['iou_pooled']:.3f} | {r['iou_mean']:.3f} |" for name, r in rows.items()],
        "",
        "Refinement panels: image | M_pre | background inpainting by m′ | difference |x − x̂| | refined M | "
        "segmenter trained on D′ | truth.",
        "",
    ]


def _db(value: float | None) -> str:
    """A table cell in dB (a region no image has: n/a)."""
    return "n/a" if value is None else f"{value:.2f}"


def removal_markdown(rows: dict | None, settings: dict) -> list[str]:
    if rows is None:
        return ["## Object removal", "", f"Skipped: {settings.get('skipped', 'not run')}.", ""]
    return [
        f"## Object removal ({settings['scenes']} held-out scenes with true counterfactuals, {settings['steps']} DDIM steps)",
        "",
        "PSNR in dB against the true counterfactual; effect error removed = share of the shadow/reflection error "
        "(vs the input) that is gone.",
        "",
        "| row | PSNR | object | shadow | reflection | effect error removed |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {name} | {_db(r['psnr'])} | {_db(r['psnr_object'])} | {_db(r['psnr_shadow'])} | "
          f"{_db(r['psnr_reflection'])} | {_db(r['effect_error_removed'])} |" for name, r in rows.items()],
        "",
        "Removal panels: image | object mask | inpainting | ObjectDrop | ObjectDrop's effect mask | true counterfactual.",
        "",
    ]


def insertion_markdown(rows: dict | None, settings: dict) -> list[str]:
    if rows is None:
        return ["## Object insertion", "", f"Skipped: {settings.get('skipped', 'not run')}.", ""]
    return [
        f"## Object insertion ({settings['scenes']} held-out one-object scenes, {settings['steps']} DDIM steps)",
        "",
        "PSNR in dB against the true scene with the object and its effects; shadow / reflection: pooled over the "
        "inserted object's own shadow / reflection pixels.",
        "",
        "| row | PSNR | shadow | reflection |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {_db(r['psnr'])} | {_db(r['psnr_shadow'])} | {_db(r['psnr_reflection'])} |"
          for name, r in rows.items()],
        "",
        *_light_blind_lines(settings.get("light_blind")),
        "Insertion panels: background | naive paste | inserted (with bootstrap) | its effect mask | truth.",
        "",
    ]


def _light_blind_lines(references: dict | None) -> list[str]:
    """The renderer's light-blind references under the insertion table (none when the run has none)."""
    if not references:
        return []
    rows = [(name, references[name]) for name in ("random_light", "random_light_mean") if name in references]
    return [
        f"Light-blind references (the renderer, not a model; {references.get('draws', '?')} lights drawn per scene): "
        "`random_light` draws the object's true shadow and reflection under a random light (scores averaged over "
        "the draws), `random_light_mean` is the mean of those renders. An inserter beats them only by reading where "
        "the light comes from (the other objects' shadows, the objects' shading).",
        "",
        "| reference | PSNR | shadow | reflection |",
        "| --- | --- | --- | --- |",
        *[f"| {name} | {_db(r['psnr'])} | {_db(r['psnr_shadow'])} | {_db(r['psnr_reflection'])} |" for name, r in rows],
        "",
    ]


def results_markdown(results: dict) -> str:
    height, width = results["image_size"]
    lines = [
        "# SegDrop evaluation results",
        "",
        f"Model: `{results.get('model', '?')}`; {results['images']} held-out images ({results.get('data', '')}) at "
        f"{height}x{width}; {results.get('seconds', '?')} s.",
        "",
        "## Foreground masks (IoU with the union of object masks, mean over images)",
        "",
        "| method | IoU |",
        "| --- | --- |",
        *[f"| {name} | {value:.3f} |" for name, value in results["foreground_iou"].items()],
        "",
        "## Zero-shot segmentation (mIoU, per-image Hungarian matching as DiffSeg's protocol)",
        "",
        "| method | mIoU |",
        "| --- | --- |",
        *[f"| {name} | {value:.3f} |" for name, value in results["segmentation_miou"].items()],
        "",
        f"DiffSeg found {results['diffseg_segments_per_image']:.1f} segments per image on average at the chosen "
        f"tau, {results['diffseg_segments_per_image_paper_tau']:.1f} at the paper's. Panels: image | attention of "
        f"the {PANEL_CHOICE} | its GMM mask | DiffSeg segments | ground truth.",
        "",
    ]
    if "refinement_settings" in results:
        lines += refinement_markdown(results.get("refinement"), results["refinement_settings"])
    if "removal_settings" in results:
        lines += removal_markdown(results.get("removal"), results["removal_settings"])
    if "insertion_settings" in results:
        lines += insertion_markdown(results.get("insertion"), results["insertion_settings"])
    if "word_localization" in results:
        lines += [
            "## Word localization (top-|mask| IoU and pointing of single words' cross-attention)",
            "",
            "| word | objects | IoU | pointing | chance IoU |",
            "| --- | --- | --- | --- | --- |",
            *[f"| {kind} | {row['objects']} | {row['iou']:.3f} | {row['pointing']:.3f} | {row['chance_iou']:.3f} |"
              for kind, row in results["word_localization"].items() if isinstance(row, dict)],
            "",
        ]
    return "\n".join(lines)
