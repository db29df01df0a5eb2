"""Scoring ObjectDrop insertion against the true factual scene: PSNR overall, in the inserted object's shadow and
in its reflection.

A pair is a held-out toy scene, one of its objects (``toyworld.chosen_object``) and the scene re-rendered without
that object and its effects; the other objects and their shadows stay, so the scene itself shows where the light
comes from, as a photo does. The input is the naive paste ``y = M·x + (1 - M)·background`` (the object exactly,
no shadow, no reflection), the target the factual scene x. An inserter is any function
``(composites uint8 (B, H, W, 3), masks bool (B, H, W)) -> uint8 (B, H, W, 3)``. Scores:

* ``psnr``: mean over images of the per-image PSNR against the factual scene (the paper's Table 1 protocol);
* ``psnr_shadow`` / ``psnr_reflection``: PSNR of the squared error pooled over the inserted object's shadow /
  reflection pixels of all images (pooled, as the removal table: regions are small and many scenes have no
  reflection).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .removal import psnr_from_mse, run_in_batches, sampled_remover, squared_error

Inserter = Callable[[np.ndarray, np.ndarray], np.ndarray]
TOY_INSERTION_MODELS = {"no_bootstrap": "toy_insertion_real", "bootstrap": "toy_insertion"}
"""Table row -> committed model folder: real pairs only; bootstrap pairs (stage 1) then real pairs (stage 2)."""


@dataclass(frozen=True)
class InsertionPair:
    """One scored insertion: uint8 images, bool masks, all ``(H, W[, 3])``."""

    factual: np.ndarray  # the scene with the object and its effects: the target
    background: np.ndarray  # the scene without the object and its effects
    mask: np.ndarray  # the object's visible pixels
    shadow: np.ndarray  # the object's own shadow (outside every object)
    reflection: np.ndarray  # the object's own reflection (outside every object)

    @property
    def composite(self) -> np.ndarray:
        """The naive paste: the object's pixels over the background, no effects."""
        return np.where(self.mask[..., None], self.factual, self.background)


def insertion_scene_seeds(split: str, count: int, seed: int) -> list[int]:
    """The scene seeds of ``split``'s first ``count`` scenes that hold an object (``toyworld.scene_seed`` order)."""
    from .. import toyworld
    from ..toyworld.scene import sample_layout

    seeds, index = [], 0
    while len(seeds) < count:
        scene_seed = toyworld.scene_seed(seed, split, index)
        index += 1
        if sample_layout(np.random.default_rng(scene_seed)).objects:
            seeds.append(scene_seed)
    return seeds


def insertion_pairs(split: str, count: int, seed: int, size: int) -> list[InsertionPair]:
    """``count`` held-out one-object pairs of ``split`` (scene seeds as ``toyworld.write_object_pairs``; scenes
    without objects are skipped, so the scenes are the first ``count`` with one)."""
    from .. import toyworld

    pairs = []
    for scene_seed in insertion_scene_seeds(split, count, seed):
        scene = toyworld.make_scene(scene_seed, size=size)
        pairs.append(scene_pair(scene, toyworld.chosen_object(scene)))
    return pairs


def scene_pair(scene, k: int) -> InsertionPair:
    """The insertion pair of a rendered toy scene and its object ``k``."""
    from ..toyworld.dataset import to_uint8

    obj = scene.objects[k]
    outside = ~scene.object_mask
    return InsertionPair(to_uint8(scene.image), to_uint8(scene.counterfactual_without(k)), obj.mask.copy(),
                         obj.shadow_mask & outside, obj.reflection_mask & outside)


def light_blind_renders(split: str, count: int, seed: int, size: int, draws: int = 8, rng_seed: int = 0
                        ) -> np.ndarray:
    """uint8 ``(draws, count, H, W, 3)``: for each pair of ``insertion_pairs(split, count, seed, size)``, ``draws``
    pastes with the object's true shadow and reflection as the renderer draws them under a light drawn afresh from
    the toy world's light distribution (``toyworld.scene.relit``; the layout otherwise unchanged). What an inserter
    that draws effects perfectly but cannot tell where the light comes from would output."""
    from .. import toyworld
    from ..toyworld.scene import light_angle, render_layout, sample_layout

    rng = np.random.default_rng(rng_seed)
    out = np.zeros((draws, count, size, size, 3), np.uint8)
    for n, scene_seed in enumerate(insertion_scene_seeds(split, count, seed)):
        layout = sample_layout(np.random.default_rng(scene_seed))
        scene = render_layout(layout, size, scene_seed)  # = toyworld.make_scene(scene_seed, size), as insertion_pairs
        k = toyworld.chosen_object(scene)
        composite = scene_pair(scene, k).composite
        floor = layout.background.kind == "floor"
        for d in range(draws):
            out[d, n] = effects_under_light(composite, layout, k, light_angle(rng, floor), size, scene_seed)
    return out


