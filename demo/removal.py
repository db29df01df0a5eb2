"""Scoring object removal against true counterfactuals: PSNR overall, inside the object, the shadow and the
reflection, and the share of the effects' error removed.

A remover is any function ``(images uint8 (B, H, W, 3), masks bool (B, H, W)) -> uint8 (B, H, W, 3)``; the
masks are the objects' visible masks (not their shadows), as a user would draw them. Scores:

* ``psnr``: mean over images of the per-image PSNR against the true counterfactual (the paper's protocol);
* ``psnr_object`` / ``psnr_shadow`` / ``psnr_reflection``: PSNR of the squared error pooled over every pixel of
  that region in all images (pooled, because many scenes have no reflection and regions are small);
* ``effect_error_removed``: ``1 - SE(method) / SE(input)`` over the shadow and reflection pixels: the share of the
  effects' error (against the counterfactual) that the method removed; 1 = effects gone exactly, 0 = left as
  they were, negative = made worse.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .data import LabelledImage, as_float_image

Remover = Callable[[np.ndarray, np.ndarray], np.ndarray]


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of images in [0, 1]; an exact match is capped at 100 dB so means stay finite."""
    return 100.0 if mse <= 1e-10 else float(10.0 * np.log10(1.0 / mse))


def squared_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel squared error ``(H, W)``, averaged over RGB, of two images (uint8 or float in [0, 1])."""
    return ((as_float_image(a).astype(np.float64) - as_float_image(b)) ** 2).mean(-1)


def region_masks(item: LabelledImage) -> dict[str, np.ndarray]:
    """The scored regions of one image: object, shadow, reflection and their effects union."""
    empty = np.zeros(item.size, bool)
    shadow = item.shadow_mask if item.shadow_mask is not None else empty
    reflection = item.reflection_mask if item.reflection_mask is not None else empty
    return {"object": item.foreground, "shadow": shadow, "reflection": reflection, "effects": shadow | reflection}


def removal_scores(outputs: Sequence[np.ndarray], items: Sequence[LabelledImage],
                   inputs: Sequence[np.ndarray] | None = None) -> dict[str, float | None]:
    """Scores (module notes) of ``outputs`` against the items' counterfactuals; ``inputs`` (default: the items'
    images) are what the removers saw, the reference of ``effect_error_removed``. A region no image has is None."""
    if any(item.counterfactual is None for item in items):
        raise ValueError("Removal is scored against true counterfactuals: every image needs its counterfactual.")
    per_image, sums, counts, input_effects = [], {}, {}, 0.0
    inputs = [item.image for item in items] if inputs is None else inputs
    for output, item, seen in zip(outputs, items, inputs):
        error = squared_error(output, item.counterfactual)
        per_image.append(psnr_from_mse(float(error.mean())))
        regions = region_masks(item)
        for name, mask in regions.items():
            sums[name] = sums.get(name, 0.0) + float(error[mask].sum())
            counts[name] = counts.get(name, 0) + int(mask.sum())
        input_effects += float(squared_error(seen, item.counterfactual)[regions["effects"]].sum())
    scores: dict[str, float | None] = {"psnr": float(np.mean(per_image))}
    for name in ("object", "shadow", "reflection"):
        scores[f"psnr_{name}"] = psnr_from_mse(sums[name] / counts[name]) if counts[name] else None
    scores["effect_error_removed"] = 1.0 - sums["effects"] / input_effects if input_effects > 0 else None
    return scores


def copy_input(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The do-nothing remover: the first row of every removal table."""
    return np.asarray(images).copy()


def evaluate_removal(removers: dict[str, Remover], items: Sequence[LabelledImage], batch: int = 8,
                     progress: Callable[[int], None] | None = None) -> tuple[dict[str, dict], dict[str, list]]:
    """Run every remover on ``items`` (uint8 images, object masks) and score it; returns (scores by row, outputs
    by row)."""
    sizes = {item.size for item in items}
    if len(sizes) != 1:
        raise ValueError(f"All images must share one size; got {sorted(sizes)}.")
    images = np.stack([np.rint(item.rgb * 255).astype(np.uint8) for item in items])
    masks = np.stack([item.foreground for item in items])
    table, outputs = {}, {}
    for name, remover in removers.items():
        outputs[name] = run_in_batches(remover, images, masks, batch, progress, f"Remover {name!r}")
        table[name] = removal_scores(outputs[name], items, images)
    return table, outputs


