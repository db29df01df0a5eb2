"""Concept distillation's preliminary mask (Dombrowski et al., ICCV 2023; code MischaD/fobadiffusion).

``GMMMaskSuggestor`` in the official code, reproduced by default:

1. fit ``sklearn.mixture.GaussianMixture(n_components=2)`` (all defaults) to the map's values as 1-D samples;
2. threshold = midpoint of the two component means (``np.mean(gmm.means_)``; not ``predict()``);
   foreground = value > threshold (the high-attention component);
3. orphan filter: 3x3 box mean (1/9, no padding) written back to the interior pixels, thresholded at 0.5
   (a 5-of-9 majority); the 1-pixel border keeps its value. Run once.

The one difference: the authors pass no ``random_state`` (k-means init is random); we pass
``random_state=0`` so the same map always gives the same mask. Options beyond the paper (ignored region,
minimum component area, threshold shift) are off by default.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .aggregate import check_finite

GMM_RANDOM_STATE = 0
"""Seed of the GMM's k-means initialisation (the authors leave it unseeded; we want reproducible masks)."""


@dataclass
class GMMResult:
    """``mask``: bool ``(B, h, w)``; ``soft``: the map min-max normalised to [0, 1] per image ``(B, h, w)``;
    ``thresholds``: float64 ``(B,)`` in the map's own units; ``means``: float64 ``(B, 2)``, ascending
    (NaN where the fallback was used)."""

    mask: torch.Tensor
    soft: torch.Tensor
    thresholds: torch.Tensor
    means: torch.Tensor


def orphan_filter(mask: torch.Tensor) -> torch.Tensor:
    """The official orphan filter: interior pixels become ``sum of the 3x3 box >= 5``; the border is unchanged.

    ``mask``: bool ``(B, h, w)`` or ``(h, w)``; returns a new bool tensor of the same shape.
    """
    squeeze = mask.dim() == 2
    batch = mask[None] if squeeze else mask
    out = batch.clone()
    if batch.shape[-1] >= 3 and batch.shape[-2] >= 3:
        counts = F.avg_pool2d(batch[:, None].float(), kernel_size=3, stride=1, padding=0, divisor_override=1)
        out[:, 1:-1, 1:-1] = counts[:, 0] >= 5  # box mean > 0.5 with 1/9 weights
    return out[0] if squeeze else out


