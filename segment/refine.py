"""Concept distillation's refined mask (Dombrowski et al., ICCV 2023, Eq. 5; paper notes §1.5).

The preliminary mask M_pre over-covers the object on purpose. The fine-tuned model m′ repaints that region
as background (``distill.sampling.background_inpaint``), and the pixels that actually changed mark the object:

    D    = mean over RGB of |x - x̂|, both in [0, 1]      (no blur; codec error is left to the GMM)
    g(D) = 2-component GMM on D, midpoint of the means, 3x3 majority filter  (``segment.gmm.gmm_binarize``)
    M    = up(M_pre) AND g(D)

``up`` is the official upsampling rule (see :func:`upsample_prelim`). Optional post-processing (closing, then
hole filling) is the paper's ``--postprocess`` for segmenter training labels, off by default.

Images are uint8 ``(H, W, 3)`` or float in [0, 1] (checked); masks are bool. Everything is plain numpy.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .gmm import gmm_binarize


def _unit_image(image, name: str) -> np.ndarray:
    """uint8 -> /255; float must already be in [0, 1]; anything else is an error (no guessing of 0..255 floats)."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"{name} must be an (H, W, 3) RGB array; got shape {array.shape}.")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must be uint8 (0..255) or float in [0, 1]; got dtype {array.dtype}.")
    if array.size and not (np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0):
        raise ValueError(f"{name} is float but not within [0, 1] (range [{np.nanmin(array):g}, {np.nanmax(array):g}]): "
                         "divide 0..255 values by 255 or pass uint8.")
    return array.astype(np.float32)


def _binary(mask, name: str) -> np.ndarray:
    """bool, or numbers that are all 0/1; a soft map is refused rather than silently thresholded."""
    array = np.asarray(mask)
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} must be a bool mask; got dtype {array.dtype}.")
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must be a binary mask (bool or 0/1); got values in [{array.min():g}, {array.max():g}]. "
                         "Binarise soft maps first (segment.gmm_binarize).")
    return array.astype(bool)


def difference_image(image, inpainted) -> np.ndarray:
    """D = mean over RGB of |x - x̂|, float32 ``(H, W)`` in [0, 1] (the paper's pixel-space difference, no blur)."""
    x = _unit_image(image, "image")
    x_hat = _unit_image(inpainted, "inpainted")
    if x.shape != x_hat.shape:
        raise ValueError(f"image is {x.shape[1]}x{x.shape[0]} but inpainted is {x_hat.shape[1]}x{x_hat.shape[0]}: "
                         "decode the inpainting at the image's size (same framing) before comparing.")
    return np.abs(x - x_hat).mean(axis=-1, dtype=np.float32)


def upsample_prelim(prelim, size: tuple[int, int]) -> np.ndarray:
    """M_pre ``(h, w)`` at the latent grid -> bool ``(H, W)`` by the official rule.

    The official code passes the bool mask through torchvision ``Resize``: bilinear interpolation in float
    (``align_corners=False``), then a cast where any nonzero value is True. Every image pixel whose bilinear
    footprint touches a foreground cell becomes foreground, so the mask grows by about half a latent cell
    compared with nearest upsampling: ``f / 2`` pixels on every side for an even factor ``f`` (4 px on SD's
    64 -> 512, 1 px on the toy's 32 -> 64). For odd factors, float rounding of the weights that should be
    exactly 0 adds one more pixel on one side, as it would in torchvision. The dilation is kept on purpose: it
    is the paper's behaviour, and a generous M_pre keeps the whole object inside the AND of Eq. 5.
    ``(h, w)`` must not be larger than ``size``; equal sizes return the mask unchanged.
    """
    mask = _binary(prelim, "prelim")
    if mask.ndim != 2:
        raise ValueError(f"prelim must be one (h, w) mask; got shape {mask.shape}.")
    height, width = (int(s) for s in size)
    if mask.shape[0] > height or mask.shape[1] > width:
        raise ValueError(f"prelim is {mask.shape[1]}x{mask.shape[0]} but the image is {width}x{height}: the "
                         "preliminary mask must be at the latent grid (or the image size), not larger than the image.")
    if mask.shape == (height, width):
        return mask.copy()
    values = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=(height, width), mode="bilinear",
                           align_corners=False)
    return (values[0, 0] != 0).numpy()


def postprocess_mask(mask, *, pad_border: bool = False) -> np.ndarray:
    """The paper's label clean-up: ``binary_closing`` (3x3 cross, 1 iteration), then ``binary_fill_holes``.

    As in the official code (scipy's default ``border_value=0``), the closing's erosion treats outside the
    image as background, so foreground pixels on the image border are removed. ``pad_border=True`` (not the
    paper's) replicates the border for the closing instead, which keeps objects that touch the edge whole.
    """
    from scipy import ndimage

    array = _binary(mask, "mask")
    if array.ndim != 2:
        raise ValueError(f"mask must be (H, W); got shape {array.shape}.")
    cross = ndimage.generate_binary_structure(2, 1)
    if pad_border:
        closed = ndimage.binary_closing(np.pad(array, 1, mode="edge"), structure=cross, iterations=1)[1:-1, 1:-1]
    else:
        closed = ndimage.binary_closing(array, structure=cross, iterations=1)
    return ndimage.binary_fill_holes(closed)


def refine_mask(image, inpainted, prelim, *, postprocess: bool = False) -> np.ndarray:
    """M = up(M_pre) AND g(|x - x̂|): the refined bool ``(H, W)`` mask of one image (Eq. 5).

    ``image`` and ``inpainted`` share one size; ``prelim`` is at the latent grid (or the image size).
    An empty ``prelim`` gives an empty mask without fitting the GMM. A constant difference (the inpainting
    equals the image) gives an empty ``g(D)``, so an empty mask, and ``gmm_binarize``'s RuntimeWarning.
    ``postprocess``: :func:`postprocess_mask` (the paper's option for training labels).
    """
    difference = difference_image(image, inpainted)
    upsampled = upsample_prelim(prelim, difference.shape)
    if not upsampled.any():
        return upsampled
    changed = gmm_binarize(torch.from_numpy(difference)).mask[0].numpy()
    refined = upsampled & changed
    return postprocess_mask(refined) if postprocess else refined


__all__ = ["difference_image", "postprocess_mask", "refine_mask", "upsample_prelim"]