def effects_under_light(composite: np.ndarray, layout, k: int, theta: float, size: int, scene_seed: int | None = None
                        ) -> np.ndarray:
    """uint8 ``composite`` with object ``k``'s shadow and reflection as the renderer draws them under a light at
    angle ``theta`` (``toyworld.scene.relit``): the rendered darkening and tint (scene / scene without k) applied
    on k's effect pixels. Under the layout's own light this gives back the factual scene."""
    from ..toyworld.scene import relit, render_layout

    scene = render_layout(relit(layout, theta), size, scene_seed)
    obj = scene.objects[k]
    effects = (obj.shadow_mask | obj.reflection_mask) & ~scene.object_mask
    ratio = np.where(effects[..., None], scene.image / np.maximum(scene.counterfactual_without(k), 1e-3), 1.0)
    return np.rint(np.clip(np.asarray(composite, np.float64) * ratio, 0, 255)).astype(np.uint8)


def light_blind_scores(pairs: Sequence[InsertionPair], renders: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Reference rows from ``light_blind_renders`` on the same pairs: ``random_light``, one such render per scene
    (scores averaged over the draws: a perfect light-blind sampler), and ``random_light_mean``, the mean of the
    draws (the per-pixel estimate a light-blind inserter minimising the squared error would make). The light's
    direction shows in a toy scene only through the other objects' shadows and a 10 % shading gradient on the
    objects; an inserter beats these only by reading those cues."""
    per_draw = [insertion_scores(list(draw), pairs) for draw in renders]
    sampler = {key: (None if any(s[key] is None for s in per_draw) else float(np.mean([s[key] for s in per_draw])))
               for key in per_draw[0]}
    mean = np.rint(renders.astype(np.float64).mean(axis=0)).astype(np.uint8)
    return {"random_light": sampler, "random_light_mean": insertion_scores(list(mean), pairs)}


def naive_paste(composites: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The do-nothing inserter: the composite as it is (the first row of the table)."""
    return np.asarray(composites).copy()


def insertion_scores(outputs: Sequence[np.ndarray], pairs: Sequence[InsertionPair]) -> dict[str, float | None]:
    """Scores (module notes) of ``outputs`` against the pairs' factual scenes; a region no pair has is None."""
    per_image, sums, counts = [], {"shadow": 0.0, "reflection": 0.0}, {"shadow": 0, "reflection": 0}
    for output, pair in zip(outputs, pairs):
        error = squared_error(output, pair.factual)
        per_image.append(psnr_from_mse(float(error.mean())))
        for name, region in (("shadow", pair.shadow), ("reflection", pair.reflection)):
            sums[name] += float(error[region].sum())
            counts[name] += int(region.sum())
    scores: dict[str, float | None] = {"psnr": float(np.mean(per_image))}
    for name in ("shadow", "reflection"):
        scores[f"psnr_{name}"] = psnr_from_mse(sums[name] / counts[name]) if counts[name] else None
    return scores


def evaluate_insertion(inserters: dict[str, Inserter], pairs: Sequence[InsertionPair], batch: int = 10,
                       progress: Callable[[int], None] | None = None) -> tuple[dict[str, dict], dict[str, list]]:
    """Run every inserter on the pairs' composites and masks and score it; returns (scores by row, outputs by row)."""
    composites = np.stack([pair.composite for pair in pairs])
    masks = np.stack([pair.mask for pair in pairs])
    table, outputs = {}, {}
    for name, inserter in inserters.items():
        outputs[name] = run_in_batches(inserter, composites, masks, batch, progress, f"Inserter {name!r}")
        table[name] = insertion_scores(outputs[name], pairs)
    return table, outputs


def cropped_inserter(bundle, context: float, *, steps: int = 50, seed: int = 0, effect_options: dict | None = None
                     ) -> Inserter:
    """An inserter that works as SegDrop_ObjectDropInsert does, on a crop around the object: each composite is cut
    to ``removal.crop.square_box(mask, context)`` (square, so a batch shares one size), resized to the model's
    size, sampled (``conditioned_sample``, the composite not grayed), resized back and stitched into the composite
    with the node's ``removal.stitch_effects`` (effect-aware mask, tapered towards crop sides inside the image).
    Pixels outside the crop are the composite's exactly. For
    models trained on the same crops (``insertion --crop_context``)."""
    import torch

    from ..removal.crop import crop, resize_image, square_box
    from ..removal.effect_mask import stitch_effects
    from ..training.conditioned_unet import conditioned_sample

    size = (bundle.image_size, bundle.image_size)

    def insert(composites: np.ndarray, masks: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(np.asarray(composites)).float() / 255
        masks_t = torch.from_numpy(np.asarray(masks).astype(bool)).float()
        boxes = [square_box(m, context) for m in masks_t]
        if any(box is None for box in boxes):
            raise ValueError("an object mask is empty: every composite needs its object's mask")
        crops = torch.cat([resize_image(crop(images[k:k + 1], box), size) for k, box in enumerate(boxes)])
        crop_masks = torch.cat([resize_image(crop(masks_t[k:k + 1, ..., None], box), size)[..., 0]
                                for k, box in enumerate(boxes)]) > 0.5
        sampled = conditioned_sample(bundle, np.rint(crops.numpy() * 255).astype(np.uint8), crop_masks.numpy(),
                                     steps=steps, seed=seed, gray_masked=False)
        sampled_t = torch.from_numpy(sampled).float() / 255
        out = []
        for k, box in enumerate(boxes):
            back = resize_image(sampled_t[k:k + 1], (box.height, box.width)).clamp(0, 1)
            object_mask = crop(masks_t[k:k + 1, ..., None], box)[..., 0]
            stitched, _ = stitch_effects(images[k:k + 1], back, box, **(effect_options or {}), object_mask=object_mask)
            out.append(stitched[0])
        return np.rint(torch.stack(out).numpy() * 255).astype(np.uint8)

    return insert


def model_inserter(bundle, *, steps: int = 50, seed: int = 0, effect_options: dict | None = None) -> Inserter:
    """An insertion model sampled as it was trained: on square crops around the object when its card records a
    ``crop_context`` (``cropped_inserter``), else on the whole image; the output is pasted through the
    effect-aware mask either way (object ∪ changed region), as SegDrop_ObjectDropInsert does."""
    context = float(bundle.info.get("crop_context") or 0.0)
    if context > 0:
        return cropped_inserter(bundle, context, steps=steps, seed=seed, effect_options=effect_options)
    return sampled_remover(bundle, gray_masked=False, composite="effects", steps=steps, seed=seed,
                           effect_options=effect_options)


def missing_models(models: Path) -> list[str]:
    return [name for name in TOY_INSERTION_MODELS.values() if not (models / name).is_dir()]


def toy_inserters(models: Path, steps: int = 50, seed: int = 0, effect_options: dict | None = None
                  ) -> dict[str, Inserter]:
    """The insertion table's rows on the committed toy models: paste, no_bootstrap, bootstrap. A model samples
    from noise with the composite and the mask (``model_inserter``: on the crops it was trained on), and its
    output is pasted through the effect-aware mask (object ∪ changed region), as SegDrop_ObjectDropInsert does."""
    from ..training.bundle import load_bundle

    missing = missing_models(models)
    if missing:
        raise FileNotFoundError(f"No toy insertion models {missing} in {models}: train them with the commands in the "
                                "README (python -m segdrop.training bootstrap / insertion), then copy out/<name>/model "
                                "to <models>/<name>.")
    rows: dict[str, Inserter] = {"paste": naive_paste}
    for row, name in TOY_INSERTION_MODELS.items():
        rows[row] = model_inserter(load_bundle(models / name), steps=steps, seed=seed, effect_options=effect_options)
    return rows