def run_in_batches(method: Callable[[np.ndarray, np.ndarray], np.ndarray], images: np.ndarray, masks: np.ndarray,
                   batch: int, progress: Callable[[int], None] | None, what: str) -> list[np.ndarray]:
    """``method`` (a remover or an inserter) on ``batch``-sized slices of uint8 ``images`` and their ``masks``;
    each result must be uint8 images of its slice's shape (else a ValueError naming ``what``). Returns the
    outputs, one per image."""
    rows = []
    for start in range(0, len(images), batch):
        result = np.asarray(method(images[start : start + batch], masks[start : start + batch]))
        if result.shape != images[start : start + batch].shape or result.dtype != np.uint8:
            raise ValueError(f"{what} returned {result.shape} {result.dtype}; expected uint8 images of the input's "
                             "shape.")
        rows.extend(result)
        if progress is not None:
            progress(len(result))
    return rows


def _dilate(masks: np.ndarray, pixels: int) -> np.ndarray:
    import torch

    from ..removal.crop import dilate

    return dilate(torch.from_numpy(masks), pixels).numpy() if pixels > 0 else masks


def sampled_remover(bundle, *, gray_masked: bool, composite: str, steps: int = 50, seed: int = 0,
                    mask_dilation: int = 0, effect_options: dict | None = None) -> Remover:
    """A remover that samples a concat-conditioned model (``conditioned_sample``) and composites its output.

    ``composite="mask"``: paste inside the (dilated) mask only, as ComfyUI's stock inpainting chain
    (InpaintModelConditioning's noise mask + ImageCompositeMasked) does. ``composite="effects"``: paste inside
    the effect-aware mask (object ∪ changed region, grown, feathered), as ObjectDropRemove does.
    """
    import torch

    from ..removal.crop import paste
    from ..removal.effect_mask import paste_effects
    from ..training.conditioned_unet import conditioned_sample

    if composite not in ("mask", "effects"):
        raise ValueError(f"composite must be 'mask' or 'effects', got {composite!r}")

    def remove(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
        masks = _dilate(masks, mask_dilation)
        output = conditioned_sample(bundle, images, masks, steps=steps, seed=seed, gray_masked=gray_masked)
        if composite == "effects":
            return paste_effects(images, output, masks, **(effect_options or {}))
        before = torch.from_numpy(images).float() / 255
        after = torch.from_numpy(output).float() / 255
        return np.rint(paste(before, after, torch.from_numpy(masks).float()).numpy() * 255).astype(np.uint8)

    return remove


TOY_MODELS = ("toy_inpaint", "toy_removal", "toy_removal_lora", "toy_removal_grayed")
TOY_EFFECT_OPTIONS = {"threshold": 0.08, "min_area": 4, "grow": 1, "feather": 1}
"""ObjectDropRemove's effect mask scaled to 64-px images (the node's grow/feather of 4 px are for 512-px crops)."""
INPAINT_DILATION = 4
"""The loose-mask baseline: the object mask grown by 4 px (two latent cells), which covers most toy shadows'
nearest parts but also destroys context, the trade-off the paper describes."""


def toy_removers(models: Path, steps: int = 50, seed: int = 0) -> dict[str, Remover]:
    """The removal table's rows on the committed toy models (``models/toy_*``): input, inpaint, inpaint_dilated,
    objectdrop, objectdrop_lora, objectdrop_grayed."""
    from ..training.bundle import load_bundle
    from ..training.lora_adapter import load_lora_fallback

    missing = [name for name in TOY_MODELS if not (models / name).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"No toy removal models {missing} in {models}: train them with the commands in the README (python -m "
            "segdrop.training inpaint / removal), then copy out/<name>/model to <models>/<name> (for the LoRA, "
            "out/toy_removal_lora/lora to <models>/toy_removal_lora) or pass --removal-models.")
    inpaint = load_bundle(models / "toy_inpaint")
    lora = load_lora_fallback(load_bundle(models / "toy_inpaint"), models / "toy_removal_lora")
    common = {"steps": steps, "seed": seed}
    return {
        "input": copy_input,
        "inpaint": sampled_remover(inpaint, gray_masked=True, composite="mask", **common),
        "inpaint_dilated": sampled_remover(inpaint, gray_masked=True, composite="mask",
                                           mask_dilation=INPAINT_DILATION, **common),
        "objectdrop": sampled_remover(load_bundle(models / "toy_removal"), gray_masked=False, composite="effects",
                                      effect_options=TOY_EFFECT_OPTIONS, **common),
        "objectdrop_lora": sampled_remover(lora, gray_masked=False, composite="effects",
                                           effect_options=TOY_EFFECT_OPTIONS, **common),
        "objectdrop_grayed": sampled_remover(load_bundle(models / "toy_removal_grayed"), gray_masked=True,
                                             composite="effects", effect_options=TOY_EFFECT_OPTIONS, **common),
    }
