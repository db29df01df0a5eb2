"""SegDrop_ObjectDropConditioning and SegDrop_ObjectDropRemove: ObjectDrop-style object removal with an SD
inpainting-layout model (9 UNet input channels) and a removal LoRA. The algorithms (crop box, stitch, effect
mask, conditioning values) are the ComfyUI-free ``segdrop.removal``; this module is the glue."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from comfy_api.latest import io

from ..removal import (
    conditioning_set_values,
    crop,
    crop_box,
    dilate,
    objectdrop_conditioning_values,
    stitch_effects,
    working_size,
)
from ..removal.conditioning import latent_cell_mask
from ..removal.crop import resize_image, resize_mask
from ..removal.effect_mask import DEFAULT_THRESHOLD
from .types import CATEGORY

log = logging.getLogger("segdrop")
LATENT_SCALE = 8
FALLBACK_SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m", "ddim"]  # only when ComfyUI is not importable
FALLBACK_SCHEDULERS = ["normal", "karras", "simple", "ddim_uniform"]


def sampler_options() -> tuple[list[str], list[str]]:
    """ComfyUI's sampler and scheduler names (the fallback lists are for tests without ComfyUI)."""
    try:
        import comfy.samplers
    except ImportError:
        return FALLBACK_SAMPLERS, FALLBACK_SCHEDULERS
    return list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)


def model_input_channels(model) -> int | None:
    """The diffusion model's input channels (9 for SD inpainting, 4 for text-to-image), or None if unknown."""
    base = getattr(model, "model", model)
    config = getattr(getattr(base, "model_config", None), "unet_config", None) or {}
    if "in_channels" in config:
        return int(config["in_channels"])
    diffusion = getattr(base, "diffusion_model", None)
    value = getattr(diffusion, "in_channels", None)
    return int(value) if value is not None else None


REMOVAL_MODEL_FIX = ("load an SD inpainting checkpoint (9 input channels) and the removal LoRA (Load Checkpoint -> "
                     "LoraLoader -> model).")


def check_inpainting_model(model, node: str = "ObjectDrop Remove", kind: str = "an inpainting model",
                           fix: str = REMOVAL_MODEL_FIX) -> None:
    channels = model_input_channels(model)
    if channels is not None and channels <= 4:
        raise ValueError(
            f"{node} needs {kind}, but this model's UNet takes {channels} input channels "
            f"(a text-to-image checkpoint): {fix}"
        )


