"""The effect-aware composite mask of ObjectDrop-style removal.

Removing an object also removes its shadow and reflection, which lie outside the object mask: compositing the
model's output only inside the object mask would paste the object's hole back into a scene that still holds
its shadow. The composite mask is therefore

    object mask  U  changed region,  grown by ``grow`` px, then feathered by ``feather`` px,

where the changed region is where the output differs from the input by more than ``threshold`` in mean
absolute RGB difference (0..1 scale), with connected pieces smaller than ``min_area`` pixels dropped (VAE
round-trip noise and sampling speckle). ``DEFAULT_THRESHOLD = 0.08`` (about 20/255) sits above the SD VAE's
typical round-trip error (a mean |diff| of 0.01-0.04 on natural images) and below the change a removed shadow
makes (a shadow darkens its ground by 20-60 %). Pixels outside the mask keep the input exactly, so the VAE's
round-trip blur never reaches the untouched part of the photo. The object mask itself is always fully inside
(1.0) whatever the output did there.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..segment.gmm import remove_small_components
from .crop import CropBox, crop, dilate, edge_taper, paste, stitch

DEFAULT_THRESHOLD = 0.08
"""Mean |output - input| over RGB (0..1 scale) above which a pixel counts as changed."""
DEFAULT_MIN_AREA = 16
"""Changed pieces (8-connected) smaller than this many pixels are dropped."""
DEFAULT_GROW = 4
"""Pixels the union is grown by before feathering."""
DEFAULT_FEATHER = 4
"""Box-blur radius (pixels) of the soft edge."""


def changed_region(before: torch.Tensor, after: torch.Tensor, threshold: float = DEFAULT_THRESHOLD,
                   min_area: int = DEFAULT_MIN_AREA) -> torch.Tensor:
    """Boolean ``(..., H, W)``: mean |after - before| over the RGB channels > ``threshold``, small pieces removed."""
    if before.shape != after.shape:
        raise ValueError(f"before {tuple(before.shape)} and after {tuple(after.shape)} differ in shape")
    difference = (after[..., :3].float() - before[..., :3].float()).abs().mean(-1)
    return remove_small_components(difference > threshold, min_area, connectivity=8)


def box_blur(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a ``(2r+1)^2`` window of a float ``(B, H, W)`` mask (edges replicate-padded)."""
    if radius <= 0:
        return mask
    padded = F.pad(mask[:, None], (radius,) * 4, mode="replicate")
    return F.avg_pool2d(padded, 2 * radius + 1, stride=1)[:, 0]


def effect_mask(before: torch.Tensor, after: torch.Tensor, object_mask: torch.Tensor,
                threshold: float = DEFAULT_THRESHOLD, min_area: int = DEFAULT_MIN_AREA, grow: int = DEFAULT_GROW,
                feather: int = DEFAULT_FEATHER) -> torch.Tensor:
    """The composite mask, float in [0, 1], shaped like ``object_mask`` (``(H, W)`` or ``(B, H, W)``).

    ``before``/``after`` are the input and the model's output, ``(..., H, W, 3)``, same size as the mask.
    1 on the object mask (> 0.5) and on the changed region, grown by ``grow`` and feathered by ``feather``;
    exactly 0 farther than ``grow + feather`` pixels from both.
    """
    batched = object_mask.dim() == 3
    obj = (object_mask if batched else object_mask[None]) > 0.5
    changed = changed_region(before, after, threshold, min_area)
    changed = changed if changed.dim() == 3 else changed[None]
    union = (obj | changed.to(obj.device)).float()
    hard = dilate(union, grow)
    soft = torch.maximum(box_blur(hard, feather), union).clamp(0, 1)
    soft = torch.where(soft < 1e-6, torch.zeros_like(soft), soft)  # exact zeros away from the mask
    return soft if batched else soft[0]


def stitch_effects(photo: torch.Tensor, back: torch.Tensor, box: CropBox, threshold: float = DEFAULT_THRESHOLD,
                   min_area: int = DEFAULT_MIN_AREA, grow: int = DEFAULT_GROW, feather: int = DEFAULT_FEATHER, *,
                   object_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ObjectDrop's stitch of a model's output over a crop: ``(stitched photo, weights over the box)``.

    ``photo`` is ``(1, H, W, C)`` (an alpha channel stays the photo's), ``back`` the output resized to the box,
    ``(1, h, w, 3)``, ``object_mask`` the object's mask over the box, ``(1, h, w)``. The weights are the
    effect-aware mask (``effect_mask``), faded to 0 over ``grow + feather`` px towards box sides that lie inside the
    image (a change reaching the crop's edge leaves no seam) and always 1 on the object. ObjectDrop Remove/Insert
    and the toy insertion benchmark stitch with it."""
    region = crop(photo, box)
    weights = effect_mask(region[..., :3], back, object_mask, threshold, min_area, grow, feather)
    taper = edge_taper(box, tuple(photo.shape[1:3]), grow + feather).to(weights)
    weights = torch.maximum(weights * taper, (object_mask > 0.5).to(weights))
    patch = torch.cat([back.to(photo.dtype), region[..., 3:]], -1)
    return stitch(photo, patch, box, weights), weights


def paste_effects(before: np.ndarray, after: np.ndarray, object_mask: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                  min_area: int = DEFAULT_MIN_AREA, grow: int = DEFAULT_GROW, feather: int = DEFAULT_FEATHER
                  ) -> np.ndarray:
    """uint8 ``after`` pasted into uint8 ``before`` (``(H, W, 3)`` or ``(B, H, W, 3)`` arrays, same size) through
    the effect-aware mask of ``object_mask`` (bool ``(H, W)`` / ``(B, H, W)``): the whole-image composite of a
    removal or insertion output, in plain arrays. Pixels the mask leaves out are ``before``'s exactly."""
    first = torch.from_numpy(np.ascontiguousarray(before)).float() / 255
    second = torch.from_numpy(np.ascontiguousarray(after)).float() / 255
    weight = effect_mask(first, second, torch.from_numpy(np.asarray(object_mask, bool)).float(), threshold, min_area,
                         grow, feather)
    return np.rint(paste(first, second, weight).numpy() * 255).astype(np.uint8)
