"""The mask stages of concept distillation chained on arrays: attention -> M_pre, then m′ inpainting -> M.

:func:`preliminary_masks` is the paper's M_pre: cross-attention of the caption's object words, captured over
T0 independently noised copies of the image (``demo.protocol.concept_attention``), averaged over layers at
the latent grid, binarised by the 2-component GMM. :func:`refine` repaints M_pre with m′ and keeps the pixels
that changed (``segment.refine.refine_mask``). The dataset builders in ``training/distill_data.py`` call these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..segment.gmm import gmm_binarize, resize_mask
from ..segment.refine import _binary, difference_image, refine_mask
from .sampling import Progress, background_inpaint

STOP_WORDS = frozenset({"a", "photo", "of", "and"})
"""Caption words that name no object (the toy captions' and "a photo of a {object}"'s function words)."""


def object_words(caption: str) -> str:
    """The default attention words of a caption, comma-separated: every word that is not in ``STOP_WORDS``.

    Toy captions name several objects ("a photo of a red circle and a blue square"); their maps are summed, so
    M_pre covers all of them (the authors likewise sum several words for "a human with arms and legs").
    """
    from ..training.tokenizer import prompt_words

    words = [w for w in prompt_words(caption) if w.isalnum() and w not in STOP_WORDS]
    if not words:
        raise ValueError(f"The caption {caption!r} names no object (only {sorted(STOP_WORDS)}); give the attention "
                         "words explicitly.")
    return ", ".join(dict.fromkeys(words))


def _words_per_image(words: str | Sequence[str] | None, captions: Sequence[str]) -> list[str]:
    if words is None:
        return [object_words(c) for c in captions]
    if isinstance(words, str):
        return [words] * len(captions)
    words = list(words)
    if len(words) != len(captions):
        raise ValueError(f"Give one words string for all images or one per image: got {len(words)} for "
                         f"{len(captions)} images.")
    return [w or object_words(c) for w, c in zip(words, captions)]


def latent_grid(bundle, image_hw: tuple[int, int]) -> tuple[int, int]:
    factor = bundle.codec.factor
    if image_hw[0] % factor or image_hw[1] % factor:
        raise ValueError(f"Image size {image_hw[1]}x{image_hw[0]} is not divisible by the codec factor {factor}.")
    return image_hw[0] // factor, image_hw[1] // factor


def preliminary_masks(bundle, images, captions: Sequence[str], *, words: str | Sequence[str] | None = None,
                      settings=None, seeds: Sequence[int] | None = None,
                      return_maps: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """M_pre: bool ``(B, h, w)`` at the capture model's latent grid.

    ``images``: uint8 ``(B, H, W, 3)`` of one size; ``captions``: the prompt per image (y_f). ``words``: None
    (default: every caption word but a/photo/of/and, maps summed), one comma-separated string for every image,
    or one per image. ``settings``: ``demo.protocol.EvalSettings`` (T0, noise seed, rows per UNet call).
    ``seeds``: one attention-noise seed per image, capturing image by image so that an image's mask does not
    depend on its batch (the builders use this to make resumed runs identical); default: the whole batch at
    once with ``settings.seed``. ``return_maps``: also return the float ``(B, h, w)`` attention maps.
    """
    from dataclasses import replace

    from ..attention_patch.tokens import find_word_positions
    from ..demo.protocol import EvalSettings, concept_attention

    settings = settings or EvalSettings()
    images = np.asarray(images)
    captions = list(captions)
    if images.ndim != 4 or len(images) != len(captions):
        raise ValueError(f"Give (B, H, W, 3) images and one caption each; got shape {images.shape} and "
                         f"{len(captions)} captions.")
    grid = latent_grid(bundle, images.shape[1:3])
    chosen = _words_per_image(words, captions)
    if seeds is not None and len(seeds) != len(images):
        raise ValueError(f"Give one seed per image: got {len(seeds)} for {len(images)} images.")
    groups = ([(slice(i, i + 1), replace(settings, seed=int(s))) for i, s in enumerate(seeds)] if seeds is not None
              else [(slice(0, len(images)), settings)])
    maps_out = []
    for part, part_settings in groups:
        maps, token_lists = concept_attention(bundle, list(images[part]), captions[part], part_settings)
        for offset, tokens in enumerate(token_lists):
            positions = find_word_positions(tokens, chosen[part.start + offset])
            maps_out.append(maps.cross_attention_for(positions, size=grid)[offset])
    attention = torch.stack(maps_out)
    masks = gmm_binarize(attention).mask.numpy()
    return (masks, attention.numpy()) if return_maps else masks


def refine(bundle_m_prime, images, prelim, *, prompt: str, steps: int = 50, eta: float = 0.0,
           seed: int | Sequence[int] = 0, postprocess: bool = False,
           progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """M = up(M_pre) AND g(|x − m′(x, M_pre, y_b)|): ``(refined bool (B, H, W), inpainted uint8 (B, H, W, 3),
    difference float32 (B, H, W))``.

    ``prompt`` is y_b ("a photo of a background"; the toy models use ""). ``prelim`` is M_pre at the latent grid
    of the model that captured it; when m′'s grid differs it is resized (nearest) to the image size first, and
    the inpainting max-pools it to m′'s grid.
    """
    images = np.asarray(images)
    prelim = _binary(prelim, "prelim")
    if prelim.ndim != 3 or len(prelim) != len(images):
        raise ValueError(f"prelim must be (B, h, w) for the {len(images)} images; got shape {prelim.shape}.")
    image_hw = tuple(images.shape[1:3])
    blend_mask = prelim
    if tuple(prelim.shape[1:]) not in (latent_grid(bundle_m_prime, image_hw), image_hw):
        blend_mask = resize_mask(torch.from_numpy(prelim), image_hw).numpy()
    inpainted = background_inpaint(bundle_m_prime, images, blend_mask, prompt=prompt, steps=steps, eta=eta, seed=seed,
                                   progress=progress)
    refined = np.stack([refine_mask(x, x_hat, m, postprocess=postprocess)
                        for x, x_hat, m in zip(images, inpainted, prelim)])
    difference = np.stack([difference_image(x, x_hat) for x, x_hat in zip(images, inpainted)])
    return refined, inpainted, difference


__all__ = ["STOP_WORDS", "latent_grid", "object_words", "preliminary_masks", "refine"]
