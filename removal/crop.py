"""Crop-and-stitch geometry for object removal: a context box around the mask, the model's working size, and
the masked paste back. Images are ``(H, W, C)`` or ``(B, H, W, C)`` float tensors (ComfyUI's IMAGE layout),
masks ``(H, W)`` or ``(B, H, W)``.

Effects (shadows, reflections) extend beyond the object, mostly downward (a light from above casts the shadow
on the ground below and beside the object; reflections in water or floors lie below it), so the box grows
more below than above: of the vertical context, ``BELOW_SHARE`` goes below the object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

BELOW_SHARE = 0.7
"""Share of the vertical context added below the mask (the rest goes above)."""
MIN_PAD = 8
"""Pixels of context added on every side at least, so a tiny mask still shows its surroundings."""


@dataclass(frozen=True)
class CropBox:
    """Half-open pixel box ``[top, bottom) x [left, right)``."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)


def mask_bbox(mask: torch.Tensor, threshold: float = 0.5) -> CropBox | None:
    """The tightest box around ``mask > threshold`` (a 2-D mask), or None when the mask is empty."""
    inside = torch.as_tensor(mask) > threshold
    if inside.dim() != 2:
        raise ValueError(f"mask_bbox takes one (H, W) mask, got shape {tuple(inside.shape)}")
    rows, cols = inside.any(1).nonzero().flatten(), inside.any(0).nonzero().flatten()
    if rows.numel() == 0:
        return None
    return CropBox(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def crop_box(mask: torch.Tensor, context: float = 0.5, below_share: float = BELOW_SHARE,
             min_pad: int = MIN_PAD) -> CropBox | None:
    """The mask's bounding box grown by ``context`` x its size and clamped to the image.

    Vertically ``context * height`` is added, ``below_share`` of it below the object; horizontally
    ``context * width``, half on each side; every side gets at least ``min_pad`` pixels. ``context = 0``
    keeps only ``min_pad``. Returns None for an empty mask.
    """
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    box = mask_bbox(mask)
    if box is None:
        return None
    height, width = mask.shape[-2:]
    extra_h, extra_w = context * box.height, context * box.width
    above = max(min_pad, round(extra_h * (1 - below_share)))
    below = max(min_pad, round(extra_h * below_share))
    side = max(min_pad, round(extra_w / 2))
    return CropBox(max(0, box.top - above), max(0, box.left - side), min(int(height), box.bottom + below),
                   min(int(width), box.right + side))


def square_box(mask: torch.Tensor, context: float) -> CropBox | None:
    """A square box centred on the mask's bounding box, its side ``(1 + context)`` x the box's long side (at least
    ``2 * MIN_PAD``), shifted to lie inside the image; the largest square that fits when it is bigger than the
    image. Square so that crops of any object batch at one model size (training on object crops, the toy
    insertion benchmark). Returns None for an empty mask."""
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    box = mask_bbox(mask)
    if box is None:
        return None
    height, width = (int(n) for n in mask.shape[-2:])
    side = min(height, width, max(2 * MIN_PAD, round((1 + context) * max(box.height, box.width))))
    top = min(max(0, (box.top + box.bottom - side) // 2), height - side)
    left = min(max(0, (box.left + box.right - side) // 2), width - side)
    return CropBox(top, left, top + side, left + side)


def working_size(height: int, width: int, resolution: int = 512, multiple: int = 8) -> tuple[int, int]:
    """``(h, w)`` for the model: the long side is ``resolution``, the aspect ratio is kept, both are multiples of
    ``multiple`` (at least one multiple)."""
    if resolution < multiple:
        raise ValueError(f"resolution must be at least {multiple}, got {resolution}")
    scale = resolution / max(height, width)

    def snap(value: float) -> int:
        return max(multiple, int(round(value / multiple)) * multiple)

    return snap(height * scale), snap(width * scale)


def crop(image: torch.Tensor, box: CropBox) -> torch.Tensor:
    """``image[..., top:bottom, left:right, :]`` for an ``(H, W, C)`` or ``(B, H, W, C)`` image."""
    rows, cols = box.slices
    return image[..., rows, cols, :]


def resize_image(image: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(B, H, W, C)`` to ``(B, h, w, C)`` (``antialias`` when shrinking with bilinear)."""
    if tuple(image.shape[1:3]) == tuple(size):
        return image
    chw = image.movedim(-1, 1)
    options = {"align_corners": False, "antialias": True} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(chw, size=size, mode=mode, **options).movedim(1, -1)


def resize_mask(mask: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(B, H, W)`` masks to ``(B, h, w)``."""
    return resize_image(mask[..., None], size, mode)[..., 0]


def dilate(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Grow a ``(H, W)`` or ``(B, H, W)`` mask by ``pixels`` (square structuring element; max filter)."""
    if pixels <= 0:
        return mask
    batched = mask if mask.dim() == 3 else mask[None]
    grown = F.max_pool2d(batched[:, None].float(), 2 * pixels + 1, stride=1, padding=pixels)[:, 0]
    grown = grown.to(mask.dtype)
    return grown if mask.dim() == 3 else grown[0]


def paste(original: torch.Tensor, patch: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``original + mask * (patch - original)``: exactly ``original`` where ``mask`` is 0 or ``patch`` equals it,
    exactly ``patch`` where ``mask`` is 1. ``mask`` has no channel axis."""
    weight = mask[..., None].to(original.dtype)
    patch = patch.to(original.dtype)
    return torch.where(weight >= 1, patch, original + weight * (patch - original))


def stitch(original: torch.Tensor, result_crop: torch.Tensor, box: CropBox, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Put ``result_crop`` (the crop's size) back into a copy of ``original`` inside ``box``, blended by ``mask``
    (crop-sized, 0..1; None = everywhere in the box). Pixels outside the box, or where the mask is 0, are the
    original's exactly; an unchanged crop reproduces the original exactly."""
    if tuple(result_crop.shape[-3:-1]) != (box.height, box.width):
        raise ValueError(f"result crop is {tuple(result_crop.shape[-3:-1])}, the box is {(box.height, box.width)}")
    out = original.clone()
    rows, cols = box.slices
    region = original[..., rows, cols, :]
    weight = torch.ones(region.shape[:-1], dtype=original.dtype) if mask is None else mask
    out[..., rows, cols, :] = paste(region, result_crop, weight)
    return out


def edge_taper(box: CropBox, image_hw: tuple[int, int], width: int) -> torch.Tensor:
    """``(box.height, box.width)`` weights that are 0 on every side of ``box`` lying inside the image and reach 1
    ``width`` px inward (sides on the image border stay 1), so a composite that reaches the crop's edge fades out
    instead of leaving a rectangular seam."""
    if width <= 0:
        return torch.ones(box.height, box.width)

    def along(length: int, cut_start: bool, cut_end: bool) -> torch.Tensor:
        index = torch.arange(length, dtype=torch.float32)
        weight = torch.ones(length)
        if cut_start:
            weight = torch.minimum(weight, index / width)
        if cut_end:
            weight = torch.minimum(weight, (length - 1 - index) / width)
        return weight.clamp(0, 1)

    rows = along(box.height, box.top > 0, box.bottom < image_hw[0])
    cols = along(box.width, box.left > 0, box.right < image_hw[1])
    return rows[:, None] * cols[None, :]
