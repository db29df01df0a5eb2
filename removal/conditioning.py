"""ObjectDrop conditioning for SD-inpainting-layout models (UNet input = noisy latent 4 + mask 1 + image latent 4).

Unlike ComfyUI's ``InpaintModelConditioning`` the image latent is the *un-grayed* image (the object stays
visible: the model learned to remove it from the full photo, shadows and reflections included) and there is no
``noise_mask``: the sampler may change pixels outside the object mask, where the effects are.
"""

from __future__ import annotations

from typing import Any


def conditioning_set_values(conditioning: list, values: dict[str, Any]) -> list:
    """A copy of ComfyUI conditioning ``[[tensor, options], ...]`` with ``values`` set in every options dict
    (what ComfyUI's ``node_helpers.conditioning_set_values`` does without ``append``)."""
    return [[tensor, {**options, **values}] for tensor, options in conditioning]


def objectdrop_conditioning_values(image_latent, mask) -> dict[str, Any]:
    """The options ComfyUI's ``BaseModel.concat_cond`` reads: the image latent and the mask (``(B, 1, H, W)``,
    pixel size; ComfyUI resizes it to the latent and rounds it)."""
    return {"concat_latent_image": image_latent, "concat_mask": mask}
