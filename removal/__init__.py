"""ObjectDrop-style object removal, ComfyUI-free: crop-and-stitch geometry, the effect-aware composite mask and
the inpainting-model conditioning values. Plain torch functions on plain tensors; the ComfyUI glue is
``segdrop.nodes.objectdrop``."""

from .conditioning import conditioning_set_values, objectdrop_conditioning_values
from .crop import CropBox, crop, crop_box, dilate, mask_bbox, paste, stitch, working_size
from .effect_mask import (
    DEFAULT_FEATHER,
    DEFAULT_GROW,
    DEFAULT_MIN_AREA,
    DEFAULT_THRESHOLD,
    changed_region,
    effect_mask,
    paste_effects,
    stitch_effects,
)
from .placement import Placement, fit_to_mask, place_object

__all__ = [
    "CropBox", "crop", "crop_box", "dilate", "mask_bbox", "paste", "stitch", "working_size",
    "DEFAULT_FEATHER", "DEFAULT_GROW", "DEFAULT_MIN_AREA", "DEFAULT_THRESHOLD", "changed_region", "effect_mask",
    "paste_effects", "stitch_effects",
    "conditioning_set_values", "objectdrop_conditioning_values", "Placement", "fit_to_mask", "place_object",
]
