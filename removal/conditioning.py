"""ObjectDrop conditioning for SD-inpainting-layout models (UNet input = noisy latent 4 + mask 1 + image latent 4).

Unlike ComfyUI's ``InpaintModelConditioning`` the image latent is the *un-grayed* image (the object stays
visible: the model learned to remove it from the full photo, shadows and reflections included) and there is no
``noise_mask``: the sampler may change pixels outside the object mask, where the effects are.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def conditioning_set_values(conditioning: list, values: dict[str, Any]) -> list:
    """A copy of ComfyUI conditioning ``[[tensor, options], ...]`` with ``values`` set in every options dict
    (what ComfyUI's ``node_helpers.conditioning_set_values`` does without ``append``)."""
    return [[tensor, {**options, **values}] for tensor, options in conditioning]


def objectdrop_conditioning_values(image_latent, mask) -> dict[str, Any]:
    """The options ComfyUI's ``BaseModel.concat_cond`` reads: the image latent and the mask (``(B, 1, H, W)``,
    pixel size; ComfyUI resizes it to the latent and rounds it)."""
    return {"concat_latent_image": image_latent, "concat_mask": mask}


def latent_cell_mask(mask: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """``(B, 1, H, W)`` mask -> the same size, constant on each ``factor``-pixel latent cell: 1 where ANY pixel of the
    cell is masked (> 0.5), as the removal recipe trains (``training.conditioned_unet.latent_mask``).

    ComfyUI's ``concat_cond`` shrinks the pixel mask to the latent grid bilinearly and rounds, which on its own
    samples only the middle of each cell and drops object edges and thin objects; on a mask that is constant per
    cell it returns exactly these cells. ``H`` and ``W`` must be multiples of ``factor``.
    """
    cells = F.max_pool2d((mask > 0.5).float(), factor)
    return F.interpolate(cells, scale_factor=factor, mode="nearest")
