"""Placement math of ObjectDrop-style insertion, ComfyUI-free: paste a cut-out object into a background.

The insertion model takes the naive composite ``y = M * object + (1 - M) * background`` and the mask ``M`` of the
pasted object, and generates the scene with the object's shadow and reflection. This module makes ``y`` and ``M``.

The cut-out is first trimmed to the bounding box of its mask (a transparent margin around the object does not
count), then resized by ``scale``, then its top-left corner goes to ``(x, y)`` in background pixels. Placing an
object that is larger than the background, or that sticks out of it, is an error (the insertion model never saw a
cut object, and silently clipping it would change the object): the message says which ``scale`` or ``x``/``y``
fit. :func:`fit_to_mask` gives ``(x, y, scale)`` that fit the object inside a placement mask's bounding box.

Images are ``(H, W, C)`` float tensors in 0..1 (extra channels beyond RGB are ignored), masks ``(H, W)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .crop import CropBox, mask_bbox, resize_image, resize_mask


@dataclass(frozen=True)
class Placement:
    """Where the trimmed, scaled object goes: its top-left pixel ``(x, y)`` and its size ``(height, width)``."""

    x: int
    y: int
    height: int
    width: int

    @property
    def box(self) -> CropBox:
        return CropBox(self.y, self.x, self.y + self.height, self.x + self.width)


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``(h, w)`` of a ``height x width`` object resized by ``scale`` (rounded, at least 1 px)."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}: 1.0 keeps the cut-out's size.")
    return max(1, int(round(height * scale))), max(1, int(round(width * scale)))


def object_box(object_mask: torch.Tensor) -> CropBox:
    """The bounding box of the object in its cut-out (every pixel > 0, so soft edges are kept); an empty (all-zero)
    mask is an error."""
    mask = torch.as_tensor(object_mask).float()
    if mask.dim() != 2:
        raise ValueError(f"the object mask must be one (H, W) mask, got shape {tuple(mask.shape)}")
    box = mask_bbox(mask, threshold=0.0)  # every pixel with some weight, soft edges included
    if box is None:
        raise ValueError(
            "The object mask is empty: it must be 1 on the object's pixels in the object image. (Load Image's MASK "
            "is 1 where the picture is transparent: for a cut-out PNG with a transparent background, put an Invert "
            "Mask node between Load Image's MASK and object_mask.)"
        )
    return box


def check_placement(background_hw: tuple[int, int], placement: Placement) -> None:
    """Raise a ``ValueError`` naming the fix if the placed object does not lie fully inside the background."""
    bh, bw = background_hw
    h, w = placement.height, placement.width
    if h > bh or w > bw:
        fit = min(bh / h, bw / w)
        raise ValueError(
            f"The object is {w}x{h} (width x height) after scaling but the background is only {bw}x{bh}: lower "
            f"scale (about {fit:.3f} x the current scale fits), or use a larger background."
        )
    x, y = placement.x, placement.y
    if x < 0 or y < 0 or x + w > bw or y + h > bh:
        where = "entirely" if (x >= bw or y >= bh or x + w <= 0 or y + h <= 0) else "partly"
        raise ValueError(
            f"The object ({w}x{h} after scaling) placed at x={x}, y={y} lies {where} outside the {bw}x{bh} "
            f"background: x must be 0..{bw - w} and y must be 0..{bh - h} for this size (x, y are the top-left "
            "corner of the object's bounding box), or lower scale, or give a placement mask."
        )


def place_object(background: torch.Tensor, object_image: torch.Tensor, object_mask: torch.Tensor, x: int, y: int,
                 scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive composite and the pasted object's mask, ``((H, W, 3), (H, W))``.

    ``background`` is ``(H, W, C)``, ``object_image`` ``(h, w, C)`` and ``object_mask`` ``(h, w)`` (1 on the
    object). The object is trimmed to its mask's bounding box, resized by ``scale`` (bilinear, antialiased when
    shrinking; ``scale = 1`` copies pixels exactly) and its top-left corner put at column ``x``, row ``y``. The
    composite is ``M * object + (1 - M) * background`` with the (possibly soft) mask ``M`` in 0..1; it equals the
    background exactly wherever ``M`` is 0.
    """
    background = torch.as_tensor(background).float()
    object_image = torch.as_tensor(object_image).float()
    object_mask = torch.as_tensor(object_mask).float()
    if background.dim() != 3 or object_image.dim() != 3:
        raise ValueError(f"background and object must be (H, W, C) images, got shapes {tuple(background.shape)} "
                         f"and {tuple(object_image.shape)}")
    if tuple(object_mask.shape) != tuple(object_image.shape[:2]):
        oh, ow = object_image.shape[:2]
        mh, mw = object_mask.shape[-2:]
        raise ValueError(
            f"The object mask is {mw}x{mh} (width x height) but the object image is {ow}x{oh}: use the cut-out's "
            "own mask (Load Image's MASK of the same file, inverted for a transparent background)."
        )
    box = object_box(object_mask)
    height, width = scaled_size(box.height, box.width, scale)
    placement = Placement(int(x), int(y), height, width)
    check_placement(tuple(background.shape[:2]), placement)

    rows, cols = box.slices
    pixels = object_image[rows, cols, :3][None]
    weights = object_mask[rows, cols][None].clamp(0, 1)
    pixels = resize_image(pixels, (height, width))[0].clamp(0, 1)
    weights = resize_mask(weights, (height, width))[0].clamp(0, 1)

    composite = background[..., :3].clone()
    mask = torch.zeros(background.shape[:2])
    target_rows, target_cols = placement.box.slices
    region = composite[target_rows, target_cols]
    composite[target_rows, target_cols] = torch.where(
        weights[..., None] >= 1, pixels, region + weights[..., None] * (pixels - region))
    mask[target_rows, target_cols] = weights
    return composite, mask


def fit_to_mask(object_mask: torch.Tensor, placement_mask: torch.Tensor) -> tuple[int, int, float]:
    """``(x, y, scale)`` that fit the object's bounding box into the placement mask's bounding box, keeping the
    aspect ratio, as large as fits, centred in the box."""
    box = object_box(object_mask)
    target = mask_bbox(torch.as_tensor(placement_mask).float())
    if target is None:
        raise ValueError(
            "The placement mask is empty: paint the region the object should fill (or disconnect placement_mask to "
            "place the object with x, y and scale)."
        )
    scale = min(target.height / box.height, target.width / box.width)
    height, width = scaled_size(box.height, box.width, scale)  # what place_object makes from this scale
    x = target.left + (target.width - width) // 2
    y = target.top + (target.height - height) // 2
    return x, y, scale
