"""Concept distillation (Dombrowski et al., ICCV 2023), ComfyUI-free.

* ``rectangles``: the background-rectangle loss mask of m′'s fine-tuning;
* ``renoise_sampler``: DDIM with fresh background re-noising in k-diffusion form (the ComfyUI node's sampler);
* ``sampling``: the same inpainting and concept-distillation guidance on a diffusers model bundle;
* ``pipeline``: M_pre from attention, then the refined mask M, on arrays;
* ``dataset``: the mask-folder layout the builders (``python -m segdrop.training prelim-masks | refine-masks |
  synthesize``) write and the training recipes read.
"""

from .dataset import MaskFolderError, MaskFolderWriter, load_image, load_mask, read_mask_folder
from .pipeline import object_words, preliminary_masks, refine
from .rectangles import RectangleBounds, sample_background_rectangle
from .renoise_sampler import ddim_renoise
from .sampling import background_inpaint, distillation_sample

__all__ = [
    "MaskFolderError",
    "MaskFolderWriter",
    "RectangleBounds",
    "background_inpaint",
    "ddim_renoise",
    "distillation_sample",
    "load_image",
    "load_mask",
    "object_words",
    "preliminary_masks",
    "read_mask_folder",
    "refine",
    "sample_background_rectangle",
]
