"""SegDrop_ObjectDropInsert: ObjectDrop-style object insertion with an insertion model (an SD text-to-image UNet
widened to the SD-inpainting input layout, 9 channels, by the insertion training recipe). The placement math is the
ComfyUI-free ``segdrop.removal.placement``; sampling, crop/stitch and the effect-aware composite are shared with
SegDrop_ObjectDropRemove (``nodes/objectdrop.py``)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..removal import crop_box, dilate, fit_to_mask, place_object
from ..removal.effect_mask import DEFAULT_THRESHOLD
from .objectdrop import (
    as_mask_batch,
    check_inpainting_model,
    progress_and_interrupt,
    sample_in_crop,
    sampling_inputs,
)
from .types import CATEGORY

INSERTION_MODEL_FIX = (
    "load the ObjectDrop insertion checkpoint (an SD UNet widened to 9 input channels by training/"
    "train_insertion.py, saved in the SD-inpainting layout as unet_ldm.safetensors) with Load Diffusion Model, "
    "and take CLIP and VAE from its base SD checkpoint."
)
MAX_POSITION = 16384


def per_image(batch: torch.Tensor, count: int, what: str) -> torch.Tensor:
    """``batch`` expanded to ``count`` items: it must hold one item (used for all) or ``count``."""
    if batch.shape[0] not in (1, count):
        raise ValueError(f"{batch.shape[0]} {what} for {count} backgrounds: give one {what.rstrip('s')} for all "
                         "backgrounds or one per background (the same batch size).")
    return batch.expand(count, *batch.shape[1:])


def insert_one(model, vae, cond, composite: torch.Tensor, mask: torch.Tensor, *, seed, steps, cfg, sampler_name,
               scheduler, mask_grow, context, resolution, effect_threshold, callback) -> tuple[torch.Tensor, torch.Tensor]:
    """The insertion model's result for one ``(1, H, W, 3)`` composite and its ``(1, H, W)`` object mask, stitched
    into the composite with the effect-aware mask: ``(result, effect)``."""
    grown = (dilate((mask > 0.5).float(), mask_grow) > 0.5).float()
    done = sample_in_crop(model, vae, cond, composite, grown, crop_box(grown[0], context), seed=seed, steps=steps,
                          cfg=cfg, sampler_name=sampler_name, scheduler=scheduler, resolution=resolution,
                          effect_threshold=effect_threshold, callback=callback)
    return done.stitched, done.effect


class ObjectDropInsert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SegDrop_ObjectDropInsert",
            display_name="ObjectDrop Insert",
            category=CATEGORY,
            description=(
                "Inserts a cut-out object into a background photo with an ObjectDrop insertion model: pastes the "
                "object (the naive composite), crops around it with extra context below, samples from pure noise "
                "with the empty prompt, the composite and the object's mask, so the model adds the object's shadow "
                "and reflection and harmonises it, and stitches the result back with an effect-aware mask (object "
                "plus wherever the output changed): pixels elsewhere stay exactly the background."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The ObjectDrop insertion model (9 UNet input channels, SD-inpainting layout; a plain text-to-image or removal model will not add shadows)."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP: encodes the empty prompt the insertion model was trained with."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE."),
                io.Image.Input("background", tooltip="The photo(s) to insert the object into. A batch is processed image by image."),
                io.Image.Input("object_image", tooltip="The object's picture (a cut-out; only the pixels under object_mask are used). One for all backgrounds or one per background."),
                io.Mask.Input("object_mask", tooltip="1 on the object's pixels in object_image. Load Image's MASK is 1 where the PNG is transparent: "
                                                     "for a cut-out with a transparent background, put an Invert Mask node in between."),
                io.Int.Input("x", default=0, min=0, max=MAX_POSITION,
                             tooltip="Column of the object's left edge in the background (pixels; the object is trimmed to its mask's bounding box first). Ignored with a placement mask."),
                io.Int.Input("y", default=0, min=0, max=MAX_POSITION,
                             tooltip="Row of the object's top edge in the background (pixels). Ignored with a placement mask."),
                io.Float.Input("scale", default=1.0, min=0.01, max=16.0, step=0.01,
                               tooltip="Resize factor of the trimmed cut-out (1.0: pixel for pixel). The scaled object must lie fully inside the background. Ignored with a placement mask."),
                *sampling_inputs(),
                io.Int.Input("mask_grow", default=0, min=0, max=256,
                             tooltip="Grow the object mask given to the model by this many pixels (0: the object exactly, as the insertion "
                                     "model is trained; a few pixels let it blend a rough cut-out's edge)."),
                io.Float.Input("context", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Crop context: the crop is the object's box grown by this factor of its size (70% of the height "
                                       "below, 30% above: shadows and reflections lie mostly below), clamped to the image."),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=8,
                             tooltip="Working resolution: the crop is resized so its long side is this (multiple of 8); 512 for an SD1.5 "
                                     "insertion model (the paper samples at 512x512)."),
                io.Float.Input("effect_threshold", default=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="A pixel outside the object is pasted when the output differs from the composite by more than "
                                       "this mean |diff| over RGB (0..1); 0.08 is above the VAE's round-trip error."),
                io.Mask.Input("placement_mask", optional=True,
                              tooltip="Optional, the background's size: when given, x, y and scale are ignored and the object's bounding "
                                      "box is fitted (aspect kept, as large as fits, centred) into this mask's bounding box."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The background with the object inserted, its shadow and reflection added; exactly the background outside the effect mask."),
                io.Image.Output(display_name="composite", tooltip="The naive paste (object over background, no effects): the model's conditioning image."),
                io.Mask.Output(display_name="effect_mask", tooltip="Where the model's output was pasted (the object plus the changed region, grown and feathered)."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, background, object_image, object_mask, x, y, scale, seed, steps, cfg,
                sampler_name, scheduler, mask_grow, context, resolution, effect_threshold,
                placement_mask=None) -> io.NodeOutput:
        background = background if background.dim() == 4 else background[None]
        object_image = object_image if object_image.dim() == 4 else object_image[None]
        count = background.shape[0]
        objects = per_image(object_image, count, "object images")
        object_masks = per_image(as_mask_batch(object_image, object_mask), count, "object masks")
        placements = None if placement_mask is None else as_mask_batch(background, placement_mask)

        pasted = []
        for k in range(count):
            px, py, pscale = (x, y, scale) if placements is None else fit_to_mask(object_masks[k], placements[k])
            try:
                pasted.append(place_object(background[k], objects[k], object_masks[k], px, py, pscale))
            except ValueError as error:
                raise ValueError(f"ObjectDrop Insert, background {k}: {error}" if count > 1 else str(error)) from None
        check_inpainting_model(model, node="ObjectDrop Insert", kind="an insertion model with 9 UNet input channels",
                               fix=INSERTION_MODEL_FIX)

        cond = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        callback_for, check_interrupt = progress_and_interrupt(count * steps)
        results, composites, effects = [], [], []
        for k, (composite, mask) in enumerate(pasted):
            check_interrupt()
            composite = composite[None].to(background.dtype)
            result, effect = insert_one(
                model, vae, cond, composite, mask[None], seed=seed, steps=steps, cfg=cfg, sampler_name=sampler_name,
                scheduler=scheduler, mask_grow=mask_grow, context=context, resolution=resolution,
                effect_threshold=effect_threshold, callback=callback_for(k * steps))
            results.append(result)
            composites.append(composite)
            effects.append(effect)
        return io.NodeOutput(torch.cat(results), torch.cat(composites), torch.cat(effects))