def remove_small_components(mask: torch.Tensor, min_area: int, connectivity: int = 4) -> torch.Tensor:
    """Drop foreground components with fewer than ``min_area`` pixels from a ``(B, h, w)`` or ``(h, w)`` mask;
    ``connectivity`` 4 (edge neighbours, the GMM mask's rule) or 8 (diagonals too). Same device as the input."""
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
    if min_area <= 1:
        return mask.clone()
    from scipy import ndimage  # lazy, like sklearn below: keeps `import segdrop` light for ComfyUI start-up
    structure = np.ones((3, 3), bool) if connectivity == 8 else None  # None: scipy's default, 4-connectivity
    squeeze = mask.dim() == 2
    batch = (mask[None] if squeeze else mask).cpu().numpy()
    out = np.zeros_like(batch)
    for image in range(batch.shape[0]):
        labels, count = ndimage.label(batch[image], structure=structure)
        if count:
            areas = np.bincount(labels.reshape(-1), minlength=count + 1)
            keep = areas >= min_area
            keep[0] = False
            out[image] = keep[labels]
    result = torch.from_numpy(out).to(mask.device)
    return result[0] if squeeze else result


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of a mask ``(B, h, w)`` or ``(h, w)`` to ``size = (H, W)``; keeps the dtype.

    Nearest (not the official bool->bilinear->bool cast, which dilates by ~half a latent cell).
    """
    squeeze = mask.dim() == 2
    batch = (mask[None] if squeeze else mask)[:, None]
    resized = F.interpolate(batch.float(), size=tuple(size), mode="nearest-exact")[:, 0]
    resized = resized.to(mask.dtype) if mask.dtype != torch.bool else resized > 0.5
    return resized[0] if squeeze else resized


def _fit_threshold(values: np.ndarray) -> tuple[float, float]:
    """Means (ascending) of a 2-component 1-D GMM, as the official code fits it (plus a fixed seed)."""
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=2, random_state=GMM_RANDOM_STATE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on near-degenerate maps: the means still usable
        gmm.fit(values.reshape(-1, 1))
    low, high = sorted(float(m) for m in gmm.means_.reshape(-1))
    return low, high


def gmm_binarize(
    maps: torch.Tensor,
    *,
    ignore_mask: torch.Tensor | None = None,
    min_area: int = 0,
    threshold_shift: float = 0.0,
    majority_filter: bool = True,
) -> GMMResult:
    """Binarise attention maps with concept distillation's 2-component GMM (see module notes).

    ``maps``: ``(B, h, w)`` or ``(h, w)`` (e.g. ``AttentionMaps.cross_attention_for(positions)``); results are
    always batched. ``ignore_mask`` (True = padded canvas): fit only on the other pixels, ignored pixels are
    background. ``min_area``: remove 4-connected foreground components smaller than this. ``threshold_shift``:
    move the threshold by ``shift * (upper mean - lower mean)`` (positive = smaller masks).
    ``majority_filter``: the official 3x3 orphan filter.

    A map with fewer than 2 distinct (non-ignored) values gives an empty mask, zero ``soft`` and a warning.
    NaN/inf raises ``ValueError``.
    """
    batch = maps[None] if maps.dim() == 2 else maps
    if batch.dim() != 3:
        raise ValueError(f"maps must be (B, h, w) or (h, w), got {tuple(maps.shape)}.")
    batch = batch.detach().cpu()
    if batch.dtype not in (torch.float32, torch.float64):
        batch = batch.float()
    check_finite(batch, "The attention map")
    ignored = None
    if ignore_mask is not None:
        ignored = (ignore_mask[None] if ignore_mask.dim() == 2 else ignore_mask).to(torch.bool).cpu()
        ignored = ignored.expand_as(batch) if ignored.shape[0] == 1 else ignored
        if ignored.shape != batch.shape:
            raise ValueError(f"ignore_mask {tuple(ignore_mask.shape)} does not match maps {tuple(maps.shape)}.")

    count = batch.shape[0]
    masks = torch.zeros(batch.shape, dtype=torch.bool)
    soft = torch.zeros(batch.shape, dtype=torch.float32)
    thresholds = torch.full((count,), float("nan"), dtype=torch.float64)
    means = torch.full((count, 2), float("nan"), dtype=torch.float64)
    for image in range(count):
        values = batch[image].numpy()
        valid = None if ignored is None else ~ignored[image].numpy()
        samples = values.reshape(-1) if valid is None else values[valid]
        if samples.size < 2 or np.unique(samples).size < 2:
            warnings.warn(
                f"Attention map {image} has fewer than 2 distinct values (constant or fully ignored); "
                "returning an empty mask.",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        low, high = _fit_threshold(samples)
        threshold = 0.5 * (low + high) + threshold_shift * (high - low)
        foreground = values > threshold
        if valid is not None:
            foreground &= valid
        masks[image] = torch.from_numpy(foreground)
        thresholds[image] = threshold
        means[image] = torch.tensor([low, high], dtype=torch.float64)
        lowest, highest = float(samples.min()), float(samples.max())
        normalised = (batch[image].double() - lowest) / (highest - lowest)
        if valid is not None:
            normalised[~torch.from_numpy(valid)] = 0.0
        soft[image] = normalised.clamp_(0.0, 1.0).float()
    if majority_filter:
        masks = orphan_filter(masks)
        if ignored is not None:
            masks &= ~ignored
    if min_area > 1:
        masks = remove_small_components(masks, min_area)
    return GMMResult(mask=masks, soft=soft, thresholds=thresholds, means=means)


def gmm_binarize_attention(maps, positions: list[int], **options) -> GMMResult:
    """``gmm_binarize`` on an ``AttentionMaps``: the cross-attention of token ``positions`` at the latent grid."""
    return gmm_binarize(maps.cross_attention_for(positions), **options)
