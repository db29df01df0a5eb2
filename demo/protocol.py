"""The evaluation protocol on plain arrays: attention methods and baselines scored on labelled images.

:func:`evaluate` scores concept distillation's foreground masks (IoU with the union of object masks) and
DiffSeg's segments (mIoU with per-image Hungarian matching, DiffSeg's protocol) beside simple baselines, on
any list of :class:`~segdrop.demo.data.LabelledImage`: toy-world scenes, a user's folder, or arrays built by
hand. Settings that a method needs tuned (DiffSeg's tau, k-means' k, the colour oracle's distance) are chosen
on a separate validation list when one is given, and otherwise fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..attention_patch import schedules
from ..attention_patch.diffusers_backend import capture_attention
from ..attention_patch.maps import AttentionMaps
from ..attention_patch.tokens import find_word_positions
from ..segment import aggregate_self_attention, gmm_binarize, kl_merge_segment, resize_mask
from ..segment.metrics import hungarian_miou, iou
from .baselines import choose_on_validation, kmeans_labels, known_colour_foreground, otsu_foreground
from .data import LabelledImage, as_float_image

PAPER_TAU = 1.1
"""DiffSeg's KL threshold for COCO-Stuff, tuned on SD1.x's 64x64 self-attention."""

WORD_CHOICES: dict[str, Callable[[str], list[str]]] = {
    "object word": lambda name: name.split()[-1:],
    "object name (all its words summed)": lambda name: name.split(),
}
"""Which caption words' maps are summed per object: the paper's single object token (the name's last word),
or the object's full name, as the authors sum several words for "a human with arms and legs"."""
PANEL_CHOICE = "object name (all its words summed)"


@dataclass
class EvalSettings:
    """How the methods run and what is tuned on validation (defaults: the papers' and the demo's)."""

    t0: int = schedules.DEFAULT_T0
    seed: int = 2024
    tau: float = PAPER_TAU
    tau_candidates: tuple[float, ...] = (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.1, 1.5)
    grid: int = 16
    kmeans_candidates: tuple[int, ...] = (2, 3, 4, 5, 6)
    kmeans_k: int = 5
    """k when there is no validation list."""
    colour_distances: tuple[float, ...] = (0.1, 0.15, 0.2, 0.3, 0.4)
    colour_distance: float = 0.2
    """The colour oracle's distance when there is no validation list."""
    batch: int = 4
    """Images per capture."""
    max_batch: int = 40
    """UNet rows per call inside a capture."""


def image_batch(images: Sequence[np.ndarray]) -> torch.Tensor:
    """Images as ``(B, 3, H, W)`` float in [0, 1], the codecs' input."""
    sizes = {as_float_image(image).shape for image in images}
    if len(sizes) != 1:
        raise ValueError(f"Images of one batch must share a size; got {sorted(sizes)}. Resize them first.")
    return torch.from_numpy(np.stack([as_float_image(image) for image in images])).permute(0, 3, 1, 2).float()


def concept_attention(
    bundle, images: Sequence[np.ndarray], captions: Sequence[str], settings: EvalSettings
) -> tuple[AttentionMaps, list[list[str]]]:
    """Concept distillation's capture: the caption as prompt, T0 noised timesteps, cross-attention only."""
    maps = capture_attention(
        bundle.unet, bundle.codec.encode(image_batch(images)), bundle.encode_prompt(list(captions)),
        schedules.concept_distillation_timesteps(settings.t0), add_noise=True,
        alphas_cumprod=bundle.scheduler.alphas_cumprod, seed=settings.seed, keep_self=False,
        max_batch=settings.max_batch, image_size=as_float_image(images[0]).shape[:2],
    )
    return maps, bundle.tokens(list(captions))


def object_word_positions(tokens: list[str], object_names: Sequence[str], choice: str) -> list[int]:
    """Columns of the chosen words of every named object (each word once)."""
    words = sorted({word for name in object_names for word in WORD_CHOICES[choice](name)})
    return find_word_positions(tokens, ", ".join(words))


def foreground_masks(bundle, items: Sequence[LabelledImage], settings: EvalSettings) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per word choice: preliminary masks ``(B, H, W)`` (attention -> GMM at the latent grid -> image size)
    and the attention maps ``(B, h, w)`` they came from."""
    maps, token_lists = concept_attention(bundle, [i.image for i in items], [i.caption for i in items], settings)
    size = items[0].size
    out = {}
    for choice in WORD_CHOICES:
        attention = torch.stack([
            maps.cross_attention_for(object_word_positions(tokens, item.object_names, choice))[index]
            for index, (item, tokens) in enumerate(zip(items, token_lists))
        ])
        out[choice] = (resize_mask(gmm_binarize(attention).mask, size).numpy(), attention.numpy())
    return out


def diffseg_aggregates(bundle, images: Sequence[np.ndarray], settings: EvalSettings) -> torch.Tensor:
    """DiffSeg's input: one pass at t = 300 on the clean latent with the empty prompt, self-attention
    aggregated across resolutions: ``(B, N, h, w)``."""
    maps = capture_attention(
        bundle.unet, bundle.codec.encode(image_batch(images)), bundle.encode_prompt([""] * len(images)),
        [schedules.DIFFSEG_TIMESTEP], add_noise=False, keep_cross=False, max_batch=settings.max_batch,
        image_size=as_float_image(images[0]).shape[:2],
    )
    return aggregate_self_attention(maps.self_attn)


def diffseg_labels(aggregated: torch.Tensor, tau: float, grid: int, size: tuple[int, int]) -> np.ndarray:
    """KL-merge labels ``(B, H, W)`` of aggregated attention ``(B, N, h, w)``; the grid is clamped to the map."""
    grid = min(grid, aggregated.shape[-1])
    return kl_merge_segment(aggregated, grid=grid, tau=tau, tau_mode="raw", out_size=size).labels.numpy()


def mean_foreground_iou(masks: Sequence[np.ndarray], items: Sequence[LabelledImage]) -> float:
    return float(np.mean([iou(mask, item.foreground) for mask, item in zip(masks, items)]))


def mean_segmentation_miou(labels: Sequence[np.ndarray], items: Sequence[LabelledImage]) -> float:
    return float(np.mean([hungarian_miou(pred, item.labels)[1] for pred, item in zip(labels, items)]))


@dataclass
class Evaluation:
    """``results``: the JSON-ready scores and settings. The rest is per image, for pictures."""

    results: dict
    foreground: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = field(default_factory=dict)
    """Per word choice: masks ``(H, W)`` and attention ``(h, w)``."""
    segments: list[np.ndarray] = field(default_factory=list)
    """DiffSeg labels ``(H, W)`` at the chosen tau."""


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate(
    bundle,
    test: Sequence[LabelledImage],
    validation: Sequence[LabelledImage] = (),
    settings: EvalSettings | None = None,
    progress: Callable[[int], None] | None = None,
) -> Evaluation:
    """Score every method on ``test``; tune on ``validation`` when given. ``progress(n)``: n images done."""
    settings = settings or EvalSettings()
    if not test:
        raise ValueError("Nothing to evaluate: the test list is empty.")
    sizes = {item.size for item in [*test, *validation]}
    if len(sizes) != 1:
        raise ValueError(f"All images must share one size; got {sorted(sizes)}. Resize them first.")
    size = test[0].size
    step = progress or (lambda n: None)

    foreground: dict[str, tuple[list, list]] = {choice: ([], []) for choice in WORD_CHOICES}
    for chunk in _batches(test, settings.batch):
        for choice, (masks, attention) in foreground_masks(bundle, chunk, settings).items():
            foreground[choice][0].extend(masks)
            foreground[choice][1].extend(attention)
        step(len(chunk))
    aggregates: dict[str, list[torch.Tensor]] = {"test": [], "validation": []}
    for name, items in (("test", test), ("validation", validation)):
        for chunk in _batches(items, settings.batch):
            aggregates[name].extend(diffseg_aggregates(bundle, [i.image for i in chunk], settings))
            step(len(chunk))

    def merged(aggs, tau):
        return [diffseg_labels(agg[None], tau, settings.grid, size)[0] for agg in aggs]

    tuned = "chosen on validation" if validation else "fixed: no validation images"
    if validation:
        tau_best, tau_val = choose_on_validation(
            settings.tau_candidates, lambda tau: mean_segmentation_miou(merged(aggregates["validation"], tau), validation))
        k_best, k_val = choose_on_validation(
            settings.kmeans_candidates,
            lambda k: mean_segmentation_miou([kmeans_labels(i.image, k, settings.seed) for i in validation], validation))
    else:
        tau_best, tau_val, k_best, k_val = settings.tau, None, settings.kmeans_k, None
    segments = merged(aggregates["test"], tau_best)
    paper_segments = merged(aggregates["test"], settings.tau)
    otsu_fg = [otsu_foreground(item.image) for item in test]

    foreground_iou = {
        **{f"concept distillation, {choice} (attention + GMM)": mean_foreground_iou(masks, test)
           for choice, (masks, _) in foreground.items()},
        "Otsu on grey levels (minority side)": mean_foreground_iou(otsu_fg, test),
    }
    settings_out = {
        "t0": settings.t0, "tau_paper": settings.tau, "tau_chosen": tau_best, "tau_validation_miou": tau_val,
        "grid": settings.grid, "seed": settings.seed, "validation_images": len(validation),
        "kmeans_k_validation_miou": k_val,
    }
    with_colours = all(item.object_colours is not None for item in [*test, *validation])
    if with_colours:
        if validation:
            d_best, d_val = choose_on_validation(settings.colour_distances, lambda d: float(np.mean(
                [iou(known_colour_foreground(i.image, i.object_colours, d), i.foreground) for i in validation])))
        else:
            d_best, d_val = settings.colour_distance, None
        colour_fg = [known_colour_foreground(item.image, item.object_colours, d_best) for item in test]
        foreground_iou[f"known object colour (oracle, distance {d_best} {tuned})"] = mean_foreground_iou(colour_fg, test)
        settings_out["colour_distance_validation_iou"] = d_val

    results = {
        "images": len(test),
        "image_size": list(size),
        "foreground_iou": foreground_iou,
        "segmentation_miou": {
            f"DiffSeg (KL merge, tau={tau_best} {tuned})": mean_segmentation_miou(segments, test),
            f"DiffSeg (KL merge, paper tau={settings.tau})": mean_segmentation_miou(paper_segments, test),
            f"k-means on RGB (k={k_best} {tuned})": mean_segmentation_miou(
                [kmeans_labels(item.image, k_best, settings.seed) for item in test], test),
            "Otsu (2 segments)": mean_segmentation_miou([m.astype(np.int64) for m in otsu_fg], test),
        },
        "diffseg_segments_per_image": float(np.mean([len(np.unique(labels)) for labels in segments])),
        "diffseg_segments_per_image_paper_tau": float(np.mean([len(np.unique(labels)) for labels in paper_segments])),
        "settings": settings_out,
    }
    return Evaluation(results=results, foreground=foreground, segments=segments)