def as_mask_batch(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` masks for a ``(B, H, W, C)`` image batch: one mask for all, or one per image."""
    mask = mask if mask.dim() == 3 else mask[None]
    if tuple(mask.shape[-2:]) != tuple(image.shape[1:3]) and not bool(mask.any()):
        # Load Image gives a 64x64 all-zero MASK for a picture without alpha: that is an empty mask, not a mistake.
        return torch.zeros(image.shape[:3])
    if tuple(mask.shape[-2:]) != tuple(image.shape[1:3]):
        h, w = image.shape[1:3]
        mh, mw = mask.shape[-2:]
        raise ValueError(
            f"The mask is {mw}x{mh} (width x height) but the image is {w}x{h}: use the mask of this image (Load "
            "Image's MASK output, or a mask node run on this image), or resize it to the image with a mask "
            "resize/upscale node."
        )
    if mask.shape[0] not in (1, image.shape[0]):
        raise ValueError(
            f"{mask.shape[0]} masks for {image.shape[0]} images: give one mask for all images or one mask per "
            "image (the same batch size)."
        )
    return mask.expand(image.shape[0], -1, -1).float()


def crop_to_multiple_of_8(pixels: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre-crop to multiples of 8 like InpaintModelConditioning (the VAE's grid)."""
    h, w = (pixels.shape[1] // 8) * 8, (pixels.shape[2] // 8) * 8
    if (h, w) == tuple(pixels.shape[1:3]):
        return pixels, mask
    top, left = (pixels.shape[1] % 8) // 2, (pixels.shape[2] % 8) // 2
    return pixels[:, top:top + h, left:left + w], mask[:, :, top:top + h, left:left + w]


def objectdrop_conditioning(positive, negative, vae, pixels: torch.Tensor, mask: torch.Tensor):
    """(positive, negative, latent) with the un-grayed image latent and the mask (whole latent cells, as the removal
    recipe trains) as concat inputs, no noise_mask, and an all-zero latent (pure noise at denoise 1.0, as ObjectDrop
    samples)."""
    if mask.dim() == 2:
        mask = mask[None]
    mask = torch.nn.functional.interpolate(mask.reshape(-1, 1, *mask.shape[-2:]).float(),
                                           size=tuple(pixels.shape[1:3]), mode="bilinear")
    pixels, mask = crop_to_multiple_of_8(pixels, mask)
    mask = latent_cell_mask(mask, LATENT_SCALE)
    image_latent = vae.encode(pixels[..., :3])
    values = objectdrop_conditioning_values(image_latent, mask)
    latent = {"samples": torch.zeros_like(image_latent)}
    return conditioning_set_values(positive, values), conditioning_set_values(negative, values), latent


class ObjectDropConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SegDrop_ObjectDropConditioning",
            display_name="ObjectDrop Conditioning",
            category=CATEGORY,
            description=(
                "Inpainting-model conditioning for ObjectDrop removal: like InpaintModelConditioning, but the image "
                "latent is the un-grayed photo (the object stays visible) and there is no noise mask, so the "
                "sampler may also change the object's shadow and reflection outside the mask. Works with any "
                "KSampler; use denoise 1.0 and the empty prompt."
            ),
            inputs=[
                io.Conditioning.Input("positive", tooltip="The empty prompt encoded with CLIP Text Encode (ObjectDrop's removal prompt)."),
                io.Conditioning.Input("negative", tooltip="Also the empty prompt (only used when cfg > 1)."),
                io.Vae.Input("vae", tooltip="The inpainting checkpoint's VAE."),
                io.Image.Input("pixels", tooltip="The photo, object included (it is not grayed out)."),
                io.Mask.Input("mask", tooltip="1 on the object to remove (its shadow need not be masked)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive", tooltip="positive with concat_latent_image (the photo's latent) and concat_mask."),
                io.Conditioning.Output(display_name="negative", tooltip="negative with the same concat inputs."),
                io.Latent.Output(display_name="latent", tooltip="All-zero latent of the photo's size, without noise_mask: sample it at denoise 1.0 (pure noise, as ObjectDrop)."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, vae, pixels, mask) -> io.NodeOutput:
        return io.NodeOutput(*objectdrop_conditioning(positive, negative, vae, pixels, mask))


def sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, callback):
    """common_ksampler without the latent dict: fresh noise from ``seed``, denoise 1.0, no noise mask."""
    import comfy.sample
    import comfy.utils

    latent_image = comfy.sample.fix_empty_latent_channels(model, latent_image)
    noise = comfy.sample.prepare_noise(latent_image, seed)
    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
                               denoise=1.0, callback=callback, disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED,
                               seed=seed)


@dataclass
class CropResult:
    """What :func:`sample_in_crop` made: the stitched image and its effect mask at image size, and for previews the
    crop at working resolution (``pixels``), the decoded output there and the composite weights over the crop box."""

    stitched: torch.Tensor
    effect: torch.Tensor
    pixels: torch.Tensor
    decoded: torch.Tensor
    weights: torch.Tensor


def sample_in_crop(model, vae, cond, photo: torch.Tensor, mask: torch.Tensor, box, *, seed, steps, cfg, sampler_name,
                   scheduler, resolution, effect_threshold, callback) -> CropResult:
    """ObjectDrop's crop-sample-stitch for one ``(1, H, W, C)`` image and its ``(1, H, W)`` mask (already grown):
    the crop at working resolution is conditioned un-grayed (``objectdrop_conditioning``), sampled from noise with
    ``cond`` on both sides, decoded, resized back and stitched with the effect-aware mask, tapered towards crop
    sides inside the image (no seam) and always 1 on the mask. Removal and insertion share it."""
    region, region_mask = crop(photo[..., :3], box), crop(mask[..., None], box)[..., 0]
    size = working_size(box.height, box.width, resolution)
    pixels = resize_image(region, size)
    small_mask = (resize_mask(region_mask, size) > 0.5).float()
    positive, negative, latent = objectdrop_conditioning(cond, cond, vae, pixels, small_mask)
    samples = sample(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent["samples"], callback)
    decoded = vae.decode(samples)[..., :3].float().clamp(0, 1)
    if decoded.dim() == 5:  # video VAEs give (B, T, H, W, C)
        decoded = decoded.reshape(-1, *decoded.shape[-3:])
    back = resize_image(decoded, (box.height, box.width)).clamp(0, 1)
    stitched, weights = stitch_effects(photo, back, box, threshold=effect_threshold, object_mask=region_mask)
    effect = torch.zeros(1, *photo.shape[1:3])
    effect[(slice(None), *box.slices)] = weights
    return CropResult(stitched, effect, pixels, decoded, weights)


def progress_and_interrupt(total: int):
    """(callback factory for one image, final update): a ProgressBar over all images' steps and ComfyUI's Cancel."""
    import comfy.model_management
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)

    def for_image(offset: int):
        def callback(step, x0, x, total_steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update_absolute(offset + step + 1, total)

        return callback

    return for_image, comfy.model_management.throw_exception_if_processing_interrupted


def side_by_side(tiles: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.clamp(0, 1) for t in tiles], dim=1)


def pad_stack(pictures: list[torch.Tensor]) -> torch.Tensor:
    """Stack ``(H, W, 3)`` pictures of different sizes (zero padding at the bottom/right)."""
    h, w = max(p.shape[0] for p in pictures), max(p.shape[1] for p in pictures)
    out = torch.zeros(len(pictures), h, w, 3)
    for k, p in enumerate(pictures):
        out[k, : p.shape[0], : p.shape[1]] = p
    return out


def sampling_inputs() -> list:
    """The KSampler-like inputs ObjectDrop Remove and Insert share: seed, steps, cfg, sampler_name, scheduler
    (the models are trained with the empty prompt only, hence cfg 1 by default)."""
    samplers, schedulers = sampler_options()
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                     tooltip="Seed of the starting noise."),
        io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Sampling steps (the paper: 50)."),
        io.Float.Input("cfg", default=1.0, min=1.0, max=30.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance. 1.0 (default): the model was trained with the empty prompt only, so "
                               "there is nothing to guide towards and cfg 1 skips the second (unconditional) pass, "
                               "halving the time. Above 1 both passes use the empty prompt and only the image/mask differ."),
        io.Combo.Input("sampler_name", options=samplers, default="euler", tooltip="Sampler (as KSampler)."),
        io.Combo.Input("scheduler", options=schedulers, default="normal", tooltip="Noise schedule (as KSampler)."),
    ]


class ObjectDropRemove(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SegDrop_ObjectDropRemove",
            display_name="ObjectDrop Remove",
            category=CATEGORY,
            description=(
                "Removes the masked object and its effects (shadow, reflection) with an SD inpainting model and an "
                "ObjectDrop removal LoRA: crops around the mask with extra context below, samples from pure noise "
                "with the empty prompt and the un-grayed photo, and stitches the result back with an effect-aware "
                "mask (object mask plus wherever the output changed), so pixels elsewhere stay exactly the input."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD inpainting model (9 UNet input channels) with the removal LoRA applied (LoraLoader)."),
                io.Clip.Input("clip", tooltip="The checkpoint's CLIP: encodes the empty prompt the removal model was trained with."),
                io.Vae.Input("vae", tooltip="The checkpoint's VAE."),
                io.Image.Input("image", tooltip="The photo(s). A batch is processed image by image."),
                io.Mask.Input("mask", tooltip="1 on the object to remove: one mask for every image, or one per image. An empty mask returns the image unchanged."),
                *sampling_inputs(),
                io.Int.Input("mask_grow", default=8, min=0, max=256,
                             tooltip="Grow the mask by this many pixels first, so the object's edge pixels are removed too."),
                io.Float.Input("context", default=1.0, min=0.0, max=10.0, step=0.05,
                               tooltip="Crop context: the crop is the mask's box grown by this factor of its size (70% of the height "
                                       "below, 30% above: shadows and reflections lie mostly below), clamped to the image."),
                io.Int.Input("resolution", default=512, min=64, max=4096, step=8,
                             tooltip="Working resolution: the crop is resized so its long side is this (multiple of 8); 512 for SD1.5 "
                                     "inpainting (the paper samples at 512x512)."),
                io.Float.Input("effect_threshold", default=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               tooltip="A pixel outside the object mask is pasted when the output differs from the input by more "
                                       "than this mean |diff| over RGB (0..1); 0.08 is above the VAE's round-trip error."),
            ],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The photo with the object and its effects removed; exactly the input outside the effect mask."),
                io.Mask.Output(display_name="effect_mask", tooltip="Where the result was pasted (object mask plus changed region, grown and feathered)."),
                io.Image.Output(display_name="crop_preview", tooltip="Per image, at working resolution: the crop | the model's output | the effect mask over the output."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, image, mask, seed, steps, cfg, sampler_name, scheduler, mask_grow, context,
                resolution, effect_threshold) -> io.NodeOutput:
        image = image if image.dim() == 4 else image[None]
        masks = as_mask_batch(image, mask)
        masks = (dilate(masks, mask_grow) > 0.5).float()
        check_inpainting_model(model)
        boxes = [crop_box(m, context) for m in masks]
        if all(box is None for box in boxes):
            log.warning("SegDrop ObjectDrop Remove: the mask is empty, nothing to remove; returning the image unchanged.")
            return io.NodeOutput(image, torch.zeros(image.shape[:3]), image[..., :3].clone())

        cond = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        todo = sum(box is not None for box in boxes)
        callback_for, check_interrupt = progress_and_interrupt(todo * steps)
        results, effects, previews, done = [], [], [], 0
        for k, box in enumerate(boxes):
            check_interrupt()
            photo = image[k : k + 1]
            if box is None:
                log.warning("SegDrop ObjectDrop Remove: the mask of image %d is empty; it is returned unchanged.", k)
                results.append(photo)
                effects.append(torch.zeros(1, *photo.shape[1:3]))
                previews.append(photo[0, ..., :3])
                continue
            crop_result = sample_in_crop(model, vae, cond, photo, masks[k : k + 1], box, seed=seed, steps=steps, cfg=cfg,
                                         sampler_name=sampler_name, scheduler=scheduler, resolution=resolution,
                                         effect_threshold=effect_threshold, callback=callback_for(done * steps))
            done += 1
            results.append(crop_result.stitched)
            effects.append(crop_result.effect)
            shown = resize_mask(crop_result.weights, crop_result.pixels.shape[1:3])[0, ..., None]
            red = torch.tensor([1.0, 0.2, 0.2])
            decoded = crop_result.decoded[0]
            previews.append(side_by_side([crop_result.pixels[0], decoded, decoded * (1 - 0.5 * shown) + 0.5 * shown * red]))
        return io.NodeOutput(torch.cat(results), torch.cat(effects), pad_stack(previews))
